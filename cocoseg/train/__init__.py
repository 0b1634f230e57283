"""Stage train: fine-tune Mask R-CNN on data/subset, resumable, one process or torchrun."""

from cocoseg.core import lazy_exports

EXPORTS = {
    "train": "engine", "coco_dataset": "dataset", "build_transforms": "transforms",
    "PRESETS": "transforms", "train_loader": "dataset", "make_optimizer": "engine",
    "find_resume": "checkpoints", "save_checkpoint": "checkpoints",
    "data_fingerprint": "checkpoints",
}  # fmt: skip
__getattr__ = lazy_exports(__name__, EXPORTS)
__all__ = sorted(EXPORTS)
