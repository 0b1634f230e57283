"""Scoring: COCO mAP (segm, bbox), greedy IoU, Dice and P/R/F1 read off the one matching of
`cocoseg.evaluate.matching`, and pixel IoU and Dice (`cocoseg.evaluate.semantic`). Undefined
ratios and COCO's -1 (no ground truth) are None: null."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cocoseg.coco.cocoeval import Number, coco_from_dataset, run_cocoeval, summary
from cocoseg.coco.results import recorded_classes
from cocoseg.common.errors import DataError
from cocoseg.common.io import read_json, write_csv, write_json
from cocoseg.evaluate.matching import CROWD, TP, Matching, match
from cocoseg.evaluate.semantic import mean, ratio, semantic_metrics

IOU_TYPES = ("segm", "bbox")
DECIMALS = 6
HEADLINE_DECIMALS = 3  # as COCOeval prints them: `dvc exp show` keeps room for the params
RESULT_KEYS = ("image_id", "category_id", "bbox", "score", "segmentation")


def load_ground_truth(path: str | Path) -> COCO:
    """The ground-truth annotation file as a COCO index; malformed files raise DataError."""
    dataset = read_json(path)
    if not isinstance(dataset, dict):
        raise DataError(f"{path}: not a COCO annotation file (top level is not an object)")
    missing = [k for k in ("images", "annotations", "categories") if k not in dataset]
    if missing:
        raise DataError(f"{path}: not a COCO annotation file (missing {missing})")
    return coco_from_dataset(dataset)


def _check_rle(seg: Any, image: dict[str, Any], where: str) -> dict[str, Any]:
    """The prediction's RLE with `counts` compressed to str; its size must be the image's."""
    if not isinstance(seg, dict) or "counts" not in seg or "size" not in seg:
        raise DataError(f"{where}: 'segmentation' must be an RLE {{'size', 'counts'}}")
    size = [image["height"], image["width"]]
    if list(seg["size"]) != size:
        raise DataError(
            f"{where}: mask size {list(seg['size'])} differs from image {image['id']}'s {size}"
        )
    if isinstance(seg["counts"], list):
        seg = mask_utils.frPyObjects(seg, *size)
    if isinstance(seg["counts"], bytes):
        seg = {"size": size, "counts": seg["counts"].decode("ascii")}
    if not isinstance(seg["counts"], str):
        raise DataError(f"{where}: RLE 'counts' must be a string or a list of run lengths")
    return seg


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_prediction(pred: Any, gt: COCO, where: str) -> dict[str, Any]:
    """One results dict, checked against the ground truth's images and categories."""
    if not isinstance(pred, dict):
        raise DataError(f"{where}: a prediction must be an object, got {type(pred).__name__}")
    missing = [k for k in RESULT_KEYS if k not in pred]
    if missing:
        raise DataError(f"{where}: missing {missing}")
    for key in ("image_id", "category_id"):
        if not isinstance(pred[key], int) or isinstance(pred[key], bool):
            raise DataError(f"{where}: {key} {pred[key]!r} is not an integer id")
    image = gt.imgs.get(pred["image_id"])
    if image is None:
        raise DataError(f"{where}: image_id {pred['image_id']!r} is not in the ground truth")
    if pred["category_id"] not in gt.cats:
        raise DataError(
            f"{where}: category_id {pred['category_id']!r} is not in the ground truth "
            f"(known: {sorted(gt.cats)})"
        )
    if not _is_number(pred["score"]):
        raise DataError(f"{where}: score {pred['score']!r} is not a finite number")
    bbox = pred["bbox"]
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_number, bbox))):
        raise DataError(f"{where}: bbox {bbox!r} is not [x, y, width, height]")
    return {
        "image_id": pred["image_id"],
        "category_id": pred["category_id"],
        "bbox": [float(v) for v in bbox],
        "score": float(pred["score"]),
        "segmentation": _check_rle(pred["segmentation"], image, where),
    }


def check_predictions(preds: Any, gt: COCO, source: str) -> list[dict[str, Any]]:
    """All results dicts checked; the error names the source, the entry and the bad id."""
    if not isinstance(preds, list):
        raise DataError(f"{source}: COCO results must be a JSON list of predictions")
    return [check_prediction(p, gt, f"{source}: prediction #{i}") for i, p in enumerate(preds)]


