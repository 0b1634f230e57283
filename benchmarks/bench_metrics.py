"""Benchmark: every evaluate-stage metric, inference excluded, on COCO-sized synthetic data.

300 images of 640x480 with 2-8 ground-truth polygons each and 20 predictions per image
(shifted copies of the ground truth plus random shapes, random scores). Times checking
the predictions and `metrics.evaluate` (COCOeval segm + bbox, greedy IoU, Dice, P/R/F1).

    python benchmarks/bench_metrics.py [--images 300] [--per-image 20] [--repeat 3]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from pycocotools import mask as mask_utils

from cocoseg.coco import cocoeval
from cocoseg.evaluate import metrics

WIDTH, HEIGHT = 640, 480
CLASSES = ["person", "cat", "sports ball", "book"]


def random_polygon(rng: np.random.Generator, scale: float = 1.0) -> list[float]:
    """A random star-shaped polygon somewhere in the image, COCO's flat list."""
    radius = rng.uniform(10, 120) * scale
    cx, cy = rng.uniform(radius, WIDTH - radius), rng.uniform(radius, HEIGHT - radius)
    angles = np.sort(rng.uniform(0, 2 * math.pi, int(rng.integers(5, 12))))
    radii = radius * rng.uniform(0.6, 1.0, angles.size)
    xy = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
    return [round(float(v), 2) for v in xy.ravel()]


def prediction(image_id: int, cat_id: int, poly: list[float], score: float) -> dict:
    """A COCO results dict for a polygon, with its RLE and box."""
    rle = mask_utils.merge(mask_utils.frPyObjects([poly], HEIGHT, WIDTH))
    return {
        "image_id": image_id,
        "category_id": cat_id,
        "bbox": mask_utils.toBbox(rle).tolist(),
        "score": score,
        "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
    }


def make_data(n_images: int, per_image: int, seed: int = 0) -> tuple[dict, list[dict]]:
    """A ground-truth dataset and raw predictions for it."""
    rng = np.random.default_rng(seed)
    images, anns, preds = [], [], []
    for image_id in range(1, n_images + 1):
        images.append({"id": image_id, "width": WIDTH, "height": HEIGHT, "file_name": "x.jpg"})
        gts = []
        for _ in range(int(rng.integers(2, 9))):
            cat_id, poly = int(rng.integers(1, 5)), random_polygon(rng)
            rle = mask_utils.merge(mask_utils.frPyObjects([poly], HEIGHT, WIDTH))
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": cat_id,
                    "segmentation": [poly],
                    "area": float(mask_utils.area(rle)),
                    "bbox": mask_utils.toBbox(rle).tolist(),
                    "iscrowd": 0,
                }
            )
            gts.append((cat_id, poly))
        for k in range(per_image):
            if k < len(gts):
                cat_id, poly = gts[k]
                shift = rng.uniform(-8, 8, 2)
                poly = [v + shift[i % 2] for i, v in enumerate(poly)]
            else:
                cat_id, poly = int(rng.integers(1, 5)), random_polygon(rng, 0.5)
            preds.append(prediction(image_id, cat_id, poly, float(rng.uniform(0.01, 1.0))))
    categories = [{"id": i, "name": n} for i, n in enumerate(CLASSES, start=1)]
    return {"images": images, "annotations": anns, "categories": categories}, preds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--per-image", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    dataset, raw = make_data(args.images, args.per_image)
    print(
        f"{args.images} images {WIDTH}x{HEIGHT}, {len(dataset['annotations'])} ground truths, "
        f"{len(raw)} predictions"
    )
    times = []
    for _ in range(args.repeat):
        gt = cocoeval.coco_from_dataset(dataset)  # COCOeval marks its ground truth: a fresh one
        start = time.perf_counter()
        preds = metrics.check_predictions(raw, gt, "benchmark")
        evaluation = metrics.evaluate(gt, preds, score_threshold=0.5)
        times.append(time.perf_counter() - start)
    m = evaluation.metrics
    print(
        f"segm AP {m['segm']['AP']:.4f}  bbox AP {m['bbox']['AP']:.4f}  "
        f"IoU {m['iou']['mean']:.4f}  Dice {m['dice']['mean']:.4f}  F1 {m['match']['f1']:.4f}"
    )
    print(f"all metrics: best {min(times):.3f} s, median {sorted(times)[len(times) // 2]:.3f} s")


if __name__ == "__main__":
    main()
