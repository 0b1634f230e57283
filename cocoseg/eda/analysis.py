"""Exploratory analysis of data/subset: counts and sizes per split, and the figures that show them.
Crowd regions are counted apart from instances; sizes are COCOeval's ranges on each "area"."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from cocoseg.coco.images import read_rgb
from cocoseg.coco.inputs import split_paths
from cocoseg.coco.names import LABELLED_SPLITS, SIZE_NAMES, SPLITS, size_name
from cocoseg.common.errors import DataError
from cocoseg.common.io import read_json, safe_join, write_json
from cocoseg.common.params import EdaParams
from cocoseg.viz.figures import contact_sheet, mpl_color, save_figure
from cocoseg.viz.overlays import class_colors, overlay

log = logging.getLogger(__name__)

SIZE_LABELS = {
    "small": "small (area ≤ 32²)",
    "medium": "medium (32² < area ≤ 96²)",
    "large": "large (area > 96²)",
}
SIZE_HATCH = {"small": "..", "medium": "///", "large": ""}  # bars keep the class colour
SPLIT_COLORS = {"train": "#8c564b", "val": "#7f7f7f", "test": "#bcbd22"}
MAX_COUNT_BIN = 15  # instances-per-image histogram: the last bar is "15+"
FIGURES = ("class_counts.png", "instances_per_image.png", "object_sizes.png", "image_sizes.png",
           "samples.png")  # fmt: skip
LEGEND_OUTSIDE = {"frameon": False, "loc": "upper left", "bbox_to_anchor": (1, 1)}


def load_subset(subset: str | Path) -> dict[str, dict[str, Any]]:
    """The split jsons of data/subset by split name; train and val required, test optional."""
    cocos = {}
    for split in SPLITS:
        _, path = split_paths(subset, split)
        if not path.exists():
            if split in LABELLED_SPLITS:
                raise DataError(f"{path}: annotation file not found (run `dvc repro subset`)")
            continue
        cocos[split] = read_json(path)
        _check_coco(cocos[split], path)
    return cocos


def _check_coco(coco: Any, path: Path) -> None:
    """Refuse a json lacking what the analysis reads, naming the file and the gap."""
    if not isinstance(coco, dict) or "images" not in coco or "categories" not in coco:
        raise DataError(f"{path}: not a COCO annotation file (needs 'images' and 'categories')")
    for img in coco["images"]:
        if missing := {"id", "file_name", "width", "height"} - set(img):
            raise DataError(f"{path}: image {img.get('id')} lacks {sorted(missing)}")
    image_ids = {img["id"] for img in coco["images"]}
    cat_ids = {cat["id"] for cat in coco["categories"]}
    for ann in coco.get("annotations", []):
        if ann.get("image_id") not in image_ids:
            raise DataError(f"{path}: annotation {ann.get('id')} has unknown image_id")
        if ann.get("category_id") not in cat_ids:
            raise DataError(f"{path}: annotation {ann.get('id')} has unknown category_id")
        if not isinstance(ann.get("area"), (int, float)):
            raise DataError(f"{path}: annotation {ann.get('id')} has no numeric 'area'")


def category_names(cocos: Mapping[str, dict[str, Any]]) -> dict[int, str]:
    """Category id -> name, identical in every split (else DataError)."""
    names: dict[int, str] | None = None
    for split, coco in cocos.items():
        these = {c["id"]: c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])}
        if names is not None and these != names:
            raise DataError(f"{split}.json: categories {these} differ from the other splits")
        names = these
    return names or {}


def split_summary(coco: Mapping[str, Any], categories: Mapping[int, str]) -> dict[str, Any]:
    """Images, instances (non-crowd), crowd regions and per-class counts of one split."""
    summary: dict[str, Any] = {"images": len(coco["images"])}
    if "annotations" not in coco:
        return summary
    anns = coco["annotations"]
    objects = [a for a in anns if not a.get("iscrowd")]
    per_class = {}
    for cat_id, name in categories.items():
        mine = [a for a in objects if a["category_id"] == cat_id]
        row = {"instances": len(mine), "images": len({a["image_id"] for a in mine})}
        bins = Counter(size_name(a["area"]) for a in mine)
        row.update({b: bins.get(b, 0) for b in SIZE_NAMES})
        per_class[name] = row
    summary.update(
        instances=len(objects),
        crowd=len(anns) - len(objects),
        empty_images=len(coco["images"]) - len({a["image_id"] for a in objects}),
        per_class=per_class,
    )
    return summary


def objects_per_image(coco: Mapping[str, Any]) -> tuple[list[int], list[int]]:
    """Non-crowd instances, and their distinct classes, of each image in image order."""
    found: dict[int, list[int]] = defaultdict(list)
    for a in coco.get("annotations", []):
        if not a.get("iscrowd"):
            found[a["image_id"]].append(a["category_id"])
    ids = [img["id"] for img in coco["images"]]
    return [len(found[i]) for i in ids], [len(set(found[i])) for i in ids]


def _label_bars(ax: Any, bars: Any, fontsize: int = 8) -> None:
    """Write each bar's height above it (zero bars stay unlabelled)."""
    labels = [f"{int(b.get_height())}" if b.get_height() else "" for b in bars]
    ax.bar_label(bars, labels=labels, padding=1, fontsize=fontsize)


