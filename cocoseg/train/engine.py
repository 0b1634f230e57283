"""The train loop, top to bottom (set up, build, resume, train epochs, save, report): SGD with
momentum, linear warm-up times a per-epoch LR schedule, AMP; under `torchrun` each process trains
its share through DistributedDataParallel and rank 0 writes."""

from __future__ import annotations

import bisect
import itertools
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from cocoseg.coco.inputs import split_paths
from cocoseg.common.errors import CocosegError, DataError
from cocoseg.common.io import MB, remove_stale_temps
from cocoseg.common.params import TrainParams, to_dict
from cocoseg.modeling.records import model_record
from cocoseg.modeling.weights import build_for_training
from cocoseg.train.checkpoints import (
    checkpoints,
    clear_checkpoints,
    data_fingerprint,
    find_resume,
    remove_older_checkpoints,
    save_checkpoint,
    save_torch,
)
from cocoseg.train.dataset import class_names, coco_dataset, train_loader
from cocoseg.train.runtime import Context, barrier, seed_all, session
from cocoseg.train.sampler import epoch_iterations, write_sampling
from cocoseg.train.selection import recover_best, save_best, selected, stalled
from cocoseg.train.trainlog import LOSS_PARTS, epoch_summary, open_log, write_log, write_summary
from cocoseg.train.transforms import SKIPS_MODEL_RESIZE, build_transforms
from cocoseg.train.validate import val_set, validate_if_due

log = logging.getLogger(__name__)


class NonFiniteLossError(CocosegError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def training_model(
    recipe: TrainParams,
    classes: list[str],
    device: torch.device,
    state: dict[str, Any] | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> torch.nn.Module:
    """The model on `device`: start weights, or the weights of the checkpoint `state`."""
    # A private flag of torchvision's GeneralizedRCNNTransform, with no public equivalent;
    # torchvision's own references/detection/train.py passes it for the same presets.
    skip = {"_skip_resize": True} if recipe.augment in SKIPS_MODEL_RESIZE else {}
    model = build_for_training(
        recipe.arch, classes, weights=recipe.weights, init_heads=recipe.init_heads_from_coco,
        min_size=recipe.min_size, max_size=recipe.max_size, load_weights=state is None,
        anchor_sizes=recipe.anchor_sizes, anchor_ratios=recipe.anchor_ratios,
        box_batch_size_per_image=recipe.rois_per_image, **skip, **(model_kwargs or {}),
    )  # fmt: skip
    if state is not None:
        model.load_state_dict(state["model"])
    return model.to(device)


def lr_factor(step: int, recipe: TrainParams, epoch_iters: Sequence[int]) -> float:
    """Multiplier of train.lr after `step` optimiser steps: linear warm-up times the schedule,
    whose epochs end where each epoch's real iterations (`epoch_iters`, epoch 1 first) do."""
    warm = 1.0
    if step < recipe.warmup_iters:
        alpha = step / recipe.warmup_iters
        warm = recipe.warmup_factor * (1 - alpha) + alpha
    ends = list(itertools.accumulate(epoch_iters[: recipe.epochs]))
    epoch = bisect.bisect_right(ends, step)  # epochs completed, 0-based index of the current one
    if recipe.schedule == "multistep":
        return warm * recipe.lr_gamma ** sum(epoch >= m for m in recipe.lr_milestones)
    if recipe.schedule == "cosine":
        total = ends[-1]
        return warm * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    return warm


def make_optimizer(
    model: torch.nn.Module, recipe: TrainParams, epoch_iters: Sequence[int], device: torch.device
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR, torch.amp.GradScaler]:
    """SGD over the trainable weights, its per-iteration LR schedule over epochs of
    `epoch_iters` steps each, and the AMP scaler."""
    trainable = [q for q in model.parameters() if q.requires_grad]
    optimizer = torch.optim.SGD(
        trainable, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
    )
    epoch_iters = list(epoch_iters)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, recipe, epoch_iters)
    )
    scaler = torch.amp.GradScaler(device.type, enabled=recipe.amp and device.type == "cuda")
    return optimizer, scheduler, scaler


