"""The Cascade Mask R-CNN family: a Mask R-CNN of cocoseg.modeling.maskrcnn (anchors, sizes,
batched paste) whose RoI heads are CascadeRoIHeads; COCO's Mask R-CNN mapped into every stage."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torchvision.models import ResNet50_Weights, ResNet101_Weights
from torchvision.models.detection import (
    MaskRCNN_ResNet50_FPN_Weights,
    maskrcnn_resnet50_fpn,
)

from cocoseg.modeling.arch import Arch, StateDict
from cocoseg.modeling.cascade_heads import STAGE_BOX_WEIGHTS, CascadeRoIHeads
from cocoseg.modeling.maskrcnn import (
    BOX_PREDICTOR,
    MASK_PREDICTOR,
    NO_COCO_R101,
    builder,
    maskrcnn_resnet101_fpn,
)
from cocoseg.modeling.maskrcnn import coco_start as mask_rcnn_start

COCO_BOX_HEAD = "roi_heads.box_head."
STAGE_PREDICTORS = tuple(f"roi_heads.stages.{k}.predictor." for k in range(len(STAGE_BOX_WEIGHTS)))


def cascade_builder(mask_rcnn_build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """A build function: the Mask R-CNN `mask_rcnn_build` makes, its RoI heads made cascade."""

    def build(num_classes: int, **options: Any) -> nn.Module:
        """A Cascade Mask R-CNN for `num_classes` (background included); options as for the
        Mask R-CNN builder (anchors, min_size, box_batch_size_per_image...)."""
        model = mask_rcnn_build(num_classes, **options)
        model.roi_heads = CascadeRoIHeads(model.roi_heads, num_classes)
        return model

    return build


def agnostic_box_rows(coco_rows: StateDict, stage: int) -> StateDict:
    """A stage's class-agnostic regressor from COCO's class-specific one: the mean of our
    classes' rows (background's excluded), times the stage's box-coder weights over COCO's
    (10, 10, 5, 5), so every stage starts out applying the same box delta."""
    scale = torch.tensor(STAGE_BOX_WEIGHTS[stage]) / torch.tensor(STAGE_BOX_WEIGHTS[0])
    out = {}
    for key in ("weight", "bias"):
        rows = coco_rows[f"{BOX_PREDICTOR}bbox_pred.{key}"]
        mean = rows.unflatten(0, (-1, 4))[1:].mean(0)  # (4, ...) over the foreground classes
        out[key] = mean * scale.to(mean.dtype).reshape(4, *[1] * (mean.dim() - 1))
    return out


def coco_start(
    state: StateDict, classes: list[str], init_heads: bool
) -> tuple[StateDict, StateDict]:
    """(weights to load, class heads) from torchvision's COCO Mask R-CNN: Mask R-CNN's start
    with its box head in every stage; with `init_heads`, every stage's cls_score and the mask
    predictor from COCO's rows of our classes and each bbox_pred by agnostic_box_rows."""
    mask_rcnn_body, rows = mask_rcnn_start(state, classes, init_heads)
    body: StateDict = {}
    for key, value in mask_rcnn_body.items():
        if key.startswith(COCO_BOX_HEAD):
            for prefix in STAGE_PREDICTORS:
                stage_head = prefix.replace(".predictor.", ".head.")
                body[stage_head + key.removeprefix(COCO_BOX_HEAD)] = value
        else:
            body[key] = value
    if not init_heads:
        return body, {}
    heads = {k: v for k, v in rows.items() if k.startswith(MASK_PREDICTOR)}
    for stage, prefix in enumerate(STAGE_PREDICTORS):
        for key in ("weight", "bias"):
            heads[f"{prefix}cls_score.{key}"] = rows[f"{BOX_PREDICTOR}cls_score.{key}"].clone()
        for key, value in agnostic_box_rows(rows, stage).items():
            heads[f"{prefix}bbox_pred.{key}"] = value
    return body, heads


def _cascade_arch(name: str, mask_rcnn: Callable[..., nn.Module], **weights: Any) -> Arch:
    """A cascade entry: v1's frozen batch norm, every stage's predictor and the mask predictor
    sized by the classes."""
    return Arch(
        name=name,
        build=cascade_builder(builder(mask_rcnn)),
        frozen_bn=True,
        class_prefixes=(*STAGE_PREDICTORS, MASK_PREDICTOR),
        coco_start=coco_start,
        classes_key=f"{STAGE_PREDICTORS[0]}cls_score.weight",
        **weights,
    )


ARCHS = (
    _cascade_arch(
        "cascade_maskrcnn_resnet50_fpn",
        maskrcnn_resnet50_fpn,
        coco=MaskRCNN_ResNet50_FPN_Weights.COCO_V1,
        imagenet=ResNet50_Weights.IMAGENET1K_V1,
    ),
    _cascade_arch(
        "cascade_maskrcnn_resnet101_fpn",
        maskrcnn_resnet101_fpn,
        coco=NO_COCO_R101,
        imagenet=ResNet101_Weights.IMAGENET1K_V1,
    ),
)
