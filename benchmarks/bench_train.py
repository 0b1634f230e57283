"""Benchmark: Mask R-CNN R50-FPN training, ours beside torchvision's detection reference.

Two modes, each on the same model layout (COCO fine-tuning: frozen batch norm, stem and
layer1 fixed; random weights, as nothing is downloaded, see `fresh`), batch, optimiser and
AMP (CUDA only). Both loops warm the learning rate up with the recipe's schedule
(train.warmup_iters, warmup_factor): from random weights, full-rate steps drive the mask loss
from ~7 to ~90 within four iterations here (fp16 autocast), inf/NaN on a GPU under AMP.

- iteration (default): `cocoseg.train.engine.train_step` beside the same step written the way
  references/detection/engine.py does it, on two synthetic 640x480 images with 3 shapes
  each, resized by the model to min_size/max_size (800/1333). Data loading excluded.
- `--epoch`: whole epochs with data loading: the train stage's loop (cocoseg.train.engine:
  CocoDetection through cocoseg.train.dataset, the `train.augment` preset, aspect-ratio batches,
  `train_one_epoch`) beside a reference-style loop (CocoDetection + transforms.v2 with a
  horizontal flip, DataLoader with aspect-ratio batches, the reference's step), on the
  train split of a subset folder (default data/subset; else one is made from --coco-root).

    python benchmarks/bench_train.py [--device cpu|cuda] [--iters 3] [--warmup 1]
    python benchmarks/bench_train.py --epoch --device cuda --batch-size 8 --workers 8 \
        --images 200 --epochs 3 --coco-root /path/to/coco

It prints one JSON line per device, then the whole report.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, RandomSampler, Subset
from torchvision.datasets import CocoDetection, wrap_dataset_for_transforms_v2
from torchvision.transforms import v2 as T

from cocoseg.core.config import DataParams, SubsetParams, TrainParams
from cocoseg.core.inputs import split_paths
from cocoseg.core.model import build_for_training, pretrained_layout
from cocoseg.data.subset import make_subset
from cocoseg.train.dataset import coco_dataset, collate
from cocoseg.train.engine import train_one_epoch, train_step
from cocoseg.train.optim import lr_factor, make_optimizer
from cocoseg.train.runtime import Context
from cocoseg.train.sampler import GroupedBatchSampler, aspect_groups, train_loader
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


def timed(step: Callable[[], object], device: torch.device, warmup: int, iters: int) -> float:
    """Mean seconds per call after `warmup` untimed calls."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def warmup(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """The recipe's linear warm-up (train.warmup_iters, warmup_factor), stepped per iteration."""
    p = TrainParams()
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: lr_factor(i, p, 10**9))


def bench_iterations(device: torch.device, args: argparse.Namespace) -> dict:
    """Seconds/iteration and images/s, ours and the reference's, data loading excluded."""
    images, targets = synthetic_batch()
    amp = device.type == "cuda"
    results, losses = {}, {}
    model, optimizer = fresh(device, args.min_size, args.max_size, images)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    schedule, ctx = warmup(optimizer), Context(device)

    def ours() -> None:
        losses["cocoseg"] = checked(
            train_step(model, images, targets, optimizer, scaler, ctx, amp=amp)
        )["loss"]
        schedule.step()

    results["cocoseg.train.engine.train_step"] = timed(ours, device, args.warmup, args.iters)
    del model, optimizer
    model, optimizer = fresh(device, args.min_size, args.max_size, images)
    ref_scaler = torch.amp.GradScaler(device.type) if amp else None
    ref_schedule = warmup(optimizer)

    def reference() -> None:
        losses["reference"] = reference_step(model, images, targets, optimizer, ref_scaler, device)
        ref_schedule.step()

    results["torchvision reference"] = timed(reference, device, args.warmup, args.iters)
    out: dict[str, Any] = {
        name: {"s_per_iter": round(s, 3), "images_per_s": round(len(images) / s, 2)}
        for name, s in results.items()
    }
    out["last_loss"] = {k: round(v, 4) for k, v in losses.items()}  # finite, or it stopped
    if device.type == "cuda":
        out["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
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


def reference_loader(subset: Path, args: argparse.Namespace, device: torch.device) -> DataLoader:
    """references/detection style: CocoDetection + v2 transforms, images without objects out."""
    images, ann_file = split_paths(subset, "train")
    transforms = T.Compose(
        [T.ToImage(), T.RandomHorizontalFlip(0.5), T.ToDtype(torch.float, scale=True),
         T.ConvertBoundingBoxFormat("XYXY"), T.SanitizeBoundingBoxes(), T.ToPureTensor()]
    )  # fmt: skip
    raw = CocoDetection(str(images), str(ann_file), transforms=transforms)
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


def timed_epochs(run_epoch: Callable[[int], int], device: torch.device, epochs: int) -> list:
    """images/s of each epoch, device work included."""
    rates = []
    for epoch in range(1, epochs + 1):
        synchronize(device)
        start = time.perf_counter()
        n = run_epoch(epoch)
        synchronize(device)
        rates.append(round(n / (time.perf_counter() - start), 2))
    return rates


def bench_epochs(device: torch.device, args: argparse.Namespace, subset: Path) -> dict:
    """images/s per epoch of the train stage's loop and of the reference-style loop."""
    p = train_params(args, device)
    calibration = calibration_batch(subset)
    model, _ = fresh(device, p.min_size, p.max_size, calibration)
    dataset = coco_dataset(subset, "train", build_transforms(p.augment, p.min_size, p.max_size))
    loader = train_loader(dataset, p, pin_memory=device.type == "cuda")
    optimizer, scheduler, scaler = make_optimizer(model, p, len(loader), device)
    ctx, last = Context(device), {}

    def ours(epoch: int) -> int:
        rows, _ = train_one_epoch(model, loader, optimizer, scheduler, scaler, epoch, p, ctx)
        last["cocoseg"] = rows[-1]["loss"]
        return len(dataset)

    out: dict[str, Any] = {"cocoseg.train.engine": timed_epochs(ours, device, args.epochs)}
    del model, optimizer
    model, optimizer = fresh(device, p.min_size, p.max_size, calibration)
    ref_scaler = torch.amp.GradScaler(device.type) if p.amp else None
    ref_loader, ref_schedule = reference_loader(subset, args, device), warmup(optimizer)

    def reference(epoch: int) -> int:
        n, last["reference"] = reference_epoch(
            model, ref_loader, optimizer, ref_schedule, ref_scaler, device
        )
        return n

    out["torchvision reference"] = timed_epochs(reference, device, args.epochs)
    steady = slice(1, None) if args.epochs > 1 else slice(None)  # the first epoch warms up
    for name in ("cocoseg.train.engine", "torchvision reference"):
        rates = out[name][steady]
        out[f"{name} images_per_s"] = round(sum(rates) / len(rates), 2)
    out["ours_vs_reference"] = round(
        out["cocoseg.train.engine images_per_s"] / out["torchvision reference images_per_s"], 3
    )
    out["images"], out["augment"] = len(dataset), p.augment
    out["last_loss"] = {k: round(v, 4) for k, v in last.items()}
    if device.type == "cuda":
        out["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
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
    parser.add_argument("--warmup", type=int, default=1, help="iteration mode: untimed steps")
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
    report: dict[str, Any] = {
        "mode": "epoch" if args.epoch else "iteration", "min_size": args.min_size,
        "max_size": args.max_size, "torch": torch.__version__,
        "cpu_model": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
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
            print(json.dumps({name: run}), flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
