"""Stage evaluate: score saved predictions (COCO mAP, IoU, Dice, P/R/F1) and explain errors."""

from cocoseg.core import lazy_exports

EXPORTS = {
    "match": "matching", "evaluate": "metrics", "load_ground_truth": "metrics",
    "load_predictions": "metrics", "analyse": "error_analysis", "write_reports": "reports",
}  # fmt: skip
__getattr__ = lazy_exports(__name__, EXPORTS)
__all__ = sorted(EXPORTS)
