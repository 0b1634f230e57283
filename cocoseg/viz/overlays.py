"""Annotations drawn onto images (`overlay`, for every figure): a fixed colour per class, masks,
boxes, and labels that never cover one another (`place_labels` leaves the least important out)."""

from __future__ import annotations

import io
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pycocotools import mask as mask_utils

from cocoseg.common.io import write_bytes

Color = tuple[int, int, int]
Rect = tuple[float, float, float, float]  # left, top, right, bottom (right/bottom exclusive)

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
    (213, 94, 0), (86, 180, 233), (240, 228, 66), (127, 60, 141), (17, 165, 121), (57, 105, 172),
    (242, 183, 1), (231, 63, 116), (128, 186, 90), (230, 131, 16), (0, 134, 149), (207, 28, 144),
]  # fmt: skip
UNKNOWN_COLOR: Color = (128, 128, 128)
MASK_ALPHA = 0.45
CROWD_ALPHA = 0.25
# zlib level for every PNG we write: level 1 is 2-8x faster than the default (or optimize)
# on photos and makes files under 10% larger, since photo pixels hardly compress anyway.
PNG_COMPRESS_LEVEL = 1


def class_colors(names: Sequence[str]) -> dict[str, Color]:
    """A fixed, distinct RGB colour per class name: known classes by name, others in order."""
    colors = {name: FIXED_COLORS[name] for name in names if name in FIXED_COLORS}
    spare = [c for c in SPARE_COLORS if c not in colors.values()]
    for name in names:
        if name not in colors:
            colors[name] = spare.pop(0) if spare else _hash_color(name)
    return colors


def _hash_color(name: str) -> Color:
    """A stable colour derived from the name, for when the palette runs out."""
    h = zlib.crc32(name.encode("utf-8"))
    return (64 + h % 160, 64 + (h >> 8) % 160, 64 + (h >> 16) % 160)


def ann_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Decode a COCO segmentation (polygons, list-count RLE or string-count RLE) to bool HxW."""
    if isinstance(segmentation, dict):  # string counts decode as they are, list counts compress
        compressed = isinstance(segmentation.get("counts"), (str, bytes))
        rle = segmentation if compressed else mask_utils.frPyObjects(segmentation, height, width)
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


def _edge(mask: np.ndarray) -> np.ndarray:
    """The mask's one-pixel inner outline."""
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:] & mask
    return mask & ~inner


