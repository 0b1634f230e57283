"""The DeepLabV3+ family: segmentation-models-pytorch's DeepLabV3Plus on a torchvision-layout
ResNet, wrapped to meet the Arch contract (cocoseg.modeling.arch): in training a dict of losses
from (images, targets), in eval instances from its class map (cocoseg.modeling.instances).

Images are resized, normalised and batched by torchvision's GeneralizedRCNNTransform, so
train.min_size/max_size and the presets that resize themselves mean what they mean for Mask R-CNN.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from operator import attrgetter
from typing import Any

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import ResNet50_Weights, ResNet101_Weights
from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from cocoseg.common.errors import ParamError
from cocoseg.common.params import ANCHOR_RATIOS, ANCHOR_SIZES, TrainParams
from cocoseg.modeling.arch import Arch, StateDict
from cocoseg.modeling.instances import instances_from_probabilities

log = logging.getLogger(__name__)

IGNORE = 255  # class-map value of the pixels no loss is scored on: crowd regions, batch padding
IMAGENET_MEAN = [0.485, 0.456, 0.406]  # the encoders' ImageNet normalisation (torchvision's)
IMAGENET_STD = [0.229, 0.224, 0.225]
SIZE_DIVISIBLE = 32  # the ResNet's coarsest stride: padded batches fit every level exactly
HEAD = "net.segmentation_head."  # the layer sized by the classes
MASK_RCNN_BODY = "backbone.body."  # the ResNet-50 inside torchvision's COCO Mask R-CNN
# What the train stage passes every arch, meaningless here: only the defaults are accepted
# (params refuse others by name first, cocoseg.common.params).
DETECTION_DEFAULTS: dict[str, Any] = {
    "anchor_sizes": tuple(ANCHOR_SIZES),
    "anchor_ratios": tuple(ANCHOR_RATIOS),
    "box_batch_size_per_image": TrainParams().rois_per_image,
}


def class_map(masks: Tensor, labels: Tensor, crowd: Tensor | None = None) -> Tensor:
    """(H, W) uint8 class of each pixel from (N, H, W) instance masks and their labels: where
    instances overlap the smaller one wins (it is mostly the one in front: a ball in a hand;
    equal areas: the later one), crowd pixels no instance covers are IGNORE, the rest 0."""
    out = torch.zeros(masks.shape[-2:], dtype=torch.uint8, device=masks.device)
    if crowd is not None:
        out[crowd.bool()] = IGNORE
    if len(masks):
        areas = masks.flatten(1).sum(1)
        order = torch.argsort(areas, descending=True, stable=True)  # the largest painted first
        for index in order.tolist():
            out[masks[index].bool()] = labels[index].to(torch.uint8)
    return out


class DeepLabV3PlusModel(nn.Module):
    """smp's DeepLabV3Plus (`net`) behind torchvision's detection interface: `model(images,
    targets)` in training returns {"loss_mask": pixel cross-entropy}, `model(images)` in eval
    one dict of instances per image at its original size."""

    def __init__(self, net: smp.DeepLabV3Plus, transform: GeneralizedRCNNTransform) -> None:
        super().__init__()
        self.net, self.transform = net, transform

    def forward(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses (training) or detections (eval) of a list of float CHW images in [0, 1]."""
        original = [tuple(image.shape[-2:]) for image in images]
        batch, _ = self.transform(images)
        logits = self.net(batch.tensors)
        if self.training:
            if targets is None:
                raise ValueError("in training mode the model needs targets")
            maps = [class_map(t["masks"], t["labels"], t.get("crowd")) for t in targets]
            return {"loss_mask": pixel_loss(logits, batched_maps(maps, batch.image_sizes, logits))}
        return [
            instances_from_probabilities(probabilities(logits[i], size, original[i]))
            for i, size in enumerate(batch.image_sizes)
        ]


def batched_maps(maps: list[Tensor], sizes: Sequence[tuple[int, int]], like: Tensor) -> Tensor:
    """(B, H, W) class maps resized (nearest, as torchvision resizes masks) to each image's size
    in the batch and padded with IGNORE to the batch's padded size."""
    out = torch.full((len(maps), *like.shape[-2:]), IGNORE, dtype=torch.uint8, device=like.device)
    for i, (cmap, (h, w)) in enumerate(zip(maps, sizes, strict=True)):
        if tuple(cmap.shape) != (h, w):
            cmap = F.interpolate(cmap[None, None].float(), size=(h, w))[0, 0].to(torch.uint8)
        out[i, :h, :w] = cmap
    return out


