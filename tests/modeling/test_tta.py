"""TTA: mirrored passes come back in image coordinates, boxes merge by NMS, masks are the mean of
the passes' matching masks, and TTA sizes set the model's resize for their passes only."""

from __future__ import annotations

import pytest
import torch
from blobdetector import BlobDetector, blob_box, canvas, paint
from torch import nn

from cocoseg.common.errors import ParamError
from cocoseg.modeling.tta import (
    merge_passes,
    model_resize,
    resized_to,
    tta_detections,
    unmirrored_boxes,
)
from cocoseg.modeling.views import Views, detect_image


def by_score(found: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    order = torch.argsort(found["scores"], descending=True, stable=True)
    return {key: value[order] for key, value in found.items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """The same detections, in score order (TTA's NMS returns them so)."""
    a, b = by_score(a), by_score(b)
    assert a["labels"].tolist() == b["labels"].tolist()
    assert a["boxes"].tolist() == b["boxes"].tolist()
    assert a["scores"].tolist() == pytest.approx(b["scores"].tolist())
    assert torch.equal(a["masks"], b["masks"].float())


def test_a_mirror_symmetric_image_gives_the_same_detections_with_tta():
    """The mirror is the same image: its pass, mirrored back, must land on the first's."""
    image = canvas(48, 64)
    paint(image, 1, 10, 5, 20, 30)  # and its mirror image at x 44..54
    paint(image, 1, 44, 5, 54, 30)
    paint(image, 2, 28, 20, 36, 44)  # centred: its own mirror
    assert torch.equal(image, image.flip(-1))
    model = BlobDetector(min_size=48, max_size=64)
    plain = model.detect(image)
    assert len(plain["labels"]) == 3
    assert_same(tta_detections(model, image, [], batch_size=2), plain)


def test_an_asymmetric_image_comes_back_from_its_mirror_in_image_coordinates():
    """The stand-in is exactly mirror-equivariant, so TTA must give its plain answer; a box
    mirrored back off by a pixel (width - 1 - x) would not."""
    image = canvas(40, 70)
    paint(image, 1, 3, 4, 17, 9)
    paint(image, 2, 50, 0, 70, 40)  # touches the right edge
    model = BlobDetector(min_size=40, max_size=70)
    mirrored = model.detect(image.flip(-1))
    assert mirrored["boxes"].tolist() == [[53, 4, 67, 9], [0, 0, 20, 40]]
    assert_same(tta_detections(model, image, [], batch_size=1), model.detect(image))
    assert [len(batch) for _, batch in model.calls[-2:]] == [1, 1]  # batch_size 1: two forwards


def test_boxes_mirrored_back_stay_in_the_image():
    """A model's x1 resized back to the image can pass its width by a rounding (random Mask R-CNN
    gave 112.0000076 on 112 px): mirrored back, that must not start left of 0."""
    boxes = torch.tensor([[3.0, 1.0, 112.0000076, 5.0], [0.0, 2.0, 10.0, 6.0]])
    assert unmirrored_boxes(boxes, 112).tolist() == [[0, 1, 109, 5], [102, 2, 112, 6]]


def detections(boxes, labels, scores, masks) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).view(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "scores": torch.tensor(scores), "masks": masks}  # fmt: skip


def test_boxes_merge_by_nms_and_masks_average_over_the_passes_that_match():
    width = 8
    first_masks = torch.zeros(2, 1, 4, width)
    first_masks[0, 0, :, 0:4] = 1.0
    first_masks[1, 0, :, 6:8] = 0.4
    first = detections([[0, 0, 4, 4], [6, 0, 8, 4]], [1, 2], [0.9, 0.3], first_masks)
    # On the mirror: the same object at x 4..8 (0..4 mirrored back; IoU 1), a lower score,
    # a mask of 0.5 there; and an object of class 2 elsewhere than the first pass's.
    mirror_masks = torch.zeros(2, 1, 4, width)
    mirror_masks[0, 0, :, 4:8] = 0.5
    mirror_masks[1, 0, :, 2:4] = 0.8
    mirror = detections([[4, 0, 8, 4], [2, 0, 4, 4]], [1, 2], [0.6, 0.7], mirror_masks)
    merged = merge_passes([(first, False), (mirror, True)], width)
    # NMS: first's box wins over the mirror's (same place, lower score); class 2 has two
    # detections apart (x 6..8 and, mirrored back, 4..6): both kept, best score first.
    assert merged["boxes"].tolist() == [[0, 0, 4, 4], [4, 0, 6, 4], [6, 0, 8, 4]]
    assert merged["labels"].tolist() == [1, 2, 2]
    assert merged["scores"].tolist() == pytest.approx([0.9, 0.7, 0.3])
    expected = torch.zeros(3, 1, 4, width)
    expected[0, 0, :, 0:4] = (1.0 + 0.5) / 2  # both passes saw it: the mean
    expected[1, 0, :, 4:6] = 0.8  # one pass each: that pass's mask alone, not halved
    expected[2, 0, :, 6:8] = 0.4
    assert torch.allclose(merged["masks"], expected)


def test_no_detection_in_any_pass_is_an_empty_result():
    empty = detections([], [], [], torch.zeros(0, 1, 5, 6))
    merged = merge_passes([(empty, False), (empty, True)], 6)
    assert merged["boxes"].shape == (0, 4) and merged["masks"].shape == (0, 1, 5, 6)


def test_tta_sizes_set_the_resize_for_their_passes_and_put_it_back():
    image = canvas(40, 60)
    paint(image, 1, 5, 5, 15, 15)
    model = BlobDetector(min_size=40, max_size=60)
    found = tta_detections(model, image, [20, 80], batch_size=2)
    assert [size for size, _ in model.calls] == [20, 80]  # each size: the image and its mirror
    assert found["boxes"].tolist() == [blob_box(image[0] == 1.0)]
    assert (model.transform.min_size, model.transform.max_size) == ((40,), 60)
    with resized_to(model, 80):
        assert model_resize(model) == (80, 120), "max_size scaled as min_size"
    with pytest.raises(RuntimeError), resized_to(model, 20):
        raise RuntimeError("a failing pass")
    assert model_resize(model) == (40, 60)


def test_tta_sizes_on_a_model_without_a_settable_resize_are_refused_in_one_line():
    class Bare(nn.Module):
        def forward(self, images):
            return []

    Views(tta=True).check(Bare(), "models/model.pt")  # flip alone needs no resize
    with pytest.raises(ParamError, match=r"^predict.tta_scales = \[600\] needs a model whose "
                       r"resize can be set .* holds a Bare without one: use tta_scales: \[\] "
                       r"\(flip only\)$"):  # fmt: skip
        Views(tta=True, tta_scales=(600,), section="predict").check(Bare(), "models/model.pt")


def test_tta_runs_on_each_tile_before_the_tiles_merge():
    image = canvas(64, 96)
    cut = paint(image, 1, 40, 10, 70, 30)  # across the first tile's right edge (64)
    model = BlobDetector(min_size=64, max_size=96)
    found = detect_image(model, image, Views(slice_size=64, tta=True), batch_size=2)
    assert found["boxes"].tolist() == [blob_box(cut)]
    assert torch.equal(found["masks"][0, 0] > 0.5, cut)
    # the whole image, then tiles at x 0 and 32, each with its mirror in one forward
    assert [[tuple(s) for s in batch] for _, batch in model.calls] == [[(64, 96)] * 2] + [
        [(64, 64)] * 2
    ] * 2
