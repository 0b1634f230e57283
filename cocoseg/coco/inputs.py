"""Which images to predict on: a split of data/subset (`split_paths`: its layout) in the frame its
annotations record, or a folder's images as a viewer shows them (the rest skipped by name)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from cocoseg.coco.images import ImageItem, Size, decode_image
from cocoseg.common.errors import DataError
from cocoseg.common.io import read_json, safe_join

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


@dataclass(frozen=True)
class InputImage:
    """One image to predict on: its id in the outputs, where it is, its size in the frame read."""

    id: int
    path: Path
    file_name: str
    width: int
    height: int
    annotated: bool = False  # the size comes from an annotation file: read in the frame it fits

    @property
    def recorded(self) -> Size | None:
        """What `read_rgb` needs to pick this image's frame: the recorded size, or None."""
        return (self.width, self.height) if self.annotated else None

    @property
    def item(self) -> ImageItem:
        """(id, path, recorded): how the inference loader takes it."""
        return self.id, self.path, self.recorded


class FolderImages(NamedTuple):
    """A folder's images that decode (ids 1..N by name) and the names of those that do not."""

    images: list[InputImage]
    skipped: list[str]


def folder_images(folder: str | Path) -> FolderImages:
    """Every .jpg/.jpeg/.png directly in folder that decodes, by name, ids 1..N, sized as a viewer
    shows it; each that does not is skipped naming it; a folder where none does is a DataError."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder of images")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    candidates = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if others := len(files) - len(candidates):
        log.info("%s: skipped %d file(s) without a .jpg/.jpeg/.png suffix", folder, others)
    if not candidates:
        raise DataError(f"{folder}: no .jpg, .jpeg or .png images found")
    images, skipped = [], []
    for path in candidates:
        try:
            size = decode_image(path)[1]
        except DataError as err:
            log.warning("%s; skipped", err)
            skipped.append(path.name)
            continue
        images.append(InputImage(len(images) + 1, path, path.name, *size))
    if not images:
        raise DataError(
            f"{folder}: none of its {len(candidates)} image file(s) decodes: {listed(skipped)}"
        )
    return FolderImages(images, skipped)


def listed(names: list[str], most: int = 10) -> str:
    """Names joined by commas, the first `most` of them and how many more."""
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


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
        w, h = img["width"], img["height"]
        images.append(InputImage(img["id"], path, img["file_name"], w, h, annotated=True))
    return images, names
