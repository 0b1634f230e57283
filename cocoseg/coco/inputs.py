"""Which images to predict on: a split of data/subset (`split_paths`: its layout, for every stage)
or each image in a folder (other files skipped; one that does not decode stops the run before the
model loads: dropping it would leave outputs that look complete but are not)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from cocoseg.coco.images import decode_image
from cocoseg.common.errors import DataError
from cocoseg.common.io import read_json, safe_join

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


@dataclass(frozen=True)
class InputImage:
    """One image to predict on: its id in the outputs, where it is, and its size."""

    id: int
    path: Path
    file_name: str
    width: int
    height: int


def folder_images(folder: str | Path) -> list[InputImage]:
    """Every .jpg/.jpeg/.png directly in folder, sorted by name, with ids 1..N."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder of images")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    skipped = len(files) - len(images)
    if skipped:
        log.info("%s: skipped %d file(s) without a .jpg/.jpeg/.png suffix", folder, skipped)
    if not images:
        raise DataError(f"{folder}: no .jpg, .jpeg or .png images found")
    return [
        InputImage(image_id, path, path.name, *decode_image(path)[1])
        for image_id, path in enumerate(images, start=1)
    ]


def split_paths(subset_dir: str | Path, split: str) -> tuple[Path, Path]:
    """(images folder, annotation json) of one split of data/subset."""
    subset_dir = Path(subset_dir)
    return subset_dir / "images" / split, subset_dir / "annotations" / f"{split}.json"


def subset_images(subset: str | Path, split: str = "test") -> tuple[list[InputImage], list[str]]:
    """The split's images as listed in data/subset/annotations/<split>.json, plus class names."""
    images_dir, ann_file = split_paths(subset, split)
    coco = read_json(ann_file)
    if not isinstance(coco, dict) or "images" not in coco:
        raise DataError(f"{ann_file}: no 'images' list")
    names = [c["name"] for c in sorted(coco.get("categories", []), key=lambda c: c["id"])]
    images = []
    for img in coco["images"]:
        path = safe_join(images_dir, img["file_name"])
        if not path.is_file():
            raise DataError(f"{path}: image id {img['id']} listed in {split}.json is missing")
        images.append(InputImage(img["id"], path, img["file_name"], img["width"], img["height"]))
    return images, names
