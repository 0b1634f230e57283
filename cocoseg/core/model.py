"""Build torchvision's Mask R-CNN for our classes from `train.weights` (coco, imagenet, none or a
checkpoint) in torchvision's fine-tuning layout, and save/load the trained model file."""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import ResNet50_Weights, WeightsEnum
from torchvision.models.detection import (
    MaskRCNN,
    MaskRCNN_ResNet50_FPN_V2_Weights,
    MaskRCNN_ResNet50_FPN_Weights,
    maskrcnn_resnet50_fpn,
    maskrcnn_resnet50_fpn_v2,
)
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import FrozenBatchNorm2d

from cocoseg.core.config import ANCHOR_RATIOS, ANCHOR_SIZES
from cocoseg.core.errors import DataError, ParamError, os_fault, os_fault_message
from cocoseg.core.paste import BatchedPasteTransform

log = logging.getLogger(__name__)

ARCHS = {
    "maskrcnn_resnet50_fpn": maskrcnn_resnet50_fpn,
    "maskrcnn_resnet50_fpn_v2": maskrcnn_resnet50_fpn_v2,
}
COCO_WEIGHTS: dict[str, WeightsEnum] = {
    "maskrcnn_resnet50_fpn": MaskRCNN_ResNet50_FPN_Weights.COCO_V1,
    "maskrcnn_resnet50_fpn_v2": MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1,
}
IMAGENET_WEIGHTS = ResNet50_Weights.IMAGENET1K_V1
COCO_CATEGORIES: list[str] = MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
BOX_PREDICTOR = "roi_heads.box_predictor."  # state-dict prefixes of the class-specific layers
MASK_PREDICTOR = "roi_heads.mask_predictor.mask_fcn_logits."
PREDICTOR_PREFIXES = (BOX_PREDICTOR, MASK_PREDICTOR)
TRAINABLE_LAYERS = ("layer2", "layer3", "layer4")  # torchvision's default of 3 when pretrained
HEADS_IGNORED = "train.init_heads_from_coco ignored: train.weights = %s has no COCO heads"


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


def build_model(
    arch: str,
    num_classes: int,
    *,
    anchor_sizes: Sequence[int] = ANCHOR_SIZES,
    anchor_ratios: Sequence[float] = ANCHOR_RATIOS,
    **kwargs: Any,
) -> MaskRCNN:
    """A randomly initialised Mask R-CNN for `num_classes` (background included) whose transform
    pastes masks batched (`cocoseg.core.paste`); other kwargs (min_size...) go to torchvision."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
    model = ARCHS[arch](weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)
    model.transform = BatchedPasteTransform.like(model.transform)
    return set_anchors(model, anchor_sizes, anchor_ratios)


def model_record(
    model: nn.Module, classes: list[str], arch: str, min_size: int, max_size: int, params: dict
) -> dict[str, Any]:
    """What models/model.pt holds: weights plus everything needed to rebuild and use them."""
    return {
        "model": getattr(model, "module", model).state_dict(),  # unwrapped from DDP
        "classes": list(classes),
        "arch": arch,
        "min_size": min_size,
        "max_size": max_size,
        "params": params,
    }


def load_record(path: str | Path) -> dict[str, Any]:
    """torch.load with weights_only=True: a pickle that would run code is refused."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: model file not found (run `dvc repro train` first)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        fault = os_fault(err)
        if fault is not None:  # the file system failed (permissions, I/O), not the file
            raise DataError(os_fault_message(fault, path)) from None
        raise DataError(f"{path}: cannot load as a weights-only checkpoint: {err}") from None


def fetch_state_dict(weights: WeightsEnum, param_value: str) -> dict[str, torch.Tensor]:
    """torchvision's pretrained state dict from its cache, downloading it when missing."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)  # a dead network fails in seconds rather than hangs
    try:
        return weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except (OSError, RuntimeError) as err:  # URLError, socket errors, hash mismatch
        raise DataError(
            f"train.weights = {param_value}: torchvision's file {path.name} is neither readable "
            f"in its cache nor downloadable ({err}). torchvision looks for it at {path} "
            f"(the cache moves with $TORCH_HOME). Copy {weights.url} there, or use a value "
            f"that works offline: train.weights = none (random init) or a path to a checkpoint "
            f"file (a cocoseg model.pt or the downloaded .pth itself)."
        ) from None
    finally:
        socket.setdefaulttimeout(old_timeout)


def freeze_bn(module: nn.Module, eps: float) -> nn.Module:
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
    return module


def pretrained_layout(model: MaskRCNN, arch: str, weights: str) -> MaskRCNN:
    """What torchvision's builders do given weights: v1 freezes batch norm, stem+layer1 fixed."""
    if weights == "none":
        return model
    body = model.backbone.body
    if arch == "maskrcnn_resnet50_fpn":
        freeze_bn(body, eps=0.0 if weights == "coco" else 1e-5)  # torchvision: COCO_V1 eps 0
    for name, param in body.named_parameters():
        if not name.startswith(TRAINABLE_LAYERS):
            param.requires_grad_(False)
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


