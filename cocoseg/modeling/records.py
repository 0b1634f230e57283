"""models/model.pt: the trained weights with everything needed to rebuild and use them, written
by train and read (weights-only) by infer, predict and a checkpoint start."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cocoseg.common.errors import DataError, os_fault, os_fault_message
from cocoseg.common.params import ANCHOR_RATIOS, ANCHOR_SIZES
from cocoseg.modeling.registry import ARCHS, build_model, pretrained_layout

RECORD_KEYS = {"model", "classes", "arch", "min_size", "max_size"}


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


def load_trained_model(
    path: str | Path,
    device: str | torch.device = "cpu",
    expect_classes: Sequence[str] = (),
) -> tuple[nn.Module, list[str]]:
    """Rebuild the trained model (its own arch and resize) in eval mode, with its class names;
    with `expect_classes`, a model trained for other classes (a stale model.pt) is refused."""
    record = load_record(path)
    missing = RECORD_KEYS - set(record)
    if missing:
        raise DataError(f"{path}: not a cocoseg model file (missing {sorted(missing)})")
    if record["arch"] not in ARCHS:
        raise DataError(
            f"{path}: holds arch {record['arch']!r}, which this cocoseg does not build "
            f"(it builds {sorted(ARCHS)}); retrain (dvc repro train) or update cocoseg"
        )
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
