"""Figures (comparison grids, contact sheets, error charts) built on `cocoseg.viz.overlays`, on
matplotlib's `Figure`, never pyplot: importing this sets no global backend and works headless."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from cocoseg.common.io import write_bytes
from cocoseg.viz.overlays import PNG_COMPRESS_LEVEL, UNKNOWN_COLOR, Color, class_colors, overlay

FIG_DPI = 120
LEGEND_COLUMNS = 6  # entries per legend row above image grids
# A fixed colour per outcome of the error analysis (cocoseg.evaluate.error_analysis), for every
# figure: six distinct Okabe-Ito colours (colour-blind safe), so no two outcomes share a hue.
OUTCOME_COLORS: dict[str, Color] = {
    "true positive": (0, 158, 115),  # bluish green
    "localisation": (240, 228, 66),  # yellow
    "classification": (86, 180, 233),  # sky blue
    "duplicate": (204, 121, 167),  # reddish purple
    "background": (0, 114, 178),  # blue
    "missed": (213, 94, 0),  # vermillion
    "ignored (crowd)": (128, 128, 128),
}
# Missed ground truths by size in errors.png: the missed hue, paler and hatched for smaller
# objects (the EDA's size hatches), so the three read as one family and apart from the rest.
MISSED_STYLES = {
    "missed_small": (0.6, ".."),
    "missed_medium": (0.3, "///"),
    "missed_large": (0.0, ""),
}
MISSED_HATCH_COLOR: Color = (120, 50, 0)
Row = tuple[np.ndarray, list[dict], list[dict]]  # an image, its ground truth, its predictions


def mpl_color(color: Color) -> tuple[float, float, float]:
    """An 8-bit RGB colour as matplotlib's 0..1 floats."""
    return (color[0] / 255, color[1] / 255, color[2] / 255)


def save_figure(fig: Figure, path: str | Path, *, tight: bool = True) -> None:
    """Render a Figure to PNG atomically. `tight` crops to what is drawn but draws twice; a
    figure whose layout already fits (the contact sheet) saves half its time without."""
    buf = io.BytesIO()
    bbox, pil_kwargs = "tight" if tight else None, {"compress_level": PNG_COMPRESS_LEVEL}
    fig.savefig(
        buf, format="png", dpi=FIG_DPI, bbox_inches=bbox, facecolor="white", pil_kwargs=pil_kwargs
    )
    write_bytes(path, buf.getvalue())


def _add_class_legend(
    fig: Figure, colors: Mapping[str, Color], *, top: float = 1.0, fontsize: int = 11
) -> None:
    """A legend of coloured squares centred under `top` (a fraction of the figure's height)."""
    if colors:
        handles = [
            Patch(facecolor=mpl_color(c), edgecolor="none", label=n) for n, c in colors.items()
        ]
        fig.legend(
            handles=handles, loc="upper center", frameon=False, fontsize=fontsize,
            ncol=min(len(colors), LEGEND_COLUMNS), bbox_to_anchor=(0.5, top),
        )  # fmt: skip


def _show(ax: Any, image: np.ndarray, title: str) -> None:
    """imshow without ticks or frame, under a title."""
    ax.imshow(image)
    ax.set_axis_off()
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
    rows: list[Row],
    categories: dict[int, str],
    path: str | Path,
    *,
    title: str | None = None,
    row_labels: Sequence[str] | None = None,
    colors: Mapping[str, Color] | None = None,
    legend: Mapping[str, Color] | None = None,
    no_prediction: str = "no detection",
) -> None:
    """A PNG with one row per image: ground truth beside prediction (an empty one says
    `no_prediction`, not to pass for a glitch); `colors`/`legend` override the class colours."""
    if not rows:
        raise ValueError("comparison_grid needs at least one row")
    colors = dict(colors) if colors is not None else class_colors(list(categories.values()))
    legend = colors if legend is None else legend
    panel_w = 4.5
    heights = [panel_w * img.shape[0] / img.shape[1] + 0.3 for img, _, _ in rows]
    legend_rows = -(-len(legend) // LEGEND_COLUMNS)
    header = (0.45 if title else 0) + 0.3 * legend_rows + 0.25
    fig = Figure(figsize=(2 * panel_w, sum(heights) + header))
    axes = fig.subplots(len(rows), 2, squeeze=False, gridspec_kw={"height_ratios": heights})
    for r, (image, gt, pred) in enumerate(rows):
        prefix = f"{row_labels[r]}: " if row_labels else ""
        _show(axes[r][0], overlay(image, gt, categories, colors=colors), prefix + "ground truth")
        _show(axes[r][1], overlay(image, pred, categories, colors=colors), prefix + "prediction")
        if not pred:
            _note(axes[r][1], no_prediction)
    fig_h = fig.get_figheight()
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - header / fig_h, hspace=0.12)
    if title:
        fig.suptitle(title, fontsize=13, y=1.0 - 0.05 / fig_h, va="top")
    _add_class_legend(fig, legend, top=1 - (0.45 if title else 0) / fig_h)
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
    grid = [images[r * columns :][:columns] for r in range(n_rows)]
    heights = [
        cell * max((i.shape[0] / i.shape[1] for i in row), default=0.75) + 0.35 for row in grid
    ]
    header = (0.5 if title else 0) + (0.4 if colors else 0)
    fig = Figure(figsize=(columns * cell, sum(heights) + header))
    axes = fig.subplots(n_rows, columns, squeeze=False, gridspec_kw={"height_ratios": heights})
    for i, ax in enumerate(axes.flat):
        if i < len(images):
            ax.imshow(images[i])
            ax.set_xlabel(captions[i], fontsize=9)
            ax.set(xticks=[], yticks=[])
        else:
            ax.set_axis_off()
    if not images:
        axes[0][0].text(0.5, 0.5, "no images", ha="center", va="center", fontsize=14)
    fig_h = fig.get_figheight()
    # Saved untrimmed (see save_figure), so the bottom margin leaves room for the captions.
    fig.subplots_adjust(
        left=0.01, right=0.99, bottom=0.3 / fig_h, top=1 - header / fig_h, wspace=0.05, hspace=0.15
    )
    if title:
        fig.suptitle(title, fontsize=14, y=1.0 - 0.05 / fig_h, va="top")
    _add_class_legend(fig, colors or {}, top=1 - (0.5 if title else 0) / fig_h, fontsize=10)
    save_figure(fig, path, tight=False)


