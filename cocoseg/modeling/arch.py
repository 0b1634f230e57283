"""An architecture as the registry knows it: how to build it, what it can start from, which of
its weights are class-specific. One record per `train.arch` value (cocoseg.modeling.registry)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter

from torch import Tensor, nn
from torchvision.models import WeightsEnum
from torchvision.ops import FrozenBatchNorm2d

MAX_DETECTIONS = 100  # per image, in the contract: torchvision's detections_per_img, COCO's maxDets

StateDict = dict[str, Tensor]
TRAINABLE_LAYERS = ("layer2", "layer3", "layer4")  # torchvision's default of 3 when pretrained


@dataclass(frozen=True)
class Arch:
    """One buildable architecture. Every model meets torchvision's Mask R-CNN contract, so the
    train loop, inference, evaluate and predict serve every arch: in training `model(images,
    targets)` returns a dict of losses (named from trainlog.LOSS_PARTS); in eval `model(images)`
    maps a list of float CHW images to one dict per image: boxes (xyxy), labels, scores and
    masks ((N, 1, H, W) probabilities at the image's original size). `coco`
    and `imagenet` are torchvision weights, or the one line saying why there are none and what
    to use instead (never a silent random start)."""

    name: str
    build: Callable[..., nn.Module]  # (num_classes, **options) -> a randomly initialised model
    coco: WeightsEnum | str
    imagenet: WeightsEnum | str
    frozen_bn: bool  # a pretrained start freezes batch norm (torchvision's v1 layout)
    class_prefixes: tuple[str, ...]  # state-dict prefixes of the layers sized by the classes
    # torchvision's COCO Mask R-CNN state dict -> (what to load, the class heads: our classes'
    # rows when asked), in this arch's keys.
    coco_start: Callable[[StateDict, list[str], bool], tuple[StateDict, StateDict]]
    # The ResNet whose stem stays fixed: by default the one under torchvision's FPN.
    body: Callable[[nn.Module], nn.Module] = attrgetter("backbone.body")
    coco_fresh: tuple[str, ...] = ()  # prefixes a COCO start leaves random (nothing there fits)
    # The state-dict key whose first dimension counts the classes (background included).
    classes_key: str = "roi_heads.box_predictor.cls_score.weight"  # torchvision's Mask R-CNN's

    def layout(self, model: nn.Module, weights: str) -> nn.Module:
        """What torchvision's builders do given start weights: the stem and layer1 fixed, batch
        norm frozen where `frozen_bn` (COCO_V1's eps is 0); from scratch everything trains."""
        if weights == "none":
            return model
        body = self.body(model)
        if self.frozen_bn:
            freeze_bn(body, eps=0.0 if weights == "coco" else 1e-5)
        for name, param in body.named_parameters():
            if not name.startswith(TRAINABLE_LAYERS):
                param.requires_grad_(False)
        return model


def freeze_bn(module: nn.Module, eps: float) -> None:
    """Swap every BatchNorm2d under module for a FrozenBatchNorm2d with the same statistics,
    device and dtype (so a layout applied after `model.to(device)` leaves none on the CPU)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            like = child.running_mean if child.running_mean is not None else child.weight
            frozen = FrozenBatchNorm2d(child.num_features, eps=eps).to(like.device, like.dtype)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key).detach())
            setattr(module, name, frozen)
        else:
            freeze_bn(child, eps)
