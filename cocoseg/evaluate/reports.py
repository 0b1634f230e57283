"""The evaluate stage's work: score saved val predictions, explain the errors, draw figures (no
model needed, so a scoring experiment takes seconds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO

from cocoseg.coco.images import read_rgb
from cocoseg.common.io import safe_join
from cocoseg.common.params import EvaluateParams
from cocoseg.evaluate import error_analysis, metrics
from cocoseg.viz import figures as visualize


def write_reports(
    gt: COCO,
    preds: list[dict],
    p: EvaluateParams,
    paths: tuple[Path, Path, Path | None],
    images_dir: Path,
) -> metrics.Evaluation:
    """Every metric plus the error breakdown (both read one matching) to paths = (metrics.json,
    details.json, eval folder or None); with a folder also the tables, curves and figures."""
    out, details, eval_dir = paths
    evaluation = metrics.evaluate(gt, preds, p.score_threshold)
    errors = error_analysis.analyse(gt, evaluation.matching, p.score_threshold, evaluation.mask_ap)
    evaluation.metrics.update(error_analysis.error_metrics(errors))
    metrics.write_reports(evaluation, out, details, eval_dir)
    if eval_dir is not None:
        error_analysis.write_error_reports(errors, eval_dir)
        title = f"Errors per class at score ≥ {p.score_threshold:g} (val)"
        rows = error_analysis.count_rows(errors)
        visualize.error_bars(rows, error_analysis.ERROR_TYPES, eval_dir / "errors.png", title=title)
        draw_samples(gt, preds, images_dir, p, eval_dir / "samples.png")
        draw_worst(gt, errors, images_dir, p, eval_dir / "worst_images.png")
    return evaluation


def _image(gt: COCO, images_dir: Path, image_id: int) -> np.ndarray:
    """A val image as RGB in its annotations' frame, found through its (checked) file name."""
    info = gt.imgs[image_id]
    path = safe_join(images_dir, info["file_name"])
    return read_rgb(path, recorded=(info["width"], info["height"]))


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
    rows = [(_image(gt, images_dir, i), gt.imgToAnns[i], by_image[i]) for i in picks]
    categories = {c: gt.cats[c]["name"] for c in sorted(gt.cats)}
    title = f"{len(picks)} val images: ground truth, predictions ≥ {p.score_threshold:g}"
    labels, note = [f"image {i}" for i in picks], f"no detection ≥ {p.score_threshold:g}"
    visualize.comparison_grid(
        rows, categories, path, title=title, row_labels=labels, no_prediction=note
    )


def draw_worst(
    gt: COCO, errors: error_analysis.ErrorReport, images_dir: Path, p: EvaluateParams, path: Path
) -> None:
    """The n_worst images with the most errors, each error in its type's colour."""
    ids = error_analysis.worst_images(errors.matching, p.n_worst)
    if not ids:
        visualize.note_figure(f"No errors at score ≥ {p.score_threshold:g}", path)
        return
    rows = [
        (_image(gt, images_dir, i), *error_analysis.image_outcomes(errors.matching, gt, i))
        for i in ids
    ]
    per_image = error_analysis.errors_per_image(errors.matching)
    labels = [f"image {i}: {per_image[i]} errors" for i in ids]
    title = f"The {len(ids)} val images with the most errors at score ≥ {p.score_threshold:g}"
    visualize.error_grid(rows, errors.matching.names, path, title=title, row_labels=labels)
