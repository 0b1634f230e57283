"""The train loop: warm-up and schedule, AMP, clipping, checkpoints with resume, DDP, loss logs.

Resume: each finished epoch writes `checkpoints/epoch_NN.pt` atomically. A new run resumes
from the newest readable checkpoint with epoch <= `train.epochs` when its train params,
class names and train json all equal this run's; `epochs` itself may differ (raising it
continues training, lowering it finishes from that epoch's checkpoint) except with the
`cosine` schedule, whose curve depends on it. Otherwise the old checkpoints are removed
and training starts fresh. Delete `models/checkpoints` to force a fresh start.

Under `torchrun`, each process trains on its share (DistributedSampler) through
DistributedDataParallel, and rank 0 alone writes files.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import os
import random
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from tqdm import tqdm

from cocoseg.config import TrainParams, to_dict
from cocoseg.data import aspect_ratios, class_names, coco_dataset, collate, split_paths
from cocoseg.device import resolve_device
from cocoseg.errors import CocosegError, DataError
from cocoseg.io import atomic_write, write_bytes, write_json
from cocoseg.model import build_for_training, model_record
from cocoseg.transforms import SKIPS_MODEL_RESIZE, build_transforms

log = logging.getLogger("cocoseg")

LOSS_PARTS = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")
ITERATION_COLUMNS = ("iteration", "epoch", "lr", "loss", *LOSS_PARTS)
EPOCH_COLUMNS = ("epoch", "lr", "loss", *LOSS_PARTS, "seconds", "images_per_s")
CHECKPOINT_FORMAT = 1


class NonFiniteLossError(CocosegError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


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


def setup(device_name: str) -> Context:
    """Join the torchrun process group when there is one; pick this process's device."""
    device = resolve_device(device_name)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Context(device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    ctx = Context(device, dist.get_rank(), dist.get_world_size())
    if not ctx.main:
        log.setLevel(logging.WARNING)
    return ctx


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


def aspect_groups(ratios: np.ndarray, k: int = 3) -> list[int]:
    """Bin aspect ratios into 2k groups on a log scale (torchvision's detection recipe)."""
    bins = 2 ** np.linspace(-1, 1, 2 * k + 1)
    return np.digitize(ratios, bins).tolist()


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches of images from one aspect-ratio group; leftovers close the epoch mixed.

    Every index of `sampler` comes out exactly once, in ceil(n / batch_size) batches.
    """

    def __init__(self, sampler: Sampler[int], group_ids: list[int], batch_size: int) -> None:
        self.sampler, self.group_ids, self.batch_size = sampler, group_ids, batch_size

    def __iter__(self) -> Iterator[list[int]]:
        buffers: dict[int, list[int]] = defaultdict(list)
        for index in self.sampler:
            group = buffers[self.group_ids[index]]
            group.append(index)
            if len(group) == self.batch_size:
                yield list(group)
                group.clear()
        leftovers = [i for g in sorted(buffers) for i in buffers[g]]
        for start in range(0, len(leftovers), self.batch_size):
            yield leftovers[start : start + self.batch_size]

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)  # type: ignore[arg-type]


def make_loader(dataset: Any, p: TrainParams, ctx: Context) -> DataLoader:
    """Shuffled per epoch (seeded), this rank's share, batches grouped by aspect ratio."""
    sampler = DistributedSampler(
        dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=p.seed
    )
    batches = GroupedBatchSampler(sampler, aspect_groups(aspect_ratios(dataset)), p.batch_size)
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=p.num_workers,
        collate_fn=collate,
        pin_memory=ctx.device.type == "cuda",
    )


def _to_device(images: tuple, targets: tuple, device: torch.device) -> tuple[list, list]:
    """Images and target tensors onto the device (image ids stay ints)."""
    images_out = [img.to(device, non_blocking=True) for img in images]
    targets_out = [
        {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in t.items()}
        for t in targets
    ]
    return images_out, targets_out


