"""Benchmark: the subset stage's json side on full-size COCO-2017 annotation files.

Writes annotation files the size of COCO-2017's into a temp dir (train: 118k images, 860k
annotations, polygons of ~22 points, ~1% crowd RLE, ~450 MB; val: 5k images, 36k
annotations; test info: 40.7k images), then times, each in a fresh subprocess:

  subset       make_subset(..., with_images=False) with params.yaml's subset defaults
               (300/300/30, balanced, test2017; 100/100/10 below --scale 0.5): loading,
               checking, selecting and writing every json; images are not copied (there
               are none: the benchmark measures the annotation side only)
  pycocotools  pycocotools.coco.COCO() loading train and val, nothing else (the reference)
  msgspec      msgspec.json.decode of train and val into dicts (parsing alone, everything)
  orjson       orjson.loads of train and val (parsing alone, everything)

Wall time and peak RSS come from a wrapper process that runs only that one child and reads
resource.getrusage(RUSAGE_CHILDREN). Aim: subset <= 0.3x pycocotools' load time, <= 1 GB.

    python benchmarks/bench_subset.py [--scale 1.0] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

# COCO-2017's 80 categories: (id, name, supercategory).
CATEGORIES = [
    (1, "person", "person"), (2, "bicycle", "vehicle"), (3, "car", "vehicle"),
    (4, "motorcycle", "vehicle"), (5, "airplane", "vehicle"), (6, "bus", "vehicle"),
    (7, "train", "vehicle"), (8, "truck", "vehicle"), (9, "boat", "vehicle"),
    (10, "traffic light", "outdoor"), (11, "fire hydrant", "outdoor"),
    (13, "stop sign", "outdoor"), (14, "parking meter", "outdoor"), (15, "bench", "outdoor"),
    (16, "bird", "animal"), (17, "cat", "animal"), (18, "dog", "animal"),
    (19, "horse", "animal"), (20, "sheep", "animal"), (21, "cow", "animal"),
    (22, "elephant", "animal"), (23, "bear", "animal"), (24, "zebra", "animal"),
    (25, "giraffe", "animal"), (27, "backpack", "accessory"), (28, "umbrella", "accessory"),
    (31, "handbag", "accessory"), (32, "tie", "accessory"), (33, "suitcase", "accessory"),
    (34, "frisbee", "sports"), (35, "skis", "sports"), (36, "snowboard", "sports"),
    (37, "sports ball", "sports"), (38, "kite", "sports"), (39, "baseball bat", "sports"),
    (40, "baseball glove", "sports"), (41, "skateboard", "sports"),
    (42, "surfboard", "sports"), (43, "tennis racket", "sports"), (44, "bottle", "kitchen"),
    (46, "wine glass", "kitchen"), (47, "cup", "kitchen"), (48, "fork", "kitchen"),
    (49, "knife", "kitchen"), (50, "spoon", "kitchen"), (51, "bowl", "kitchen"),
    (52, "banana", "food"), (53, "apple", "food"), (54, "sandwich", "food"),
    (55, "orange", "food"), (56, "broccoli", "food"), (57, "carrot", "food"),
    (58, "hot dog", "food"), (59, "pizza", "food"), (60, "donut", "food"),
    (61, "cake", "food"), (62, "chair", "furniture"), (63, "couch", "furniture"),
    (64, "potted plant", "furniture"), (65, "bed", "furniture"),
    (67, "dining table", "furniture"), (70, "toilet", "furniture"), (72, "tv", "electronic"),
    (73, "laptop", "electronic"), (74, "mouse", "electronic"), (75, "remote", "electronic"),
    (76, "keyboard", "electronic"), (77, "cell phone", "electronic"),
    (78, "microwave", "appliance"), (79, "oven", "appliance"), (80, "toaster", "appliance"),
    (81, "sink", "appliance"), (82, "refrigerator", "appliance"), (84, "book", "indoor"),
    (85, "clock", "indoor"), (86, "vase", "indoor"), (87, "scissors", "indoor"),
    (88, "teddy bear", "indoor"), (89, "hair drier", "indoor"), (90, "toothbrush", "indoor"),
]  # fmt: skip
# Shares of COCO-2017 train annotations (person 262k, book 24.7k, sports ball 6.3k, cat 4.8k).
SHARES = {1: 0.305, 84: 0.0287, 37: 0.0074, 17: 0.0055}
SPLITS = {  # file: (images, annotations, first image id)
    "instances_train2017.json": (118_287, 860_001, 1),
    "instances_val2017.json": (5_000, 36_781, 600_000),
    "image_info_test2017.json": (40_670, 0, 700_000),
}
CHUNK = 20_000

CHILD = {
    "subset": """
