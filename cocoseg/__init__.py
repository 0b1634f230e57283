"""cocoseg: instance segmentation on a COCO-2017 subset, as a DVC pipeline.

Layers, each importing only those below it, then one folder per stage, importing layers and
never a sibling stage (tests/test_stage_scripts.py keeps both rules):

    common/    0  stage runner, params, errors, atomic writes, HTTP
    coco/      1  COCO names, COCO mAP, the image reader, inputs, results' classes
    viz/       1  overlays and figures
    modeling/  2  arch registry, start weights, model file, device, inference (and stage infer)
    download/ subset/ eda/ train/ evaluate/ predict/   one folder per stage
"""
