"""Benchmark: the project's inference path beside a plain loop, the model alone, the mask paste.

On the same images, weights (Mask R-CNN R50-FPN, random: nothing is downloaded; such a model
keeps 100 detections per image, the worst case for postprocessing) and batch size, per device:

- ours: `cocoseg.modeling.inference.predict_images` (DataLoader decoding in workers, the model with
  its mask paste (`cocoseg.modeling.paste`), mask crops thresholded on the device, RLE encoding in
  a thread beside the loop, AMP on CUDA);
- plain: serial PIL decode, torchvision's model as shipped (its per-detection mask paste),
  threshold, `pycocotools.mask.encode`, in turn;
- model only: the images already decoded and on the device, `model(images)` alone, with our
  paste and with torchvision's (`torchvision_model_only`);
- paste: the mask paste alone, 100 masks and boxes from the model's own heads at the first
  image's size: torchvision's `paste_masks_in_image` and `cocoseg.modeling.paste.paste_masks`
  (`paste_output_ms`: allocating and zeroing a 100-mask output, the floor of any paste that
  returns one; `paste_speedup_ceiling`: torchvision's paste over that floor).

With `--views`, instead: `predict_images` with sliced inference and TTA (cocoseg.modeling.views)
beside without: seconds per image (all warmed up, then interleaved, best of `--repeat`, in one
process) and peak memory, one pass of each in a process of its own (`peak_rss_mb`, its VmHWM;
less that of an `idle` process, which builds the model and decodes the images, it is what the
variant adds: `rss_over_idle_mb`; on CUDA `peak_gpu_mb` too).

    python benchmarks/bench_infer.py --views --images 6 --min-size 800 --max-size 1333 \\
        --slice-size 512 --tta-scales 640 800 960

Like the stages, it runs PyTorch with `THP_MEM_ALLOC_ENABLE=1` unless that is set (`thp_alloc`).

Every method is warmed up first, then they run interleaved, the best of `--repeat` kept.
With no argument it takes the first 12 val images of the real COCO sample beside the
checkout (synthetic images where it is absent) at a small size on the CPU; on a GPU:

    python benchmarks/bench_infer.py --device cuda --images 100 --min-size 800 \\
        --max-size 1333 --batch-size 8 --workers 8 --coco-root /path/to/coco

It prints one JSON object (images/s and ms of each, ratios, detections, device, torch, ...).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # as the stages run (cocoseg.common.cli)

import numpy as np
import torch
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.transforms.v2 import functional as F

from cocoseg.common.io import MB
from cocoseg.modeling.inference import predict_images
from cocoseg.modeling.paste import paste_masks
from cocoseg.modeling.registry import build_model
from cocoseg.modeling.views import Views

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "coco-sample"


def sample_images(coco_root: Path, n: int) -> list[Path]:
    """The first n val2017 images of a COCO copy, by file name."""
    return sorted((coco_root / "val2017").glob("*.jpg"))[:n]


def synthetic_images(folder: Path, n: int, size: tuple[int, int] = (640, 480)) -> list[Path]:
    """n JPEGs of noise with a few filled shapes, for machines without a COCO copy."""
    rng = np.random.default_rng(0)
    paths = []
    for k in range(n):
        pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x, y = rng.integers(0, size[0] - 100), rng.integers(0, size[1] - 100)
            draw.ellipse(
                [x, y, x + 90, y + 70], fill=tuple(int(c) for c in rng.integers(0, 255, 3))
            )
        paths.append(folder / f"{k:03d}.jpg")
        image.save(paths[-1], quality=90)
    return paths


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so wall time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batches(items: list[Any], size: int) -> list[list[Any]]:
    """Consecutive slices of `size` items."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def run_ours(model, items, device, args) -> list[dict]:
    """The project's path, as the infer and predict stages call it."""
    return predict_images(
        model, [(i, path, None) for i, path in items], device=device, batch_size=args.batch_size,
        num_workers=args.workers, mask_threshold=0.5, progress=False,
    )  # fmt: skip