import sys
from pathlib import Path
from cocoseg.common.params import DataParams, SubsetParams
from cocoseg.subset.make import make_subset
root, n = Path(sys.argv[1]), int(sys.argv[2])
params = SubsetParams(n_train=n, n_val=n, n_test=n // 10, test_from="test2017")
stats = make_subset(DataParams(coco_root=str(root)), params, root / "out", with_images=False)
assert [stats["splits"][s]["images"] for s in ("train", "val", "test")] == [n, n, n // 10]
""",
    "pycocotools": """
import sys, contextlib, io
from pycocotools.coco import COCO
with contextlib.redirect_stdout(io.StringIO()):
    train = COCO(sys.argv[1] + "/annotations/instances_train2017.json")
    val = COCO(sys.argv[1] + "/annotations/instances_val2017.json")
assert len(train.anns) > 0 and len(val.anns) > 0
""",
    "msgspec": """
import sys, msgspec
ann = sys.argv[1] + "/annotations/"
train = msgspec.json.decode(open(ann + "instances_train2017.json", "rb").read())
val = msgspec.json.decode(open(ann + "instances_val2017.json", "rb").read())
""",
    "orjson": """
import sys, orjson
train = orjson.loads(open(sys.argv[1] + "/annotations/instances_train2017.json", "rb").read())
val = orjson.loads(open(sys.argv[1] + "/annotations/instances_val2017.json", "rb").read())
""",
}


def category_weights() -> tuple[np.ndarray, np.ndarray]:
    """Category ids and the probability of each, COCO-like (person dominates, ours rare)."""
    ids = np.array([c[0] for c in CATEGORIES])
    rest = (1 - sum(SHARES.values())) / (len(ids) - len(SHARES))
    return ids, np.array([SHARES.get(int(i), rest) for i in ids])


def images_part(n: int, first_id: int, rng: np.random.Generator, split: str) -> list[dict]:
    """COCO image records with sizes around 640x480."""
    widths = rng.choice([640, 640, 500, 427, 480], n)
    heights = rng.choice([480, 480, 375, 640, 427], n)
    return [
        {
            "license": int(1 + i % 6),
            "file_name": f"{first_id + i:012d}.jpg",
            "coco_url": f"http://images.cocodataset.org/{split}/{first_id + i:012d}.jpg",
            "height": int(h),
            "width": int(w),
            "date_captured": "2013-11-14 11:18:45",
            "flickr_url": f"http://farm4.staticflickr.com/{i}/{i}_abc_z.jpg",
            "id": first_id + i,
        }
        for i, (w, h) in enumerate(zip(widths, heights, strict=True))
    ]


def crowd_rle(rng: np.random.Generator, w: int, h: int) -> dict:
    """An uncompressed crowd RLE covering the image exactly, ~100-3000 runs like COCO's."""
    cuts = np.unique(rng.integers(1, w * h, int(rng.integers(100, 3000))))
    counts = np.diff(np.concatenate([[0], cuts, [w * h]]))
    return {"counts": counts.tolist(), "size": [h, w]}


def annotations_chunk(
    first_ann: int, n: int, images: list[dict], rng: np.random.Generator
) -> list[dict]:
    """n annotations on random images: polygons of ~22 points (1.1 parts), 1% crowd RLE."""
    cat_ids, weights = category_weights()
    cats = rng.choice(cat_ids, n, p=weights)
    on = rng.integers(0, len(images), n)
    parts = np.where(rng.random(n) < 0.1, 2, 1)
    points = rng.integers(6, 34, parts.sum())
    coords = np.round(rng.uniform(0, 480, points.sum() * 2), 2).tolist()
    crowd = rng.random(n) < 0.01
    anns, pos, poly = [], 0, 0
    for k in range(n):
        image = images[on[k]]
        x, y = float(rng.uniform(0, 400)), float(rng.uniform(0, 300))
        bw, bh = round(float(rng.uniform(1, 200)), 2), round(float(rng.uniform(1, 150)), 2)
        seg = []
        for _ in range(parts[k]):
            m = int(points[poly]) * 2
            seg.append(coords[pos : pos + m])
            pos, poly = pos + m, poly + 1
        if crowd[k]:
            seg = crowd_rle(rng, image["width"], image["height"])
        anns.append(
            {
                "segmentation": seg,
                "area": round(bw * bh * 0.6, 4),
                "iscrowd": int(crowd[k]),
                "image_id": image["id"],
                "bbox": [round(x, 2), round(y, 2), bw, bh],
                "category_id": int(cats[k]),
                "id": 900_000_000 + first_ann + k if crowd[k] else first_ann + k,
            }
        )
    return anns


def write_file(path: Path, n_images: int, n_anns: int, first_id: int, seed: int) -> None:
    """Stream one COCO file to disk, annotations chunk by chunk to keep memory small."""
    rng = np.random.default_rng(seed)
    split = path.stem.split("_")[-1]
    images = images_part(n_images, first_id, rng, split)
    head = {
        "info": {"description": "COCO 2017 Dataset (benchmark look-alike)", "year": 2017},
        "licenses": [
            {"url": "http://creativecommons.org/", "id": i, "name": "CC"} for i in range(6)
        ],
        "images": images,
    }
    cats = [{"supercategory": s, "id": i, "name": n} for i, n, s in CATEGORIES]
    with path.open("wb") as f:
        f.write(orjson.dumps(head)[:-1])
        if n_anns:
            f.write(b',"annotations":[')
            for start in range(0, n_anns, CHUNK):
                chunk = annotations_chunk(start + 1, min(CHUNK, n_anns - start), images, rng)
                f.write((b"," if start else b"") + orjson.dumps(chunk)[1:-1])
            f.write(b"]")
        f.write(b',"categories":' + orjson.dumps(cats) + b"}")


def generate(root: Path, scale: float) -> None:
    """Write annotations/ for all three splits (skipped when already there)."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for seed, (name, (n_images, n_anns, first_id)) in enumerate(SPLITS.items()):
        path = root / "annotations" / name
        if path.exists():
            continue
        start = time.perf_counter()
        write_file(path, int(n_images * scale), int(n_anns * scale), first_id, seed)
        size = path.stat().st_size / 1e6
        print(f"wrote {path.name}: {size:.0f} MB in {time.perf_counter() - start:.1f} s")


def measure(case: str, root: Path, n: int) -> dict:
    """Run one case in a fresh wrapper process; return its child's wall time and peak RSS."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", case, str(root), str(n)],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def child(case: str, root: str, n: str) -> None:
    """Wrapper mode: run the case as this process's only child, print wall s and peak MB."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", CHILD[case], root, n], check=True)
    wall = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"case": case, "wall_s": wall, "peak_mb": peak_mb}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of COCO's size")
    parser.add_argument("--keep", type=Path, help="generate into (and reuse) this folder")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    with tempfile.TemporaryDirectory(prefix="bench_subset_") as tmp:
        root = args.keep or Path(tmp)
        generate(root, args.scale)
        n = 300 if args.scale >= 0.5 else 100  # params.yaml's 300/300/30 at full size
        rows = [measure(case, root, n) for case in CHILD]
    print(f"\n{'case':<12} {'wall s':>8} {'peak RSS MB':>12}")
    for row in rows:
        print(f"{row['case']:<12} {row['wall_s']:>8.1f} {row['peak_mb']:>12.0f}")
    ours, ref = rows[0], rows[1]
    met = ours["wall_s"] <= 0.3 * ref["wall_s"] and ours["peak_mb"] <= 1000
    print(
        f"\nsubset / pycocotools load: {ours['wall_s'] / ref['wall_s']:.2f}x time, "
        f"{ours['peak_mb'] / ref['peak_mb']:.2f}x memory; "
        f"aim (<= 0.3x time, <= 1000 MB): {'met' if met else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
