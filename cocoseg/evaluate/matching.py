"""One greedy matching of predictions to ground truth: the metrics and the error breakdown read it.

As COCOeval (segm, IoU 0.5, the best `max_dets` per image and class by a stable sort; a crowd
region's IoU is |d∩g|/|d|), each prediction in score order gets the first outcome that applies:
1. true positive: takes the free ground truth of its class it overlaps most at IoU >= 0.5
   (ties to the later annotation, as COCOeval);
2. crowd-ignored: a crowd region of its class covers it at IoU >= 0.5 (neither hit nor error);
3. duplicate: a ground truth of its class at IoU >= 0.5 is already taken by a higher score;
4. classification: a non-crowd ground truth of another class at IoU >= 0.5;
5. localisation: a ground truth of its class at 0.1 <= IoU < 0.5;
6. background: none of these.
A non-crowd ground truth no true positive took is missed; its greedy (IoU, Dice) is that of the
prediction of its class overlapping it most (ties to the higher score). An outcome depends only on
higher scores, so `Matching.at(t)` is the matching of the predictions scoring >= t.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

MATCH_IOU = 0.5
LOCALISATION_IOU = 0.1
MAX_DETS = 100
TP, CROWD = "true positive", "ignored (crowd)"
PREDICTION_ERRORS = ("localisation", "classification", "duplicate", "background")


@dataclass(frozen=True)
class Verdict:
    """A prediction's outcome, the class it hit (TP, classification) and the id a TP took."""

    pred: dict[str, Any]
    outcome: str
    gt_category_id: int | None = None
    gt_id: int | None = None


@dataclass(frozen=True)
class Overlap:
    """A prediction's score and its (IoU, Dice) with a ground truth of its class."""

    score: float
    iou: float
    dice: float


@dataclass(frozen=True)
class Matching:
    """Verdicts (images by id, best score first), the non-crowd ground truths (same order) and, per
    ground-truth id, the overlaps that raised its best IoU in score order (the last: its pair)."""

    verdicts: list[Verdict]
    ground_truths: list[dict[str, Any]]
    overlaps: dict[int, list[Overlap]]
    names: dict[int, str]  # category id -> name, by id
    score_threshold: float = -math.inf

    @cached_property
    def missed(self) -> list[dict[str, Any]]:
        """The ground truths no true positive took."""
        taken = {v.gt_id for v in self.verdicts if v.outcome == TP}
        return [a for a in self.ground_truths if a["id"] not in taken]

    def best_overlap(self, ann: dict[str, Any]) -> tuple[float, float]:
        """A ground truth's greedy (IoU, Dice); (0, 0) where no prediction of its class overlaps."""
        found = self.overlaps[ann["id"]]
        return (found[-1].iou, found[-1].dice) if found else (0.0, 0.0)

    def at(self, score_threshold: float) -> Matching:
        """This matching restricted to the predictions scoring >= score_threshold."""
        keep = max(score_threshold, self.score_threshold)
        return Matching(
            [v for v in self.verdicts if v.pred["score"] >= keep],
            self.ground_truths,
            {i: [o for o in found if o.score >= keep] for i, found in self.overlaps.items()},
            self.names,
            keep,
        )


def pair_overlap(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, float]:
    """(IoU, Dice) of two RLE masks from their intersection; both 0 when both are empty."""
    inter = float(mask_utils.area(mask_utils.merge([a, b], intersect=True)))
    total = float(mask_utils.area(a)) + float(mask_utils.area(b))
    if total == 0:
        return 0.0, 0.0
    return inter / (total - inter), 2 * inter / total


def _considered(preds: Sequence[dict[str, Any]], threshold: float, max_dets: int) -> dict:
    """Per image, the predictions taking part, best score first: per class the best max_dets
    (a stable sort, as COCOeval's) scoring >= threshold."""
    groups: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
    for pred in preds:
        groups[pred["image_id"], pred["category_id"]].append(pred)
    per_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for (image_id, _), group in groups.items():
        ranked = sorted(group, key=lambda p: -p["score"])[:max_dets]
        per_image[image_id] += [p for p in ranked if p["score"] >= threshold]
    return {i: sorted(dts, key=lambda p: -p["score"]) for i, dts in per_image.items()}


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


class _ImageMatch:
    """One image's ground truths and crowd regions, judging its predictions in score order."""

    def __init__(self, gt: COCO, anns: list[dict[str, Any]]) -> None:
        self.gts = [a for a in anns if not a.get("iscrowd")]
        self.regions = self.gts + [a for a in anns if a.get("iscrowd")]
        self.rles = [gt.annToRLE(a) for a in self.regions]
        self.cats = np.array([a["category_id"] for a in self.regions], dtype=int)
        self.free = np.ones(len(self.gts), dtype=bool)
        self.best = np.zeros(len(self.gts))  # best IoU so far per ground truth
        self.overlaps: list[list[Overlap]] = [[] for _ in self.gts]

    def judge_all(self, dts: list[dict[str, Any]]) -> list[Verdict]:
        """The verdicts of the image's predictions, given best score first."""
        ious = np.zeros((len(dts), len(self.regions)))
        if dts and self.regions:  # crowd regions' IoU is |d∩g|/|d|
            crowd = [int(bool(a.get("iscrowd"))) for a in self.regions]
            found = mask_utils.iou([d["segmentation"] for d in dts], self.rles, crowd)
            ious = np.asarray(found).reshape(ious.shape)
        return [self._judge(dt, row) for dt, row in zip(dts, ious, strict=True)]

    def _judge(self, dt: dict[str, Any], row: np.ndarray) -> Verdict:
        """The verdict of the next prediction from its IoU row; takes the ground truth it hits."""
        n = len(self.gts)
        same = self.cats == dt["category_id"]
        for j in np.flatnonzero(same[:n] & (row[:n] > self.best)):
            self.best[j] = row[j]
            overlap = pair_overlap(dt["segmentation"], self.rles[j])
            self.overlaps[j].append(Overlap(dt["score"], *overlap))
        candidates = np.where(same[:n] & self.free & (row[:n] >= MATCH_IOU), row[:n], -1.0)
        if n and candidates.max() >= 0:
            taken = n - 1 - int(candidates[::-1].argmax())  # ties to the later, as COCOeval
            self.free[taken] = False
            return Verdict(dt, TP, dt["category_id"], self.gts[taken]["id"])
        if (same[n:] & (row[n:] >= MATCH_IOU)).any():
            return Verdict(dt, CROWD)
        return Verdict(dt, *_error_kind(row[:n], same[:n], self.cats[:n]))


def match(
    gt: COCO,
    preds: Sequence[dict[str, Any]],
    score_threshold: float = -math.inf,
    max_dets: int = MAX_DETS,
) -> Matching:
    """The matching of checked predictions scoring >= score_threshold (all by default)."""
    per_image = _considered(preds, score_threshold, max_dets)
    verdicts, gts, overlaps = [], [], {}
    for image_id in sorted(gt.imgs):
        image = _ImageMatch(gt, gt.imgToAnns.get(image_id, []))
        verdicts += image.judge_all(per_image.get(image_id, []))
        gts += image.gts
        overlaps.update(zip([a["id"] for a in image.gts], image.overlaps, strict=True))
    names = {c: gt.cats[c]["name"] for c in sorted(gt.cats)}
    return Matching(verdicts, gts, overlaps, names, score_threshold)
