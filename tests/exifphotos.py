"""Photos stored the way cameras store them: pixels in the sensor's frame plus an EXIF Orientation
tag (1-8) saying how a viewer turns them. `stored` is written from the EXIF spec's wording of
where the stored 0th row and column end up on screen, not with PIL, so tests check PIL's use."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

ORIENTATION_TAG = 0x0112
RED = (220, 30, 30)
GRAY = (128, 128, 128)
# How to get the stored pixels from the shown ones (each the inverse of what a viewer does):
# 2 shown mirrored left-right, 3 turned 180, 4 mirrored top-bottom, 5 transposed (0th row shown
# as the left column), 6 turned 90 clockwise to show, 7 anti-transposed, 8 turned 90 anti-clockwise.
STORE: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    1: lambda a: a,
    2: np.fliplr,
    3: lambda a: np.rot90(a, 2),
    4: np.flipud,
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, 1),  # a viewer turns it back clockwise
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, -1),
}


def photo(width: int = 48, height: int = 80, box: tuple[int, int, int, int] = (8, 16, 24, 40)):
    """(shown pixels HxWx3, the object's mask HxW): a red rectangle (x0, y0, x1, y1) on gray, off
    centre so every flip and turn moves it. Edges on 8-px blocks: JPEG keeps them exact."""
    shown = np.empty((height, width, 3), np.uint8)
    shown[:] = GRAY
    x0, y0, x1, y1 = box
    shown[y0:y1, x0:x1] = RED
    mask = np.zeros((height, width), bool)
    mask[y0:y1, x0:x1] = True
    return shown, mask


def stored(shown: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels a camera stores for what a viewer shows as `shown` under `orientation`."""
    return np.ascontiguousarray(STORE[orientation](shown))


def save_oriented(path: Path, shown: np.ndarray, orientation: int) -> Path:
    """A JPEG (exact at 8-px block edges: quality 95, no chroma subsampling) tagged `orientation`
    whose viewer frame is `shown`."""
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    image = Image.fromarray(stored(shown, orientation))
    image.save(path, exif=exif, quality=95, subsampling=0)
    return path
