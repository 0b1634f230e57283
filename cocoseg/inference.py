"""Batched Mask R-CNN inference that returns COCO results dicts with RLE masks."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils
from torchvision.transforms.v2 import functional as F
from tqdm import tqdm

from cocoseg.errors import DataError


def load_image(path: str | Path) -> torch.Tensor:
    """An image file as a float CHW tensor in [0, 1], RGB (grayscale and RGBA converted)."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{path}: cannot read as an image: {err}") from None
    return F.to_dtype(F.pil_to_tensor(rgb), torch.float32, scale=True)


def encode_masks(masks: torch.Tensor) -> list[dict[str, Any]]:
    """Binary masks (N, H, W) as compressed COCO RLEs with `counts` as str."""
    if masks.shape[0] == 0:
        return []
    array = np.asfortranarray(masks.to(torch.uint8).permute(1, 2, 0).cpu().numpy())
    rles = mask_utils.encode(array)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def to_coco_results(
    image_id: int, output: dict[str, torch.Tensor], mask_threshold: float = 0.5
) -> list[dict[str, Any]]:
    """One image's model output as COCO results: xywh boxes, RLE masks (prob > threshold)."""
    boxes = output["boxes"].float().cpu()
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    rles = encode_masks(output["masks"][:, 0] > mask_threshold)
    return [
        {
            "image_id": int(image_id),
            "category_id": int(label),
            "bbox": box,
            "score": float(score),
            "segmentation": rle,
        }
        for label, score, box, rle in zip(
            output["labels"].tolist(), output["scores"].float().tolist(), xywh, rles, strict=True
        )
    ]


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def predict_images(
    model: torch.nn.Module,
    items: Sequence[tuple[int, Path]],
    *,
    device: str | torch.device,
    batch_size: int = 2,
    mask_threshold: float = 0.5,
    amp: bool = True,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run the model on (image_id, path) items; return COCO results for every detection.

    Eval mode, no gradients, AMP only on CUDA. Masks are binarised and RLE-encoded per
    batch, so memory stays flat however many images there are.
    """
    device = torch.device(device)
    model.eval()
    results: list[dict[str, Any]] = []
    bar = tqdm(
        _batches(items, batch_size),
        total=math.ceil(len(items) / batch_size),
        desc="inference",
        unit="batch",
        disable=not progress,
    )
    with torch.inference_mode():
        for batch in bar:
            images = [load_image(path).to(device) for _, path in batch]
            with torch.autocast(device_type=device.type, enabled=amp and device.type == "cuda"):
                outputs = model(images)
            for (image_id, _), output in zip(batch, outputs, strict=True):
                results.extend(to_coco_results(image_id, output, mask_threshold))
    return results