def pixel_loss(logits: Tensor, maps: Tensor) -> Tensor:
    """Cross-entropy per scored pixel; 0 (with a gradient) when every pixel is IGNORE."""
    total = F.cross_entropy(logits.float(), maps.long(), ignore_index=IGNORE, reduction="sum")
    return total / (maps != IGNORE).sum().clamp(min=1)


def probabilities(logits: Tensor, size: tuple[int, int], original: tuple[int, int]) -> Tensor:
    """(C, H, W) class probabilities at the original image size from one image's padded logits:
    the padding cropped off, bilinear resize, softmax."""
    h, w = size
    cropped = logits[None, :, :h, :w].float()
    return F.interpolate(cropped, size=original, mode="bilinear", align_corners=False)[0].softmax(0)


def builder(encoder: str) -> Any:
    """A build function for DeepLabV3+ on the smp encoder `encoder` (random init)."""

    def build(
        num_classes: int,
        *,
        min_size: int = 800,
        max_size: int = 1333,
        _skip_resize: bool = False,
        **detection_options: Any,
    ) -> DeepLabV3PlusModel:
        """DeepLabV3+ for `num_classes` (background included), output stride 16. The ASPP's
        image-pooling branch normalises by GroupNorm: its BatchNorm sees one value per image
        and channel, so it fails on a batch of one and is noise on a batch of two."""
        for key, value in detection_options.items():
            if key not in DETECTION_DEFAULTS:
                raise TypeError(f"DeepLabV3+ takes no option {key!r}")
            given = tuple(value) if isinstance(value, Sequence) else value
            if given != DETECTION_DEFAULTS[key]:
                raise ParamError(f"{key} = {value} has no meaning for a DeepLabV3+ model")
        net = smp.DeepLabV3Plus(encoder_name=encoder, encoder_weights=None, classes=num_classes)
        pooling = net.decoder.aspp[0].convs[-1]
        pooling[2] = nn.GroupNorm(32, pooling[2].num_features)
        transform = GeneralizedRCNNTransform(
            min_size, max_size, IMAGENET_MEAN, IMAGENET_STD, size_divisible=SIZE_DIVISIBLE,
            _skip_resize=_skip_resize,
        )  # fmt: skip
        return DeepLabV3PlusModel(net, transform)

    return build


def coco_start(
    state: StateDict, classes: list[str], init_heads: bool
) -> tuple[StateDict, StateDict]:
    """The encoder from the ResNet-50 body of torchvision's COCO Mask R-CNN (its frozen batch
    norm into ours: the same four tensors); the decoder and head start random."""
    if init_heads:
        log.info("train.init_heads_from_coco ignored: COCO's Mask R-CNN has no DeepLabV3+ head")
    body = {
        "net.encoder." + k.removeprefix(MASK_RCNN_BODY): v
        for k, v in state.items()
        if k.startswith(MASK_RCNN_BODY)
    }
    return body, {}


NO_COCO_R101 = (
    "torchvision publishes no COCO model with a ResNet-101 body; use train.weights = imagenet, "
    "or train.arch = deeplabv3plus_resnet50 for a COCO start"
)
FAMILY = {
    "frozen_bn": True,  # batch 2 per step: BN statistics of two images would be noise
    "class_prefixes": (HEAD,),
    "coco_start": coco_start,
    "body": attrgetter("net.encoder"),  # the ResNet encoder (torchvision's layout, fc removed)
    "coco_fresh": ("net.decoder.",),
    "classes_key": f"{HEAD}0.weight",
}
ARCHS = (
    Arch(
        name="deeplabv3plus_resnet50",
        build=builder("resnet50"),
        coco=MaskRCNN_ResNet50_FPN_Weights.COCO_V1,
        imagenet=ResNet50_Weights.IMAGENET1K_V1,
        **FAMILY,
    ),
    Arch(
        name="deeplabv3plus_resnet101",
        build=builder("resnet101"),
        coco=NO_COCO_R101,
        imagenet=ResNet101_Weights.IMAGENET1K_V1,
        **FAMILY,
    ),
)