def train_step(
    model: torch.nn.Module,
    images: tuple,
    targets: tuple,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    ctx: Context,
    *,
    amp: bool = False,
    clip_grad_norm: float = 0.0,
) -> dict[str, float]:
    """One forward/backward/step; a non-finite loss returns without touching the weights."""
    images = [img.to(ctx.device, non_blocking=True) for img in images]
    targets = [
        {k: v.to(ctx.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in t.items()}
        for t in targets
    ]  # image ids stay ints
    with torch.autocast(ctx.device.type, enabled=amp):
        loss_dict = model(images, targets)
    # Total and parts averaged over ranks (every rank sees the same numbers), read as one stacked
    # tensor: the one host sync per step the non-finite check needs.
    names = [n for n in LOSS_PARTS if n in loss_dict]
    values = torch.stack([loss_dict[n].detach().float() for n in names])
    if ctx.world_size > 1:
        dist.all_reduce(values)
        values /= ctx.world_size
    components = dict(zip(names, values.tolist(), strict=True))
    losses = {"loss": sum(components.values()), **components}
    if not math.isfinite(losses["loss"]):
        return losses
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(sum(loss_dict.values())).backward()
    if clip_grad_norm > 0:
        scaler.unscale_(optimizer)
        weights = [q for g in optimizer.param_groups for q in g["params"]]
        torch.nn.utils.clip_grad_norm_(weights, clip_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    return losses


def train_one_epoch(
    model: torch.nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    epoch: int,
    recipe: TrainParams,
    ctx: Context,
    checkpoint_dir: Path | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train one epoch; return its iteration rows and its summary row. A non-finite loss raises
    NonFiniteLossError, naming the newest checkpoint kept in `checkpoint_dir`."""
    loader.batch_sampler.sampler.set_epoch(epoch)  # type: ignore[union-attr]
    seed_all(recipe.seed + 1000 * epoch + ctx.rank)  # the same per epoch on resume
    model.train()
    rows, n_images, start = [], 0, time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch}/{recipe.epochs}", disable=not ctx.main)
    for images, targets in bar:
        lr = optimizer.param_groups[0]["lr"]
        losses = train_step(
            model, images, targets, optimizer, scaler, ctx,
            amp=recipe.amp and ctx.device.type == "cuda", clip_grad_norm=recipe.clip_grad_norm,
        )  # fmt: skip
        iteration = scheduler.last_epoch + 1
        if not math.isfinite(losses["loss"]):
            kept = checkpoints(checkpoint_dir) if checkpoint_dir is not None else []
            last = f"{kept[0][1]} is kept" if kept else "none was written yet"
            loss_text = ", ".join(f"{k}={v:.4g}" for k, v in losses.items())
            where = f" (rank {ctx.rank})" if ctx.world_size > 1 else ""
            raise NonFiniteLossError(
                f"non-finite loss at iteration {iteration} (epoch {epoch}){where}: {loss_text}; "
                f"batch image ids {[t['image_id'] for t in targets]}. Last good checkpoint: "
                f"{last}. Try a lower train.lr, longer train.warmup_iters or "
                "train.clip_grad_norm > 0."
            )
        scheduler.step()
        rows.append({"iteration": iteration, "epoch": epoch, "lr": lr, **losses})
        n_images += len(images) * ctx.world_size
        bar.set_postfix(loss=f"{losses['loss']:.4f}", lr=f"{lr:.2e}")
    return rows, epoch_summary(rows, n_images, time.perf_counter() - start)


def train(
    recipe: TrainParams, subset_dir: str | Path, out_dir: str | Path, reports: str | Path
) -> Path:
    """Train (or resume) on data/subset's train split; write model.pt, checkpoints, reports."""
    out_dir, reports = Path(out_dir), Path(reports)
    with session(recipe) as ctx:
        seed_all(recipe.seed)
        images_dir, ann_file = split_paths(subset_dir, "train")
        transforms = build_transforms(recipe.augment, recipe.min_size, recipe.max_size)
        dataset = coco_dataset(subset_dir, "train", transforms)
        if len(dataset) == 0:
            raise DataError(f"{ann_file}: no training images")
        classes = class_names(ann_file)
        recipe_dict = to_dict(recipe)
        fingerprint = data_fingerprint(images_dir, ann_file)
        identity = {"params": recipe_dict, "classes": classes, "data": fingerprint}

        folder = out_dir / "checkpoints"
        if ctx.main:
            remove_stale_temps(folder)  # a killed run's half-written checkpoint
        state = find_resume(folder, identity, recipe.epochs)
        if state is not None and recipe.select == "best":
            state = state if recover_best(folder, state, ctx.main) else None
        barrier(ctx)  # every rank has read before rank 0 may clear
        if state is None and ctx.main:
            clear_checkpoints(folder)

        model = training_model(recipe, classes, ctx.device, state)
        loader = train_loader(
            dataset, recipe, ctx.rank, ctx.world_size, pin_memory=ctx.device.type == "cuda"
        )
        sampler = loader.batch_sampler.sampler  # type: ignore[union-attr]
        epoch_iters = epoch_iterations(sampler, recipe.batch_size, recipe.epochs)
        optimizer, scheduler, scaler = make_optimizer(model, recipe, epoch_iters, ctx.device)
        resumable = {"optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}
        history: dict[str, list] = {"iterations": [], "epochs": [], "val": []}
        start = 1
        if state is not None:
            for name, obj in resumable.items():
                obj.load_state_dict(state[name])
            history, start = state["history"], state["epoch"] + 1
            log.info("resuming after epoch %d of %d from %s", state["epoch"], recipe.epochs, folder)
        del state
        if ctx.world_size > 1:
            ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        low, high = min(epoch_iters), max(epoch_iters)  # epochs may differ in length
        per_epoch = str(low) if low == high else f"{low}-{high}"
        log.info(
            "training %s on %d images (%s), %s iterations/epoch (%s sampler), device %s x%d",
            recipe.arch, len(dataset), ", ".join(classes), per_epoch,
            recipe.sampler, ctx.device, ctx.world_size,
        )  # fmt: skip
        val = val_set(subset_dir) if ctx.main and recipe.eval_every else None
        live = open_log(reports) if ctx.main else None
        if live is not None:
            write_sampling(reports, sampler, dataset, classes, recipe)
            write_log(live, history)  # the checkpoint's epochs, each once

        for epoch in range(start, recipe.epochs + 1):
            if stalled(history["val"], recipe.patience):
                log.info("stopping early: no better val segm AP for %d epochs", recipe.patience)
                break
            rows, summary = train_one_epoch(
                model, loader, optimizer, scheduler, scaler, epoch, recipe, ctx, folder
            )
            history["iterations"].extend(rows)
            history["epochs"].append(summary)
            validate_if_due(model, epoch, history, val, recipe, ctx)
            if live is not None:
                save_checkpoint(folder, epoch, {"model": model, **resumable}, identity, history)
                if recipe.select == "best":
                    save_best(folder, model, history)
                remove_older_checkpoints(folder, epoch, recipe.keep_checkpoints)
                write_log(live, history)
                log.info(
                    "epoch %d: loss %.4f, %.1f s", epoch, summary["loss"], summary["train_seconds"]
                )
            barrier(ctx)
        # A run resumed at fewer train.epochs scores its new last epoch here.
        validate_if_due(model, history["epochs"][-1]["epoch"], history, val, recipe, ctx)

        model_path = out_dir / "model.pt"
        if live is not None:
            epoch, weights, row = selected(folder, model, history, recipe.select)
            record = model_record(
                model, classes, recipe.arch, recipe.min_size, recipe.max_size, recipe_dict
            )
            record.update(model=weights, epoch=epoch, val=row)
            save_torch(model_path, record)
            write_log(live, history, selected_epoch=epoch)
            live.end()
            cuda = ctx.device.type == "cuda"
            peak_mb = torch.cuda.max_memory_allocated(ctx.device) / MB if cuda else None
            write_summary(reports, history, record, peak_mb)
            log.info("wrote %s (epoch %d) and %s", model_path, epoch, reports)
        barrier(ctx)
        return model_path
