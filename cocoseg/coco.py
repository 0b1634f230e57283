"""COCO facts the reports share: COCOeval's object-size ranges, defined once."""

from __future__ import annotations

from cocoseg.errors import DataError

# COCOeval's Params.areaRng with its labels: an object is in a range when lo <= area <= hi.
AREA_RANGES = {
    "all": (0.0, 1e5**2),
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, 1e5**2),
}
SIZE_NAMES = ("small", "medium", "large")


def size_name(area: float) -> str:
    """The first of small/medium/large whose closed range holds `area` (an annotation's "area").

    COCOeval's ranges share their ends, so 32² and 96² lie in two; the first match puts them
    in the smaller bucket: small <= 32² < medium <= 96² < large.
    """
    for name in SIZE_NAMES:
        lo, hi = AREA_RANGES[name]
        if lo <= area <= hi:
            return name
    raise DataError(f"object area {area!r} is outside COCO's area ranges [0, 1e10]")