def _paint_mask(canvas: np.ndarray, mask: np.ndarray, color: Color, crowd: bool) -> None:
    """Blend the mask into canvas (float HxWx3) in place; crowds hatched and dimmer."""
    alpha = CROWD_ALPHA if crowd else MASK_ALPHA
    if crowd:  # diagonal stripes 4 px wide
        mask = mask & (np.indices(mask.shape).sum(axis=0) // 4 % 2 == 0)
    rgb = np.asarray(color, dtype=np.float32)
    canvas[mask] = canvas[mask] * (1 - alpha) + rgb * alpha
    if not crowd:
        canvas[_edge(mask)] = rgb


def _area(ann: Mapping[str, Any]) -> float:
    """The annotation's area, or its box's when it has none."""
    area = ann.get("area")
    if area is None and "bbox" in ann:
        area = float(ann["bbox"][2]) * float(ann["bbox"][3])
    return float(area or 0)


class Label(NamedTuple):
    """A label's text, the colour of its tab and where it goes (None: no free spot)."""

    text: str
    color: Color
    rect: Rect | None


def _text_fill(color: Color) -> Color:
    """Black or white, whichever reads better on `color`."""
    luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    return (0, 0, 0) if luminance > 150 else (255, 255, 255)


def label_spots(box: Sequence[float], size: tuple[float, float]) -> list[Rect]:
    """Where a label of size (w, h) may go for an xywh box, best first: above the box, inside
    its top, below it; each flush left, then flush right. Every spot touches the box."""
    x, y, w, h = (float(v) for v in box)
    lw, lh = size
    return [
        (left, top, left + lw, top + lh) for top in (y - lh, y, y + h) for left in (x, x + w - lw)
    ]


def _overlap(a: Rect, b: Rect) -> bool:
    """Whether two rectangles share any area (touching edges do not count)."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_labels(
    boxes: Sequence[Sequence[float]], sizes: Sequence[tuple[float, float]], width: int, height: int
) -> list[Rect | None]:
    """A spot per label, greedily in the given (priority) order: the first of its `label_spots`,
    shifted sideways into the image, inside it and over no earlier label; None when none is."""
    placed: list[Rect] = []
    spots: list[Rect | None] = []
    for box, (lw, lh) in zip(boxes, sizes, strict=True):
        for left, top, _, _ in label_spots(box, (lw, lh)):
            left = min(max(left, 0.0), width - lw)
            rect = (left, top, left + lw, top + lh)
            inside = left >= 0 and top >= 0 and rect[3] <= height
            if inside and not any(_overlap(rect, other) for other in placed):
                placed.append(rect)
                break
        else:
            rect = None
        spots.append(rect)
    return spots


def _label_style(width: int, height: int) -> tuple[Any, int, int]:
    """(font, box line width, tab padding) scaled to the image's shorter side."""
    short = min(width, height)
    size = max(10, round(short / 24))
    return ImageFont.load_default(size=size), max(2, round(short / 200)), max(1, size // 6)


def layout_labels(
    anns: Sequence[Mapping[str, Any]],
    categories: Mapping[int, str],
    colors: Mapping[str, Color],
    width: int,
    height: int,
) -> list[Label]:
    """The labels of the boxed annotations, most important first, placed without overlap."""
    font, _, pad = _label_style(width, height)
    _, ascent_top, _, descent_bottom = font.getbbox("Ag")
    text_h = descent_bottom - ascent_top
    boxed = [a for a in anns if "bbox" in a]
    # Objects before crowds, then the best score, then the biggest area.
    boxed.sort(key=lambda a: (bool(a.get("iscrowd")), -float(a.get("score", 1.0)), -_area(a)))
    texts, tab_colors, sizes = [], [], []
    for ann in boxed:
        name = categories.get(ann["category_id"], f"id {ann['category_id']}")
        score = f" {float(ann['score']):.2f}" if "score" in ann else ""  # a prediction's
        texts.append(name + score + (" (crowd)" if ann.get("iscrowd") else ""))
        tab_colors.append(colors.get(name, UNKNOWN_COLOR))
        left, _, right, _ = font.getbbox(texts[-1])
        sizes.append((right - left + 2 * pad, text_h + 2 * pad))
    rects = place_labels([a["bbox"] for a in boxed], sizes, width, height)
    return [Label(*parts) for parts in zip(texts, tab_colors, rects, strict=True)]


def overlay(
    image: np.ndarray,
    anns: list[dict],
    categories: dict[int, str],
    *,
    colors: Mapping[str, Color] | None = None,
) -> np.ndarray:
    """A copy of image (HxWx3 uint8) with each annotation's mask (crowds hatched and dimmer), box
    and label ("name 0.87" for a prediction) drawn; unknown category ids are grey."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"overlay expects an HxWx3 image, got shape {image.shape}")
    if not anns:
        return image.copy()
    height, width = image.shape[:2]
    colors = dict(colors) if colors is not None else class_colors(list(categories.values()))
    canvas = image.astype(np.float32)
    # Big objects first so small ones stay visible; among predictions, best score last.
    order = sorted(anns, key=lambda a: (-_area(a), float(a.get("score", 0))))
    names = [categories.get(a["category_id"], f"id {a['category_id']}") for a in order]
    tints = [colors.get(name, UNKNOWN_COLOR) for name in names]
    for ann, tint in zip(order, tints, strict=True):
        if ann.get("segmentation") is not None:
            mask = ann_mask(ann["segmentation"], height, width)
            _paint_mask(canvas, mask, tint, bool(ann.get("iscrowd")))
    out = Image.fromarray(np.clip(canvas, 0, 255).round().astype(np.uint8))
    draw = ImageDraw.Draw(out)
    font, line, pad = _label_style(width, height)
    for ann, tint in zip(order, tints, strict=True):
        if "bbox" in ann:
            x, y, w, h = (float(v) for v in ann["bbox"])
            box_line = max(1, line // 2) if ann.get("iscrowd") else line
            corners = [x, y, x + max(w - 1, 0), y + max(h - 1, 0)]
            draw.rectangle(corners, outline=tint, width=box_line)
    # Each label: a tab of its colour at its spot, the text in black or white on it.
    text_left, text_top, _, _ = font.getbbox("Ag")
    for label in layout_labels(order, categories, colors, width, height):
        if label.rect is not None:
            left, top, right, bottom = label.rect
            draw.rectangle([left, top, right - 1, bottom - 1], fill=label.color)
            origin = (left + pad - text_left, top + pad - text_top)
            draw.text(origin, label.text, fill=_text_fill(label.color), font=font)
    return np.asarray(out)


def save_png(path: str | Path, image: np.ndarray) -> None:
    """Write an HxWx3 uint8 array as PNG, atomically (fast zlib level, see above)."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(
        buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL
    )
    write_bytes(path, buf.getvalue())
