"""The evaluate stage's figure: ground truth beside prediction on a few val images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO

from cocoseg import visualize
from cocoseg.config import EvaluateParams
from cocoseg.images import read_rgb
from cocoseg.io import safe_join


def draw_samples(
    gt: COCO, preds: list[dict], images_dir: Path, p: EvaluateParams, path: Path
) -> None:
    """Ground truth beside prediction (score >= threshold) for n_samples evenly spread images."""
    ids = sorted(gt.imgs)
    picks = sorted({ids[int(k)] for k in np.linspace(0, len(ids) - 1, min(p.n_samples, len(ids)))})
    by_image: dict[int, list[dict[str, Any]]] = {i: [] for i in picks}
    for pred in preds:
        if pred["image_id"] in by_image and pred["score"] >= p.score_threshold:
            by_image[pred["image_id"]].append(pred)
    rows = [
        (
            read_rgb(safe_join(images_dir, gt.imgs[i]["file_name"])),
            gt.imgToAnns[i],
            by_image[i],
        )
        for i in picks
    ]
    categories = {c: gt.cats[c]["name"] for c in sorted(gt.cats)}
    visualize.comparison_grid(rows, categories, path, row_labels=[f"image {i}" for i in picks])
