"""Pick the torch device a stage runs on."""

from __future__ import annotations

import re

import torch

from cocoseg.common.errors import ParamError
from cocoseg.common.params import DEVICE_CHOICES, DEVICE_PATTERN


def resolve_device(name: str) -> torch.device:
    """'auto' means cuda, then mps, then cpu; an explicit device must exist here. params.yaml's
    devices match DEVICE_PATTERN already; params built in code skip msgspec's checks."""
    if not re.match(DEVICE_PATTERN, name):
        raise ParamError(
            f"device = {name!r} is not a device this pipeline runs on ({DEVICE_CHOICES})"
        )
    available = {"cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available}
    if name == "auto":
        return torch.device(next((kind for kind, found in available.items() if found()), "cpu"))
    device = torch.device(name)
    if device.type in available and not available[device.type]():
        kind = device.type.upper()
        raise ParamError(f"device = {name!r} but {kind} is not available here; use auto or cpu")
    if device.type == "cuda" and (device.index or 0) >= (count := torch.cuda.device_count()):
        raise ParamError(f"device = {name!r} but this machine has {count} CUDA device(s)")
    return device
