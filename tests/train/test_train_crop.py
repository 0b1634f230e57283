"""train.augment random_crop: the crop keeps part of an object, cuts image, masks and boxes alike,
and drops what it cuts off entirely with its label and mask; negatives pass."""

from __future__ import annotations

import torch
from torchvision import tv_tensors

from cocoseg.train.transforms import build_transforms

SIZE = (48, 64)  # height, width
BACKGROUND = 120


def square(top: int, left: int, side: int) -> torch.Tensor:
    mask = torch.zeros(SIZE, dtype=torch.bool)
    mask[top : top + side, left : left + side] = True
    return mask


def diagonal() -> torch.Tensor:
    """A band from (row 10, col 16) down to (row 37, col 43): a crop through it leaves a part
    whose tight box is smaller than the clamped original box."""
    rows, cols = torch.meshgrid(torch.arange(SIZE[0]), torch.arange(SIZE[1]), indexing="ij")
    return ((cols - rows - 6).abs() <= 1) & (rows >= 10) & (rows < 38)


# label -> (colour, mask): two 4 px squares in opposite corners and a diagonal band between
OBJECTS = {1: (10, square(1, 1, 4)), 2: (250, square(43, 59, 4)), 3: (60, diagonal())}


def sample(labels: tuple[int, ...] = tuple(OBJECTS)) -> tuple[tv_tensors.Image, dict]:
    """A grey image whose objects are painted exactly where their masks are."""
    image = torch.full((3, *SIZE), BACKGROUND, dtype=torch.uint8)
    masks = torch.stack([OBJECTS[k][1] for k in labels]).to(torch.uint8)
    for label in labels:
        colour, mask = OBJECTS[label]
        image[:, mask] = colour
    target = {
        "boxes": tv_tensors.BoundingBoxes(
            [tight_box(m) for m in masks], format="XYXY", canvas_size=SIZE
        ),
        "masks": tv_tensors.Mask(masks),
        "labels": torch.tensor(labels),
        "iscrowd": torch.zeros(len(labels), dtype=torch.bool),  # as the train dataset gives it
        "image_id": 7,
    }
    return tv_tensors.Image(image), target


def tight_box(mask: torch.Tensor) -> list[float]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def test_crops_keep_part_of_an_object_and_cut_image_masks_and_boxes_alike():
    crop = build_transforms("random_crop")
    kept_sets = set()
    for seed in range(60):
        torch.manual_seed(seed)
        image, target = crop(*sample())
        h, w = image.shape[-2:]
        assert SIZE[0] // 2 <= h <= SIZE[0] and SIZE[1] // 2 <= w <= SIZE[1]  # 50%..100% a side
        pixels = (image[0] * 255).round().to(torch.uint8)  # grey: one channel says it all
        labels = target["labels"].tolist()
        assert labels, f"seed {seed}: the crop holds no object"
        assert len(target["boxes"]) == len(target["masks"]) == len(labels)
        for label, mask, box in zip(labels, target["masks"], target["boxes"], strict=True):
            assert mask.shape == (h, w)
            assert torch.equal(pixels == OBJECTS[label][0], mask.bool()), f"seed {seed}"
            assert box.tolist() == tight_box(mask)
        for label, (colour, _) in OBJECTS.items():  # cut off entirely: gone, with its mask
            if label not in labels:
                assert not (pixels == colour).any()
        kept_sets.add(tuple(sorted(labels)))
    assert len(kept_sets) > 2, "every crop kept the same objects"
    assert any(len(kept) < len(OBJECTS) for kept in kept_sets), "no object was ever cut off"


def test_a_crop_holds_a_tiny_object_a_blind_crop_would_mostly_miss():
    image, target = sample(labels=(1,))  # 4 x 4 px in a corner of 48 x 64
    crop = build_transforms("random_crop")
    for seed in range(30):
        torch.manual_seed(seed)
        _, out = crop(image, target)
        assert out["labels"].tolist() == [1]


def test_a_negative_image_is_cropped_and_keeps_empty_targets():
    image, _ = sample()
    empty = {
        "boxes": tv_tensors.BoundingBoxes(torch.zeros((0, 4)), format="XYXY", canvas_size=SIZE),
        "masks": tv_tensors.Mask(torch.zeros((0, *SIZE), dtype=torch.uint8)),
        "labels": torch.zeros((0,), dtype=torch.int64),
        "iscrowd": torch.zeros((0,), dtype=torch.bool),
        "image_id": 8,
    }
    torch.manual_seed(0)
    out_image, out = build_transforms("random_crop")(image, empty)
    h, w = out_image.shape[-2:]
    assert (h, w) != SIZE and h >= SIZE[0] // 2 and w >= SIZE[1] // 2
    assert out["boxes"].shape == (0, 4) and out["masks"].shape == (0, h, w)
    assert out["labels"].shape == (0,)
