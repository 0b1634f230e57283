"""Sliced inference: SAHI's tiles cover the image, detections come back in image coordinates, an
object cut by a tile edge comes back once, and a small one the whole image loses is found."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from blobdetector import BlobDetector, blob_box, canvas, paint

from cocoseg.modeling.slicing import greedy_merge, image_windows, merge_windows, tile_windows
from cocoseg.modeling.views import Views, detect_image


@pytest.mark.parametrize(
    ("height", "width", "size", "overlap", "tiles"),
    [
        # COCO's 640x480 at 512: one row (the tile is cut to the image's height), the second
        # tile flush with the right edge (SAHI's get_slice_bboxes gives the same two).
        (480, 640, 512, 0.2, [(0, 0, 512, 480), (128, 0, 640, 480)]),
        # step 400 - int(0.25 * 400) = 300: starts 0, 300 and the last flush at 600
        (1000, 1000, 400, 0.25, [(x, y, x + 400, y + 400) for y in (0, 300, 600)
                                 for x in (0, 300, 600)]),
        (100, 100, 100, 0.2, []),  # one tile would be the whole image, which runs anyway
        (90, 120, 128, 0.5, []),
    ],
)  # fmt: skip
def test_tiles_are_sahis_grid(height, width, size, overlap, tiles):
    assert tile_windows(height, width, size, overlap) == tiles


@pytest.mark.parametrize(
    ("height", "width", "size", "overlap"),
    [(480, 640, 512, 0.2), (333, 517, 64, 0.0), (257, 256, 128, 0.9), (64, 1000, 100, 0.5),
     (1000, 37, 32, 0.3)],
)  # fmt: skip
def test_tiles_cover_the_image_and_overlap_as_asked(height, width, size, overlap):
    tiles = tile_windows(height, width, size, overlap)
    covered = np.zeros((height, width), dtype=int)
    for x0, y0, x1, y1 in tiles:
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert (x1 - x0, y1 - y0) == (min(size, width), min(size, height))
        covered[y0:y1, x0:x1] += 1
    assert covered.min() >= 1, "every pixel is in some tile"
    for axis in (0, 1):  # neighbouring tiles share at least int(overlap * size) pixels
        starts = sorted({t[axis] for t in tiles})
        ends = sorted({t[axis + 2] for t in tiles})
        assert all(
            end - nxt >= int(overlap * size) for end, nxt in zip(ends, starts[1:], strict=False)
        )
    assert image_windows(height, width, size, overlap) == [(0, 0, width, height), *tiles]


def test_greedy_merge_groups_by_ios_within_a_class_in_score_order():
    boxes = np.array(
        [[0, 0, 10, 10],  # 0: the best; 1 and 3 lie half or more inside it
         [0, 0, 4, 5],  # 1: IOS 1 with 0
         [20, 20, 30, 30],  # 2: elsewhere
         [5, 0, 15, 10],  # 3: IOS exactly 0.5 with 0: merged (SAHI's >=)
         [6, 0, 16, 10],  # 4: IOS 0.4 with 0, 0.9 with 3 (merged already: stays alone)
         [0, 0, 10, 10]],  # 5: 0's box, another class
        dtype=np.float32,
    )  # fmt: skip
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.95], dtype=np.float32)
    labels = np.array([1, 1, 1, 1, 1, 2])
    assert greedy_merge(boxes, scores, labels) == [[5], [0, 1, 3], [2], [4]]
    assert greedy_merge(boxes, scores, labels, limit=2) == [[5], [0, 1, 3]]
    assert greedy_merge(boxes, scores, labels, threshold=0.55) == [[5], [0, 1], [2], [3, 4]]


def test_merge_keeps_the_best_groups_up_to_the_limit_with_union_boxes_and_max_masks():
    window = (0, 0, 8, 8)
    masks = torch.zeros(3, 1, 8, 8)
    masks[0, 0, 0:4, 0:4], masks[1, 0, 2:6, 2:6], masks[2, 0, 6:8, 6:8] = 0.6, 0.9, 0.3
    whole = {"boxes": torch.tensor([[0.0, 0, 4, 4], [2, 2, 6, 6], [6, 6, 8, 8]]),
             "labels": torch.tensor([1, 1, 1]), "scores": torch.tensor([0.9, 0.5, 0.2]),
             "masks": masks}  # fmt: skip
    tile = {"boxes": torch.tensor([[0.0, 0, 4, 3]]), "labels": torch.tensor([1]),
            "scores": torch.tensor([0.8]), "masks": torch.full((1, 1, 4, 4), 0.7)}  # fmt: skip
    merged = merge_windows([whole, tile], [window, (1, 1, 5, 5)], limit=2)
    # the tile's box is (1, 1, 5, 4) in the image, 9 of its 12 pixels in detection 0's
    # (IOS 0.75): merged into it, the box their union; 2 (the lowest score) is over the limit
    assert merged["boxes"].tolist() == [[0, 0, 5, 4], [2, 2, 6, 6]]
    assert merged["scores"].tolist() == pytest.approx([0.9, 0.5])
    expected = torch.zeros(2, 1, 8, 8)
    expected[0, 0, 0:4, 0:4] = 0.6
    expected[0, 0, 1:5, 1:5] = 0.7  # the tile's mask, shifted, where it is higher
    expected[1, 0, 2:6, 2:6] = 0.9
    assert torch.equal(merged["masks"], expected)


def sliced(model: BlobDetector, image: torch.Tensor, size: int) -> dict[str, torch.Tensor]:
    return detect_image(model, image, Views(slice_size=size, slice_overlap=0.2), batch_size=2)


def test_an_object_cut_by_a_tile_edge_comes_back_once_in_image_coordinates():
    """Tiles of 96 on 160 px start at 0 and 64: the object at x 80..120 crosses the first
    tile's right edge (a part there), lies whole in the second and in the whole image."""
    image = canvas(160, 160)
    cut = paint(image, 1, 80, 10, 120, 40)
    inside = paint(image, 2, 100, 110, 130, 150)  # in the second tile only
    model = BlobDetector(min_size=160, max_size=160)
    assert tile_windows(160, 160, 96, 0.2) == [(x, y, x + 96, y + 96) for y in (0, 64)
                                               for x in (0, 64)]  # fmt: skip
    per_tile = [model.detect(image[:, y0:y1, x0:x1])["boxes"].tolist()
                for x0, y0, x1, y1 in tile_windows(160, 160, 96, 0.2)]  # fmt: skip
    # tile-local boxes: the cut part (x 80..96), the whole object (x 80..120 - 64), nothing,
    # the other object (y 110..150 - 64)
    assert per_tile == [[[80, 10, 96, 40]], [[16, 10, 56, 40]], [], [[36, 46, 66, 86]]]
    found = sliced(model, image, 96)
    assert found["labels"].tolist() == [1, 2]  # once each: object 1 was seen three times
    assert found["boxes"].tolist() == [blob_box(cut), blob_box(inside)]
    assert torch.equal(found["masks"][:, 0] > 0.5, torch.stack([cut, inside]))


