"""Named augmentation presets (transforms.v2 on tv_tensors), chosen by `train.augment`.

`multiscale` and `scale_jitter` choose the scale themselves, so the model must not resize again
in training (`SKIPS_MODEL_RESIZE`); `random_crop`'s crops are resized by the model, a zoom-in.
Crowd regions travel as instances flagged `iscrowd`, so every transform moves them with the image,
and leave them at the end as one `crowd` mask.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes
from torchvision.transforms import v2 as T


def boxes_from_masks(image: Any, target: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Tight boxes around the (rotated, cropped) masks; empty masks get an empty box."""
    masks = target["masks"]
    if masks.shape[0] == 0:
        return image, target
    boxes = masks_to_boxes(masks.as_subclass(torch.Tensor))
    empty = masks.flatten(1).amax(1) == 0
    boxes[empty] = 0
    boxes[:, 2:] += 1.0 * ~empty[:, None]  # masks_to_boxes gives inclusive pixel ends
    return image, {**target, "boxes": tv_tensors.wrap(boxes, like=target["boxes"])}


class RandomObjectCrop(T.Transform):
    """Crop image, masks and boxes together to a window whose sides are each drawn from `scale`
    of the image's (uniformly), placed to keep at least one pixel of a random object's mask
    (anywhere on an image without one). Boxes are only clamped here: re-fit them to the masks."""

    def __init__(self, scale: tuple[float, float] = (0.5, 1.0)) -> None:
        super().__init__()
        self.scale = scale

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        image = next(x for x in flat_inputs if isinstance(x, tv_tensors.Image))
        masks = [x for x in flat_inputs if isinstance(x, tv_tensors.Mask)]
        h, w = T.functional.get_size(image)
        height, width = self.side(h), self.side(w)
        top, left = randint(0, h - height), randint(0, w - width)
        objects = masks[0].flatten(1).any(1).nonzero()[:, 0] if masks else torch.empty(0)
        if len(objects):  # a random pixel of a random object, somewhere in the window
            pixels = masks[0][objects[randint(0, len(objects) - 1)]].nonzero()
            y, x = pixels[randint(0, len(pixels) - 1)].tolist()
            top = randint(max(0, y - height + 1), min(y, h - height))
            left = randint(max(0, x - width + 1), min(x, w - width))
        return {"top": top, "left": left, "height": height, "width": width}

    def side(self, length: int) -> int:
        """A crop side: a uniform fraction in `scale` of `length`, at least a pixel."""
        low, high = self.scale
        return max(1, round(length * (low + (high - low) * float(torch.rand(1)))))

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(T.functional.crop, inpt, **params)


def randint(low: int, high: int) -> int:
    """A uniform integer in [low, high], from torch's global generator (seeded per worker)."""
    return int(torch.randint(low, high + 1, (1,)))


def _flip_rotate_color(min_size: int, max_size: int) -> list[Any]:
    """Horizontal flip, mild rotation (boxes re-fit to the masks), brightness/contrast."""
    return [
        T.RandomHorizontalFlip(0.5),
        T.RandomRotation(degrees=10),
        boxes_from_masks,
        T.ColorJitter(brightness=0.2, contrast=0.2),
    ]


def _multiscale(min_size: int, max_size: int) -> list[Any]:
    """Shorter side drawn from 60%..100% of min_size in steps of 32 (cf. torchvision's refs)."""
    sizes = list(range(max(32, int(0.6 * min_size)), min_size + 1, 32)) or [min_size]
    return [T.RandomShortestSize(min_size=sizes, max_size=max_size), T.RandomHorizontalFlip(0.5)]


def _scale_jitter(min_size: int, max_size: int) -> list[Any]:
    """Large-scale jitter: rescale to 0.1x..2x of a min_size square, then crop/pad to it."""
    side = (min_size, min_size)
    return [
        T.ScaleJitter(target_size=side, scale_range=(0.1, 2.0)),
        T.RandomCrop(side, pad_if_needed=True, fill=0),
        T.RandomHorizontalFlip(0.5),
    ]


def _random_crop(min_size: int, max_size: int) -> list[Any]:
    """A crop of 50%..100% of each side holding part of an object, then a horizontal flip;
    objects cut off entirely leave with their labels and masks (SanitizeBoundingBoxes)."""
    return [RandomObjectCrop((0.5, 1.0)), boxes_from_masks, T.RandomHorizontalFlip(0.5)]


def labels_and_crowds(sample: tuple[Any, dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """What SanitizeBoundingBoxes drops with a degenerate box, besides its mask."""
    return sample[1]["labels"], sample[1]["iscrowd"]


def split_crowds(image: Any, target: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Crowd regions out of the instances into one (H, W) uint8 `crowd` mask: no model learns
    them as objects; a semantic model ignores their pixels."""
    crowds = target["iscrowd"]
    masks = target["masks"]
    crowd = masks[crowds].amax(0) if crowds.any() else masks.new_zeros(masks.shape[-2:])
    kept = {k: target[k][~crowds] for k in ("boxes", "masks", "labels")}
    rest = {k: v for k, v in target.items() if k not in ("iscrowd", *kept)}
    return image, {**rest, **kept, "crowd": crowd.as_subclass(torch.Tensor)}


PRESETS: dict[str, Callable[[int, int], list[Any]]] = {
    "flip_rotate_color": _flip_rotate_color,
    "multiscale": _multiscale,
    "scale_jitter": _scale_jitter,
    "random_crop": _random_crop,
    "none": lambda min_size, max_size: [],
}
SKIPS_MODEL_RESIZE = {"multiscale", "scale_jitter"}


def build_transforms(name: str, min_size: int = 800, max_size: int = 1333) -> T.Compose:
    """The preset `name` between uint8 -> float conversion and box sanitising."""
    if name not in PRESETS:
        raise ValueError(f"unknown augmentation preset {name!r}; choose one of {sorted(PRESETS)}")
    return T.Compose(
        [
            T.ToImage(),
            *PRESETS[name](min_size, max_size),
            T.ToDtype(torch.float32, scale=True),
            T.SanitizeBoundingBoxes(min_size=1.0, labels_getter=labels_and_crowds),
            split_crowds,
            T.ToPureTensor(),
        ]
    )
