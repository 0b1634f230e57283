"""The Mask R-CNN family: torchvision's builders for our classes, batched mask paste, RPN anchors
from params, registered as `train.arch` values."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torchvision.models import ResNet50_Weights, ResNet101_Weights, resnet101
from torchvision.models.detection import (
    MaskRCNN,
    MaskRCNN_ResNet50_FPN_V2_Weights,
    MaskRCNN_ResNet50_FPN_Weights,
    maskrcnn_resnet50_fpn,
    maskrcnn_resnet50_fpn_v2,
)
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.rpn import RPNHead

from cocoseg.common.errors import ParamError
from cocoseg.common.params import ANCHOR_RATIOS, ANCHOR_SIZES
from cocoseg.modeling.arch import Arch
from cocoseg.modeling.paste import BatchedPasteTransform

BOX_PREDICTOR = "roi_heads.box_predictor."  # state-dict prefixes of the class-specific layers
MASK_PREDICTOR = "roi_heads.mask_predictor.mask_fcn_logits."
PREDICTOR_PREFIXES = (BOX_PREDICTOR, MASK_PREDICTOR)
COCO_CATEGORIES: list[str] = MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
NO_COCO_R101 = (
    "torchvision publishes no COCO-trained Mask R-CNN with a ResNet-101 backbone; use "
    "train.weights = imagenet (ImageNet ResNet-101 backbone), none (random init) or a path "
    "to a checkpoint"
)


def set_anchors(model: MaskRCNN, sizes: Sequence[int], ratios: Sequence[float]) -> MaskRCNN:
    """One anchor size per FPN level, every ratio at each; a new RPN head only if its shape
    (the number of ratios) changes, so COCO weights load whatever the sizes."""
    levels = len(model.rpn.anchor_generator.sizes)
    if len(sizes) != levels:
        raise ParamError(
            f"train.anchor_sizes = {list(sizes)} needs {levels} sizes: one per FPN level"
        )
    generator = AnchorGenerator(tuple((s,) for s in sizes), (tuple(ratios),) * levels)
    model.rpn.anchor_generator = generator
    head = model.rpn.head
    anchors = generator.num_anchors_per_location()[0]
    if head.cls_logits.out_channels != anchors:
        like = head.cls_logits.weight
        fresh = RPNHead(head.cls_logits.in_channels, anchors, conv_depth=len(head.conv))
        model.rpn.head = fresh.to(like.device, like.dtype)
    return model


def coco_rows(classes: list[str]) -> list[int]:
    """Row of background and of each class among COCO's 91 predictor outputs."""
    missing = [c for c in classes if c not in COCO_CATEGORIES]
    if missing:
        raise ParamError(f"init_heads_from_coco: {missing} are not COCO category names")
    return [0] + [COCO_CATEGORIES.index(c) for c in classes]


def select_coco_rows(state: dict[str, torch.Tensor], classes: list[str]) -> dict[str, torch.Tensor]:
    """The 91-class predictors' rows of background + `classes`, as a (K+1)-class state dict."""
    rows = torch.tensor(coco_rows(classes))
    box_rows = (rows[:, None] * 4 + torch.arange(4)).flatten()
    box, mask = BOX_PREDICTOR, MASK_PREDICTOR
    out = {}
    for key in ("weight", "bias"):
        out[f"{box}cls_score.{key}"] = state[f"{box}cls_score.{key}"][rows].clone()
        out[f"{box}bbox_pred.{key}"] = state[f"{box}bbox_pred.{key}"][box_rows].clone()
        out[f"{mask}{key}"] = state[f"{mask}{key}"][rows].clone()
    return out


def coco_start(
    state: dict[str, torch.Tensor], classes: list[str], init_heads: bool
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(weights to load, class heads) from torchvision's COCO Mask R-CNN state dict: all but the
    91-class predictors, and their rows of our classes when `init_heads`."""
    body = {k: v for k, v in state.items() if not k.startswith(PREDICTOR_PREFIXES)}
    return body, select_coco_rows(state, classes) if init_heads else {}


def maskrcnn_resnet101_fpn(
    *, weights: None = None, weights_backbone: None = None, num_classes: int, **kwargs: Any
) -> MaskRCNN:
    """A random Mask R-CNN on a ResNet-101 FPN, built as torchvision builds the ResNet-50 one
    (all five layers trainable, plain batch norm); start weights load afterwards."""
    backbone = _resnet_fpn_extractor(resnet101(weights=None), trainable_layers=5)
    return MaskRCNN(backbone, num_classes=num_classes, **kwargs)


def builder(torchvision_builder: Callable[..., MaskRCNN]) -> Callable[..., MaskRCNN]:
    """A build function over one of torchvision's Mask R-CNN builders (random init)."""

    def build(
        num_classes: int,
        *,
        anchor_sizes: Sequence[int] = ANCHOR_SIZES,
        anchor_ratios: Sequence[float] = ANCHOR_RATIOS,
        **kwargs: Any,
    ) -> MaskRCNN:
        """A Mask R-CNN for `num_classes` (background included) whose transform pastes masks
        batched (cocoseg.modeling.paste); other kwargs (min_size...) go to torchvision."""
        model = torchvision_builder(
            weights=None, weights_backbone=None, num_classes=num_classes, **kwargs
        )
        model.transform = BatchedPasteTransform.like(model.transform)
        return set_anchors(model, anchor_sizes, anchor_ratios)

    return build


def entry(
    name: str, torchvision_builder: Callable[..., MaskRCNN], coco: Any, imagenet: Any,
    *, frozen_bn: bool = True,
) -> Arch:  # fmt: skip
    """A Mask R-CNN family registry entry: torchvision's builder, its start weights, its BN."""
    return Arch(
        name=name, build=builder(torchvision_builder), coco=coco, imagenet=imagenet,
        frozen_bn=frozen_bn, class_prefixes=PREDICTOR_PREFIXES, coco_start=coco_start,
    )  # fmt: skip


ARCHS = (
    entry(
        "maskrcnn_resnet50_fpn",
        maskrcnn_resnet50_fpn,
        MaskRCNN_ResNet50_FPN_Weights.COCO_V1,
        ResNet50_Weights.IMAGENET1K_V1,
    ),
    entry(
        "maskrcnn_resnet50_fpn_v2",
        maskrcnn_resnet50_fpn_v2,
        MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1,
        ResNet50_Weights.IMAGENET1K_V1,
        frozen_bn=False,
    ),
    entry(
        "maskrcnn_resnet101_fpn",
        maskrcnn_resnet101_fpn,
        NO_COCO_R101,
        ResNet101_Weights.IMAGENET1K_V1,
    ),
)