def test_a_small_object_lost_at_the_whole_images_size_is_found_on_a_tile():
    """The stand-in finds blobs of at least 50 pixels at its resize (64 px): the 256 px image
    shrinks the 12x12 square to 9 pixels, a 64 px tile keeps its 144."""
    image = canvas(256, 256)
    small = paint(image, 1, 150, 170, 162, 182)
    big = paint(image, 2, 10, 10, 110, 110)
    model = BlobDetector(min_size=64, max_size=64, min_pixels=50)
    whole = model.detect(image)
    assert whole["labels"].tolist() == [2], "the whole image keeps the big square only"
    found = sliced(model, image, 64)
    assert sorted(zip(found["labels"].tolist(), found["boxes"].tolist(), strict=True)) == [
        (1, blob_box(small)), (2, blob_box(big))
    ]  # fmt: skip
    masks = dict(zip(found["labels"].tolist(), found["masks"][:, 0] > 0.5, strict=True))
    assert torch.equal(masks[1], small) and torch.equal(masks[2], big)


def test_tiles_go_through_the_model_in_batches_of_at_most_batch_size():
    image = canvas(100, 140)
    model = BlobDetector(min_size=64, max_size=64)
    detect_image(model, image, Views(slice_size=64, slice_overlap=0.5), batch_size=3)
    windows = image_windows(100, 140, 64, 0.5)
    sizes = [size for _, batch in model.calls for size in batch]
    assert sizes == [(y1 - y0, x1 - x0) for x0, y0, x1, y1 in windows]
    assert len(windows) == 13  # the whole image and 3 rows of 4 tiles
    assert [len(batch) for _, batch in model.calls] == [3, 3, 3, 3, 1]


def test_an_image_no_larger_than_a_tile_runs_whole_once():
    image = canvas(60, 60)
    paint(image, 1, 5, 5, 20, 20)
    model = BlobDetector(min_size=64, max_size=64)
    found = detect_image(model, image, Views(slice_size=64), batch_size=2)
    assert model.calls == [(64, [(60, 60)])]
    assert found["boxes"].tolist() == [[5, 5, 20, 20]]
    assert Views(slice_size=64).untiled(60, 60) and not Views(slice_size=32).untiled(60, 60)
