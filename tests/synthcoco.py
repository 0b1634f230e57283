"""Synthetic COCO-2017 look-alikes for tests: real JPEGs whose shapes sit exactly on their masks.

Each object's pixels are painted through the very mask pycocotools rasterises from its
polygon, so ground truth and image agree to the pixel. The data carries COCO's quirks:
distractor classes, crowd regions as uncompressed RLE, a grayscale JPEG, images with no
target class and images with no annotation at all.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

# Real COCO ids and names: the four target classes and three distractors.
TARGETS = {1: "person", 17: "cat", 37: "sports ball", 84: "book"}
TARGET_NAMES = list(TARGETS.values())
DISTRACTORS = {3: "car", 18: "dog", 62: "chair"}
SUPERCATEGORY = {
    1: "person",
    17: "animal",
    37: "sports",
    84: "indoor",
    3: "vehicle",
    18: "animal",
    62: "furniture",
}
CATEGORIES = [
    {"supercategory": SUPERCATEGORY[i], "id": i, "name": n}
    for i, n in sorted({**TARGETS, **DISTRACTORS}.items())
]
COLORS = {
    1: (220, 40, 40),
    17: (40, 200, 40),
    37: (40, 80, 230),
    84: (230, 210, 30),
    3: (200, 40, 200),
    18: (30, 200, 200),
    62: (120, 120, 120),
}
SIDES = {1: 4, 17: 3, 37: 20, 84: 6, 3: 5, 18: 8, 62: 4}  # polygon corners per class


def polygon(cx: float, cy: float, radius: float, sides: int, phase: float) -> list[float]:
    """Corners of a regular polygon as COCO's flat [x1, y1, x2, y2, ...] list."""
    pts = []
    for k in range(sides):
        a = phase + 2 * math.pi * k / sides
        pts += [round(cx + radius * math.cos(a), 2), round(cy + radius * math.sin(a), 2)]
    return pts


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE (column-major run lengths, starting with zeros)."""
    flat = np.asfortranarray(mask.astype(np.uint8)).ravel(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0, *counts]
    return {"counts": counts, "size": list(mask.shape)}


def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [
        float(xs.min()),
        float(ys.min()),
        float(xs.max() - xs.min() + 1),
        float(ys.max() - ys.min() + 1),
    ]


def _image_kind(index: int) -> str:
    """Which quirk an image carries, by its position in the split."""
    if index % 9 == 4:
        return "distractors_only"
    if index % 9 == 7:
        return "empty"
    return "normal"


def draw_split(
    images_dir: Path,
    n_images: int,
    rng: np.random.Generator,
    *,
    first_id: int,
    size: tuple[int, int],
    split: str,
    base_url: str,
    with_annotations: bool = True,
    first_ann_id: int = 1,
) -> dict:
    """Draw `n_images` JPEGs into images_dir and return their COCO dict."""
    images_dir.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    ann_id = first_ann_id
    for index in range(n_images):
        image_id = first_id + index
        w = int(rng.integers(size[0], size[1] + 1))
        h = int(rng.integers(size[0], size[1] + 1))
        pixels = rng.integers(90, 140, size=(h, w, 3), dtype=np.uint8)
        kind = _image_kind(index)
        if kind == "normal":
            # Cycle the target classes so every class appears in every split.
            cats = [list(TARGETS)[(index + k) % 4] for k in range(1 + index % 3)]
            if index % 2:
                cats.append(list(DISTRACTORS)[index % 3])
        elif kind == "distractors_only":
            cats = [list(DISTRACTORS)[index % 3]]
        else:
            cats = []
        for cat in cats:
            radius = float(rng.uniform(0.16, 0.26) * min(w, h))
            cx = float(rng.uniform(radius + 1, w - radius - 1))
            cy = float(rng.uniform(radius + 1, h - radius - 1))
            poly = polygon(cx, cy, radius, SIDES[cat], float(rng.uniform(0, math.pi)))
            rle = mask_utils.merge(mask_utils.frPyObjects([poly], h, w))
            mask = mask_utils.decode(rle).astype(bool)
            pixels[mask] = COLORS[cat]
            anns.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": cat,
                    "segmentation": [poly],
                    "area": float(mask_utils.area(rle)),
                    "bbox": _bbox(mask),
                    "iscrowd": 0,
                }
            )
            ann_id += 1
        if kind == "normal" and index % 5 == 2:
            # A crowd region in a corner, stored as uncompressed RLE like COCO's crowds.
            mask = np.zeros((h, w), dtype=bool)
            mask[: h // 5, : w // 5] = True
            pixels[mask] = COLORS[1]
            anns.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": uncompressed_rle(mask),
                    "area": float(mask.sum()),
                    "bbox": _bbox(mask),
                    "iscrowd": 1,
                }
            )
            ann_id += 1
        file_name = f"{image_id:012d}.jpg"
        image = Image.fromarray(pixels)
        if index == 1:
            image = image.convert("L")  # COCO has a few grayscale JPEGs
        image.save(images_dir / file_name, quality=95)
        images.append(
            {
                "license": 1,
                "file_name": file_name,
                "height": h,
                "width": w,
                "id": image_id,
                "coco_url": f"{base_url}/{split}/{file_name}",
                "date_captured": "2013-11-14 11:18:45",
            }
        )
    coco = {
        "info": {"description": f"synthetic {split}", "year": 2017},
        "licenses": [{"id": 1, "name": "CC BY 4.0", "url": "https://example.invalid"}],
        "images": images,
        "categories": CATEGORIES,
    }
    if with_annotations:
        coco["annotations"] = anns
    return coco


def make_coco_root(
    root: str | Path,
    *,
    n_train: int = 40,
    n_val: int = 30,
    n_test: int = 12,
    seed: int = 0,
    size: tuple[int, int] = (96, 160),
    base_url: str = "http://127.0.0.1:9",
) -> Path:
    """Write a COCO-2017-shaped folder: annotations/ plus train2017/, val2017/, test2017/."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    splits = {
        "train2017": ("instances_train2017.json", n_train, 1_000, True),
        "val2017": ("instances_val2017.json", n_val, 500_000, True),
        "test2017": ("image_info_test2017.json", n_test, 900_000, False),
    }
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, (json_name, count, first_id, labelled) in splits.items():
        coco = draw_split(
            root / split,
            count,
            rng,
            first_id=first_id,
            size=size,
            split=split,
            base_url=base_url,
            with_annotations=labelled,
            first_ann_id=first_id * 10,
        )
        (root / "annotations" / json_name).write_text(json.dumps(coco))
    return root


