"""Why mask AP is lost: a TIDE-style error breakdown, read off the one matching.
Prediction errors count under the predicted class; a non-crowd ground truth no true positive took
is missed under its own class and size (so one behind another error counts twice, unlike TIDE).
ΔAP per type: segm AP@[.5:.95] of every prediction with that type's errors removed (missed: those
ground truths), not fixed as TIDE would, minus the report's segm AP; None for a class left without
ground truth. Counts and confusion read the predictions at the score threshold.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycocotools.coco import COCO

from cocoseg.coco.cocoeval import Number, coco_from_dataset, run_cocoeval
from cocoseg.coco.names import SIZE_NAMES, size_name
from cocoseg.common.io import write_csv, write_json
from cocoseg.evaluate import metrics
from cocoseg.evaluate.matching import CROWD, PREDICTION_ERRORS, TP, Matching
from cocoseg.evaluate.metrics import rounded

MISSED_SIZES = tuple(f"missed_{size}" for size in SIZE_NAMES)
ERROR_TYPES = PREDICTION_ERRORS + MISSED_SIZES
DELTA_TYPES = (*PREDICTION_ERRORS, "missed")
BACKGROUND = "background"


def error_counts(matched: Matching) -> dict[str, dict[str, int]]:
    """Counts per class name and type, plus `all`; prediction errors under the predicted class."""
    tallies = {name: Counter() for name in [*matched.names.values(), "all"]}
    found = [(v.pred["category_id"], v.outcome) for v in matched.verdicts]
    found += [(a["category_id"], f"missed_{size_name(a['area'])}") for a in matched.missed]
    for cat_id, outcome in found:
        if outcome in ERROR_TYPES:
            tallies[matched.names[cat_id]][outcome] += 1
            tallies["all"][outcome] += 1
    return {name: {t: tally[t] for t in ERROR_TYPES} for name, tally in tallies.items()}


def confusion_rows(matched: Matching) -> list[dict[str, str]]:
    """Rows {actual, predicted} at IoU 0.5 with 'background' for no class; crowd-ignored skip."""
    names = {**matched.names, None: BACKGROUND}  # gt_category_id: None but for TP, classification
    rows = [
        {"actual": names[v.gt_category_id], "predicted": names[v.pred["category_id"]]}
        for v in matched.verdicts
        if v.outcome != CROWD
    ]
    rows += [{"actual": names[a["category_id"]], "predicted": BACKGROUND} for a in matched.missed]
    return rows


def errors_per_image(matched: Matching) -> Counter:
    """Number of errors (prediction errors and missed ground truths) per image id."""
    errors = [v.pred for v in matched.verdicts if v.outcome in PREDICTION_ERRORS] + matched.missed
    return Counter(error["image_id"] for error in errors)


def worst_images(matched: Matching, n: int) -> list[int]:
    """The n image ids with the most errors, ties by smaller id; images without errors never."""
    ranked = sorted(errors_per_image(matched).items(), key=lambda item: (-item[1], item[0]))
    return [image_id for image_id, _ in ranked[:n]]


def image_outcomes(matched: Matching, gt: COCO, image_id: int) -> tuple[list, list]:
    """(ground truths, predictions) of one image as copies with an `outcome` (ground truths: TP,
    `missed` or crowd), for `visualize.error_grid`."""
    missed = {a["id"] for a in matched.missed}
    gts = []
    for ann in gt.imgToAnns.get(image_id, []):
        outcome = CROWD if ann.get("iscrowd") else "missed" if ann["id"] in missed else TP
        gts.append({**ann, "outcome": outcome})
    preds = [
        {**v.pred, "outcome": v.outcome} for v in matched.verdicts if v.pred["image_id"] == image_id
    ]
    return gts, preds


def fixed_inputs(
    gt: COCO, matched: Matching, types: Collection[str]
) -> tuple[COCO, list[dict[str, Any]]]:
    """Ground truth and predictions with `types` errors removed ('missed' drops those gts)."""
    preds = [v.pred for v in matched.verdicts if v.outcome not in types]
    if "missed" not in types or not matched.missed:
        return gt, preds
    drop = {a["id"] for a in matched.missed}
    anns = [a for a in gt.dataset["annotations"] if a["id"] not in drop]
    return coco_from_dataset({**gt.dataset, "annotations": anns}), preds


def mask_ap(gt: COCO, preds: Sequence[dict[str, Any]]) -> dict[str, Number]:
    """COCOeval segm AP@[.5:.95]: overall under 'all' and per class name."""
    return metrics.mask_ap(gt, run_cocoeval(gt, preds, "segm"))


def delta_ap(
    gt: COCO, matched: Matching, base: dict[str, Number] | None = None
) -> dict[str, dict[str, Number]]:
    """ΔAP per type, {'all' | class name: {type: AP(fixed) - AP(base)}}; 0 where none occur.
    The base is the AP of the matching's predictions: `base` when given (`Evaluation.mask_ap`)."""
    base = base or mask_ap(*fixed_inputs(gt, matched, ()))
    occurring = {v.outcome for v in matched.verdicts} | ({"missed"} if matched.missed else set())
    deltas = {error_type: dict.fromkeys(base, 0.0) for error_type in DELTA_TYPES}
    for error_type in [t for t in DELTA_TYPES if t in occurring]:
        fixed = mask_ap(*fixed_inputs(gt, matched, {error_type}))
        deltas[error_type] = {
            k: None if None in (fixed[k], v) else fixed[k] - v for k, v in base.items()
        }
    return {key: {t: deltas[t][key] for t in DELTA_TYPES} for key in base}


