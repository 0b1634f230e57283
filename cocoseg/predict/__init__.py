"""Stages infer and predict: the trained model over images, to COCO results and overlays.

Public: predict_images, run_trained_model (inference: the one fast path); predict,
prepare_output (outputs).
"""

from cocoseg.core.exports import lazy_exports

EXPORTS = {
    "predict_images": "inference", "run_trained_model": "inference",
    "predict": "outputs", "prepare_output": "outputs",
}  # fmt: skip
__getattr__ = lazy_exports(__name__, EXPORTS)
__all__ = sorted(EXPORTS)
