"""Stage predict: the trained model over test images or a folder, to results and overlays.
The inference path itself is core's (cocoseg.core.inference), shared with infer and train."""

from cocoseg.core import lazy_exports

EXPORTS = {
    "predict": "outputs", "prepare_output": "outputs",
}  # fmt: skip
__getattr__ = lazy_exports(__name__, EXPORTS)
__all__ = sorted(EXPORTS)