@dataclass
class ErrorReport:
    """Counts and confusion at the score threshold (its matching), ΔAP over every prediction."""

    matching: Matching
    counts: dict[str, dict[str, int]]
    delta_ap: dict[str, dict[str, Number]]
    confusion: list[dict[str, str]]


def analyse(
    gt: COCO, matched: Matching, score_threshold: float, base_ap: dict[str, Number] | None = None
) -> ErrorReport:
    """The whole breakdown from the matching of every prediction (see the module docstring);
    `base_ap`: the mask AP of all predictions when the caller has it (metrics.evaluate's)."""
    if matched.score_threshold != -math.inf:
        raise ValueError("the error breakdown needs the matching of every prediction (ΔAP)")
    kept = matched.at(score_threshold)
    return ErrorReport(
        matching=kept,
        counts=error_counts(kept),
        delta_ap=delta_ap(gt, matched, base_ap),
        confusion=confusion_rows(kept),
    )


def error_metrics(report: ErrorReport) -> dict[str, Any]:
    """{'errors': {all: {type: count}, delta_ap: {type: ΔAP}}} for metrics.json: overall only
    (per class is in errors.csv and errors_per_class.csv)."""
    return {"errors": {"all": report.counts["all"], "delta_ap": rounded(report.delta_ap["all"])}}


def count_rows(report: ErrorReport) -> list[dict[str, Any]]:
    """errors.csv rows: one per class, a column per error type (for a stacked bar)."""
    return [{"class": n, **c} for n, c in report.counts.items() if n != "all"]


def write_error_reports(report: ErrorReport, eval_dir: Path) -> None:
    """errors.csv, errors_per_class.csv, confusion.json and confusion.csv under eval_dir."""
    write_csv(eval_dir / "errors.csv", rounded(count_rows(report)))
    deltas = [{"class": n, **d} for n, d in report.delta_ap.items() if n != "all"]
    write_csv(eval_dir / "errors_per_class.csv", rounded(deltas))
    write_json(eval_dir / "confusion.json", report.confusion)
    write_csv(eval_dir / "confusion.csv", report.confusion, columns=("actual", "predicted"))
