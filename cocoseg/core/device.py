"""Pick the torch device a stage runs on."""

from __future__ import annotations

import torch

from cocoseg.core.errors import ParamError


def resolve_device(name: str) -> torch.device:
    """'auto' means cuda, then mps, then cpu; an explicit device must exist here."""
    available = {"cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available}
    if name == "auto":
        return torch.device(next((kind for kind, found in available.items() if found()), "cpu"))
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ParamError(
            f"device = {name!r} is not a torch device (auto|cpu|cuda|cuda:N|mps)"
        ) from None
    if device.type in available and not available[device.type]():
        kind = device.type.upper()
        raise ParamError(f"device = {name!r} but {kind} is not available here; use auto or cpu")
    return device
