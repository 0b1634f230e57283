"""Benchmark: Mask R-CNN R50-FPN training, ours beside torchvision's detection reference.

Two modes, each on the same model layout (COCO fine-tuning: frozen batch norm, stem and
layer1 fixed; random weights, as nothing is downloaded, see `fresh`), batch, optimiser and
AMP (CUDA only). Both loops warm the learning rate up with the recipe's schedule
(train.warmup_iters, warmup_factor): from random weights, full-rate steps drive the mask loss
from ~7 to ~90 within four iterations here (fp16 autocast), inf/NaN on a GPU under AMP.
Each loop first takes `--warmup` (at least 5) untimed steps; then the loops take turns, a
step (or an epoch) each, so that a change in the machine's load falls on all of them.

- iteration (default): `cocoseg.train.engine.train_step` beside the same step written the way
  references/detection/engine.py does it, on two synthetic 640x480 images with 3 shapes
  each, resized by the model to min_size/max_size (800/1333). Data loading excluded.
- `--epoch`: whole epochs with data loading: the train stage's loop (cocoseg.train.engine:
  CocoDetection through cocoseg.train.dataset, aspect-ratio batches, `train_one_epoch`) beside a
  reference-style loop (CocoDetection + transforms.v2, DataLoader with aspect-ratio
  batches, the reference's step), on the train split of a subset folder (default
  data/subset; else one is made from --coco-root). Both augment the same way (the
  reference's horizontal flip); our loop with the `--augment` preset is reported beside
  them, and each loader's throughput alone (no model) too.

Like the stages, it runs PyTorch with `THP_MEM_ALLOC_ENABLE=1` unless that is set (`thp_alloc`).

    python benchmarks/bench_train.py [--device cpu|cuda] [--iters 3] [--warmup 5]
    python benchmarks/bench_train.py --epoch --device cuda --batch-size 8 --workers 8 \\
        --images 200 --epochs 3 --coco-root /path/to/coco

It prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # as the stages run (cocoseg.common.cli)

import torch
from torch.utils.data import DataLoader, RandomSampler, Subset
from torchvision.datasets import CocoDetection, wrap_dataset_for_transforms_v2
from torchvision.transforms import v2 as T

from cocoseg.coco.inputs import split_paths
from cocoseg.common.io import MB
from cocoseg.common.params import DataParams, SubsetParams, TrainParams
from cocoseg.modeling.registry import pretrained_layout
from cocoseg.modeling.weights import build_for_training
from cocoseg.subset.make import make_subset
from cocoseg.train.dataset import (
    GroupedBatchSampler,
    aspect_groups,
    coco_dataset,
    collate,
    train_loader,
)
from cocoseg.train.engine import lr_factor, make_optimizer, train_one_epoch, train_step
from cocoseg.train.runtime import Context
from cocoseg.train.sampler import epoch_iterations
from cocoseg.train.transforms import build_transforms

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "coco-sample"
CLASSES = ["person", "cat", "sports ball", "book"]


def synthetic_batch(size: tuple[int, int] = (480, 640), shapes: int = 3) -> tuple[tuple, tuple]:
    """Two float images with `shapes` filled rectangles each, and their targets."""
    gen = torch.Generator().manual_seed(0)
    images, targets = [], []
    h, w = size
    for image_id in (1, 2):
        image = torch.rand(3, h, w, generator=gen) * 0.3 + 0.35
        boxes, masks = [], torch.zeros(shapes, h, w, dtype=torch.uint8)
        for k in range(shapes):
            x0, y0 = (
                int(torch.randint(0, w // 2, (1,), generator=gen)),
                int(torch.randint(0, h // 2, (1,), generator=gen)),
            )
            x1, y1 = x0 + w // 4, y0 + h // 4
            masks[k, y0:y1, x0:x1] = 1
            image[k % 3, y0:y1, x0:x1] = 0.9
            boxes.append([x0, y0, x1, y1])
        labels = torch.arange(shapes) % len(CLASSES) + 1
        images.append(image)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": labels,
                        "masks": masks, "image_id": image_id})  # fmt: skip
    return tuple(images), tuple(targets)


def reference_step(model, images, targets, optimizer, scaler, device) -> float:
    """torchvision's references/detection/engine.py train_one_epoch body, single process."""
    images = list(image.to(device) for image in images)
    targets = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
               for t in targets]  # fmt: skip
    with torch.autocast(device.type, enabled=scaler is not None):
        loss_dict = model(images, targets)
        losses = sum(loss for loss in loss_dict.values())
    loss_value = sum(loss for loss in loss_dict.values()).item()  # reduce_dict: 1 process
    if not math.isfinite(loss_value):
        raise SystemExit(f"Loss is {loss_value}, stopping training")
    optimizer.zero_grad()
    if scaler is not None:
        scaler.scale(losses).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        losses.backward()
        optimizer.step()
    return loss_value


