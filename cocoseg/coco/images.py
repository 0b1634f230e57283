"""The one image reader: whole decode, errors naming the file, every PIL mode to 8-bit RGB (PIL's
`convert("RGB")` clips 16-bit gray and drops transparency), in the frame `turned` picks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import ExifTags, Image, ImageOps

from cocoseg.common.errors import DataError, os_fault_message

T = TypeVar("T")
Size = tuple[int, int]  # (width, height), as PIL and COCO's image records give it
# An image to read: (image id, path, the (width, height) its annotation records, or None).
ImageItem = tuple[int, Path, Size | None]

# Transparent pixels are composited onto white, as an image viewer or a browser shows them.
BACKGROUND = (255, 255, 255)
SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
WITH_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
# EXIF orientations 2-8 say how to turn the stored pixels for display; 5-8 swap width and height.
TURNED = range(2, 9)
SWAPS_AXES = range(5, 9)


def orientation(im: Image.Image) -> int:
    """The image's EXIF Orientation (Pillow reads a corrupt EXIF block as empty): 1 without one."""
    return im.getexif().get(ExifTags.Base.Orientation, 1)


def shown_size(im: Image.Image) -> Size:
    """The (width, height) a viewer shows: the stored size, swapped by EXIF orientations 5-8."""
    return (im.height, im.width) if orientation(im) in SWAPS_AXES else im.size


def turned(im: Image.Image, path: str | Path, what: str, recorded: Size | None) -> bool:
    """Whether to read the image EXIF-oriented rather than as stored: a user's photo (recorded None)
    as a viewer shows it; an annotated one in the frame whose (width, height) its record holds, as
    stored first. A size matching neither raises DataError naming the file and both sizes."""
    oriented = orientation(im) in TURNED
    if recorded is None:
        return oriented
    recorded = (int(recorded[0]), int(recorded[1]))
    if recorded == im.size:
        return False
    shown = shown_size(im)
    if oriented and recorded == shown:
        return True
    stored = f"{im.width}x{im.height}"
    if shown != im.size:
        stored += f" ({shown[0]}x{shown[1]} as its EXIF orientation shows it)"
    raise DataError(
        f"{path}: {what} is {stored} but its annotation record says {recorded[0]}x{recorded[1]}; "
        "masks would not line up"
    )


def _decoded(
    path: str | Path,
    what: str,
    use: Callable[[Image.Image, bool], T],
    recorded: Size | None,
) -> T:
    """`use(image, turned(...))` of the whole decoded image (not just its header); a missing or
    undecodable file raises DataError naming the path and `what`."""
    try:
        with Image.open(path) as im:
            im.load()
            return use(im, turned(im, path, what, recorded))
    except FileNotFoundError:
        raise DataError(f"{path}: {what} file not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        if isinstance(err, OSError) and err.errno is not None:  # the file system, not the data
            raise DataError(os_fault_message(err, path)) from None
        raise DataError(
            f"{path}: {what} does not decode (cannot decode as an image: {err})"
        ) from None


def decode_image(
    path: str | Path, what: str = "image", recorded: Size | None = None
) -> tuple[str, Size]:
    """Check that the whole image decodes (in the frame `turned` picks for `recorded`); return
    (PIL mode, (width, height) in that frame)."""
    return _decoded(path, what, _mode_and_size, recorded)


def read_rgb(path: str | Path, what: str = "image", recorded: Size | None = None) -> np.ndarray:
    """The image as HxWx3 uint8 RGB, whatever its mode (`to_rgb`), in the frame `turned` picks."""
    return _decoded(path, what, _rgb, recorded)


def _mode_and_size(im: Image.Image, turn: bool) -> tuple[str, Size]:
    return im.mode, shown_size(im) if turn else im.size


def _rgb(im: Image.Image, turn: bool) -> np.ndarray:
    return to_rgb(ImageOps.exif_transpose(im) if turn else im)


def to_rgb(im: Image.Image) -> np.ndarray:
    """HxWx3 uint8 RGB from any PIL mode: 16-bit gray by its depth (65535 -> 255), as is 32-bit
    gray (`I`) that fits 16 bits; float gray (`F`) x255 within [0, 1]; other gray by its range.
    Transparency is composited onto BACKGROUND; other modes use PIL's conversion."""
    if im.mode in SIXTEEN_BIT_MODES | {"I", "F"}:
        values = np.asarray(im).astype(np.float64)
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if im.mode in SIXTEEN_BIT_MODES or (im.mode == "I" and low >= 0 and high <= 65535):
            scaled = values / 65535.0
        elif im.mode == "F" and low >= 0 and high <= 1:
            scaled = values
        else:
            scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
        gray = np.round(np.clip(scaled, 0, 1) * 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if im.mode in WITH_ALPHA_MODES or (im.mode in ("P", "L", "RGB") and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32)
        alpha = rgba[..., 3:] / 255.0
        blended = rgba[..., :3] * alpha + np.asarray(BACKGROUND, np.float32) * (1 - alpha)
        return np.round(blended).astype(np.uint8)
    return np.asarray(im.convert("RGB"))
