"""Where and how this process trains: torchrun's process group, its device, seeds, determinism."""

from __future__ import annotations

import contextlib
import logging
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from cocoseg.common.params import TrainParams
from cocoseg.modeling.device import resolve_device

PACKAGE_LOG = logging.getLogger("cocoseg")


@dataclass(frozen=True)
class Context:
    """Where this process trains: its rank among `world_size` and its device."""

    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0 alone writes files and shows progress."""
        return self.rank == 0


@contextlib.contextmanager
def session(recipe: TrainParams) -> Iterator[Context]:
    """This process's Context, in torchrun's process group when there is one, with
    train.deterministic on; all undone when the run ends. Ranks other than 0 log warnings only."""
    device = resolve_device(recipe.device)
    ctx = Context(device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        ctx = Context(device, dist.get_rank(), dist.get_world_size())
    previous = set_deterministic(recipe.deterministic)
    level = PACKAGE_LOG.level
    if not ctx.main:
        PACKAGE_LOG.setLevel(logging.WARNING)
    try:
        yield ctx
    finally:
        PACKAGE_LOG.setLevel(level)
        set_deterministic(previous)
        if ctx.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def barrier(ctx: Context) -> None:
    """Wait for every rank (a no-op without DDP)."""
    if ctx.world_size > 1:
        dist.barrier()


def seed_all(seed: int) -> None:
    """Seed Python, NumPy and torch (every device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(on: bool) -> bool:
    """Switch torch's deterministic algorithms; return the previous setting."""
    previous = torch.are_deterministic_algorithms_enabled()
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = on
    torch.use_deterministic_algorithms(on, warn_only=True)  # roi_align backward has no det. kernel
    return previous
