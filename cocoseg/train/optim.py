"""The optimiser recipe: SGD with momentum, linear warm-up times a per-epoch LR schedule, AMP."""

from __future__ import annotations

import math

import torch

from cocoseg.core.config import TrainParams


def lr_factor(step: int, p: TrainParams, iters_per_epoch: int) -> float:
    """Multiplier of train.lr after `step` optimiser steps: linear warm-up times the schedule."""
    warm = 1.0
    if step < p.warmup_iters:
        alpha = step / p.warmup_iters
        warm = p.warmup_factor * (1 - alpha) + alpha
    epoch = step // iters_per_epoch  # 0-based
    if p.schedule == "multistep":
        return warm * p.lr_gamma ** sum(epoch >= m for m in p.lr_milestones)
    if p.schedule == "cosine":
        total = p.epochs * iters_per_epoch
        return warm * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    return warm


def make_optimizer(
    model: torch.nn.Module, p: TrainParams, iters_per_epoch: int, device: torch.device
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR, torch.amp.GradScaler]:
    """SGD over the trainable weights, its per-iteration LR schedule, and the AMP scaler."""
    trainable = [q for q in model.parameters() if q.requires_grad]
    optimizer = torch.optim.SGD(
        trainable, lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, p, iters_per_epoch)
    )
    scaler = torch.amp.GradScaler(device.type, enabled=p.amp and device.type == "cuda")
    return optimizer, scheduler, scaler
