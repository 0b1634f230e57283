"""Pick the torch device a stage runs on."""

from __future__ import annotations

import torch

from cocoseg.core.errors import ParamError


def resolve_device(name: str) -> torch.device:
    """'auto' means cuda, then mps, then cpu; an explicit device must exist here."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ParamError(
            f"device = {name!r} is not a torch device (auto|cpu|cuda|cuda:N|mps)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ParamError(f"device = {name!r} but CUDA is not available here; use auto or cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ParamError(f"device = {name!r} but MPS is not available here; use auto or cpu")
    return device
