"""The batched mask paste against torchvision's own `paste_masks_in_image`, pixel by pixel."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection import maskrcnn_resnet50_fpn
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from cocoseg.modeling import paste
from cocoseg.modeling.paste import (
    BatchedPasteTransform,
    interpolation_taps,
    mask_groups,
    paste_masks,
)
from cocoseg.modeling.records import load_trained_model, model_record
from cocoseg.modeling.registry import build_model

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# The default path of each device, and the batched one (CUDA's) run on the CPU as well.
PATHS = [("cpu", None), ("cpu", True), pytest.param("cuda", None, marks=DEVICES[1].marks)]
ONE_IN = 10_000_000  # at most one thresholded pixel in ten million may differ


def probabilities(n: int, kind: str, gen: torch.Generator) -> torch.Tensor:
    """(n, 1, 28, 28) mask probabilities: uniform, or mostly saturated like a model's."""
    if kind == "uniform":
        return torch.rand(n, 1, 28, 28, generator=gen)
    return torch.sigmoid(torch.randn(n, 1, 28, 28, generator=gen) * 20)


def boxes_around(n: int, height: int, width: int, gen: torch.Generator) -> torch.Tensor:
    """xyxy boxes centred in the image, from sub-pixel to twice its size (so partly outside)."""
    centre = torch.rand(n, 2, generator=gen) * torch.tensor([width, height])
    largest = 2 * max(height, width)
    size = torch.exp(torch.rand(n, 2, generator=gen) * torch.log(torch.tensor(largest / 0.1)))
    size = size * 0.1
    return torch.cat([centre - size / 2, centre + size / 2], dim=1)


def assert_same_masks(
    ours: torch.Tensor, reference: torch.Tensor, batched: bool | None = None
) -> None:
    """Same shape and dtype; values within half an epsilon; thresholded masks equal but for
    one pixel in ten million (rounding ties); bit-identical on the CPU's default path. The
    batched path follows CUDA's kernel: on the CPU, whose kernel for outputs with h + w <= 128
    rounds differently, values are within an epsilon."""
    assert ours.shape == reference.shape and ours.dtype == reference.dtype
    if ours.device.type == "cpu" and not batched:
        assert torch.equal(ours, reference)
    flips = ((ours > 0.5) != (reference > 0.5)).sum().item()
    assert flips <= reference.numel() // ONE_IN, f"{flips} of {reference.numel()} pixels differ"
    if reference.numel():
        error = (ours.float() - reference.float()).abs().max().item()
        other_kernel = batched and ours.device.type == "cpu"
        assert error <= torch.finfo(reference.dtype).eps / (1 if other_kernel else 2)


def test_taps_are_the_weights_of_torchs_linear_interpolation():
    # Interpolating the identity gives each output position's weight on each input index.
    for size in [*range(1, 140), 255, 256, 257, 799, 1066, 1333]:
        expected = F.interpolate(torch.eye(30)[None], size=size, mode="linear")[0].T
        lo, hi, w_lo, w_hi = interpolation_taps(torch.arange(size), torch.tensor(size), 30)
        weights = torch.zeros(size, 30)
        weights.index_put_((torch.arange(size), lo), w_lo, accumulate=True)
        weights.index_put_((torch.arange(size), hi), w_hi, accumulate=True)
        assert torch.equal(weights, expected), size


@pytest.mark.parametrize(("device", "batched"), PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["uniform", "saturated"])
def test_paste_matches_torchvision(device, batched, dtype, kind):
    if batched and device == "cpu" and dtype != torch.float32:
        pytest.skip("the CPU's kernel rounds weights to half dtypes; CUDA's, emulated, does not")
    gen = torch.Generator().manual_seed(DTYPES.index(dtype))
    height, width = 97, 131
    masks = probabilities(300, kind, gen).to(device, dtype)
    boxes = boxes_around(300, height, width, gen).to(device)
    if batched and device == "cpu":  # the boxes the CPU resizes as CUDA does: h + w > 128
        large = (boxes[:, 2:] - boxes[:, :2]).sum(1) > 140
        masks, boxes = masks[large], boxes[large]
    reference = paste_masks_in_image(masks, boxes, (height, width))
    pasted = paste_masks(masks, boxes, (height, width), batched=batched)
    assert_same_masks(pasted, reference, batched)


@pytest.mark.parametrize(("device", "batched"), PATHS)
def test_tiny_sub_pixel_and_border_boxes(device, batched):
    gen = torch.Generator().manual_seed(1)
    boxes = torch.tensor(
        [
            [10.0, 10.0, 10.0, 10.0],  # a point
            [10.0, 10.0, 10.3, 10.2],  # sub-pixel
            [-0.4, 3.0, 0.2, 5.0],  # across the left edge
            [-5.0, -5.0, 3.0, 3.0],  # the top-left corner
            [45.0, 35.0, 60.0, 48.0],  # the bottom-right corner
            [0.0, 0.0, 50.0, 40.0],  # the whole image
            [-20.0, -20.0, 70.0, 60.0],  # around the whole image
            [49.5, 0.0, 52.0, 40.0],  # a sliver on the right edge
            [50.0, 5.0, 70.0, 20.0],  # starts at the right edge: its expansion reaches in
            [3.0, 20.0, 40.0, 20.5],  # a thin line
        ]
    )
    masks = probabilities(len(boxes), "uniform", gen)
    masks, boxes = masks.to(device), boxes.to(device)
    pasted = paste_masks(masks, boxes, (40, 50), batched=batched)
    assert_same_masks(pasted, paste_masks_in_image(masks, boxes, (40, 50)), batched)


