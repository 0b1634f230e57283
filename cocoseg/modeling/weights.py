"""Start weights for training (`train.weights`): torchvision's COCO or ImageNet files through
its cache, none, or a checkpoint; the class heads from COCO's rows of our classes."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import WeightsEnum

from cocoseg.common.errors import DataError, ParamError
from cocoseg.modeling.arch import Arch
from cocoseg.modeling.maskrcnn import BOX_PREDICTOR, COCO_CATEGORIES
from cocoseg.modeling.records import load_record
from cocoseg.modeling.registry import arch_named

log = logging.getLogger(__name__)

HEADS_IGNORED = "train.init_heads_from_coco ignored: train.weights = %s has no COCO heads"


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


def published(arch: Arch, weights: str) -> WeightsEnum:
    """torchvision's `weights` file (coco or imagenet) for `arch`, or the arch's refusal."""
    found = arch.coco if weights == "coco" else arch.imagenet
    if isinstance(found, str):
        raise ParamError(f"train.weights = {weights} with train.arch = {arch.name}: {found}")
    return found


def _load_backbone_and_heads(
    model: nn.Module,
    arch: Arch,
    state: dict[str, torch.Tensor],
    heads: dict[str, torch.Tensor],
    source: str,
    fresh: tuple[str, ...] = (),
) -> None:
    """Load everything but the class-specific layers from `state`, and those from `heads`; the
    layers under `fresh` may be missing. Start weights whose RPN head has another anchor count
    are a params error, not a crash."""
    saved = state.get("rpn.head.cls_logits.weight")
    ours = model.rpn.head.cls_logits.out_channels if hasattr(model, "rpn") else None
    if saved is not None and ours is not None and saved.shape[0] != ours:
        ratios = [float(r) for r in model.rpn.anchor_generator.aspect_ratios[0]]
        raise ParamError(
            f"train.anchor_ratios = {ratios} gives {ours} anchors per location, but the RPN "
            f"head of train.weights = {source} has {saved.shape[0]}: use {saved.shape[0]} "
            "ratios to start from these weights, or train.weights = none"
        )
    prefixes = arch.class_prefixes
    body = {k: v for k, v in state.items() if not k.startswith(prefixes)}
    try:
        missing, unexpected = model.load_state_dict({**body, **heads}, strict=False)
    except RuntimeError as err:
        raise DataError(f"{source}: weights do not fit this train.arch: {err}") from None
    missing = [k for k in missing if not k.startswith(prefixes + fresh)]
    if missing or unexpected:
        raise DataError(
            f"{source}: weights do not fit this train.arch (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]})"
        )


def initial_weights(
    model: nn.Module, arch: Arch, weights: str, classes: list[str], init_heads: bool
) -> None:
    """Load the start weights `train.weights` names into a (K+1)-class skeleton."""
    if init_heads and weights in ("none", "imagenet"):
        log.info(HEADS_IGNORED, weights)
    if weights == "imagenet":
        state = fetch_state_dict(published(arch, weights), weights)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        arch.body(model).load_state_dict(state)
    elif weights == "coco":
        state = fetch_state_dict(published(arch, weights), weights)
        state, heads = arch.coco_start(state, classes, init_heads)
        log.info("weights: COCO-pretrained%s", " with heads from COCO's rows" if heads else "")
        _load_backbone_and_heads(model, arch, state, heads, weights, arch.coco_fresh)
    elif weights != "none":
        _from_checkpoint(model, arch, Path(weights), classes, init_heads)


def _from_checkpoint(
    model: nn.Module, arch: Arch, path: Path, classes: list[str], init_heads: bool
) -> None:
    """Start from a checkpoint (a cocoseg record or a bare state dict): its heads when they are
    ours, COCO's rows from a 91-class one."""
    record = load_record(path)
    is_ours = isinstance(record.get("model"), dict)
    state = record["model"] if is_ours else record
    saved_classes = record.get("classes") if is_ours else None
    fresh: tuple[str, ...] = ()
    if _rows(state, f"{BOX_PREDICTOR}cls_score.weight") == len(COCO_CATEGORIES):
        # torchvision's COCO Mask R-CNN file itself
        state, heads = arch.coco_start(state, classes, init_heads)
        fresh = arch.coco_fresh
        log.info(
            "weights: %s (91 COCO classes)%s", path, " with heads from COCO's rows" * bool(heads)
        )
    elif _rows(state, arch.classes_key) == len(classes) + 1 and saved_classes in (None, classes):
        heads = {k: v for k, v in state.items() if k.startswith(arch.class_prefixes)}
        log.info("weights: %s, heads included", path)
    else:
        heads = {}
        if init_heads:
            log.info(HEADS_IGNORED, path)
        log.info("weights: %s, class heads start fresh (its classes differ)", path)
    _load_backbone_and_heads(model, arch, state, heads, str(path), fresh)


def _rows(state: dict[str, torch.Tensor], key: str) -> int:
    """The first dimension of `state[key]`, 0 where it is absent."""
    return state[key].shape[0] if key in state else 0


def build_for_training(
    arch: str,
    classes: list[str],
    *,
    weights: str,
    init_heads: bool,
    load_weights: bool = True,
    **options: Any,
) -> nn.Module:
    """The model to fine-tune: layout from `weights`, loaded unless `load_weights` is False
    (the bare skeleton a resumed run loads its checkpoint into); options go to the builder."""
    spec = arch_named(arch)
    model = spec.layout(spec.build(len(classes) + 1, **options), weights)
    if load_weights:
        initial_weights(model, spec, weights, classes, init_heads)
    return model
