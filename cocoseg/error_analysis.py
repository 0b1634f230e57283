"""Why mask AP is lost: a TIDE-style error breakdown from ground truth and saved predictions.

Each prediction taking part (score >= the threshold, at most `max_dets` per image and class,
best scores first) gets exactly one outcome from mask IoU (pycocotools, crowd-aware), the
first that applies in this precedence:

1. true positive: matches a free ground truth of its class at IoU >= 0.5 (COCOeval's greedy
   matching in score order, best IoU first);
2. crowd-ignored: no free ground truth, but a crowd region of its class covers it
   (|d∩g|/|d| >= 0.5); ignored as COCOeval does, neither a hit nor an error;
3. duplicate: a ground truth of its class at IoU >= 0.5 exists, already taken by a higher
   score;
4. classification: a (non-crowd) ground truth of another class at IoU >= 0.5;
5. localisation: a ground truth of its class at 0.1 <= IoU < 0.5;
6. background: none of these.

Prediction errors count under the predicted class. Every non-crowd ground truth left without
a true positive is `missed` under its own class, split by its annotation's `area` into
COCOeval's ranges (`cocoseg.coco`): small <= 32² < medium <= 96² < large. A ground truth
behind a classification or localisation error is therefore also missed (TIDE would not count
it twice; we keep the rule simple and the confusion rows say both).

ΔAP per type, on pycocotools' own COCOeval (segm AP@[.5:.95], overall and per class):
AP with that type's errors removed minus AP of all predictions. Prediction errors are
*removed* (not TIDE's fix): ΔAP measures the precision they cost. Missed ground truths are
removed from the ground truth (TIDE's rule for missed errors); a class whose ground truths
are all missed then has no AP and its ΔAP is None. ΔAP classifies every prediction
(no score threshold), so its base is the report's segm AP.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from cocoseg import metrics
from cocoseg.coco import SIZE_NAMES, size_name
from cocoseg.io import write_csv, write_json
from cocoseg.metrics import (
    MATCH_IOU,
    MAX_DETS,
    Number,
    coco_from_dataset,
    rounded,
    run_cocoeval,
    top_predictions,
)

LOCALISATION_IOU = 0.1
TP, CROWD = "true positive", "ignored (crowd)"
PREDICTION_ERRORS = ("localisation", "classification", "duplicate", "background")
MISSED_SIZES = tuple(f"missed_{size}" for size in SIZE_NAMES)
ERROR_TYPES = PREDICTION_ERRORS + MISSED_SIZES
DELTA_TYPES = (*PREDICTION_ERRORS, "missed")
BACKGROUND = "background"


@dataclass(frozen=True)
class Verdict:
    """One prediction's outcome; `gt_category_id` is the class it hit (TP, classification)."""

    pred: dict[str, Any]
    outcome: str
    gt_category_id: int | None = None


@dataclass
class Breakdown:
    """Every considered prediction's verdict and every non-crowd ground truth's fate."""

    verdicts: list[Verdict]
    matched: list[dict[str, Any]]
    missed: list[dict[str, Any]]
    names: dict[int, str]


# --- classifying ------------------------------------------------------------------------------


def _considered(preds: Sequence[dict[str, Any]], threshold: float, max_dets: int) -> dict:
    """Per image, the predictions taking part, best score first (capped per image and class)."""
    groups: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
    for pred in preds:
        groups[pred["image_id"], pred["category_id"]].append(pred)
    per_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for (image_id, _), group in groups.items():
        per_image[image_id] += top_predictions(group, threshold, max_dets)
    return {i: sorted(dts, key=lambda p: -p["score"]) for i, dts in per_image.items()}


def _ious(gt: COCO, dts: list[dict], regions: list[dict]) -> np.ndarray:
    """Mask IoU [dts, regions]; crowd regions use COCO's |d∩g|/|d|."""
    if not dts or not regions:
        return np.zeros((len(dts), len(regions)))
    rles = [gt.annToRLE(a) for a in regions]
    crowd = [int(bool(a.get("iscrowd"))) for a in regions]
    ious = mask_utils.iou([d["segmentation"] for d in dts], rles, crowd)
    return np.asarray(ious).reshape(len(dts), len(regions))


def _error_kind(ious: np.ndarray, same: np.ndarray, gt_cats: np.ndarray) -> tuple[str, int | None]:
    """(outcome, hit class) of a prediction that is neither a TP nor crowd-ignored."""
    if (ious[same] >= MATCH_IOU).any():
        return "duplicate", None
    other = np.where(~same, ious, -1.0)
    if other.size and other.max() >= MATCH_IOU:
        return "classification", int(gt_cats[other.argmax()])
    if (ious[same] >= LOCALISATION_IOU).any():
        return "localisation", None
    return "background", None


