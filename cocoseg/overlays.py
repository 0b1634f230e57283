"""Drawing annotations onto images: a fixed colour per class, masks, boxes and labels.

`overlay` is what every figure with images uses (predict's overlays and contact sheet, the
EDA samples, evaluate's samples and worst images). PNGs are written atomically through
`cocoseg.io`.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pycocotools import mask as mask_utils

from cocoseg.io import write_bytes

Color = tuple[int, int, int]

# Okabe-Ito colours (colour-blind safe) for the project's classes, fixed by name so that
# "person" looks the same in every figure whatever the class order.
FIXED_COLORS: dict[str, Color] = {
    "person": (0, 114, 178),
    "cat": (230, 159, 0),
    "sports ball": (0, 158, 115),
    "book": (204, 121, 167),
}
# Handed out, in order, to any other class names.
SPARE_COLORS: list[Color] = [
    (213, 94, 0),
    (86, 180, 233),
    (240, 228, 66),
    (127, 60, 141),
    (17, 165, 121),
    (57, 105, 172),
    (242, 183, 1),
    (231, 63, 116),
    (128, 186, 90),
    (230, 131, 16),
    (0, 134, 149),
    (207, 28, 144),
]
UNKNOWN_COLOR: Color = (128, 128, 128)
MASK_ALPHA = 0.45
CROWD_ALPHA = 0.25
# zlib level for every PNG we write: level 1 is 2-8x faster than the default (or optimize)
# on photos and makes files under 10% larger, since photo pixels hardly compress anyway.
PNG_COMPRESS_LEVEL = 1


def class_colors(names: Sequence[str]) -> dict[str, Color]:
    """A fixed, distinct RGB colour per class name: known classes by name, others in order."""
    colors: dict[str, Color] = {}
    used = set()
    for name in names:
        if name in FIXED_COLORS:
            colors[name] = FIXED_COLORS[name]
            used.add(FIXED_COLORS[name])
    spare = [c for c in SPARE_COLORS if c not in used]
    for name in names:
        if name in colors:
            continue
        colors[name] = spare.pop(0) if spare else _hash_color(name)
    return colors


def _hash_color(name: str) -> Color:
    """A stable colour derived from the name, for when the palette runs out."""
    h = zlib.crc32(name.encode("utf-8"))
    return (64 + h % 160, 64 + (h >> 8) % 160, 64 + (h >> 16) % 160)


def ann_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Decode a COCO segmentation (polygons, list-count RLE or string-count RLE) to bool HxW."""
    if isinstance(segmentation, dict):
        counts = segmentation.get("counts")
        if isinstance(counts, (str, bytes)):
            rle = dict(segmentation)
        else:
            rle = mask_utils.frPyObjects(segmentation, height, width)
    elif isinstance(segmentation, list):
        # Fewer than 3 points has no area (and 2 points would be misread as a box).
        polys = [p for p in segmentation if len(p) >= 6]
        if not polys:
            return np.zeros((height, width), dtype=bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    else:
        raise ValueError(f"unsupported segmentation of type {type(segmentation).__name__}")
    mask = mask_utils.decode(rle).astype(bool)
    if mask.shape != (height, width):
        raise ValueError(
            f"segmentation is {mask.shape[1]}x{mask.shape[0]} but the image is {width}x{height}"
        )
    return mask


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font at `size` pixels (bitmap fallback without FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _edge(mask: np.ndarray) -> np.ndarray:
    """The mask's one-pixel inner outline."""
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:] & mask
    return mask & ~inner


def _paint_mask(canvas: np.ndarray, mask: np.ndarray, color: Color, crowd: bool) -> None:
    """Blend the mask into canvas (float HxWx3) in place; crowds hatched and dimmer."""
    if crowd:
        h, w = mask.shape
        yy, xx = np.mgrid[0:h, 0:w]
        mask = mask & (((xx + yy) // 4) % 2 == 0)
        alpha = CROWD_ALPHA
    else:
        alpha = MASK_ALPHA
    rgb = np.asarray(color, dtype=np.float32)
    canvas[mask] = canvas[mask] * (1 - alpha) + rgb * alpha
    if not crowd:
        canvas[_edge(mask)] = rgb


def _label_text(ann: Mapping[str, Any], name: str) -> str:
    """Class name, plus score when the annotation is a prediction, plus a crowd marker."""
    text = name
    if "score" in ann:
        text += f" {float(ann['score']):.2f}"
    if ann.get("iscrowd"):
        text += " (crowd)"
    return text


def _text_fill(color: Color) -> Color:
    """Black or white, whichever reads better on `color`."""
    luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    return (0, 0, 0) if luminance > 150 else (255, 255, 255)


def _draw_box_and_label(
    draw: ImageDraw.ImageDraw,
    box: Sequence[float],
    text: str,
    color: Color,
    *,
    line: int,
    font: Any,
    crowd: bool,
) -> None:
    """Outline the xywh box and put the label on a tab of the class colour above it."""
    x, y, w, h = (float(v) for v in box)
    width = max(1, line // 2) if crowd else line
    draw.rectangle([x, y, x + max(w - 1, 0), y + max(h - 1, 0)], outline=color, width=width)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    tw, th = right - left, bottom - top
    pad = max(1, th // 5)
    ty = y - th - 2 * pad if y - th - 2 * pad >= 0 else y
    draw.rectangle([x, ty, x + tw + 2 * pad, ty + th + 2 * pad], fill=color)
    draw.text((x + pad - left, ty + pad - top), text, fill=_text_fill(color), font=font)


def _draw_order(ann: Mapping[str, Any]) -> tuple[float, float]:
    """Big objects first so small ones stay visible; among predictions, best score last."""
    area = ann.get("area")
    if area is None and "bbox" in ann:
        area = float(ann["bbox"][2]) * float(ann["bbox"][3])
    return (-float(area or 0), float(ann.get("score", 0)))


def overlay(
    image: np.ndarray,
    anns: list[dict],
    categories: dict[int, str],
    *,
    colors: Mapping[str, Color] | None = None,
) -> np.ndarray:
    """A copy of image (HxWx3 uint8) with each annotation's mask, box and label drawn.

    Masks are semi-transparent with a solid outline; crowd regions are hatched and dimmer.
    Predictions (with "score") are labelled "name 0.87". Unknown category ids are grey.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"overlay expects an HxWx3 image, got shape {image.shape}")
    if not anns:
        return image.copy()
    height, width = image.shape[:2]
    colors = dict(colors) if colors is not None else class_colors(list(categories.values()))
    canvas = image.astype(np.float32)
    order = sorted(anns, key=_draw_order)
    for ann in order:
        name = categories.get(ann["category_id"], f"id {ann['category_id']}")
        if ann.get("segmentation") is not None:
            mask = ann_mask(ann["segmentation"], height, width)
            _paint_mask(canvas, mask, colors.get(name, UNKNOWN_COLOR), bool(ann.get("iscrowd")))
    out = Image.fromarray(np.clip(canvas, 0, 255).round().astype(np.uint8))
    draw = ImageDraw.Draw(out)
    short = min(height, width)
    font, line = _font(max(10, round(short / 24))), max(2, round(short / 200))
    for ann in order:
        if "bbox" not in ann:
            continue
        name = categories.get(ann["category_id"], f"id {ann['category_id']}")
        _draw_box_and_label(
            draw,
            ann["bbox"],
            _label_text(ann, name),
            colors.get(name, UNKNOWN_COLOR),
            line=line,
            font=font,
            crowd=bool(ann.get("iscrowd")),
        )
    return np.asarray(out)


def save_png(path: str | Path, image: np.ndarray) -> None:
    """Write an HxWx3 uint8 array as PNG, atomically (fast zlib level, see above)."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(
        buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL
    )
    write_bytes(path, buf.getvalue())