def make_archives(root: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """Zip the annotation files the way COCO's server ships them."""
    root, out_dir = Path(root), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ann = root / "annotations"
    layout = {
        "annotations_trainval2017.zip": ["instances_train2017.json", "instances_val2017.json"],
        "image_info_test2017.zip": ["image_info_test2017.json"],
    }
    paths = {}
    for zip_name, members in layout.items():
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for member in members:
                zf.write(ann / member, f"annotations/{member}")
            if zip_name.startswith("annotations_"):
                zf.writestr("annotations/captions_train2017.json", json.dumps({"images": []}))
        paths[zip_name] = out_dir / zip_name
        paths[zip_name].write_bytes(buf.getvalue())
    return paths


def make_subset(
    out_dir: str | Path,
    *,
    n_train: int = 8,
    n_val: int = 6,
    n_test: int = 4,
    seed: int = 0,
    size: tuple[int, int] = (96, 128),
) -> Path:
    """Write data/subset's layout directly: annotations/{train,val,test}.json, ids 1..4.

    For tests of training, evaluation and prediction that should not depend on the
    subset stage: categories are the four targets renumbered 1..4, distractors dropped.
    """
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    remap = {coco_id: new_id for new_id, coco_id in enumerate(TARGETS, start=1)}
    categories = [
        {"id": remap[c], "name": n, "supercategory": SUPERCATEGORY[c]} for c, n in TARGETS.items()
    ]
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)
    for split, count, first_id in (
        ("train", n_train, 1),
        ("val", n_val, 10_000),
        ("test", n_test, 20_000),
    ):
        coco = draw_split(
            out_dir / "images" / split,
            count,
            rng,
            first_id=first_id,
            size=size,
            split=split,
            base_url="http://127.0.0.1:9",
            first_ann_id=first_id * 10,
        )
        anns = [
            dict(a, category_id=remap[a["category_id"]])
            for a in coco["annotations"]
            if a["category_id"] in remap
        ]
        coco["categories"] = categories
        if split == "test":
            coco.pop("annotations")
        else:
            coco["annotations"] = anns
        (out_dir / "annotations" / f"{split}.json").write_text(json.dumps(coco))
    return out_dir


def make_imbalanced_subset(
    out_dir: str | Path,
    *,
    n_train: int = 60,
    n_val: int = 30,
    seed: int = 0,
    size: int = 128,
    rare_fraction: float = 0.15,
) -> Path:
    """data/subset's layout with one common, large class and one rare, small one: "person"
    (1-2 squares of radius 18-28% of the side in every image but empty ones) and "sports ball"
    (a disc of radius 4-7% of the side, COCO-small, in `rare_fraction` of the images)."""
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    categories = [
        {"id": 1, "name": "person", "supercategory": "person"},
        {"id": 2, "name": "sports ball", "supercategory": "sports"},
    ]
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)
    for split, count, first_id in (("train", n_train, 1), ("val", n_val, 10_000)):
        folder = out_dir / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for index in range(count):
            image_id = first_id + index
            pixels = rng.integers(90, 140, size=(size, size, 3), dtype=np.uint8)
            shapes = [(1, 4, 0.18, 0.28)] * int(rng.integers(1, 3)) if index % 10 else []
            if rng.random() < rare_fraction:
                shapes.append((2, 20, 0.04, 0.07))
            for label, sides, low, high in shapes:
                radius = float(rng.uniform(low, high) * size)
                cx, cy = (float(rng.uniform(radius + 1, size - radius - 1)) for _ in "xy")
                poly = polygon(cx, cy, radius, sides, float(rng.uniform(0, math.pi)))
                rle = mask_utils.merge(mask_utils.frPyObjects([poly], size, size))
                mask = mask_utils.decode(rle).astype(bool)
                pixels[mask] = COLORS[{1: 1, 2: 37}[label]]
                anns.append({"id": len(anns) + first_id * 10, "image_id": image_id,
                             "category_id": label, "segmentation": [poly], "iscrowd": 0,
                             "area": float(mask_utils.area(rle)), "bbox": _bbox(mask)})  # fmt: skip
            file_name = f"{image_id:012d}.jpg"
            Image.fromarray(pixels).save(folder / file_name, quality=95)
            images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        coco = {"images": images, "annotations": anns, "categories": categories}
        (out_dir / "annotations" / f"{split}.json").write_text(json.dumps(coco))
    return out_dir
