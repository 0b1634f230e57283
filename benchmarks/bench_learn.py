"""Benchmark: does each model the pipeline builds learn, and does the sampler help a rare class?

Synthetic data, random initial weights (nothing is downloaded): a deliberately imbalanced set
(tests/synthcoco.make_imbalanced_subset: "person", large and in almost every image; "sports
ball", COCO-small and in ~15% of them), held-out val images of the same kind. Each arch x
sampler trains from scratch with the train stage's own loop (cocoseg.train.engine.train) for the
same budget (epochs of the same images at the same size), predicts the val images with stage
infer's code and is scored with stage evaluate's (cocoseg.evaluate.metrics, semantic IoU too).
These numbers say the models learn and how they compare on easy shapes; they are not COCO
numbers: those need a real run from COCO weights.

    python benchmarks/bench_learn.py [--out reports/bench_learn.json] [--epochs 6] [--size 128]

It prints one JSON object (and writes it to --out): per run the per-class mask AP and AP75,
box AP, semantic mIoU, training seconds and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # as the stages run (cocoseg.common.cli)

import msgspec
import torch

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT / "tests"))  # the test suite's shapes generator

import synthcoco  # noqa: E402

from cocoseg.coco.inputs import split_paths  # noqa: E402
from cocoseg.common.io import read_json, write_json  # noqa: E402
from cocoseg.common.params import EvaluateParams, TrainParams  # noqa: E402
from cocoseg.evaluate import metrics  # noqa: E402
from cocoseg.modeling.infer import infer_val  # noqa: E402
from cocoseg.train.engine import train  # noqa: E402

ARCHS = ("maskrcnn_resnet50_fpn", "cascade_maskrcnn_resnet50_fpn", "deeplabv3plus_resnet50")
SAMPLERS = ("uniform", "repeat_factor")
SCORE_THRESHOLD = 0.3  # for the greedy and semantic metrics; COCO AP uses every score


def recipe(arch: str, sampler: str, args: argparse.Namespace) -> TrainParams:
    """The same budget and schedule for every run: from scratch, cosine, clipped (random
    weights at full rate diverge without it), small RoI samples (a CPU run)."""
    settings: dict[str, Any] = {
        "arch": arch, "weights": "none", "epochs": args.epochs, "batch_size": 2,
        "num_workers": 0, "min_size": args.size, "max_size": args.size, "augment": "none",
        "lr": 0.02, "warmup_iters": 20, "schedule": "cosine", "clip_grad_norm": 10.0,
        "amp": False, "device": args.device, "seed": args.seed, "eval_every": 0,
        "init_heads_from_coco": False,
    }  # fmt: skip
    if not arch.startswith("deeplab"):
        settings["rois_per_image"] = 64
    if sampler != "uniform":
        settings["sampler"] = sampler
    return msgspec.convert(settings, TrainParams)


def score(subset: Path, predictions: Path) -> dict[str, Any]:
    """Stage evaluate's numbers for the val predictions: overall and per class."""
    _, ann_file = split_paths(subset, "val")
    gt = metrics.load_ground_truth(ann_file)
    found = metrics.evaluate(gt, metrics.load_predictions(predictions, gt), SCORE_THRESHOLD)
    m = found.metrics
    per_class = {
        name: {key: row.get(key) for key in ("segm_AP", "segm_AP75", "bbox_AP", "n_gt")}
        for name, row in m["per_class"].items()
    }
    numbers = {"segm_AP": m["segm"]["AP"], "segm_AP75": m["segm"]["AP75"]}
    numbers["bbox_AP"] = m["bbox"]["AP"]
    if "semantic" in m:
        numbers["semantic_mIoU"] = m["semantic"]["mIoU"]
        for name in per_class:
            per_class[name]["semantic_IoU"] = m["semantic"]["per_class"][name]["iou"]
    return {**numbers, "per_class": per_class}


def run(arch: str, sampler: str, subset: Path, work: Path, args: argparse.Namespace) -> dict:
    """Train one arch x sampler from scratch, predict the val split, score it."""
    folder = work / f"{arch}-{sampler}"
    start = time.perf_counter()
    model_path = train(recipe(arch, sampler, args), subset, folder / "models", folder / "reports")
    train_seconds = time.perf_counter() - start
    settings = EvaluateParams(device=args.device, num_workers=0, score_threshold=SCORE_THRESHOLD)
    predictions = folder / "predictions.json"
    infer_val(model_path, subset, predictions, settings)
    summary = read_json(folder / "reports" / "summary.json")
    row = {"arch": arch, "sampler": sampler, **score(subset, predictions)}
    row.update(train_seconds=round(train_seconds, 1), iterations=summary["iterations"])
    sampling = folder / "reports" / "sampling.json"
    if sampling.exists():
        row["sampling"] = read_json(sampling)
    print(json.dumps({k: row[k] for k in ("arch", "sampler", "segm_AP", "train_seconds")}))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=list(ARCHS))
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--train-images", type=int, default=60)
    parser.add_argument("--val-images", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        subset = synthcoco.make_imbalanced_subset(
            Path(tmp) / "subset", n_train=args.train_images, n_val=args.val_images,
            size=args.size, seed=args.seed,
        )  # fmt: skip
        rows = [run(a, s, subset, Path(tmp), args) for a in args.archs for s in args.samplers]
    result = {
        "data": "synthetic, imbalanced (tests/synthcoco.make_imbalanced_subset), random weights",
        "settings": {k: str(v) for k, v in vars(args).items()},
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        },
        "runs": rows,
    }
    print(json.dumps(result, indent=1))
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