def _load_backbone_and_heads(
    model: MaskRCNN, state: dict[str, torch.Tensor], heads: dict[str, torch.Tensor], source: str
) -> None:
    """Load everything but the class predictors from `state`, and the predictors from `heads`.
    Start weights whose RPN head has another anchor count are a params error, not a crash."""
    saved = state.get("rpn.head.cls_logits.weight")
    ours = model.rpn.head.cls_logits.out_channels
    if saved is not None and saved.shape[0] != ours:
        ratios = [float(r) for r in model.rpn.anchor_generator.aspect_ratios[0]]
        raise ParamError(
            f"train.anchor_ratios = {ratios} gives {ours} anchors per location, but the RPN "
            f"head of train.weights = {source} has {saved.shape[0]}: use {saved.shape[0]} "
            "ratios to start from these weights, or train.weights = none"
        )
    body = {k: v for k, v in state.items() if not k.startswith(PREDICTOR_PREFIXES)}
    try:
        missing, unexpected = model.load_state_dict({**body, **heads}, strict=False)
    except RuntimeError as err:
        raise DataError(f"{source}: weights do not fit this train.arch: {err}") from None
    missing = [k for k in missing if not k.startswith(PREDICTOR_PREFIXES)]
    if missing or unexpected:
        raise DataError(
            f"{source}: weights do not fit this train.arch (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]})"
        )


def initial_weights(
    model: MaskRCNN, arch: str, weights: str, classes: list[str], init_heads: bool
) -> MaskRCNN:
    """Load the start weights `train.weights` names into a (K+1)-class skeleton."""
    if init_heads and weights in ("none", "imagenet"):
        log.info(HEADS_IGNORED, weights)
    if weights == "imagenet":
        state = fetch_state_dict(IMAGENET_WEIGHTS, weights)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        model.backbone.body.load_state_dict(state)
    elif weights == "coco":
        state = fetch_state_dict(COCO_WEIGHTS[arch], weights)
        heads = select_coco_rows(state, classes) if init_heads else {}
        log.info("weights: COCO-pretrained%s", " with heads from COCO's rows" if heads else "")
        _load_backbone_and_heads(model, state, heads, weights)
    elif weights != "none":
        _from_checkpoint(model, Path(weights), classes, init_heads)
    return model


def _from_checkpoint(model: MaskRCNN, path: Path, classes: list[str], init_heads: bool) -> None:
    """Start from a checkpoint (a cocoseg record or a bare state dict): its heads when they are
    ours, COCO's rows from a 91-class one."""
    record = load_record(path)
    is_ours = isinstance(record.get("model"), dict)
    state = record["model"] if is_ours else record
    saved_classes = record.get("classes") if is_ours else None
    n = state.get(f"{BOX_PREDICTOR}cls_score.weight", torch.empty(0)).shape[0]
    if n == len(COCO_CATEGORIES) and init_heads:
        heads = select_coco_rows(state, classes)
        log.info("weights: %s (91 COCO classes) with heads from COCO's rows", path)
    elif n == len(classes) + 1 and saved_classes in (None, classes):
        heads = {k: v for k, v in state.items() if k.startswith(PREDICTOR_PREFIXES)}
        log.info("weights: %s, heads included", path)
    else:
        heads = {}
        if init_heads:
            log.info(HEADS_IGNORED, path)
        log.info("weights: %s, class heads start fresh (its classes differ)", path)
    _load_backbone_and_heads(model, state, heads, str(path))


def build_for_training(
    arch: str,
    classes: list[str],
    *,
    weights: str,
    init_heads: bool,
    load_weights: bool = True,
    **kwargs: Any,
) -> MaskRCNN:
    """The model to fine-tune: layout from `weights`, loaded unless `load_weights` is False
    (the bare skeleton a resumed run loads its checkpoint into); kwargs go to `build_model`."""
    model = build_model(arch, len(classes) + 1, **kwargs)
    pretrained_layout(model, arch, weights)
    if load_weights:
        initial_weights(model, arch, weights, classes, init_heads)
    return model


def load_trained_model(
    path: str | Path,
    device: str | torch.device = "cpu",
    expect_classes: Sequence[str] = (),
) -> tuple[MaskRCNN, list[str]]:
    """Rebuild the trained model (its own arch and resize) in eval mode, with its class names;
    with `expect_classes`, a model trained for other classes (a stale model.pt) is refused."""
    record = load_record(path)
    missing = {"model", "classes", "arch", "min_size", "max_size"} - set(record)
    if missing:
        raise DataError(f"{path}: not a cocoseg model file (missing {sorted(missing)})")
    if expect_classes and list(expect_classes) != list(record["classes"]):
        raise DataError(
            f"{path}: trained for classes {list(record['classes'])} but the subset has "
            f"{list(expect_classes)}; retrain (dvc repro train)"
        )
    params = record.get("params") or {}
    with torch.device("meta"):  # no random init (0.3 s on a CPU): every weight is loaded
        model = build_model(
            record["arch"],
            len(record["classes"]) + 1,
            min_size=record["min_size"],
            max_size=record["max_size"],
            anchor_sizes=params.get("anchor_sizes", ANCHOR_SIZES),
            anchor_ratios=params.get("anchor_ratios", ANCHOR_RATIOS),
        )
        pretrained_layout(model, record["arch"], params.get("weights", "none"))
    model.load_state_dict(record["model"], assign=True)
    return model.to(device).eval(), list(record["classes"])
