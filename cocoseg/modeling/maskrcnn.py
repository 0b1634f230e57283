"""The Mask R-CNN family: torchvision's builders for our classes, batched mask paste, RPN anchors
from params, registered as `train.arch` values."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torchvision.models import ResNet50_Weights
from torchvision.models.detection import (
    MaskRCNN,
    MaskRCNN_ResNet50_FPN_V2_Weights,
    MaskRCNN_ResNet50_FPN_Weights,
    maskrcnn_resnet50_fpn,
    maskrcnn_resnet50_fpn_v2,
)
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.rpn import RPNHead

from cocoseg.common.errors import ParamError
from cocoseg.common.params import ANCHOR_RATIOS, ANCHOR_SIZES
from cocoseg.modeling.arch import Arch
from cocoseg.modeling.paste import BatchedPasteTransform

BOX_PREDICTOR = "roi_heads.box_predictor."  # state-dict prefixes of the class-specific layers
MASK_PREDICTOR = "roi_heads.mask_predictor.mask_fcn_logits."
PREDICTOR_PREFIXES = (BOX_PREDICTOR, MASK_PREDICTOR)


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


ARCHS = (
    Arch(
        name="maskrcnn_resnet50_fpn",
        build=builder(maskrcnn_resnet50_fpn),
        coco=MaskRCNN_ResNet50_FPN_Weights.COCO_V1,
        imagenet=ResNet50_Weights.IMAGENET1K_V1,
        frozen_bn=True,
        class_prefixes=PREDICTOR_PREFIXES,
    ),
    Arch(
        name="maskrcnn_resnet50_fpn_v2",
        build=builder(maskrcnn_resnet50_fpn_v2),
        coco=MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1,
        imagenet=ResNet50_Weights.IMAGENET1K_V1,
        frozen_bn=False,
        class_prefixes=PREDICTOR_PREFIXES,
    ),
)
