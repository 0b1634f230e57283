"""COCO facts, each defined once: file names, split names, COCOeval's object-size ranges."""

from __future__ import annotations

from cocoseg.common.errors import DataError

# COCO-2017's annotation files, by the image folder (source) they describe.
ANNOTATION_FILES = {
    "train2017": "instances_train2017.json",
    "val2017": "instances_val2017.json",
    "test2017": "image_info_test2017.json",
}
# The zip archive on COCO's server that holds each annotation file.
ARCHIVES = {
    "instances_train2017.json": "annotations_trainval2017.zip",
    "instances_val2017.json": "annotations_trainval2017.zip",
    "image_info_test2017.json": "image_info_test2017.zip",
}
LABELLED_SOURCES = ("train2017", "val2017")
# The subset's splits (data/subset/annotations/<split>.json); test has no annotations.
SPLITS = ("train", "val", "test")
LABELLED_SPLITS = ("train", "val")

# COCOeval's Params.areaRng with its labels: an object is in a range when lo <= area <= hi.
AREA_RANGES = {
    "all": (0.0, 1e5**2),
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, 1e5**2),
}
SIZE_NAMES = ("small", "medium", "large")


def size_name(area: float) -> str:
    """small/medium/large of an annotation's "area": COCOeval's closed ranges share their ends,
    and the first match puts those in the smaller: small <= 32² < medium <= 96² < large."""
    for name in SIZE_NAMES:
        lo, hi = AREA_RANGES[name]
        if lo <= area <= hi:
            return name
    raise DataError(f"object area {area!r} is outside COCO's area ranges [0, 1e10]")