def _judge_image(gt: COCO, dts: list[dict], anns: list[dict]) -> tuple[list[Verdict], np.ndarray]:
    """Verdicts for one image's score-sorted predictions; which ground truths were found."""
    gts = [a for a in anns if not a.get("iscrowd")]
    crowds = [a for a in anns if a.get("iscrowd")]
    ious = _ious(gt, dts, gts + crowds)
    gt_cats = np.array([a["category_id"] for a in gts + crowds], dtype=int)
    n = len(gts)
    free = np.ones(n, dtype=bool)
    verdicts = []
    for i, dt in enumerate(dts):
        same = gt_cats == dt["category_id"]
        candidates = np.where(same[:n] & free & (ious[i, :n] >= MATCH_IOU), ious[i, :n], -1.0)
        if n and candidates.max() >= 0:
            free[candidates.argmax()] = False
            verdicts.append(Verdict(dt, TP, dt["category_id"]))
        elif (same[n:] & (ious[i, n:] >= MATCH_IOU)).any():
            verdicts.append(Verdict(dt, CROWD))
        else:
            verdicts.append(Verdict(dt, *_error_kind(ious[i, :n], same[:n], gt_cats[:n])))
    return verdicts, ~free


def classify(
    gt: COCO, preds: Sequence[dict[str, Any]], score_threshold: float, max_dets: int = MAX_DETS
) -> Breakdown:
    """Each considered prediction's outcome and each ground truth's, image by image."""
    per_image = _considered(preds, score_threshold, max_dets)
    result = Breakdown([], [], [], {c: gt.cats[c]["name"] for c in sorted(gt.cats)})
    for image_id in sorted(gt.imgs):
        anns = gt.imgToAnns.get(image_id, [])
        verdicts, found = _judge_image(gt, per_image.get(image_id, []), anns)
        result.verdicts += verdicts
        gts = [a for a in anns if not a.get("iscrowd")]
        result.matched += [a for a, hit in zip(gts, found, strict=True) if hit]
        result.missed += [a for a, hit in zip(gts, found, strict=True) if not hit]
    return result


def missed_size(ann: dict[str, Any]) -> str:
    """missed_small / missed_medium / missed_large from the annotation's `area` field."""
    return f"missed_{size_name(float(ann['area']))}"


# --- counts, confusion and worst images ---------------------------------------------------------


def error_counts(breakdown: Breakdown) -> dict[str, dict[str, int]]:
    """Counts per class name and type, plus `all`; prediction errors under the predicted class."""
    tallies = {name: Counter() for name in [*breakdown.names.values(), "all"]}
    found = [(v.pred["category_id"], v.outcome) for v in breakdown.verdicts]
    found += [(a["category_id"], missed_size(a)) for a in breakdown.missed]
    for cat_id, outcome in found:
        if outcome in ERROR_TYPES:
            tallies[breakdown.names[cat_id]][outcome] += 1
            tallies["all"][outcome] += 1
    return {name: {t: tally[t] for t in ERROR_TYPES} for name, tally in tallies.items()}


def confusion_rows(breakdown: Breakdown) -> list[dict[str, str]]:
    """Rows {actual, predicted} at IoU 0.5 with 'background' for no class; crowd-ignored skip."""
    names = breakdown.names
    rows = []
    for v in breakdown.verdicts:
        predicted = names[v.pred["category_id"]]
        if v.outcome in (TP, "classification"):
            rows.append({"actual": names[v.gt_category_id], "predicted": predicted})
        elif v.outcome != CROWD:
            rows.append({"actual": BACKGROUND, "predicted": predicted})
    rows += [{"actual": names[a["category_id"]], "predicted": BACKGROUND} for a in breakdown.missed]
    return rows


def errors_per_image(breakdown: Breakdown) -> Counter:
    """Number of errors (prediction errors and missed ground truths) per image id."""
    count: Counter = Counter(
        v.pred["image_id"] for v in breakdown.verdicts if v.outcome in PREDICTION_ERRORS
    )
    count.update(a["image_id"] for a in breakdown.missed)
    return count


def worst_images(breakdown: Breakdown, n: int) -> list[int]:
    """The n image ids with the most errors, ties by smaller id; images without errors never."""
    ranked = sorted(errors_per_image(breakdown).items(), key=lambda item: (-item[1], item[0]))
    return [image_id for image_id, _ in ranked[:n]]


def image_outcomes(breakdown: Breakdown, gt: COCO, image_id: int) -> tuple[list, list]:
    """(ground truths, predictions) of one image as annotation copies with an `outcome` key.

    Ground truths are TP (found), `missed` or ignored (crowd); for drawing with
    `visualize.error_grid`.
    """
    missed = {a["id"] for a in breakdown.missed}
    gts = []
    for ann in gt.imgToAnns.get(image_id, []):
        outcome = CROWD if ann.get("iscrowd") else "missed" if ann["id"] in missed else TP
        gts.append({**ann, "outcome": outcome})
    preds = [
        {**v.pred, "outcome": v.outcome}
        for v in breakdown.verdicts
        if v.pred["image_id"] == image_id
    ]
    return gts, preds