@pytest.mark.parametrize(("device", "batched"), PATHS)
def test_boxes_wholly_outside_paste_nothing(device, batched):
    # torchvision's slicing raises on most of these (Python's negative indices); the image
    # holds none of their pixels, so nothing is pasted.
    boxes = torch.tensor(
        [
            [-30.0, 5.0, -10.0, 20.0],
            [60.0, 5.0, 80.0, 20.0],
            [5.0, -30.0, 20.0, -10.0],
            [5.0, 45.0, 20.0, 60.0],
            [55.0, 45.0, 58.0, 49.0],
            [-100.0, -100.0, -60.0, -60.0],
        ],
        device=device,
    )
    masks = torch.ones(len(boxes), 1, 28, 28, device=device)
    pasted = paste_masks(masks, boxes, (40, 50), batched=batched)
    assert pasted.shape == (len(boxes), 1, 40, 50) and not pasted.any()
    handled = boxes[-1:]  # torchvision pastes this one (nothing) without raising
    assert torch.equal(paste_masks(masks[-1:], handled, (40, 50), batched=batched),
                       paste_masks_in_image(masks[-1:], handled, (40, 50)))  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES)
def test_no_detections(dtype):
    masks, boxes = torch.zeros(0, 1, 28, 28, dtype=dtype), torch.zeros(0, 4)
    pasted = paste_masks(masks, boxes, (30, 40))
    assert pasted.shape == (0, 1, 30, 40) and pasted.dtype == dtype
    assert pasted.shape == paste_masks_in_image(masks, boxes, (30, 40)).shape


def test_groups_cover_each_pasting_mask_once_within_the_budget():
    gen = torch.Generator().manual_seed(2)
    widths = torch.randint(0, 300, (200,), generator=gen).tolist()
    heights = torch.randint(0, 300, (200,), generator=gen).tolist()
    budget = 2**24
    groups = mask_groups(widths, heights, 30, budget=budget)
    members = sorted(m for group in groups for m in group)
    assert members == [m for m in range(200) if widths[m] and heights[m]]
    for group in groups:
        scratch = sum(widths[m] * (heights[m] + 30) for m in group) * paste.SCRATCH_BYTES
        assert len(group) == 1 or scratch <= budget
    assert len(groups) > 2  # the budget split them


def test_a_small_scratch_budget_gives_the_same_masks(monkeypatch):
    gen = torch.Generator().manual_seed(3)
    masks, boxes = probabilities(60, "uniform", gen), boxes_around(60, 80, 90, gen)
    whole = paste_masks(masks, boxes, (80, 90), batched=True)
    monkeypatch.setattr(paste, "CHUNK_BYTES", 1)  # every mask in a group of its own
    assert torch.equal(paste_masks(masks, boxes, (80, 90), batched=True), whole)


def test_real_coco_boxes(coco_sample: Path):
    annotations = json.loads((coco_sample / "annotations" / "instances_val2017.json").read_text())
    images = {image["id"]: image for image in annotations["images"]}
    by_image: dict[int, list[list[float]]] = {}
    for ann in annotations["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann["bbox"])
    gen = torch.Generator().manual_seed(4)
    for image_id in sorted(by_image)[:6]:
        xywh = torch.tensor(by_image[image_id])
        boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
        shape = images[image_id]["height"], images[image_id]["width"]
        masks = probabilities(len(boxes), "saturated", gen)
        assert_same_masks(
            paste_masks(masks, boxes, shape), paste_masks_in_image(masks, boxes, shape)
        )


def stock_transform(model: torch.nn.Module) -> GeneralizedRCNNTransform:
    """torchvision's own transform with the model's settings."""
    t = model.transform
    return GeneralizedRCNNTransform(t.min_size, t.max_size, t.image_mean, t.image_std,
                                    t.size_divisible, t.fixed_size)  # fmt: skip


@pytest.mark.parametrize("device", DEVICES)
def test_our_model_gives_torchvisions_masks(device):
    torch.manual_seed(0)
    model = build_model("maskrcnn_resnet50_fpn", 5, min_size=128, max_size=160).to(device).eval()
    assert type(model.transform) is BatchedPasteTransform
    stock = copy.deepcopy(model)
    stock.transform = stock_transform(model)
    stock.eval()
    gen = torch.Generator().manual_seed(5)
    images = [torch.rand(3, 120, 150, generator=gen), torch.rand(3, 151, 97, generator=gen)]
    images = [image.to(device) for image in images]
    with torch.inference_mode():
        ours, theirs = model(images), stock(images)
    for mine, reference in zip(ours, theirs, strict=True):
        assert len(reference["scores"]) > 0
        for key in ("boxes", "labels", "scores"):
            assert torch.equal(mine[key], reference[key])
        assert_same_masks(mine["masks"], reference["masks"])


def test_torchvisions_classes_stay_untouched_and_loaded_models_paste_in_batches(tmp_path):
    sizes = {"min_size": 96, "max_size": 128}
    plain = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=5, **sizes)
    assert type(plain.transform) is GeneralizedRCNNTransform
    assert "postprocess" not in vars(plain.transform)
    assert GeneralizedRCNNTransform.postprocess is not BatchedPasteTransform.postprocess
    model = build_model("maskrcnn_resnet50_fpn", 5, **sizes)
    settings = ("min_size", "max_size", "image_mean", "image_std", "size_divisible",
                "fixed_size", "_skip_resize", "training")  # fmt: skip
    for name in settings:
        assert getattr(model.transform, name) == getattr(plain.transform, name), name
    path = tmp_path / "model.pt"
    torch.save(
        model_record(model, ["a", "b", "c", "d"], "maskrcnn_resnet50_fpn", 96, 128, {}), path
    )
    loaded, _ = load_trained_model(path)
    assert type(loaded.transform) is BatchedPasteTransform
    assert loaded.transform.min_size == (96,) and loaded.transform.max_size == 128
