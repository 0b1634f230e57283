"""The evaluate stage's work beside scoring: predict the val subset, draw GT beside prediction."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO

from cocoseg import visualize
from cocoseg.config import EvaluateParams
from cocoseg.device import resolve_device
from cocoseg.inference import predict_images
from cocoseg.io import safe_join
from cocoseg.model import load_trained_model


def predict_val(model_path: str, gt: COCO, images_dir: Path, p: EvaluateParams) -> list[dict]:
    """Run the trained model over every val image; its classes must be the subset's."""
    device = resolve_device(p.device)
    subset_classes = [gt.cats[c]["name"] for c in sorted(gt.cats)]
    model, _ = load_trained_model(model_path, device, subset_classes)
    items = [(i, safe_join(images_dir, gt.imgs[i]["file_name"])) for i in sorted(gt.imgs)]
    return predict_images(
        model, items, device=device, batch_size=p.batch_size, mask_threshold=p.mask_threshold
    )


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
            visualize.load_rgb(safe_join(images_dir, gt.imgs[i]["file_name"])),
            gt.imgToAnns[i],
            by_image[i],
        )
        for i in picks
    ]
    categories = {c: gt.cats[c]["name"] for c in sorted(gt.cats)}
    visualize.comparison_grid(rows, categories, path, row_labels=[f"image {i}" for i in picks])