def reduce_losses(loss_dict: dict[str, torch.Tensor], world_size: int) -> dict[str, float]:
    """Total and parts as floats, averaged over ranks so every rank sees the same numbers."""
    names = [n for n in LOSS_PARTS if n in loss_dict]
    values = torch.stack([loss_dict[n].detach().float() for n in names])
    if world_size > 1:
        dist.all_reduce(values)
        values /= world_size
    parts = dict(zip(names, values.tolist(), strict=True))
    return {"loss": sum(parts.values()), **parts}


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
    images, targets = _to_device(images, targets, ctx.device)
    with torch.autocast(ctx.device.type, enabled=amp):
        loss_dict = model(images, targets)
    losses = reduce_losses(loss_dict, ctx.world_size)
    if not math.isfinite(losses["loss"]):
        return losses
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(sum(loss_dict.values())).backward()
    if clip_grad_norm > 0:
        scaler.unscale_(optimizer)
        params = [q for g in optimizer.param_groups for q in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    return losses


# --- checkpoints -------------------------------------------------------------------------


def checkpoint_path(folder: Path, epoch: int) -> Path:
    """models/checkpoints/epoch_NN.pt."""
    return folder / f"epoch_{epoch:02d}.pt"


def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(epoch, path) of the checkpoint files in folder, newest first."""
    found = []
    for path in folder.glob("epoch_*.pt"):
        suffix = path.stem.removeprefix("epoch_")
        if suffix.isdigit():
            found.append((int(suffix), path))
    return sorted(found, reverse=True)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """torch.load with weights_only=True: a pickle that would run code is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError, EOFError, ...
        raise DataError(f"{path}: cannot load as a weights-only checkpoint: {err}") from None


def resume_key(params: dict[str, Any]) -> dict[str, Any]:
    """The params a resumed run must share with its checkpoint (see the module docstring)."""
    return {k: v for k, v in params.items() if k != "epochs" or params["schedule"] == "cosine"}


def _differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """'key: old -> new' for each difference, nested dicts flattened to dotted keys."""
    out = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            out += _differences(old, new, f"{prefix}{key}.")
        elif old != new:
            shown = [v if len(repr(v)) < 40 else "..." for v in (old, new)]
            out.append(f"{prefix}{key}: {shown[0]!r} -> {shown[1]!r}")
    return out


def find_resume(folder: Path, identity: dict[str, Any], epochs: int) -> dict[str, Any] | None:
    """The newest readable checkpoint (epoch <= epochs) made by this same run, or None.

    `identity` holds this run's "params", "classes" and "data" digest.
    """
    for epoch, path in checkpoints(folder):
        if epoch > epochs:
            continue
        try:
            state = load_checkpoint(path)
        except DataError as err:
            log.warning("skipping unreadable checkpoint: %s", err)
            continue
        saved = {k: state.get(k) for k in identity}
        saved["params"] = resume_key(saved["params"] or {})
        diff = _differences(saved, {**identity, "params": resume_key(identity["params"])})
        if diff:
            log.info("checkpoints in %s come from another run (%s): starting fresh", folder, diff)
            return None
        return state
    return None


def clear_checkpoints(folder: Path) -> None:
    """Remove old checkpoints and temp files a killed write left behind."""
    stale = [p for _, p in checkpoints(folder)] + list(folder.glob(".epoch_*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        log.info("removed %d old checkpoint file(s) from %s", len(stale), folder)


def save_torch(path: Path, obj: Any) -> None:
    """torch.save through a temp file renamed into place."""
    with atomic_write(path, "wb") as f:
        torch.save(obj, f)


# --- logs ----------------------------------------------------------------------------------


def write_csv(path: Path, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    """A CSV with the given columns, written atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_bytes(path, buf.getvalue().encode())


def write_reports(reports: Path, history: dict[str, list], peak_mb: float | None) -> None:
    """iterations.csv, epochs.csv and metrics.json from the whole run's history."""
    write_csv(reports / "iterations.csv", ITERATION_COLUMNS, history["iterations"])
    write_csv(reports / "epochs.csv", EPOCH_COLUMNS, history["epochs"])
    epochs = history["epochs"]
    if not epochs:
        return
    metrics: dict[str, Any] = {k: epochs[-1][k] for k in ("loss", *LOSS_PARTS)}
    metrics["epochs"] = len(epochs)
    metrics["iterations"] = len(history["iterations"])
    metrics["images_per_s"] = float(np.mean([e["images_per_s"] for e in epochs]))
    metrics["seconds_per_epoch"] = float(np.mean([e["seconds"] for e in epochs]))
    if peak_mb is not None:
        metrics["peak_gpu_memory_mb"] = peak_mb
    write_json(reports / "metrics.json", metrics)


# --- the run -------------------------------------------------------------------------------


@dataclass
class Trainer:
    """Everything one epoch needs."""

    model: torch.nn.Module
    loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    p: TrainParams
    ctx: Context
    checkpoint_dir: Path

    def epoch(self, epoch: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Train one epoch; return its iteration rows and its summary row."""
        self.loader.batch_sampler.sampler.set_epoch(epoch)  # type: ignore[union-attr]
        seed_all(self.p.seed + 1000 * epoch + self.ctx.rank)  # same per epoch on resume
        self.model.train()
        rows, n_images, start = [], 0, time.perf_counter()
        bar = tqdm(self.loader, desc=f"epoch {epoch}/{self.p.epochs}", disable=not self.ctx.main)
        for images, targets in bar:
            lr = self.optimizer.param_groups[0]["lr"]
            losses = train_step(
                self.model, images, targets, self.optimizer, self.scaler, self.ctx,
                amp=self.p.amp and self.ctx.device.type == "cuda",
                clip_grad_norm=self.p.clip_grad_norm,
            )  # fmt: skip
            iteration = self.scheduler.last_epoch + 1
            if not math.isfinite(losses["loss"]):
                raise self._non_finite(iteration, epoch, losses, targets)
            self.scheduler.step()
            rows.append({"iteration": iteration, "epoch": epoch, "lr": lr, **losses})
            n_images += len(images) * self.ctx.world_size
            bar.set_postfix(loss=f"{losses['loss']:.4f}", lr=f"{lr:.2e}")
        seconds = time.perf_counter() - start
        summary = {"epoch": epoch, "lr": rows[-1]["lr"], "seconds": seconds}
        summary.update({k: float(np.mean([r[k] for r in rows])) for k in ("loss", *LOSS_PARTS)})
        summary["images_per_s"] = n_images / seconds
        return rows, summary

    def _non_finite(
        self, iteration: int, epoch: int, losses: dict[str, float], targets: tuple
    ) -> NonFiniteLossError:
        """The error naming iteration, loss parts, the batch's image ids and what is kept."""
        kept = checkpoints(self.checkpoint_dir)
        last = f"{kept[0][1]} is kept" if kept else "none was written yet"
        parts = ", ".join(f"{k}={v:.4g}" for k, v in losses.items())
        ids = [t["image_id"] for t in targets]
        where = f" (rank {self.ctx.rank})" if self.ctx.world_size > 1 else ""
        return NonFiniteLossError(
            f"non-finite loss at iteration {iteration} (epoch {epoch}){where}: {parts}; "
            f"batch image ids {ids}. Last good checkpoint: {last}. Try a lower train.lr, "
            f"longer train.warmup_iters or train.clip_grad_norm > 0."
        )

    def state(self, epoch: int, identity: dict[str, Any], history: dict) -> dict[str, Any]:
        """What epoch_NN.pt holds."""
        module = getattr(self.model, "module", self.model)
        return {
            "format": CHECKPOINT_FORMAT,
            "model": module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            **identity,
            "history": history,
        }


def data_digest(path: Path) -> str:
    """sha256 of the train json: a checkpoint of other data is not resumed."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_trainer(
    p: TrainParams,
    dataset: Any,
    classes: list[str],
    ctx: Context,
    checkpoint_dir: Path,
    state: dict[str, Any] | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> Trainer:
    """Model (start weights, or `state` when resuming), SGD, per-iteration LR schedule, scaler."""
    extra = {"_skip_resize": True} if p.augment in SKIPS_MODEL_RESIZE else {}
    model = build_for_training(
        p.arch, classes, weights=p.weights, init_heads=p.init_heads_from_coco,
        min_size=p.min_size, max_size=p.max_size, load_weights=state is None,
        **extra, **(model_kwargs or {}),
    )  # fmt: skip
    if state is not None:
        model.load_state_dict(state["model"])
    model.to(ctx.device)
    trainable = [q for q in model.parameters() if q.requires_grad]
    optimizer = torch.optim.SGD(
        trainable, lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay
    )
    loader = make_loader(dataset, p, ctx)
    per_epoch = len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: lr_factor(i, p, per_epoch))
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=p.amp and ctx.device.type == "cuda")
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
    if ctx.world_size > 1:
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return Trainer(model, loader, optimizer, scheduler, scaler, p, ctx, checkpoint_dir)


def train(
    p: TrainParams,
    subset_dir: str | Path,
    out_dir: str | Path,
    reports: str | Path,
    *,
    model_kwargs: dict[str, Any] | None = None,
) -> Path:
    """Train (or resume) on data/subset's train split; write model.pt, checkpoints, reports.

    `model_kwargs` go to torchvision's builder (tests use them to sample fewer RoIs).
    """
    ctx = setup(p.device)
    previous = set_deterministic(p.deterministic)
    try:
        return _train(p, Path(subset_dir), Path(out_dir), Path(reports), ctx, model_kwargs or {})
    finally:
        set_deterministic(previous)
        if ctx.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(
    p: TrainParams, subset_dir: Path, out_dir: Path, reports: Path, ctx: Context, model_kwargs: dict
) -> Path:
    """The body of `train`, once the process group and determinism are set."""
    seed_all(p.seed)
    _, ann_file = split_paths(subset_dir, "train")
    dataset = coco_dataset(subset_dir, "train", build_transforms(p.augment, p.min_size, p.max_size))
    if len(dataset) == 0:
        raise DataError(f"{ann_file}: no training images")
    classes = class_names(ann_file)
    params = to_dict(p)
    identity = {"params": params, "classes": classes, "data": data_digest(ann_file)}
    folder = out_dir / "checkpoints"
    state = find_resume(folder, identity, p.epochs)
    barrier(ctx)  # every rank has read before rank 0 may clear
    if state is None and ctx.main:
        clear_checkpoints(folder)
    trainer = make_trainer(p, dataset, classes, ctx, folder, state, model_kwargs)
    history: dict[str, list] = {"iterations": [], "epochs": []}
    start = 1
    if state is not None:
        history, start = state["history"], state["epoch"] + 1
        log.info("resuming after epoch %d of %d from %s", state["epoch"], p.epochs, folder)
    del state
    log.info(
        "training %s on %d images (%s), %d iterations/epoch, device %s x%d",
        p.arch, len(dataset), ", ".join(classes), len(trainer.loader), ctx.device, ctx.world_size,
    )  # fmt: skip
    for epoch in range(start, p.epochs + 1):
        rows, summary = trainer.epoch(epoch)
        history["iterations"].extend(rows)
        history["epochs"].append(summary)
        if ctx.main:
            state_now = trainer.state(epoch, identity, history)
            save_torch(checkpoint_path(folder, epoch), state_now)
            write_reports(reports, history, _peak_mb(ctx))
            log.info("epoch %d: loss %.4f, %.1f s", epoch, summary["loss"], summary["seconds"])
        barrier(ctx)
    model_path = out_dir / "model.pt"
    if ctx.main:
        record = model_record(trainer.model, classes, p.arch, p.min_size, p.max_size, params)
        save_torch(model_path, record)
        write_reports(reports, history, _peak_mb(ctx))
        log.info("wrote %s and %s", model_path, reports)
    barrier(ctx)
    return model_path


def _peak_mb(ctx: Context) -> float | None:
    """Peak GPU memory allocated by this process, in MiB, where there is a GPU."""
    if ctx.device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(ctx.device) / 2**20
