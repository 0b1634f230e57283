"""Benchmark: one training iteration of Mask R-CNN R50-FPN, batch 2, at the default size.

Times `cocoseg.engine.train_step` beside the same iteration written the way torchvision's
detection reference (references/detection/engine.py, train_one_epoch) does it, on the same
model layout (COCO fine-tuning: frozen batch norm, stem and layer1 fixed; random weights, as
nothing is downloaded, see `fresh`) and the same two synthetic 640x480 images with 3 shapes
each, resized by the model to min_size/max_size (800/1333). Data loading is excluded. AMP on
CUDA only.

    python benchmarks/bench_train.py [--device cpu|cuda] [--iters 3] [--warmup 1]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections.abc import Callable

import torch

from cocoseg.engine import train_step
from cocoseg.model import build_for_training, pretrained_layout
from cocoseg.runtime import Context

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


def bench(device: torch.device, args: argparse.Namespace) -> dict:
    """Seconds/iteration and images/s, ours and the reference's."""
    images, targets = synthetic_batch()
    amp = device.type == "cuda"
    results = {}
    model, optimizer = fresh(device, args.min_size, args.max_size, images)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    ctx = Context(device)
    results["cocoseg.engine.train_step"] = timed(
        lambda: checked(train_step(model, images, targets, optimizer, scaler, ctx, amp=amp)),
        device, args.warmup, args.iters,
    )  # fmt: skip
    del model, optimizer
    model, optimizer = fresh(device, args.min_size, args.max_size, images)
    ref_scaler = torch.amp.GradScaler(device.type) if amp else None
    results["torchvision reference"] = timed(
        lambda: reference_step(model, images, targets, optimizer, ref_scaler, device),
        device, args.warmup, args.iters,
    )  # fmt: skip
    out = {
        name: {"s_per_iter": round(s, 3), "images_per_s": round(len(images) / s, 2)}
        for name, s in results.items()
    }
    if device.type == "cuda":
        out["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
    return out


def main() -> None:
    """Parse args, run on each requested device, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", action="append", help="cpu, cuda (default: cpu + cuda)")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--min-size", type=int, default=800)
    parser.add_argument("--max-size", type=int, default=1333)
    args = parser.parse_args()
    report = {
        "batch": 2, "image": "640x480", "min_size": args.min_size, "max_size": args.max_size,
        "torch": torch.__version__, "cpu_model": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
    }  # fmt: skip
    for name in args.device or ["cpu", "cuda"]:
        if name.startswith("cuda") and not torch.cuda.is_available():
            report[name] = "not available on this machine"
            continue
        device = torch.device(name)
        if device.type == "cuda":
            report["gpu"] = torch.cuda.get_device_name(device)
        report[name] = bench(device, args)
        print(json.dumps({name: report[name]}), flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