def fresh(device: torch.device, min_size: int, max_size: int, images: tuple) -> tuple:
    """The default recipe's model layout (frozen batch norm, stem+layer1 fixed) and its SGD.

    Nothing is downloaded: random weights, with batch-norm statistics measured on the batch
    so activations stay finite, then frozen as in a COCO-pretrained model.
    """
    torch.manual_seed(0)
    model = build_for_training(
        "maskrcnn_resnet50_fpn", CLASSES, weights="none", init_heads=False,
        min_size=min_size, max_size=max_size,
    ).to(device).train()  # fmt: skip
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 1.0
    with torch.no_grad():
        batch, _ = model.transform([image.to(device) for image in images])
        model.backbone(batch.tensors)
    pretrained_layout(model, "maskrcnn_resnet50_fpn", "coco")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.005, momentum=0.9, weight_decay=0.0005)
    return model, optimizer


def checked(losses: dict[str, float]) -> dict[str, float]:
    """Stop the benchmark on a non-finite loss (its timing would skip the backward pass)."""
    if not math.isfinite(losses["loss"]):
        raise SystemExit(f"non-finite loss {losses}")
    return losses


def own_random_streams(
    steps: dict[str, Callable[[], object]], device: torch.device, seed: int = 0
) -> dict[str, Callable[[], None]]:
    """The steps, each drawing from its own random stream, every stream seeded alike.

    Taking turns, the loops would otherwise share one stream: the same sampled proposals
    (the same work, the same losses) need each loop's draws to follow its own sequence.
    """
    cuda = device.type == "cuda"
    torch.manual_seed(seed)
    start = (torch.get_rng_state(), torch.cuda.get_rng_state(device) if cuda else None)
    states = dict.fromkeys(steps, start)

    def own(name: str, step: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            cpu, gpu = states[name]
            torch.set_rng_state(cpu)
            if cuda:
                torch.cuda.set_rng_state(gpu, device)
            step()
            states[name] = (
                torch.get_rng_state(),
                torch.cuda.get_rng_state(device) if cuda else None,
            )

        return run

    return {name: own(name, step) for name, step in steps.items()}


def interleaved(
    steps: dict[str, Callable[[], object]], device: torch.device, warmup: int, iters: int
) -> dict[str, list[float]]:
    """Seconds of each of `iters` timed calls per step, the steps taking turns.

    First `warmup` untimed calls of each, in turns too.
    """
    for _ in range(warmup):
        for step in steps.values():
            step()
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(iters):
        for name, step in steps.items():
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            seconds[name].append(time.perf_counter() - start)
    return seconds


def warmup(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """The recipe's linear warm-up (train.warmup_iters, warmup_factor), stepped per iteration."""
    p = TrainParams()
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: lr_factor(i, p, [10**9]))


def bench_iterations(device: torch.device, args: argparse.Namespace) -> dict:
    """Seconds/iteration and images/s, ours and the reference's, data loading excluded."""
    images, targets = synthetic_batch()
    amp = device.type == "cuda"
    losses = {}
    model, optimizer = fresh(device, args.min_size, args.max_size, images)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    schedule, ctx = warmup(optimizer), Context(device)
    ref_model, ref_optimizer = fresh(device, args.min_size, args.max_size, images)
    ref_scaler = torch.amp.GradScaler(device.type) if amp else None
    ref_schedule = warmup(ref_optimizer)

    def ours() -> None:
        losses["cocoseg"] = checked(
            train_step(model, images, targets, optimizer, scaler, ctx, amp=amp)
        )["loss"]
        schedule.step()

    def reference() -> None:
        losses["reference"] = reference_step(
            ref_model, images, targets, ref_optimizer, ref_scaler, device
        )
        ref_schedule.step()

    steps = {"cocoseg.train.engine.train_step": ours, "torchvision reference": reference}
    seconds = interleaved(own_random_streams(steps, device), device, args.warmup, args.iters)
    out: dict[str, Any] = {}
    for name, times in seconds.items():
        mean = sum(times) / len(times)
        out[name] = {"s_per_iter": round(mean, 3), "images_per_s": round(len(images) / mean, 2),
                     "best_s_per_iter": round(min(times), 3)}  # fmt: skip
    ours_s, reference_s = (min(seconds[name]) for name in steps)  # best steps: load spikes out
    out["ours_vs_reference"] = round(reference_s / ours_s, 3)
    out["warmup_steps"], out["timed_steps"] = args.warmup, args.iters
    out["last_loss"] = {k: round(v, 4) for k, v in losses.items()}  # finite, or it stopped
    if device.type == "cuda":
        out["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / MB)
    return out


# --- whole epochs ---------------------------------------------------------------------------


def bench_subset(args: argparse.Namespace, tmp: Path) -> Path:
    """args.subset when it holds a train split, else a small one made from args.coco_root."""
    if (args.subset / "annotations" / "train.json").is_file():
        return args.subset
    out = tmp / "subset"
    sp = SubsetParams(
        n_train=args.images, n_val=1, n_test=0, test_from="val2017", strategy="random",
        min_images_per_class=0, workers=4,
    )  # fmt: skip
    make_subset(DataParams(coco_root=str(args.coco_root)), sp, out)
    return out


def train_params(args: argparse.Namespace, device: torch.device) -> TrainParams:
    """The recipe with this run's batch, workers, size and augmentation."""
    return TrainParams(
        weights="none", batch_size=args.batch_size, num_workers=args.workers,
        min_size=args.min_size, max_size=args.max_size, augment=args.augment,
        amp=device.type == "cuda", device=str(device),
    )  # fmt: skip


def calibration_batch(subset: Path) -> tuple:
    """Two train images, to measure batch-norm statistics for `fresh`."""
    dataset = coco_dataset(subset, "train", build_transforms("none"))
    return tuple(dataset[i][0] for i in range(min(2, len(dataset))))


def reference_augment() -> T.Compose:
    """references/detection's training transforms: a horizontal flip, then to float."""
    return T.Compose(
        [T.ToImage(), T.RandomHorizontalFlip(0.5), T.ToDtype(torch.float, scale=True),
         T.ConvertBoundingBoxFormat("XYXY"), T.SanitizeBoundingBoxes(), T.ToPureTensor()]
    )  # fmt: skip


def reference_loader(subset: Path, args: argparse.Namespace, device: torch.device) -> DataLoader:
    """references/detection style: CocoDetection + v2 transforms, images without objects out."""
    images, ann_file = split_paths(subset, "train")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        raw = CocoDetection(str(images), str(ann_file), transforms=reference_augment())
    keys = {"boxes", "labels", "masks", "image_id"}
    dataset = wrap_dataset_for_transforms_v2(raw, target_keys=keys)
    coco = raw.coco
    keep = [k for k, i in enumerate(raw.ids) if any(not a["iscrowd"] for a in coco.imgToAnns[i])]
    ratios = [coco.imgs[raw.ids[k]]["width"] / coco.imgs[raw.ids[k]]["height"] for k in keep]
    subset = Subset(dataset, keep)
    batches = GroupedBatchSampler(RandomSampler(subset), aspect_groups(ratios), args.batch_size)
    return DataLoader(
        subset, batch_sampler=batches, num_workers=args.workers, collate_fn=collate,
        pin_memory=device.type == "cuda",
    )  # fmt: skip


def reference_epoch(model, loader, optimizer, schedule, scaler, device) -> tuple[int, float]:
    """torchvision's train_one_epoch body over the loader; (images seen, last loss).

    The warm-up is the recipe's (`warmup`), not the reference's one-epoch LinearLR: on a small
    subset that ends within a few steps and random weights then diverge; speed is the same.
    """
    model.train()
    n, loss = 0, math.nan
    for images, targets in loader:
        loss = reference_step(model, images, targets, optimizer, scaler, device)
        schedule.step()
        n += len(images)
    return n, loss


@dataclass
class EpochLoop:
    """One training loop: its loader, and an epoch of it returning the images it saw."""

    loader: DataLoader
    run_epoch: Callable[[int], int]


def our_loop(
    device: torch.device, p: TrainParams, subset: Path, augment: T.Compose, calibration: tuple,
    last: dict[str, float], name: str,
) -> EpochLoop:  # fmt: skip
    """The train stage's loop (`train_one_epoch`) over the train split augmented by `augment`."""
    model, _ = fresh(device, p.min_size, p.max_size, calibration)
    dataset = coco_dataset(subset, "train", augment)
    loader = train_loader(dataset, p, pin_memory=device.type == "cuda")
    epoch_iters = epoch_iterations(loader.batch_sampler.sampler, p.batch_size, p.epochs)
    optimizer, scheduler, scaler = make_optimizer(model, p, epoch_iters, device)
    ctx = Context(device)

    def run_epoch(epoch: int) -> int:
        rows, _ = train_one_epoch(model, loader, optimizer, scheduler, scaler, epoch, p, ctx)
        last[name] = rows[-1]["loss"]
        return len(dataset)

    return EpochLoop(loader, run_epoch)


def reference_loop(
    device: torch.device, args: argparse.Namespace, p: TrainParams, subset: Path,
    calibration: tuple, last: dict[str, float], name: str,
) -> EpochLoop:  # fmt: skip
    """The reference-style loop: its own loader and step."""
    model, optimizer = fresh(device, p.min_size, p.max_size, calibration)
    scaler = torch.amp.GradScaler(device.type) if p.amp else None
    loader, schedule = reference_loader(subset, args, device), warmup(optimizer)

    def run_epoch(epoch: int) -> int:
        n, last[name] = reference_epoch(model, loader, optimizer, schedule, scaler, device)
        return n

    return EpochLoop(loader, run_epoch)


def loader_rate(loader: DataLoader, device: torch.device) -> float:
    """images/s of one pass over the loader alone, batches moved to the device."""
    synchronize(device)
    start, n = time.perf_counter(), 0
    for images, _ in loader:
        for image in images:
            image.to(device, non_blocking=True)
        n += len(images)
    synchronize(device)
    return n / (time.perf_counter() - start)


def bench_epochs(device: torch.device, args: argparse.Namespace, subset: Path) -> dict:
    """images/s per epoch of our loop and the reference's (same augmentation), our preset's.

    Each loop first runs whole untimed epochs until it has taken `args.warmup` steps; then
    the loops take turns, an epoch each. Then each loader alone, in turns, best pass kept.
    """
    p = train_params(args, device)
    calibration = calibration_batch(subset)
    last: dict[str, float] = {}
    same, ref, preset = (
        "cocoseg.train.engine",
        "torchvision reference",
        f"cocoseg.train.engine ({p.augment})",
    )
    preset_augment = build_transforms(p.augment, p.min_size, p.max_size)
    loops = {
        same: our_loop(device, p, subset, reference_augment(), calibration, last, same),
        ref: reference_loop(device, args, p, subset, calibration, last, ref),
        preset: our_loop(device, p, subset, preset_augment, calibration, last, preset),
    }
    warm = {name: math.ceil(args.warmup / len(loop.loader)) for name, loop in loops.items()}
    for epoch in range(1, max(warm.values()) + 1):
        for name, loop in loops.items():
            if epoch <= warm[name]:
                loop.run_epoch(epoch)
    out: dict[str, Any] = {name: [] for name in loops}
    for epoch in range(1, args.epochs + 1):
        for name, loop in loops.items():
            synchronize(device)
            start = time.perf_counter()
            n = loop.run_epoch(warm[name] + epoch)
            synchronize(device)
            out[name].append(round(n / (time.perf_counter() - start), 2))
    for name in loops:
        out[f"{name} images_per_s"] = round(sum(out[name]) / len(out[name]), 2)
    out["ours_vs_reference"] = round(out[f"{same} images_per_s"] / out[f"{ref} images_per_s"], 3)
    loader_best: dict[str, float] = {}
    for _ in range(args.epochs):
        for name, loop in loops.items():
            loader_best[name] = max(loader_rate(loop.loader, device), loader_best.get(name, 0))
    out["loader_only_images_per_s"] = {k: round(v, 2) for k, v in loader_best.items()}
    out["images"], out["warmup_epochs"] = len(loops[same].loader.dataset), warm
    out["augment"] = {same: "horizontal flip (the reference's)", ref: "horizontal flip",
                      preset: p.augment}  # fmt: skip
    out["last_loss"] = {k: round(v, 4) for k, v in last.items()}
    if device.type == "cuda":
        out["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / MB)
    return out


def synchronize(device: torch.device) -> None:
    """Wait for queued device work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    """Parse args, run on each requested device, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", action="append", help="cpu, cuda (default: cpu + cuda)")
    parser.add_argument("--iters", type=int, default=3, help="iteration mode: timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps of each loop first")
    parser.add_argument("--min-size", type=int, default=800)
    parser.add_argument("--max-size", type=int, default=1333)
    parser.add_argument("--epoch", action="store_true", help="whole epochs, data loading in")
    parser.add_argument("--epochs", type=int, default=2, help="epoch mode: epochs of each loop")
    parser.add_argument("--batch-size", type=int, default=2, help="epoch mode")
    parser.add_argument("--workers", type=int, default=2, help="epoch mode: DataLoader workers")
    parser.add_argument("--augment", default="flip_rotate_color", help="epoch mode: our preset")
    parser.add_argument("--images", type=int, default=8, help="epoch mode: a subset made here")
    parser.add_argument("--subset", type=Path, default=Path("data/subset"))
    parser.add_argument("--coco-root", type=Path, default=SAMPLE)
    args = parser.parse_args()
    if args.warmup < 5:
        parser.error("--warmup: at least 5 steps (the first ones pay for allocations and kernels)")
    report: dict[str, Any] = {
        "mode": "epoch" if args.epoch else "iteration", "min_size": args.min_size,
        "max_size": args.max_size, "torch": torch.__version__,
        "cpu_model": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "thp_alloc": os.environ["THP_MEM_ALLOC_ENABLE"],
    }  # fmt: skip
    report["batch"] = args.batch_size if args.epoch else 2
    with tempfile.TemporaryDirectory() as tmp:
        subset = bench_subset(args, Path(tmp)) if args.epoch else None
        for name in args.device or ["cpu", "cuda"]:
            if name.startswith("cuda") and not torch.cuda.is_available():
                report[name] = "not available on this machine"
                continue
            device = torch.device(name)
            if device.type == "cuda":
                report["gpu"] = torch.cuda.get_device_name(device)
            run = bench_epochs(device, args, subset) if subset else bench_iterations(device, args)
            report[name] = run
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
