"""COCO mAP with pycocotools for stages evaluate and train: quiet indexes, loadRes on copies."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

# COCOeval.stats in order: six average precisions, then six average recalls.
_PRECISIONS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
SUMMARY_NAMES = (*_PRECISIONS, "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")

Number = float | None


def coco_from_dataset(dataset: dict[str, Any]) -> COCO:
    """A pycocotools COCO index over an in-memory dataset, without its console chatter."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def results_coco(gt: COCO, preds: Sequence[dict[str, Any]], iou_type: str) -> COCO:
    """Predictions as pycocotools' loadRes builds them, on copies, also for none. For segm the box
    is left out, so object sizes use the mask's area (as torchvision and detectron2 do)."""
    if not preds:
        empty = {"images": gt.dataset["images"], "categories": gt.dataset["categories"]}
        return coco_from_dataset({**empty, "annotations": []})
    keep = ("image_id", "category_id", "score", "segmentation" if iou_type == "segm" else "bbox")
    anns = [{k: p[k] for k in keep} for p in preds]
    with contextlib.redirect_stdout(io.StringIO()):
        return gt.loadRes(anns)


def run_cocoeval(gt: COCO, preds: Sequence[dict[str, Any]], iou_type: str) -> COCOeval:
    """COCOeval evaluated, accumulated and summarised (quietly) for 'segm' or 'bbox'."""
    evaluator = COCOeval(gt, results_coco(gt, preds, iou_type), iou_type)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def summary(evaluator: COCOeval) -> dict[str, Number]:
    """The twelve numbers `summarize()` prints, by name; COCO's -1 (nothing to score) is None."""
    stats = zip(SUMMARY_NAMES, evaluator.stats, strict=True)
    return {name: None if value < 0 else float(value) for name, value in stats}
