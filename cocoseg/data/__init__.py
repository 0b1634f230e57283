"""Stages download, subset and eda: COCO's annotation files -> data/subset -> its figures."""

from cocoseg.core import lazy_exports

EXPORTS = {
    "ensure_annotations": "archives", "download_file": "download", "read_coco": "cocofile",
    "make_subset": "subset", "place_images": "placing", "run_eda": "eda",
}  # fmt: skip
__getattr__ = lazy_exports(__name__, EXPORTS)
__all__ = sorted(EXPORTS)
