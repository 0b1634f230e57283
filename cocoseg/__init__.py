"""cocoseg: Mask R-CNN instance segmentation on a COCO-2017 subset, as a DVC pipeline.

The package is grouped by stage. `core` is what every stage shares and imports nothing above
it; each stage folder imports `core` and never a sibling:

    core/      params, stage runner, errors, atomic writes, images, model, inference, COCO, drawing
    data/      download -> archives -> cocofile -> subset (placing the images) -> eda
    train/     dataset (and batches) -> transforms -> checkpoints -> runtime -> engine
    evaluate/  matching -> metrics and error_analysis -> reports
    predict/   outputs (overlays, contact sheet) of core's inference

Each folder's `__init__` names its public functions (imported lazily, on first use).
"""
