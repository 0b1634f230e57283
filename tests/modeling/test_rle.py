"""Masks to COCO RLE from their crops: the same results as full-image `pycocotools.mask.encode`."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torchvision.transforms.v2 import functional as F

from cocoseg.modeling import inference, rle
from cocoseg.modeling.inference import encode_batch, host_detections, predict_images
from cocoseg.modeling.registry import build_model
from cocoseg.modeling.rle import crop_bounds, crop_rles, gather_crops

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")),
]


def reference_rles(masks: np.ndarray) -> list[dict]:
    """pycocotools' encoding of full-image (N, H, W) masks, counts as str."""
    if len(masks) == 0:
        return []
    encoded = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": r["size"], "counts": r["counts"].decode("ascii")} for r in encoded]


def reference_results(image_id: int, output: dict, threshold: float) -> list[dict]:
    """COCO results as inference made them before crops: full-image masks, then encode."""
    boxes = output["boxes"].float().cpu()
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    masks = (output["masks"][:, 0] > threshold).cpu().numpy()
    return [
        {"image_id": image_id, "category_id": int(label), "bbox": box, "score": float(score),
         "segmentation": r}
        for label, score, box, r in zip(
            output["labels"].tolist(), output["scores"].float().tolist(), xywh,
            reference_rles(masks), strict=True,
        )
    ]  # fmt: skip


def encoded_from_crops(masks: torch.Tensor) -> list[dict]:
    """Our path for boolean masks: bounds, crops, RLE."""
    bounds = crop_bounds(masks.float(), 0.5)
    host_bounds = bounds.cpu()
    crops = gather_crops(masks, bounds, host_bounds.tolist()).cpu()
    return crop_rles(crops.numpy(), host_bounds.numpy(), *masks.shape[1:])


def edge_cases(height: int, width: int) -> np.ndarray:
    """Masks on every border, corners, full rows, columns and images, and an empty one."""
    cases = np.zeros((11, height, width), dtype=bool)
    cases[1, 0, 0] = cases[2, -1, -1] = True  # first and last pixel
    cases[3, :, 0] = cases[4, 0, :] = True  # the first column, the first row
    cases[5, :, -1] = cases[6, -1, :] = True  # the last column, the last row
    cases[7] = True  # the whole image
    cases[8, :, width // 3 :] = True  # full height from a column to the right edge
    cases[9, height // 2 :, : width // 2] = True  # the bottom-left quarter
    cases[10, ::2, 1::3] = True  # a lattice touching the top and right borders
    return cases


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (7, 1), (13, 17), (64, 48)])
def test_crops_give_pycocotools_counts_for_border_and_empty_masks(device, shape):
    masks = edge_cases(*shape)
    ours = encoded_from_crops(torch.from_numpy(masks).to(device))
    assert ours == reference_rles(masks)


@pytest.mark.parametrize("device", DEVICES)
def test_crops_give_pycocotools_counts_for_random_masks(device):
    rng = np.random.default_rng(0)
    for _ in range(40):
        height, width = rng.integers(1, 60, size=2)
        masks = np.zeros((rng.integers(0, 8), height, width), dtype=bool)
        for mask in masks:
            y0, x0 = rng.integers(0, height), rng.integers(0, width)
            y1, x1 = rng.integers(y0, height) + 1, rng.integers(x0, width) + 1
            mask[y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < rng.random()
        ours = encoded_from_crops(torch.from_numpy(masks).to(device))
        assert ours == reference_rles(masks), (height, width)


def test_steps_of_the_gather_give_the_same_crops(monkeypatch):
    masks = torch.from_numpy(edge_cases(20, 30))
    bounds = crop_bounds(masks.float(), 0.5)
    whole = gather_crops(masks, bounds, bounds.tolist())
    monkeypatch.setattr(rle, "CROP_CHUNK", 1)  # one mask per step
    assert torch.equal(gather_crops(masks, bounds, bounds.tolist()), whole)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_coco_results_are_those_of_full_image_masks(device, dtype, threshold):
    gen = torch.Generator().manual_seed(1)
    n, height, width = 30, 45, 70
    probabilities = torch.rand(n, 1, height, width, generator=gen)
    probabilities[:5] = 0  # masks with nothing above the threshold
    probabilities[5:10, :, 10:30, 20:50] = 0.9  # and ones that leave the border alone
    probabilities[10:, :, :, :3] = 0.0  # the rest: some touch three borders
    output = {
        "boxes": torch.rand(n, 4, generator=gen) * 40,
        "labels": torch.randint(1, 5, (n,), generator=gen),
        "scores": torch.rand(n, generator=gen),
        "masks": probabilities.to(dtype),
    }
    output = {k: v.to(device) for k, v in output.items()}
    assert encode_batch([7], *host_detections([output], threshold)) == reference_results(
        7, output, threshold
    )
    empty = {k: v[:0] for k, v in output.items()}
    assert encode_batch([7], *host_detections([empty], threshold)) == []


def read_float(path: Path) -> torch.Tensor:
    """An image as the float CHW tensor in [0, 1] the model takes."""
    pixels = np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1)
    return F.to_dtype(torch.from_numpy(pixels.copy()), torch.float32, scale=True)


def test_predict_images_matches_full_image_encoding_in_input_order(tmp_path: Path):
    torch.manual_seed(0)
    model = build_model("maskrcnn_resnet50_fpn", 5, min_size=96, max_size=128).eval()
    model.roi_heads.detections_per_img = 40  # keep the CPU mask head cheap
    gen = np.random.default_rng(2)
    items = []
    for image_id, size in zip((30, 10, 20), ((90, 120), (128, 96), (100, 100)), strict=True):
        path = tmp_path / f"{image_id}.png"
        Image.fromarray(gen.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
        items.append((image_id, path, size[::-1]))
    results = predict_images(model, items, device="cpu", batch_size=2, progress=False)
    expected = []
    with torch.inference_mode():
        for batch in (items[:2], items[2:]):  # the batches the model saw
            images = [read_float(path) for _, path, _ in batch]
            for (image_id, _, _), output in zip(batch, model(images), strict=True):
                expected += reference_results(image_id, output, 0.5)
    assert len(expected) > 0 and results == expected


def test_an_interrupt_stops_inference_and_leaves_no_encoder_thread(tmp_path: Path, monkeypatch):
    items = []
    for image_id in range(1, 6):
        Image.new("RGB", (20, 16), (image_id, 0, 0)).save(tmp_path / f"{image_id}.png")
        items.append((image_id, tmp_path / f"{image_id}.png", (20, 16)))
    calls = []

    def model_then_interrupt(model, images, device, amp, views, batch_size):
        calls.append(len(images))
        if len(calls) == 2:
            raise KeyboardInterrupt
        n = 3
        output = {"boxes": torch.rand(n, 4), "labels": torch.ones(n, dtype=torch.int64),
                  "scores": torch.rand(n), "masks": torch.rand(n, 1, 16, 20)}  # fmt: skip
        return [output for _ in images]

    monkeypatch.setattr(inference, "_run_model", model_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        predict_images(torch.nn.Identity(), items, device="cpu", batch_size=2, progress=False)
    assert calls == [2, 2]
    assert not [t for t in threading.enumerate() if t.name.startswith("rle")]  # the encoder
