"""Semantic metrics of saved predictions, the same for every arch so that instance and semantic
models compare: per-class pixel IoU and Dice, both sides flattened to one class per pixel as
docs/metrics.md says (ground truth as cocoseg.modeling.deeplab.class_map builds DeepLab's
targets). Intersections and unions are summed over all val images before dividing; background
is reported but left out of the means (it is most pixels and would flatter every model)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from cocoseg.coco.cocoeval import Number

IGNORED = -1  # ground-truth value of a crowd pixel no instance covers


def truth_map(gt: COCO, image_id: int, index: dict[int, int]) -> np.ndarray:
    """(H, W) class index (0 background, `index[category_id]` for objects, IGNORED) of one
    ground-truth image: the smaller instance wins an overlap; uncovered crowd pixels ignored."""
    info = gt.imgs[image_id]
    out = np.zeros((info["height"], info["width"]), dtype=np.int16)
    anns = gt.imgToAnns.get(image_id, [])
    for ann in anns:
        if ann.get("iscrowd"):
            out[gt.annToMask(ann) > 0] = IGNORED
    objects = [a for a in anns if not a.get("iscrowd")]
    masks = [gt.annToMask(a) > 0 for a in objects]
    areas = np.array([m.sum() for m in masks])
    for k in np.argsort(-areas, kind="stable"):  # the largest painted first
        out[masks[k]] = index[objects[k]["category_id"]]
    return out


def prediction_map(
    preds: Sequence[dict[str, Any]], shape: tuple[int, int], index: dict[int, int]
) -> np.ndarray:
    """(H, W) class index of one image's kept predictions: the higher score wins an overlap."""
    out = np.zeros(shape, dtype=np.int16)
    scores = np.array([p["score"] for p in preds])
    for k in np.argsort(scores, kind="stable"):  # the lowest painted first; a tie: the later wins
        out[mask_utils.decode(preds[k]["segmentation"]) > 0] = index[preds[k]["category_id"]]
    return out


def confusion(truth: np.ndarray, predicted: np.ndarray, n: int) -> np.ndarray:
    """(n, n) pixel counts, rows the true class, columns the predicted; ignored pixels left out."""
    scored = truth != IGNORED
    pairs = truth[scored].astype(np.int64) * n + predicted[scored]
    return np.bincount(pairs, minlength=n * n).reshape(n, n)


def pixel_confusion(
    gt: COCO, preds: Sequence[dict[str, Any]], score_threshold: float
) -> tuple[np.ndarray, list[str]]:
    """The confusion matrix summed over every ground-truth image, and the class names of its
    rows ("background" first, then the categories in id order)."""
    cat_ids = sorted(gt.cats)
    index = {c: k for k, c in enumerate(cat_ids, start=1)}
    kept: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for p in preds:
        if p["score"] >= score_threshold:
            kept[p["image_id"]].append(p)
    n = len(cat_ids) + 1
    total = np.zeros((n, n), dtype=np.int64)
    for image_id in sorted(gt.imgs):
        truth = truth_map(gt, image_id, index)
        total += confusion(truth, prediction_map(kept[image_id], truth.shape, index), n)
    return total, ["background", *(gt.cats[c]["name"] for c in cat_ids)]


def ratio(num: float, den: float) -> Number:
    """num / den as a float; None where den is 0 (undefined)."""
    return float(num / den) if den else None


def mean(values: Sequence[float]) -> Number:
    """The mean as a float; None for no values."""
    return float(np.mean(values)) if len(values) else None


def semantic_metrics(
    gt: COCO, preds: Sequence[dict[str, Any]], score_threshold: float
) -> dict[str, Any]:
    """mIoU and mDice over the object classes, and per class (background too) IoU, Dice and
    the pixel counts they come from."""
    matrix, names = pixel_confusion(gt, preds, score_threshold)
    per_class = {}
    for k, name in enumerate(names):
        inter, truth, predicted = matrix[k, k], matrix[k].sum(), matrix[:, k].sum()
        per_class[name] = {
            "iou": ratio(inter, truth + predicted - inter),
            "dice": ratio(2 * inter, truth + predicted),
            "gt_pixels": int(truth),
            "pred_pixels": int(predicted),
        }
    objects = [per_class[name] for name in names[1:]]
    return {
        "mIoU": mean([row["iou"] for row in objects if row["iou"] is not None]),
        "mDice": mean([row["dice"] for row in objects if row["dice"] is not None]),
        "per_class": per_class,
    }