def _by_outcome(anns: list[dict], names: dict[tuple[int, str], int]) -> list[dict]:
    """Annotation copies whose category id stands for (class, outcome), ids taken from names."""
    return [
        {**a, "category_id": names.setdefault((a["category_id"], a["outcome"]), len(names) + 1)}
        for a in anns
    ]


def error_grid(
    rows: list[Row],
    categories: dict[int, str],
    path: str | Path,
    *,
    title: str | None = None,
    row_labels: Sequence[str] | None = None,
) -> None:
    """`comparison_grid` coloured by each annotation's `outcome` (a key of OUTCOME_COLORS, as
    `error_analysis.image_outcomes` gives them); the legend lists the outcomes."""
    names: dict[tuple[int, str], int] = {}
    recoded = [
        (image, _by_outcome(gts, names), _by_outcome(preds, names)) for image, gts, preds in rows
    ]
    labels: dict[int, str] = {}
    colors: dict[str, Color] = {}
    for (cat_id, outcome), new_id in names.items():
        label = categories.get(cat_id, f"id {cat_id}")
        if outcome != "true positive":  # a TP is drawn under its class alone
            label += f": {outcome.removesuffix(' (crowd)')}"
        labels[new_id] = label
        colors[label] = OUTCOME_COLORS.get(outcome, UNKNOWN_COLOR)
    comparison_grid(recoded, labels, path, title=title, row_labels=row_labels, colors=colors,
                    legend=OUTCOME_COLORS)  # fmt: skip


def error_type_style(error_type: str) -> tuple[tuple[float, float, float], str]:
    """(matplotlib colour, hatch) of an error type's bars: missed_<size> paler and hatched."""
    if error_type in MISSED_STYLES:
        towards_white, hatch = MISSED_STYLES[error_type]
        r, g, b = (c + (1 - c) * towards_white for c in mpl_color(OUTCOME_COLORS["missed"]))
        return (r, g, b), hatch
    return mpl_color(OUTCOME_COLORS.get(error_type, UNKNOWN_COLOR)), ""


def error_bars(
    rows: Sequence[Mapping[str, Any]],
    error_types: Sequence[str],
    path: str | Path,
    *,
    title: str = "Errors per class",
) -> None:
    """A PNG with one horizontal bar per class ('class' key), stacked by error type counts."""
    if not rows:
        raise ValueError("error_bars needs at least one class row")
    fig = Figure(figsize=(8, 1.6 + 0.45 * len(rows)))
    ax = fig.subplots()
    labels = [str(r["class"]) for r in rows]
    left, hatch_color = np.zeros(len(rows)), mpl_color(MISSED_HATCH_COLOR)
    for error_type in error_types:
        counts = np.array([float(r.get(error_type) or 0) for r in rows])
        color, hatch = error_type_style(error_type)
        ax.barh(labels, counts, left=left, color=color, hatch=hatch, hatchcolor=hatch_color,
                edgecolor="white", linewidth=0.6, label=error_type.replace("_", ": "))  # fmt: skip
        left += counts
    ax.invert_yaxis()
    ax.set_title(title, fontsize=12)
    ax.set_xlabel("errors (count)")
    ax.set_ylabel("class")
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(
        title="error type", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9
    )
    save_figure(fig, path)
