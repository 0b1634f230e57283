"""Drawing: a fixed colour per class, mask/box/label overlays, comparison grids, contact sheets.

Figures are built on `matplotlib.figure.Figure` (the Agg canvas) and never touch pyplot,
so importing this module changes no global backend and works headless. PNGs are written
atomically through `cocoseg.io`.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
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
FIG_DPI = 120
# A fixed colour per outcome of the error analysis (cocoseg.error_analysis), for every figure.
OUTCOME_COLORS: dict[str, Color] = {
    "true positive": (0, 158, 115),
    "localisation": (230, 159, 0),
    "classification": (86, 180, 233),
    "duplicate": (204, 121, 167),
    "background": (240, 228, 66),
    "missed": (213, 94, 0),
    "ignored (crowd)": (128, 128, 128),
}
# Missed ground truths by size in bar charts: the missed colour, paler for smaller objects.
MISSED_SHADES = {"missed_small": 0.55, "missed_medium": 0.3, "missed_large": 0.0}


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


def mpl_color(color: Color) -> tuple[float, float, float]:
    """An 8-bit RGB colour as matplotlib's 0..1 floats."""
    return (color[0] / 255, color[1] / 255, color[2] / 255)


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
    """Write an HxWx3 uint8 array as PNG, atomically."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG", optimize=True)
    write_bytes(path, buf.getvalue())


def save_figure(fig: Figure, path: str | Path, *, dpi: int = FIG_DPI) -> None:
    """Render a matplotlib Figure to PNG and write it atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    write_bytes(path, buf.getvalue())


def legend_handles(colors: Mapping[str, Color]) -> list[Patch]:
    """One coloured square per class, for figure legends."""
    return [Patch(facecolor=mpl_color(c), edgecolor="none", label=n) for n, c in colors.items()]


def _add_class_legend(fig: Figure, colors: Mapping[str, Color]) -> None:
    """A one-line class legend under the figure's top edge."""
    if colors:
        fig.legend(
            handles=legend_handles(colors),
            loc="upper center",
            ncol=min(len(colors), 6),
            frameon=False,
            bbox_to_anchor=(0.5, 1.0),
            fontsize=11,
        )


def _show(ax: Any, image: np.ndarray, title: str | None = None) -> None:
    """imshow without ticks or frame, with an optional title."""
    ax.imshow(image)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=10)


def _note(ax: Any, text: str) -> None:
    """A boxed note in the middle of a panel."""
    ax.text(
        0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=11,
        bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "none", "pad": 4},
    )  # fmt: skip


def note_figure(text: str, path: str | Path) -> None:
    """A small PNG that only says `text` (a declared figure with nothing to show)."""
    fig = Figure(figsize=(6, 1.2))
    _note(fig.subplots(), text)
    fig.axes[0].set_axis_off()
    save_figure(fig, path)


def comparison_grid(
    rows: list[tuple[np.ndarray, list[dict], list[dict]]],
    categories: dict[int, str],
    path: str | Path,
    *,
    titles: tuple[str, str] = ("ground truth", "prediction"),
    row_labels: Sequence[str] | None = None,
    colors: Mapping[str, Color] | None = None,
    legend: Mapping[str, Color] | None = None,
    no_prediction: str = "no detection",
) -> None:
    """PNG with one row per image: its ground truth beside its prediction, and a legend.

    By default each class has its `class_colors` colour and the legend lists the classes;
    `colors` (by category name) and `legend` (label -> colour) override both. A prediction
    panel with nothing to draw says `no_prediction`, so it is not mistaken for a glitch.
    """
    if not rows:
        raise ValueError("comparison_grid needs at least one row")
    colors = dict(colors) if colors is not None else class_colors(list(categories.values()))
    panel_w = 4.5
    heights = [panel_w * img.shape[0] / img.shape[1] + 0.3 for img, _, _ in rows]
    fig = Figure(figsize=(2 * panel_w, sum(heights) + 0.6))
    axes = fig.subplots(len(rows), 2, squeeze=False, gridspec_kw={"height_ratios": heights})
    for r, (image, gt, pred) in enumerate(rows):
        prefix = f"{row_labels[r]}: " if row_labels else ""
        _show(axes[r][0], overlay(image, gt, categories, colors=colors), prefix + titles[0])
        _show(axes[r][1], overlay(image, pred, categories, colors=colors), prefix + titles[1])
        if not pred:
            _note(axes[r][1], no_prediction)
    fig.subplots_adjust(
        left=0.01, right=0.99, bottom=0.01, top=1 - 0.6 / fig.get_figheight(), hspace=0.12
    )
    _add_class_legend(fig, colors if legend is None else legend)
    save_figure(fig, path)


