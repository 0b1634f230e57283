"""Training data: the subset's COCO json as a dataset (CocoDetection + the v2 wrapper), batched.

Crowd regions leave the instances as one `crowd` mask per image (pixels a semantic model ignores;
Mask R-CNN never reads it); images without targets are kept as negatives; `read_rgb` reads them,
so 16-bit, transparent and CMYK images train as they look. Images of similar shape share a batch
(torchvision's recipe: less padding); each rank draws its share of cocoseg.train.sampler's draw.
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
from torch.utils.data import DataLoader, Sampler
from torchvision import tv_tensors
from torchvision.datasets import CocoDetection, wrap_dataset_for_transforms_v2
from torchvision.transforms import v2 as T

from cocoseg.coco.images import read_rgb
from cocoseg.coco.inputs import split_paths
from cocoseg.common.cli import worker_init
from cocoseg.common.errors import DataError
from cocoseg.common.io import read_json, safe_join
from cocoseg.common.params import TrainParams
from cocoseg.train.sampler import epoch_sampler

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
    """CocoDetection reading images through `read_rgb`; `_load_image` is the hook torchvision's
    own subclasses override."""

    def _load_image(self, id: int) -> Image.Image:
        info = self.coco.loadImgs(id)[0]  # read in the frame its annotations were drawn in
        path = safe_join(self.root, info["file_name"])
        return Image.fromarray(read_rgb(path, recorded=(info["width"], info["height"])))


class PrepareSample:
    """Give a negative image's target the shapes the model expects, mark crowds as a bool
    tensor (the transforms move them with the instances, cocoseg.train.transforms), augment."""

    def __init__(self, augment: T.Compose) -> None:
        self.augment = augment

    def __call__(self, image: Any, target: dict[str, Any]) -> tuple[torch.Tensor, dict]:
        image = T.functional.to_image(image)  # read_rgb's HxWx3: always three channels
        if "boxes" not in target:  # the v2 wrapper's target for an image without annotations
            target = empty_target(target["image_id"], tuple(image.shape[-2:]))
        else:
            target = {**target, "iscrowd": torch.tensor(target["iscrowd"], dtype=torch.bool)}
        return self.augment(image, target)


def empty_target(image_id: int, canvas_size: tuple[int, int]) -> dict[str, Any]:
    """A negative image's target: (0, 4) boxes, (0, H, W) masks, (0,) labels and iscrowd."""
    return {
        "boxes": tv_tensors.BoundingBoxes(
            torch.zeros((0, 4)), format="XYXY", canvas_size=canvas_size
        ),
        "masks": tv_tensors.Mask(torch.zeros((0, *canvas_size), dtype=torch.uint8)),
        "labels": torch.zeros((0,), dtype=torch.int64),
        "iscrowd": torch.zeros((0,), dtype=torch.bool),
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


def collate(batch: list[tuple[Any, Any]]) -> tuple[tuple, tuple]:
    """Detection batches stay lists: images differ in size."""
    return tuple(zip(*batch, strict=True))  # type: ignore[return-value]


def aspect_groups(ratios: np.ndarray, k: int = 3) -> list[int]:
    """Bin aspect ratios into 2k groups on a log scale (torchvision's detection recipe)."""
    bins = 2 ** np.linspace(-1, 1, 2 * k + 1)
    return np.digitize(ratios, bins).tolist()


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches of images from one aspect-ratio group; leftovers close the epoch mixed. Every
    index of `sampler` comes out exactly once, in ceil(n / batch_size) batches."""

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
    dataset: Any,
    recipe: TrainParams,
    rank: int = 0,
    world_size: int = 1,
    *,
    pin_memory: bool = False,
) -> DataLoader:
    """Drawn per epoch as train.sampler says (seeded; set_epoch its sampler), this rank's share,
    grouped batches. Workers are not persistent: fresh ones each epoch, seeded from the main RNG
    the loop reseeds, make a resumed run augment exactly as an uninterrupted one."""
    sampler = epoch_sampler(dataset, recipe, rank, world_size)
    # Width / height from the json (no image is opened); the v2 wrapper forwards `coco` and `ids`.
    coco = dataset.coco
    ratios = np.array([coco.imgs[i]["width"] / coco.imgs[i]["height"] for i in dataset.ids])
    batches = GroupedBatchSampler(sampler, aspect_groups(ratios), recipe.batch_size)
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=recipe.num_workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        worker_init_fn=worker_init,
    )