def run_plain(model, items, device, args) -> list[dict]:
    """Decode, predict, threshold and encode one batch after another in the main thread."""
    results = []
    for batch in batches(items, args.batch_size):
        images = []
        for _, path in batch:
            with Image.open(path) as image:
                tensor = F.pil_to_tensor(image.convert("RGB"))
            images.append(F.to_dtype(tensor, torch.float32, scale=True).to(device))
        with (
            torch.inference_mode(),
            torch.autocast(device.type, enabled=device.type == "cuda"),
        ):
            outputs = model(images)
        for (image_id, _), out in zip(batch, outputs, strict=True):
            masks = (out["masks"][:, 0] > 0.5).cpu().numpy().astype(np.uint8)
            rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
            for box, label, score, rle in zip(
                out["boxes"].tolist(), out["labels"].tolist(), out["scores"].tolist(), rles,
                strict=True,
            ):  # fmt: skip
                rle["counts"] = rle["counts"].decode("ascii")
                x0, y0, x1, y1 = box
                bbox = [x0, y0, x1 - x0, y1 - y0]
                results.append({"image_id": image_id, "category_id": label, "score": score,
                                "bbox": bbox, "segmentation": rle})  # fmt: skip
    return results


def run_model_only(model, tensors: list[torch.Tensor], device, args) -> int:
    """model(images) on images already on the device; returns the detection count."""
    count = 0
    with torch.inference_mode(), torch.autocast(device.type, enabled=device.type == "cuda"):
        for batch in batches(tensors, args.batch_size):
            count += sum(len(out["scores"]) for out in model(batch))
    return count


def stock_model(model: torch.nn.Module) -> torch.nn.Module:
    """The same weights with torchvision's own transform: its per-detection mask paste."""
    stock = copy.deepcopy(model)
    t = model.transform
    stock.transform = GeneralizedRCNNTransform(
        t.min_size, t.max_size, t.image_mean, t.image_std, t.size_divisible, t.fixed_size
    )
    return stock.eval()


