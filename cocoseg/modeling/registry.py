"""The arch registry: every `train.arch` value -> its Arch (cocoseg.modeling.arch), one family
file each. Adding an architecture adds an entry here, its name to the params check and docs."""

from __future__ import annotations

from typing import Any

from torch import nn

from cocoseg.common.errors import ParamError
from cocoseg.modeling import cascade, deeplab, maskrcnn
from cocoseg.modeling.arch import Arch

FAMILIES = (maskrcnn.ARCHS, cascade.ARCHS, deeplab.ARCHS)
ARCHS: dict[str, Arch] = {arch.name: arch for family in FAMILIES for arch in family}


def arch_named(name: str) -> Arch:
    """The registered Arch of `name`; an unknown name is a params error listing the choices."""
    if name not in ARCHS:
        raise ParamError(f"train.arch = {name!r} is not built here; choose one of {sorted(ARCHS)}")
    return ARCHS[name]


def build_model(arch: str, num_classes: int, **options: Any) -> nn.Module:
    """A randomly initialised `arch` for `num_classes` (background included)."""
    return arch_named(arch).build(num_classes, **options)


def pretrained_layout(model: nn.Module, arch: str, weights: str) -> nn.Module:
    """The fine-tuning layout of `arch` for start weights `weights` (Arch.layout)."""
    return arch_named(arch).layout(model, weights)
