"""Val COCO mAP during training (train.eval_every): the one inference path, then COCOeval. Rank 0
scores the val split while the other ranks wait for its row; the next epoch reseeds before it
draws, so validation cannot shift training's random stream (a resumed run trains the same)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from pycocotools.coco import COCO

from cocoseg.coco.cocoeval import coco_from_dataset, run_cocoeval, summary
from cocoseg.coco.images import ImageItem
from cocoseg.coco.inputs import split_paths, subset_images
from cocoseg.common.errors import DataError
from cocoseg.common.io import read_json
from cocoseg.common.params import TrainParams
from cocoseg.modeling.inference import predict_images
from cocoseg.train.runtime import Context

log = logging.getLogger(__name__)

ValSet = tuple[list[ImageItem], COCO]


def val_set(subset_dir: str | Path) -> ValSet:
    """The val split's (image id, path, recorded size) items and its ground truth (COCO index)."""
    images, _ = subset_images(subset_dir, "val")
    _, ann_file = split_paths(subset_dir, "val")
    if not images:
        raise DataError(f"{ann_file}: no val images to score; set train.eval_every=0")
    return [image.item for image in images], coco_from_dataset(read_json(ann_file))


def due(epoch: int, recipe: TrainParams) -> bool:
    """Every `eval_every` epochs and after the last one (never with eval_every 0)."""
    return recipe.eval_every > 0 and (epoch % recipe.eval_every == 0 or epoch == recipe.epochs)


def score(
    model: torch.nn.Module, val: ValSet, epoch: int, recipe: TrainParams, device: torch.device
) -> dict[str, Any]:
    """segm and bbox AP and AP50 of the model on the val set, and the seconds it took."""
    start = time.perf_counter()
    module = getattr(model, "module", model)  # DDP's wrapper would sync with absent ranks
    items, gt = val
    try:
        preds = predict_images(
            module, items, device=device, batch_size=recipe.batch_size,
            num_workers=recipe.num_workers, amp=recipe.amp, progress=False,
        )  # fmt: skip
    finally:
        module.train()
    row: dict[str, Any] = {"epoch": epoch}
    for iou_type in ("segm", "bbox"):
        numbers = summary(run_cocoeval(gt, preds, iou_type))
        row[f"{iou_type}_AP"], row[f"{iou_type}_AP50"] = numbers["AP"], numbers["AP50"]
    row["val_seconds"] = time.perf_counter() - start
    return row


def validate_if_due(
    model: torch.nn.Module,
    epoch: int,
    history: dict[str, list],
    val: ValSet | None,
    recipe: TrainParams,
    ctx: Context,
) -> None:
    """Score `epoch` on rank 0 when it is due and not yet scored; every rank gets the row."""
    if not due(epoch, recipe) or any(row["epoch"] == epoch for row in history["val"]):
        return
    box = [score(model, val, epoch, recipe, ctx.device) if ctx.main else None]  # type: ignore[arg-type]
    if ctx.world_size > 1:
        dist.broadcast_object_list(box, src=0)  # the other ranks wait for rank 0's row
    row = box[0]
    history["val"].append(row)
    log.info(
        "epoch %d val: segm AP %s, bbox AP %s (%.1f s)",
        epoch, _fmt(row["segm_AP"]), _fmt(row["bbox_AP"]), row["val_seconds"],
    )  # fmt: skip


def _fmt(value: float | None) -> str:
    """An AP for the log; COCO's 'nothing to score' as n/a."""
    return "n/a" if value is None else f"{value:.4f}"
