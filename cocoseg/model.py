"""Build torchvision's Mask R-CNN for our classes, and save/load the trained model file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torchvision.models.detection import (
    MaskRCNN,
    maskrcnn_resnet50_fpn,
    maskrcnn_resnet50_fpn_v2,
)
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

from cocoseg.errors import DataError

ARCHS = {
    "maskrcnn_resnet50_fpn": maskrcnn_resnet50_fpn,
    "maskrcnn_resnet50_fpn_v2": maskrcnn_resnet50_fpn_v2,
}


def replace_heads(model: MaskRCNN, num_classes: int) -> MaskRCNN:
    """Swap the box and mask predictors for ones with `num_classes` outputs (incl. background)."""
    box_in = model.roi_heads.box_predictor.cls_score.in_features
    model.roi_heads.box_predictor = FastRCNNPredictor(box_in, num_classes)
    mask_in = model.roi_heads.mask_predictor.conv5_mask.in_channels
    hidden = model.roi_heads.mask_predictor.conv5_mask.out_channels
    model.roi_heads.mask_predictor = MaskRCNNPredictor(mask_in, hidden, num_classes)
    return model


def build_model(
    arch: str, num_classes: int, *, min_size: int = 800, max_size: int = 1333, **kwargs: Any
) -> MaskRCNN:
    """A randomly initialised Mask R-CNN with heads for `num_classes` (background included).

    Extra keyword arguments (weights, weights_backbone, ...) go to torchvision's builder.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
    kwargs.setdefault("weights", None)
    kwargs.setdefault("weights_backbone", None)
    return ARCHS[arch](num_classes=num_classes, min_size=min_size, max_size=max_size, **kwargs)


def model_record(
    model: torch.nn.Module,
    classes: list[str],
    arch: str,
    min_size: int,
    max_size: int,
    params: dict[str, Any],
) -> dict[str, Any]:
    """What models/model.pt holds: weights plus everything needed to rebuild and use them."""
    module = model.module if hasattr(model, "module") else model
    return {
        "model": module.state_dict(),
        "classes": list(classes),
        "arch": arch,
        "min_size": min_size,
        "max_size": max_size,
        "params": params,
    }


def load_record(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """torch.load with weights_only=True: a pickle that would run code is refused."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: model file not found (run `dvc repro train` first)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise DataError(f"{path}: cannot load as a weights-only checkpoint: {err}") from None


def load_trained_model(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[MaskRCNN, list[str]]:
    """Rebuild the trained model (its own arch and resize) in eval mode, with its class names."""
    record = load_record(path)
    missing = {"model", "classes", "arch", "min_size", "max_size"} - set(record)
    if missing:
        raise DataError(f"{path}: not a cocoseg model file (missing {sorted(missing)})")
    model = build_model(
        record["arch"],
        len(record["classes"]) + 1,
        min_size=record["min_size"],
        max_size=record["max_size"],
    )
    model.load_state_dict(record["model"])
    return model.to(device).eval(), list(record["classes"])
