"""Stage evaluate: predict the val subset with models/model.pt and score it.

Writes reports/eval/predictions.json (COCO results, RLE masks), reports/metrics.json
(COCO mAP for segm and bbox, greedy IoU, Dice, P/R/F1; a DVC metrics file),
reports/eval/per_class.csv, reports/eval/pr_iou50.csv and pr_iou50_95.csv (mask
precision-recall per class) and reports/eval/samples.png.

With --predictions FILE an existing COCO results file is scored instead, no model needed:
only --out is written (and the tables, curves and figure when --eval-dir is given).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO

from cocoseg import metrics, visualize
from cocoseg.cli import log, run_stage, stage_parser
from cocoseg.config import EvaluateParams, Params
from cocoseg.data import split_paths
from cocoseg.device import resolve_device
from cocoseg.errors import CocosegError
from cocoseg.inference import predict_images
from cocoseg.io import safe_join, write_json
from cocoseg.model import load_trained_model

DEFAULT_OUT = "reports/metrics.json"
DEFAULT_EVAL_DIR = "reports/eval"


def parser() -> argparse.ArgumentParser:
    """The shared stage options plus inputs and outputs (defaults: the DVC layout)."""
    p = stage_parser(__doc__)
    p.add_argument("--model", default="models/model.pt", help="model file (default: %(default)s)")
    p.add_argument("--subset", default="data/subset", help="subset folder (default: %(default)s)")
    p.add_argument("--predictions", help="score this COCO results file instead of predicting")
    p.add_argument(
        "--out", help=f"metrics JSON (default: {DEFAULT_OUT}; required with --predictions)"
    )
    p.add_argument(
        "--eval-dir",
        help=f"tables, curves and figures (default: {DEFAULT_EVAL_DIR}, unless --predictions)",
    )
    return p


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


def main(args: argparse.Namespace, params: Params) -> None:
    """Predict (or read predictions), score them, write the reports."""
    if args.predictions and not args.out:
        raise CocosegError("--predictions needs --out FILE (so reports/metrics.json stays as is)")
    p = params.evaluate
    images_dir, ann_file = split_paths(args.subset, "val")
    gt = metrics.load_ground_truth(ann_file)
    eval_dir = Path(args.eval_dir) if args.eval_dir else None
    if args.predictions:
        preds = metrics.load_predictions(args.predictions, gt)
    else:
        eval_dir = eval_dir or Path(DEFAULT_EVAL_DIR)
        preds = predict_val(args.model, gt, images_dir, p)
        write_json(eval_dir / "predictions.json", preds, indent=False)
    evaluation = metrics.evaluate(gt, preds, p.score_threshold)
    out = args.out or DEFAULT_OUT
    metrics.write_reports(evaluation, out, eval_dir)
    if eval_dir is not None:
        draw_samples(gt, preds, images_dir, p, eval_dir / "samples.png")
    m = evaluation.metrics
    log.info(
        "evaluate: %d predictions on %d images: segm AP %s, bbox AP %s, IoU %s, Dice %s -> %s",
        len(preds),
        len(gt.imgs),
        m["segm"]["AP"],
        m["bbox"]["AP"],
        m["iou"]["mean"],
        m["dice"]["mean"],
        out,
    )


if __name__ == "__main__":
    raise SystemExit(run_stage(main, parser()))