def head_masks(model, image: torch.Tensor, device, n: int = 100) -> tuple:
    """n mask probabilities and boxes as the model's heads hand them to the paste (cycled to n).

    Returns masks (n, 1, 28, 28), boxes in image coordinates and the image's (H, W).
    """
    size = tuple(image.shape[-2:])
    with torch.inference_mode(), torch.autocast(device.type, enabled=device.type == "cuda"):
        resized, _ = model.transform([image])
        features = model.backbone(resized.tensors)
        proposals, _ = model.rpn(resized, features)
        (found,), _ = model.roi_heads(features, proposals, resized.image_sizes)
    boxes = resize_boxes(found["boxes"], resized.image_sizes[0], size)
    repeat = torch.arange(n, device=boxes.device) % max(1, len(boxes))
    return found["masks"][repeat], boxes[repeat], size


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Seconds one call takes, device work included, and what it returned."""
    synchronize(device)
    start = time.perf_counter()
    value = fn()
    synchronize(device)
    return time.perf_counter() - start, value


def bench(device: torch.device, paths: list[Path], args: argparse.Namespace) -> dict[str, Any]:
    """Every method on one device, warmed up, interleaved, best of args.repeat."""
    torch.manual_seed(0)
    model = build_model("maskrcnn_resnet50_fpn", 5, min_size=args.min_size, max_size=args.max_size)
    model.to(device).eval()
    stock = stock_model(model)
    items = [(image_id, path, None) for image_id, path in enumerate(paths, start=1)]
    tensors = []
    for path in paths:
        with Image.open(path) as image:
            tensor = F.pil_to_tensor(image.convert("RGB"))
        tensors.append(F.to_dtype(tensor, torch.float32, scale=True).to(device))
    masks, boxes, size = head_masks(model, tensors[0], device)
    methods: dict[str, Callable[[], Any]] = {
        "torchvision_model": lambda: run_model_only(stock, tensors, device, args),
        "model": lambda: run_model_only(model, tensors, device, args),
        "ours": lambda: run_ours(model, items, device, args),
        "plain": lambda: run_plain(stock, items, device, args),
        "paste_torchvision": lambda: paste_masks_in_image(masks, boxes, size),
        "paste_ours": lambda: paste_masks(masks, boxes, size),
        "paste_output": lambda: masks.new_zeros((len(masks), 1, *size)),
    }
    # Warm-up over every image: each new input shape costs the first pass extra (kernel
    # choice, allocations), which would otherwise fall on whichever method runs first.
    for fn in methods.values():
        fn()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    best: dict[str, float] = {}
    outputs: dict[str, Any] = {}
    for _ in range(args.repeat):  # interleaved, best of each: fair under drifting load
        for name, fn in methods.items():
            seconds, outputs[name] = timed(fn, device)
            best[name] = min(seconds, best.get(name, math.inf))
    n = len(paths)
    out = {
        "device": str(device),
        "torchvision_model_only_images_per_s": round(n / best["torchvision_model"], 3),
        "model_only_images_per_s": round(n / best["model"], 3),
        "ours_images_per_s": round(n / best["ours"], 3),
        "plain_images_per_s": round(n / best["plain"], 3),
        "paste_ms_torchvision": round(1000 * best["paste_torchvision"], 2),
        "paste_ms_ours": round(1000 * best["paste_ours"], 2),
        "paste_output_ms": round(1000 * best["paste_output"], 2),
        "model_only_vs_torchvision": round(best["torchvision_model"] / best["model"], 3),
        "ours_vs_model_only": round(best["model"] / best["ours"], 3),
        "ours_vs_plain": round(best["plain"] / best["ours"], 3),
        "paste_speedup": round(best["paste_torchvision"] / best["paste_ours"], 3),
        "paste_speedup_ceiling": round(best["paste_torchvision"] / best["paste_output"], 3),
        "paste_masks": len(masks),
        "paste_image_size": list(size),
        "detections": len(outputs["ours"]),
        "plain_detections": len(outputs["plain"]),
        "model_only_detections": outputs["model"],
    }
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
        out["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / MB)
    return out


def view_variants(args: argparse.Namespace) -> dict[str, Views]:
    """What `--views` compares: the image alone, tiles, flip TTA, flip at sizes, tiles with flip."""
    sliced, scales = args.slice_size, tuple(args.tta_scales)
    return {
        "plain": Views(),
        "sliced": Views(slice_size=sliced, slice_overlap=0.2),
        "tta_flip": Views(tta=True),
        "tta_scales": Views(tta=True, tta_scales=scales),
        "sliced_tta_flip": Views(slice_size=sliced, slice_overlap=0.2, tta=True),
    }


def peak_rss_mb() -> float:
    """This process's own peak resident memory (VmHWM; ru_maxrss would count the parent's)."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(status["VmHWM"].split()[0]) / 1024


def view_model(device: torch.device, args: argparse.Namespace) -> torch.nn.Module:
    """The benchmark's random Mask R-CNN at the asked resize, on `device`."""
    torch.manual_seed(0)
    model = build_model("maskrcnn_resnet50_fpn", 5, min_size=args.min_size, max_size=args.max_size)
    return model.to(device).eval()


def view_runs(model, paths: list[Path], device, args) -> dict[str, Callable[[], list[dict]]]:
    """predict_images over each `--views` variant, as a call."""
    items = [(image_id, path, None) for image_id, path in enumerate(paths, start=1)]
    options = {"device": device, "batch_size": args.batch_size, "num_workers": args.workers}
    return {
        name: functools.partial(predict_images, model, items, progress=False, views=v, **options)
        for name, v in view_variants(args).items()
    }


