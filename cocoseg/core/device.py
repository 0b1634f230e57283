"""Pick the torch device a stage runs on."""

from __future__ import annotations

import torch

from cocoseg.core.errors import ParamError

KINDS = "auto|cpu|cuda|cuda:N|mps"


def resolve_device(name: str) -> torch.device:
    """'auto' means cuda, then mps, then cpu; an explicit device must exist here."""
    available = {"cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available}
    if name == "auto":
        return torch.device(next((kind for kind, found in available.items() if found()), "cpu"))
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", *available):
        raise ParamError(f"device = {name!r} is not a device this pipeline runs on ({KINDS})")
    if device.type in available and not available[device.type]():
        kind = device.type.upper()
        raise ParamError(f"device = {name!r} but {kind} is not available here; use auto or cpu")
    if device.type == "cuda" and (device.index or 0) >= (count := torch.cuda.device_count()):
        raise ParamError(f"device = {name!r} but this machine has {count} CUDA device(s)")
    return device