def _style(ax: Any, title: str, xlabel: str, ylabel: str) -> None:
    """Title, axis labels and a light horizontal grid behind the bars."""
    ax.set_title(title, fontsize=12)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_axisbelow(True)
    ax.spines[["top", "right"]].set_visible(False)


def plot_class_counts(summary: Mapping[str, Any], names: Sequence[str], path: Path) -> None:
    """Grouped bars per split, one bar per class in its colour: instances and images."""
    colors = class_colors(names)
    splits = [s for s in summary if "per_class" in summary[s]]
    fig = Figure(figsize=(12, 4.8))
    axes = fig.subplots(1, 2)
    width = 0.8 / max(len(names), 1)
    x = np.arange(len(splits))
    for ax, key, title in (
        (axes[0], "instances", "Instances per class (crowd regions excluded)"),
        (axes[1], "images", "Images containing each class"),
    ):
        for k, name in enumerate(names):
            heights = [summary[s]["per_class"][name][key] for s in splits]
            offset = (k - (len(names) - 1) / 2) * width
            bars = ax.bar(x + offset, heights, width, color=mpl_color(colors[name]), label=name)
            _label_bars(ax, bars)
        ax.set_xticks(x, [f"{s}\n({summary[s]['images']} images)" for s in splits])
        _style(ax, title, "split", key)
        ax.margins(y=0.12)
    axes[1].legend(title="class", **LEGEND_OUTSIDE)
    fig.suptitle("Class counts per split", fontsize=14)
    fig.tight_layout()
    save_figure(fig, path)


def plot_instances_per_image(cocos: Mapping[str, dict[str, Any]], path: Path) -> None:
    """Histograms of instances per image and distinct classes per image, split by split."""
    counts = {s: objects_per_image(c) for s, c in cocos.items() if "annotations" in c}
    splits = list(counts)
    fig = Figure(figsize=(12, 4.5))
    axes = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2.2, 1]})
    width = 0.8 / max(len(splits), 1)
    panels = (
        (axes[0], 0, MAX_COUNT_BIN, "Instances per image", "instances in image"),
        (axes[1], 1, None, "Distinct classes per image", "classes in image"),
    )
    for ax, which, cap, title, xlabel in panels:
        per_split = {s: counts[s][which] for s in splits}
        top = cap or max((max(v, default=0) for v in per_split.values()), default=0)
        for k, (split, values) in enumerate(per_split.items()):
            clipped = np.minimum(np.asarray(values, dtype=int), top)  # the last bar: top or more
            hist = np.bincount(clipped, minlength=top + 1)
            offset = (k - (len(splits) - 1) / 2) * width
            label = f"{split} ({len(values)} images)"
            color = SPLIT_COLORS[split]
            ax.bar(np.arange(len(hist)) + offset, hist, width, color=color, label=label)
        ticks = [str(i) for i in range(top + 1)]
        if cap is not None:
            ticks[-1] = f"{cap}+"
        ax.set_xticks(np.arange(top + 1), ticks)
        _style(ax, title, xlabel, "images")
    axes[0].legend(frameon=False)
    fig.suptitle("Objects per image (crowd regions excluded)", fontsize=14)
    fig.tight_layout()
    save_figure(fig, path)


def plot_object_sizes(summary: Mapping[str, Any], names: Sequence[str], path: Path) -> None:
    """Per split, per class: instances in COCO's small/medium/large bins (class colours)."""
    colors = class_colors(names)
    splits = [s for s in summary if "per_class" in summary[s]]
    fig = Figure(figsize=(6 * max(len(splits), 1) + 2, 4.8))
    axes = np.atleast_1d(fig.subplots(1, max(len(splits), 1), sharey=True))
    width = 0.27
    x = np.arange(len(names))
    bar_colors = [mpl_color(colors[n]) for n in names]
    for ax, split in zip(axes, splits, strict=False):
        for k, (bin_name, hatch) in enumerate(SIZE_HATCH.items()):
            heights = [summary[split]["per_class"][n][bin_name] for n in names]
            bars = ax.bar(x + (k - 1) * width, heights, width, color=bar_colors, hatch=hatch,
                          edgecolor="black", linewidth=0.5)  # fmt: skip
            _label_bars(ax, bars, fontsize=7)
        ax.set_xticks(x, names)
        _style(ax, f"{split}: {summary[split]['instances']} instances", "class", "instances")
        ax.margins(y=0.12)
    legend = [  # grey swatches with each bin's hatch
        Patch(facecolor="#cccccc", hatch=hatch, edgecolor="black", label=SIZE_LABELS[b])
        for b, hatch in SIZE_HATCH.items()
    ]
    axes[-1].legend(handles=legend, title="COCO size bin", **LEGEND_OUTSIDE)
    fig.suptitle("Object sizes per class (mask area in pixels)", fontsize=14)
    fig.tight_layout()
    save_figure(fig, path)


