"""Stage evaluate: score the val predictions of stage infer against the val ground truth.

Reads reports/eval/predictions.json and writes reports/metrics.json (the headline: mask and
box AP, greedy IoU, Dice, P/R/F1; a DVC metrics file), reports/eval/details.json (every
number: COCO's twelve per type, per class, counts, errors), reports/eval/per_class.csv,
reports/eval/pr_iou50.csv and pr_iou50_95.csv (mask precision-recall per class), the error
breakdown (errors.csv, errors_per_class.csv, errors.png, confusion.json/.csv,
worst_images.png) and reports/eval/samples.png, all under reports/eval. No model is needed,
so a score-threshold experiment takes seconds.

With --predictions FILE any COCO results file is scored: only --out is written (and the
tables, curves and figure when --eval-dir is given).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cocoseg.common.cli import log, run_stage, stage_parser
from cocoseg.common.errors import CocosegError
from cocoseg.common.params import Params

DEFAULT_PREDICTIONS = "reports/eval/predictions.json"
DEFAULT_OUT = "reports/metrics.json"
DEFAULT_EVAL_DIR = "reports/eval"


def parser() -> argparse.ArgumentParser:
    """The shared stage options plus inputs and outputs (defaults: the DVC layout)."""
    p = stage_parser(__doc__, subset=True)
    p.add_argument(
        "--predictions", help=f"COCO results file to score (default: {DEFAULT_PREDICTIONS})"
    )
    p.add_argument(
        "--out", help=f"metrics JSON (default: {DEFAULT_OUT}; required with --predictions)"
    )
    p.add_argument(
        "--eval-dir",
        help=f"tables, curves and figures (default: {DEFAULT_EVAL_DIR}, unless --predictions)",
    )
    return p


def main(args: argparse.Namespace, params: Params) -> None:
    """Read the predictions, score them, write the reports."""
    from cocoseg.coco.inputs import split_paths
    from cocoseg.evaluate import metrics
    from cocoseg.evaluate import reports as evaluation  # heavy: imported once arguments are parsed

    if args.predictions and not args.out:
        raise CocosegError("--predictions needs --out FILE (so reports/metrics.json stays as is)")
    p = params.evaluate
    images_dir, ann_file = split_paths(args.subset, "val")
    gt = metrics.load_ground_truth(ann_file)
    preds = metrics.load_predictions(args.predictions or DEFAULT_PREDICTIONS, gt)
    out, details, eval_dir = output_paths(args)
    scores = evaluation.write_reports(gt, preds, p, (out, details, eval_dir), images_dir)
    m = scores.metrics
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


def output_paths(args: argparse.Namespace) -> tuple[Path, Path, Path | None]:
    """(metrics file, details file, folder of tables and figures or None).

    Details go into the eval folder, or without one beside the metrics file
    (`theirs_metrics.json` -> `theirs_metrics.details.json`).
    """
    out = Path(args.out or DEFAULT_OUT)
    eval_dir = args.eval_dir or (None if args.predictions else DEFAULT_EVAL_DIR)
    eval_dir = Path(eval_dir) if eval_dir else None
    details = eval_dir / "details.json" if eval_dir else out.with_suffix(".details.json")
    return out, details, eval_dir


def outputs(args: argparse.Namespace) -> list[Path]:
    """The files and folder this run writes (for the stale temp-file sweep)."""
    return [path for path in output_paths(args) if path is not None]


if __name__ == "__main__":
    raise SystemExit(run_stage(main, parser(), outputs=outputs))
