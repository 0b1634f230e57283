"""The one image reader (`read_rgb`, `decode_image`): whole decode, errors name the file, every
PIL mode to 8-bit RGB (PIL's `convert("RGB")` clips 16-bit gray to white, drops transparency)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from cocoseg.common.errors import DataError, os_fault_message

T = TypeVar("T")

# Transparent pixels are composited onto white, as an image viewer or a browser shows them.
BACKGROUND = (255, 255, 255)
SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
WITH_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}


def _decoded(path: str | Path, what: str, use: Callable[[Image.Image], T]) -> T:
    """`use(image)` of the whole decoded image (not just its header); a missing or undecodable
    file raises DataError naming the path and `what` it is."""
    try:
        with Image.open(path) as im:
            im.load()
            return use(im)
    except FileNotFoundError:
        raise DataError(f"{path}: {what} file not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        if isinstance(err, OSError) and err.errno is not None:  # the file system, not the data
            raise DataError(os_fault_message(err, path)) from None
        raise DataError(
            f"{path}: {what} does not decode (cannot decode as an image: {err})"
        ) from None


def decode_image(path: str | Path, what: str = "image") -> tuple[str, tuple[int, int]]:
    """Check that the whole image decodes; return (PIL mode, (width, height))."""
    return _decoded(path, what, lambda im: (im.mode, im.size))


def read_rgb(path: str | Path, what: str = "image") -> np.ndarray:
    """The image as HxWx3 uint8 RGB, whatever its mode (see `to_rgb`)."""
    return _decoded(path, what, to_rgb)


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