def plot_image_sizes(cocos: Mapping[str, dict[str, Any]], path: Path) -> None:
    """Scatter of image width against height, one colour and marker per split."""
    fig = Figure(figsize=(7.5, 6.5))
    ax = fig.subplots()
    markers = {"train": "o", "val": "^", "test": "s"}
    for split, coco in cocos.items():
        sizes = [(img["width"], img["height"]) for img in coco["images"]]
        if not sizes:
            continue
        (w, h), n = Counter(sizes).most_common(1)[0]
        ws, hs = zip(*sizes, strict=True)
        marker, color = markers[split], SPLIT_COLORS[split]
        label = f"{split}: {len(sizes)} images (most common {w}×{h}: {n})"
        ax.scatter(ws, hs, s=22, alpha=0.45, marker=marker, color=color, label=label)
    ax.set_title("Image sizes", fontsize=14)
    ax.set(xlabel="width (px)", ylabel="height (px)")
    ax.grid(alpha=0.3)
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def sample_ids(coco: Mapping[str, Any], n: int, seed: int) -> list[int]:
    """`n` image ids drawn reproducibly from `seed`, in image order; images with an instance
    first (empty ones show nothing), the others only when there are too few."""
    rng = np.random.default_rng(seed)
    has_objects = set(a["image_id"] for a in coco.get("annotations", []) if not a.get("iscrowd"))
    order = list(rng.permutation(len(coco["images"])))
    order.sort(key=lambda i: coco["images"][i]["id"] not in has_objects)  # stable
    return [coco["images"][i]["id"] for i in sorted(order[:n])]


def plot_samples(
    coco: Mapping[str, Any],
    images_dir: Path,
    categories: Mapping[int, str],
    params: EdaParams,
    path: Path,
) -> None:
    """Grid of sample images with their masks, boxes and class names drawn."""
    by_image: dict[int, list[dict]] = {}
    for ann in coco.get("annotations", []):
        by_image.setdefault(ann["image_id"], []).append(ann)
    info = {img["id"]: img for img in coco["images"]}
    drawn, captions = [], []
    for image_id in sample_ids(coco, params.n_samples, params.seed):
        file = safe_join(images_dir, info[image_id]["file_name"])
        if not file.exists():
            raise DataError(f"{file}: image listed in the annotations is missing")
        anns = by_image.get(image_id, [])
        shown = read_rgb(file, recorded=(info[image_id]["width"], info[image_id]["height"]))
        drawn.append(overlay(shown, anns, dict(categories)))
        n_obj = sum(not a.get("iscrowd") for a in anns)
        crowd = len(anns) - n_obj
        noun = "object" if n_obj == 1 else "objects"
        captions.append(f"{file.name}: {n_obj} {noun}" + (f", {crowd} crowd" if crowd else ""))
    title = f"{len(drawn)} sample train images with ground truth (seed {params.seed})"
    colors = class_colors(list(categories.values()))
    contact_sheet(drawn, captions, path, columns=4, title=title, colors=colors)


def run_eda(subset: str | Path, out_dir: str | Path, params: EdaParams) -> dict[str, Any]:
    """Write out_dir/summary.json and out_dir/figures/*.png; return the summary."""
    subset, out_dir = Path(subset), Path(out_dir)
    cocos = load_subset(subset)
    categories = category_names(cocos)
    names = list(categories.values())
    summary = {split: split_summary(coco, categories) for split, coco in cocos.items()}
    figures = out_dir / "figures"
    plot_class_counts(summary, names, figures / "class_counts.png")
    plot_instances_per_image(cocos, figures / "instances_per_image.png")
    plot_object_sizes(summary, names, figures / "object_sizes.png")
    plot_image_sizes(cocos, figures / "image_sizes.png")
    plot_samples(
        cocos["train"], split_paths(subset, "train")[0], categories, params, figures / "samples.png"
    )
    write_json(out_dir / "summary.json", summary)
    log.info("eda: wrote %s and %d figures in %s", out_dir / "summary.json", len(FIGURES), figures)
    return summary