def variant_peak(device: torch.device, paths: list[Path], args: argparse.Namespace) -> dict:
    """Peak memory of one pass of `args.variant` (`idle`: none) in this fresh process."""
    model = view_model(device, args)
    if args.variant == "idle":
        for path in paths:
            with Image.open(path) as image:
                image.convert("RGB").load()
    else:
        view_runs(model, paths, device, args)[args.variant]()
    out = {"peak_rss_mb": round(peak_rss_mb())}
    if device.type == "cuda":
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / MB)
    return out


def bench_views(device: torch.device, paths: list[Path], args: argparse.Namespace) -> dict:
    """Time per image of each `--views` variant, interleaved; peak memory of each alone."""
    runs = view_runs(view_model(device, args), paths, device, args)
    detections = {name: len(run()) for name, run in runs.items()}  # warm-up
    best: dict[str, float] = {}
    for _ in range(args.repeat):  # interleaved, best of each: fair under drifting load
        for name, run in runs.items():
            seconds, _ = timed(run, device)
            best[name] = min(seconds, best.get(name, math.inf))
    peaks = {}
    for name in ["idle", *runs]:
        argv = [
            "--device", str(device), "--images", str(args.images), "--batch-size",
            str(args.batch_size), "--workers", str(args.workers), "--min-size", str(args.min_size),
            "--max-size", str(args.max_size), "--coco-root", str(args.coco_root),
            "--slice-size", str(args.slice_size), "--tta-scales", *map(str, args.tta_scales),
            "--variant", name,
        ]  # fmt: skip
        proc = subprocess.run(
            [sys.executable, __file__, *argv], capture_output=True, text=True, check=True
        )
        peaks[name] = json.loads(proc.stdout.splitlines()[-1])
    idle = peaks.pop("idle")["peak_rss_mb"]
    views = {
        name: {
            "s_per_image": round(best[name] / len(paths), 3),
            "time_vs_plain": round(best[name] / best["plain"], 2),
            "detections": detections[name],
            **peaks[name],
            "rss_over_idle_mb": peaks[name]["peak_rss_mb"] - idle,
        }
        for name in runs
    }
    return {"device": str(device), "idle_peak_rss_mb": idle, "views": views}


def main() -> None:
    """Parse args, run on each requested device, print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", action="append", help="cpu, cuda (default: cpu)")
    parser.add_argument("--images", type=int, default=12, help="val images to predict")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="our DataLoader processes")
    parser.add_argument("--min-size", type=int, default=320)
    parser.add_argument("--max-size", type=int, default=512)
    parser.add_argument("--coco-root", type=Path, default=SAMPLE, help="a COCO copy with val2017/")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes of each; best kept")
    parser.add_argument("--views", action="store_true", help="sliced inference and TTA instead")
    parser.add_argument("--slice-size", type=int, default=512, help="--views: tile side (px)")
    parser.add_argument("--tta-scales", type=int, nargs="+", default=[640, 800, 960],
                        help="--views: the sizes of the tta_scales variant")  # fmt: skip
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # a --views child process
    args = parser.parse_args()
    report: dict[str, Any] = {
        "torch": torch.__version__, "images": args.images, "batch_size": args.batch_size,
        "workers": args.workers, "min_size": args.min_size, "max_size": args.max_size,
        "repeat": args.repeat,
        "cpu_model": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "thp_alloc": os.environ["THP_MEM_ALLOC_ENABLE"],
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        paths = sample_images(args.coco_root, args.images)
        report["source"] = str(args.coco_root / "val2017") if paths else "synthetic 640x480"
        paths = paths or synthetic_images(Path(tmp), args.images)
        report["images"] = len(paths)
        runs = []
        for name in args.device or ["cpu"]:
            if name.startswith("cuda") and not torch.cuda.is_available():
                runs.append({"device": name, "skipped": "CUDA is not available here"})
                continue
            if args.variant:
                print(json.dumps(variant_peak(torch.device(name), paths, args)))
                return
            runs.append((bench_views if args.views else bench)(torch.device(name), paths, args))
    report.update(runs[0] if len(runs) == 1 else {"runs": runs})
    print(json.dumps(report))


if __name__ == "__main__":
    main()