# --- ΔAP ------------------------------------------------------------------------------------


def fixed_inputs(
    gt: COCO, breakdown: Breakdown, types: Collection[str]
) -> tuple[COCO, list[dict[str, Any]]]:
    """Ground truth and predictions with `types` errors removed ('missed' drops those gts)."""
    preds = [v.pred for v in breakdown.verdicts if v.outcome not in types]
    if "missed" not in types or not breakdown.missed:
        return gt, preds
    drop = {a["id"] for a in breakdown.missed}
    anns = [a for a in gt.dataset["annotations"] if a["id"] not in drop]
    return coco_from_dataset({**gt.dataset, "annotations": anns}), preds


def mask_ap(gt: COCO, preds: Sequence[dict[str, Any]]) -> dict[str, Number]:
    """COCOeval segm AP@[.5:.95]: overall under 'all' and per class name."""
    return metrics.mask_ap(gt, run_cocoeval(gt, preds, "segm"))


def _difference(fixed: Number, base: Number) -> Number:
    return None if fixed is None or base is None else fixed - base


def _occurs(breakdown: Breakdown, error_type: str) -> bool:
    if error_type == "missed":
        return bool(breakdown.missed)
    return any(v.outcome == error_type for v in breakdown.verdicts)


def delta_ap(
    gt: COCO, breakdown: Breakdown, base: dict[str, Number] | None = None
) -> dict[str, dict[str, Number]]:
    """ΔAP per type, {'all' | class name: {type: AP(fixed) - AP(base)}}; 0 where none occur.

    The base is COCOeval over the breakdown's predictions, so pass a breakdown of every
    prediction (`classify(gt, preds, -math.inf)`) to explain the report's segm AP; `base`,
    when given, is that AP already computed (`metrics.Evaluation.mask_ap`), not recomputed.
    """
    base = base or mask_ap(*fixed_inputs(gt, breakdown, ()))
    result: dict[str, dict[str, Number]] = {key: {} for key in base}
    for error_type in DELTA_TYPES:
        occurs = _occurs(breakdown, error_type)
        fixed = mask_ap(*fixed_inputs(gt, breakdown, {error_type})) if occurs else base
        for key, value in base.items():
            result[key][error_type] = _difference(fixed[key], value) if occurs else 0.0
    return result


# --- the report and its files ----------------------------------------------------------------


@dataclass
class ErrorReport:
    """Counts and confusion at the score threshold, ΔAP over every prediction."""

    breakdown: Breakdown
    counts: dict[str, dict[str, int]]
    delta_ap: dict[str, dict[str, Number]]
    confusion: list[dict[str, str]]


def analyse(
    gt: COCO,
    preds: Sequence[dict[str, Any]],
    score_threshold: float,
    base_ap: dict[str, Number] | None = None,
) -> ErrorReport:
    """The whole breakdown of checked predictions (see the module docstring).

    `base_ap`: the mask AP of all predictions when the caller has it (metrics.evaluate's).
    """
    breakdown = classify(gt, preds, score_threshold)
    everything = breakdown if score_threshold == -math.inf else classify(gt, preds, -math.inf)
    return ErrorReport(
        breakdown=breakdown,
        counts=error_counts(breakdown),
        delta_ap=delta_ap(gt, everything, base_ap),
        confusion=confusion_rows(breakdown),
    )


def error_metrics(report: ErrorReport) -> dict[str, Any]:
    """{'errors': {all: {type: count}, delta_ap: {type: ΔAP}}}, overall, for metrics.json.

    Per-class counts and ΔAP go to errors.csv and errors_per_class.csv: metrics stay the few
    numbers compared across experiments.
    """
    return {"errors": {"all": report.counts["all"], "delta_ap": rounded(report.delta_ap["all"])}}


def count_rows(report: ErrorReport) -> list[dict[str, Any]]:
    """errors.csv rows: one per class, a column per error type (for a stacked bar)."""
    return [{"class": n, **c} for n, c in report.counts.items() if n != "all"]


def delta_rows(report: ErrorReport) -> list[dict[str, Any]]:
    """errors_per_class.csv rows: one per class, a ΔAP column per type."""
    return [{"class": n, **d} for n, d in report.delta_ap.items() if n != "all"]


def write_error_reports(report: ErrorReport, eval_dir: str | Path) -> None:
    """errors.csv, errors_per_class.csv, confusion.json and confusion.csv under eval_dir."""
    eval_dir = Path(eval_dir)
    write_csv(eval_dir / "errors.csv", rounded(count_rows(report)))
    write_csv(eval_dir / "errors_per_class.csv", rounded(delta_rows(report)))
    write_json(eval_dir / "confusion.json", report.confusion)
    write_csv(eval_dir / "confusion.csv", report.confusion, columns=("actual", "predicted"))