def load_predictions(path: str | Path, gt: COCO) -> list[dict[str, Any]]:
    """A COCO results file checked against the ground truth and the class names infer recorded
    beside it, when there: ids alone would score predictions made for another order wrongly."""
    truth = [gt.cats[c]["name"] for c in sorted(gt.cats)]
    if (classes := recorded_classes(path)) is not None and classes != truth:
        raise DataError(
            f"{path}: predictions were made for classes {classes} but the ground "
            f"truth's are {truth}; predict again (dvc repro infer)"
        )
    return check_predictions(read_json(path), gt, str(path))


def _mean_valid(values: np.ndarray) -> Number:
    return mean(values[values > -1])


def per_class_ap(evaluator: COCOeval) -> dict[int, dict[str, Number]]:
    """AP, AP50 and AP75 per category id from eval['precision'] (area all, maxDets 100)."""
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # [iou, recall, class]
    thresholds = evaluator.params.iouThrs
    t50, t75 = (int(np.argmin(np.abs(thresholds - t))) for t in (0.5, 0.75))
    return {
        cat_id: {
            "AP": _mean_valid(precision[:, :, k]),
            "AP50": _mean_valid(precision[t50, :, k]),
            "AP75": _mean_valid(precision[t75, :, k]),
        }
        for k, cat_id in enumerate(evaluator.params.catIds)
    }


def pr_curves(evaluator: COCOeval, names: dict[int, str]) -> dict[str, list[dict[str, Any]]]:
    """Rows {recall, <class>: precision} on COCO's 101 recall thresholds: 'iou50' and 'iou50_95'
    (the mean of the ten thresholds' curves); NaN where a class has no ground truth."""
    precision = evaluator.eval["precision"][:, :, :, 0, -1].astype(float)
    precision[precision < 0] = np.nan
    t50 = int(np.argmin(np.abs(evaluator.params.iouThrs - 0.5)))
    classes = [names[c] for c in evaluator.params.catIds]
    curves = {"iou50": precision[t50], "iou50_95": precision.mean(axis=0)}
    return {
        key: [
            {"recall": float(r), **dict(zip(classes, map(float, values), strict=True))}
            for r, values in zip(evaluator.params.recThrs, curve, strict=True)
        ]
        for key, curve in curves.items()
    }


@dataclass
class ClassMatch:
    """One class's matching outcome: a greedy (IoU, Dice) per ground truth, one-to-one counts."""

    ious: list[float] = field(default_factory=list)
    dices: list[float] = field(default_factory=list)
    tp: int = 0
    fp: int = 0

    @property
    def fn(self) -> int:
        return len(self.ious) - self.tp


def class_matches(matched: Matching) -> dict[int, ClassMatch]:
    """Per category id: greedy IoU/Dice of each ground truth; TP and FP (crowd-ignored aside)."""
    result = {cat_id: ClassMatch() for cat_id in matched.names}
    for ann in matched.ground_truths:
        iou, dice = matched.best_overlap(ann)
        result[ann["category_id"]].ious.append(iou)
        result[ann["category_id"]].dices.append(dice)
    for verdict in matched.verdicts:
        found = result[verdict.pred["category_id"]]
        found.tp += int(verdict.outcome == TP)
        found.fp += int(verdict.outcome not in (TP, CROWD))
    return result


def prf(tp: int, fp: int, fn: int) -> dict[str, Number]:
    """Precision, recall and F1 (2TP / (2TP + FP + FN)); None where undefined."""
    return {
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
    }


def rounded(obj: Any, decimals: int = DECIMALS) -> Any:
    """A copy of nested dicts/lists with floats rounded; NaN becomes None."""
    if isinstance(obj, dict):
        return {k: rounded(v, decimals) for k, v in obj.items()}
    if isinstance(obj, list):
        return [rounded(v, decimals) for v in obj]
    if isinstance(obj, float):
        return None if math.isnan(obj) else round(obj, decimals)
    return obj


