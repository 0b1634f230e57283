"""Stage train: fine-tune Mask R-CNN on data/subset, resumable, one process or torchrun.

Public: train, make_optimizer (engine); coco_dataset, train_loader (dataset); build_transforms,
PRESETS (transforms); find_resume, save_checkpoint, data_fingerprint (checkpoints).
"""

from cocoseg.core.exports import lazy_exports

EXPORTS = {
    "train": "engine", "coco_dataset": "dataset", "build_transforms": "transforms",
    "PRESETS": "transforms", "train_loader": "dataset", "make_optimizer": "engine",
    "find_resume": "checkpoints", "save_checkpoint": "checkpoints",
    "data_fingerprint": "checkpoints",
}  # fmt: skip
__getattr__ = lazy_exports(__name__, EXPORTS)
__all__ = sorted(EXPORTS)