def contact_sheet(
    images: list[np.ndarray],
    captions: list[str],
    path: str | Path,
    *,
    columns: int = 4,
    title: str | None = None,
    colors: Mapping[str, Color] | None = None,
) -> None:
    """PNG grid of images with a caption under each; optional title and class legend."""
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    columns = max(1, min(columns, len(images) or 1))
    n_rows = max(1, -(-len(images) // columns))
    cell = 3.2
    heights = [
        cell
        * max(
            (img.shape[0] / img.shape[1] for img in images[r * columns :][:columns]), default=0.75
        )
        + 0.35
        for r in range(n_rows)
    ]
    header = (0.5 if title else 0) + (0.4 if colors else 0)
    fig = Figure(figsize=(columns * cell, sum(heights) + header))
    axes = fig.subplots(n_rows, columns, squeeze=False, gridspec_kw={"height_ratios": heights})
    for i, ax in enumerate(axes.flat):
        if i < len(images):
            ax.imshow(images[i])
            ax.set_xlabel(captions[i], fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        else:
            ax.set_axis_off()
    if not images:
        axes[0][0].text(0.5, 0.5, "no images", ha="center", va="center", fontsize=14)
    top = 1 - header / fig.get_figheight()
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=top, wspace=0.05, hspace=0.15)
    if title:
        fig.suptitle(title, fontsize=14, y=1.0 - 0.05 / fig.get_figheight(), va="top")
    if colors:
        fig.legend(
            handles=legend_handles(colors),
            loc="upper center",
            ncol=min(len(colors), 6),
            frameon=False,
            bbox_to_anchor=(0.5, 1 - (0.5 if title else 0) / fig.get_figheight()),
            fontsize=10,
        )
    save_figure(fig, path)


def _outcome_name(class_name: str, outcome: str) -> str:
    """The label an outcome is drawn under: the class alone for a TP, else 'class: outcome'."""
    if outcome == "true positive":
        return class_name
    return f"{class_name}: {outcome.removesuffix(' (crowd)')}"


def _by_outcome(anns: list[dict], names: dict[tuple[int, str], int]) -> list[dict]:
    """Annotation copies whose category id stands for (class, outcome), ids taken from names."""
    return [
        {**a, "category_id": names.setdefault((a["category_id"], a["outcome"]), len(names) + 1)}
        for a in anns
    ]


def error_grid(
    rows: list[tuple[np.ndarray, list[dict], list[dict]]],
    categories: dict[int, str],
    path: str | Path,
    *,
    row_labels: Sequence[str] | None = None,
) -> None:
    """`comparison_grid` of ground truth beside predictions, coloured by error outcome.

    Each annotation carries an `outcome` (a key of OUTCOME_COLORS, as
    `error_analysis.image_outcomes` gives them); the legend lists the outcomes.
    """
    names: dict[tuple[int, str], int] = {}
    recoded = [
        (image, _by_outcome(gts, names), _by_outcome(preds, names)) for image, gts, preds in rows
    ]
    labels = {
        new_id: _outcome_name(categories.get(cat_id, f"id {cat_id}"), outcome)
        for (cat_id, outcome), new_id in names.items()
    }
    colors = {
        labels[new_id]: OUTCOME_COLORS.get(outcome, UNKNOWN_COLOR)
        for (_, outcome), new_id in names.items()
    }
    comparison_grid(
        recoded, labels, path, row_labels=row_labels, colors=colors, legend=OUTCOME_COLORS
    )


def _shade(color: Color, towards_white: float) -> tuple[float, float, float]:
    """An 8-bit colour blended towards white by the given fraction, as matplotlib floats."""
    r, g, b = (c + (1 - c) * towards_white for c in mpl_color(color))
    return (r, g, b)


def error_type_color(error_type: str) -> tuple[float, float, float]:
    """The matplotlib colour of an error type (missed_<size> as shades of missed)."""
    if error_type in MISSED_SHADES:
        return _shade(OUTCOME_COLORS["missed"], MISSED_SHADES[error_type])
    return mpl_color(OUTCOME_COLORS.get(error_type, UNKNOWN_COLOR))


def error_bars(
    rows: Sequence[Mapping[str, Any]], error_types: Sequence[str], path: str | Path
) -> None:
    """PNG of one horizontal bar per class ('class' key), stacked by error type counts."""
    if not rows:
        raise ValueError("error_bars needs at least one class row")
    fig = Figure(figsize=(8, 1.2 + 0.45 * len(rows)))
    ax = fig.subplots()
    labels = [str(r["class"]) for r in rows]
    left = np.zeros(len(rows))
    for error_type in error_types:
        counts = np.array([float(r.get(error_type) or 0) for r in rows])
        ax.barh(labels, counts, left=left, color=error_type_color(error_type), label=error_type)
        left += counts
    ax.invert_yaxis()
    ax.set_xlabel("errors")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9)
    save_figure(fig, path)