@dataclass
class Evaluation:
    """Everything the evaluate stage reports: nested metrics, per-class rows and PR curves."""

    metrics: dict[str, Any]
    rows: list[dict[str, Any]]
    curves: dict[str, list[dict[str, Any]]]  # pr_<key>.csv rows
    mask_ap: dict[str, Number]  # segm AP unrounded: 'all' and per class (error analysis's base)
    matching: Matching  # of every prediction (the error analysis reads it too)


def mask_ap(gt: COCO, evaluator: COCOeval) -> dict[str, Number]:
    """A segm COCOeval's AP@[.5:.95]: overall under 'all' and per class name."""
    per_class = {gt.cats[c]["name"]: v["AP"] for c, v in per_class_ap(evaluator).items()}
    return {"all": summary(evaluator)["AP"], **per_class}


def _class_row(name: str, aps: dict[str, dict[str, Number]], found: ClassMatch) -> dict[str, Any]:
    row: dict[str, Any] = {"class": name, "n_gt": len(found.ious)}
    for iou_type in IOU_TYPES:
        row.update({f"{iou_type}_{k}": v for k, v in aps[iou_type].items()})
    row.update(iou=mean(found.ious), dice=mean(found.dices))
    row.update(prf(found.tp, found.fp, found.fn), tp=found.tp, fp=found.fp, fn=found.fn)
    return row


def evaluate(gt: COCO, preds: Sequence[dict[str, Any]], score_threshold: float) -> Evaluation:
    """Every metric of the report: COCO mAP of all predictions; greedy IoU, Dice and P/R/F1 and
    pixel IoU and Dice of those scoring >= `score_threshold`. Like COCOeval, turns gt's polygons
    into RLEs in place."""
    evaluators = {t: run_cocoeval(gt, preds, t) for t in IOU_TYPES}
    matched = match(gt, preds)
    matches = class_matches(matched.at(score_threshold))
    per_type = {t: per_class_ap(e) for t, e in evaluators.items()}
    rows = [
        _class_row(matched.names[c], {t: per_type[t][c] for t in IOU_TYPES}, found)
        for c, found in matches.items()
    ]
    all_ious = [v for m in matches.values() for v in m.ious]
    all_dices = [v for m in matches.values() for v in m.dices]
    tp, fp, fn = (sum(getattr(m, k) for m in matches.values()) for k in ("tp", "fp", "fn"))
    metrics = {
        **{t: summary(e) for t, e in evaluators.items()},
        "iou": {"mean": mean(all_ious), **{r["class"]: r["iou"] for r in rows}},
        "dice": {"mean": mean(all_dices), **{r["class"]: r["dice"] for r in rows}},
        "match": {**prf(tp, fp, fn), "tp": tp, "fp": fp, "fn": fn},
        "semantic": semantic_metrics(gt, preds, score_threshold),
        "per_class": {r["class"]: {k: v for k, v in r.items() if k != "class"} for r in rows},
    }
    segm = evaluators["segm"]
    return Evaluation(
        metrics=rounded(metrics),
        rows=rows,
        curves=pr_curves(segm, matched.names),
        mask_ap=mask_ap(gt, segm),
        matching=matched,
    )


def headline(m: dict[str, Any]) -> dict[str, Any]:
    """metrics.json: the few numbers compared across experiments (`dvc exp show`), to 3 decimals;
    details.json has every number at full precision."""
    numbers = {
        **{iou_type: {"AP": m[iou_type]["AP"]} for iou_type in IOU_TYPES},
        "semantic": {"mIoU": m["semantic"]["mIoU"]},
        "iou": m["iou"]["mean"],
        "dice": m["dice"]["mean"],
        **{k: m["match"][k] for k in ("precision", "recall", "f1")},
    }
    return rounded(numbers, HEADLINE_DECIMALS)


def write_reports(evaluation: Evaluation, out: Path, details: Path, eval_dir: Path | None) -> None:
    """metrics.json to `out`, details.json and, with an eval_dir, per_class.csv and pr_<iou>.csv."""
    write_json(out, headline(evaluation.metrics))
    write_json(details, evaluation.metrics)
    if eval_dir is None:
        return
    write_csv(eval_dir / "per_class.csv", rounded(evaluation.rows))
    for key, rows in evaluation.curves.items():
        write_csv(eval_dir / f"pr_{key}.csv", rounded(rows))
