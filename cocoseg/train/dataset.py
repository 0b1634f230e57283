"""Training data: the subset's COCO json as a dataset (CocoDetection + the v2 wrapper), batched.

Crowd regions are left out of the targets, degenerate boxes dropped, images without any
target kept as negatives (empty boxes/masks/labels). Images are read by the project's one
reader (cocoseg.core.images.read_rgb), so 16-bit, transparent and CMYK images train as they look.
Images of similar shape share a batch (torchvision's detection recipe), so the model pads less.
Each rank draws its share of a seeded per-epoch shuffle (DistributedSampler; one rank without
torchrun).
"""

from __future__ import annotations

import contextlib
import io
import math
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from torchvision import tv_tensors
from torchvision.datasets import CocoDetection, wrap_dataset_for_transforms_v2
from torchvision.transforms import v2 as T

from cocoseg.core.config import TrainParams
from cocoseg.core.errors import DataError
from cocoseg.core.images import read_rgb
from cocoseg.core.inputs import split_paths
from cocoseg.core.io import read_json, safe_join
from cocoseg.core.signals import worker_init

TARGET_KEYS = {"boxes", "masks", "labels", "image_id", "iscrowd"}


def class_names(ann_file: str | Path) -> list[str]:
    """Category names in label order; the subset's ids must run 1..K."""
    categories = sorted(read_json(ann_file).get("categories", []), key=lambda c: c["id"])
    ids = [c["id"] for c in categories]
    if not ids or ids != list(range(1, len(ids) + 1)):
        raise DataError(
            f"{ann_file}: category ids must be 1..K (got {ids}); re-run the subset stage"
        )
    return [c["name"] for c in categories]


class CocoImages(CocoDetection):
    """torchvision's CocoDetection reading images through `read_rgb` (every mode right).

    `_load_image` is the hook torchvision's own subclasses override; CocoDetection has no
    public loader argument.
    """

    def _load_image(self, id: int) -> Image.Image:
        file_name = self.coco.loadImgs(id)[0]["file_name"]
        return Image.fromarray(read_rgb(safe_join(self.root, file_name)))


class PrepareSample:
    """Drop crowds, give empty targets the shapes the model expects, then augment."""

    def __init__(self, augment: T.Compose) -> None:
        self.augment = augment

    def __call__(self, image: Any, target: dict[str, Any]) -> tuple[torch.Tensor, dict]:
        image = T.functional.to_image(image)
        if image.shape[0] == 1:  # CocoDetection converts to RGB already; be sure anyway
            image = tv_tensors.Image(image.expand(3, -1, -1))
        target = keep_non_crowd(target, tuple(image.shape[-2:]))
        image, target = self.augment(image, target)
        return image, target


def keep_non_crowd(target: dict[str, Any], canvas_size: tuple[int, int]) -> dict[str, Any]:
    """The target without crowd regions; an image with none left gets empty tensors."""
    image_id = target["image_id"]
    if "boxes" not in target:
        return empty_target(image_id, canvas_size)
    keep = torch.tensor([not c for c in target["iscrowd"]], dtype=torch.bool)
    return {
        "boxes": tv_tensors.wrap(target["boxes"][keep], like=target["boxes"]),
        "masks": tv_tensors.Mask(target["masks"][keep]),
        "labels": target["labels"][keep].to(torch.int64),
        "image_id": image_id,
    }


def empty_target(image_id: int, canvas_size: tuple[int, int]) -> dict[str, Any]:
    """A negative image's target: (0, 4) boxes, (0, H, W) masks, (0,) labels."""
    return {
        "boxes": tv_tensors.BoundingBoxes(
            torch.zeros((0, 4)), format="XYXY", canvas_size=canvas_size
        ),
        "masks": tv_tensors.Mask(torch.zeros((0, *canvas_size), dtype=torch.uint8)),
        "labels": torch.zeros((0,), dtype=torch.int64),
        "image_id": image_id,
    }


def coco_dataset(subset_dir: str | Path, split: str, augment: T.Compose) -> Any:
    """The split as a map-style dataset of (float image, target dict) pairs."""
    images, ann_file = split_paths(subset_dir, split)
    if not ann_file.exists():
        raise DataError(f"{ann_file}: annotation file not found (run `dvc repro subset` first)")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        dataset = CocoImages(str(images), str(ann_file), transforms=PrepareSample(augment))
    for info in dataset.coco.imgs.values():
        safe_join(images, info["file_name"])  # a hostile file_name must not read elsewhere
    return wrap_dataset_for_transforms_v2(dataset, target_keys=TARGET_KEYS)


def aspect_ratios(dataset: Any) -> np.ndarray:
    """Width / height of every image in dataset order, from the json (no image is opened).

    `coco` and `ids` are CocoDetection's public attributes; torchvision's v2 wrapper
    forwards attribute access to the dataset it wraps.
    """
    coco = dataset.coco
    return np.array([coco.imgs[i]["width"] / coco.imgs[i]["height"] for i in dataset.ids])


def collate(batch: list[tuple[Any, Any]]) -> tuple[tuple, tuple]:
    """Detection batches stay lists: images differ in size."""
    return tuple(zip(*batch, strict=True))  # type: ignore[return-value]


def aspect_groups(ratios: np.ndarray, k: int = 3) -> list[int]:
    """Bin aspect ratios into 2k groups on a log scale (torchvision's detection recipe)."""
    bins = 2 ** np.linspace(-1, 1, 2 * k + 1)
    return np.digitize(ratios, bins).tolist()


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches of images from one aspect-ratio group; leftovers close the epoch mixed.

    Every index of `sampler` comes out exactly once, in ceil(n / batch_size) batches.
    """

    def __init__(self, sampler: Sampler[int], group_ids: list[int], batch_size: int) -> None:
        self.sampler, self.group_ids, self.batch_size = sampler, group_ids, batch_size

    def __iter__(self) -> Iterator[list[int]]:
        buffers: dict[int, list[int]] = defaultdict(list)
        for index in self.sampler:
            group = buffers[self.group_ids[index]]
            group.append(index)
            if len(group) == self.batch_size:
                yield list(group)
                group.clear()
        leftovers = [i for g in sorted(buffers) for i in buffers[g]]
        for start in range(0, len(leftovers), self.batch_size):
            yield leftovers[start : start + self.batch_size]

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)  # type: ignore[arg-type]


def train_loader(
    dataset: Any, p: TrainParams, rank: int = 0, world_size: int = 1, *, pin_memory: bool = False
) -> DataLoader:
    """Shuffled per epoch (seeded; call `set_epoch` on it), this rank's share, grouped batches.

    Workers are not persistent: each epoch starts fresh ones seeded from the main process's
    RNG, which the loop reseeds per epoch, so a resumed run augments exactly as an
    uninterrupted one (persistent workers would carry their RNG over from the epoch before).
    """
    sampler = DistributedSampler(
        dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=p.seed
    )
    batches = GroupedBatchSampler(sampler, aspect_groups(aspect_ratios(dataset)), p.batch_size)
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=p.num_workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        worker_init_fn=worker_init,
    )


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Reshuffle `train_loader`'s sampler for this epoch (the same order on every rank)."""
    loader.batch_sampler.sampler.set_epoch(epoch)  # type: ignore[union-attr]
