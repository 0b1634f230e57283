"""Batched Mask R-CNN inference to COCO results with RLE masks: the one path for val and predict.

The loop keeps the model busy: images are decoded in DataLoader workers (uint8, pinned on
CUDA), masks are thresholded on the device and come back as bytes, and RLE encoding runs in
a thread beside the loop, at most `MAX_PENDING` batches behind, so memory stays flat however
many images there are. Results come back in input order whatever `num_workers` is.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as F
from tqdm import tqdm

from cocoseg.core.config import EvaluateParams, PredictParams
from cocoseg.core.device import resolve_device
from cocoseg.core.errors import DataError
from cocoseg.core.images import read_rgb
from cocoseg.core.model import load_trained_model
from cocoseg.core.signals import worker_init

log = logging.getLogger(__name__)

MAX_PENDING = 2  # batches encoded behind the model: enough to overlap, bounded memory


class ImageFiles(Dataset):
    """(image_id, path) items as (image_id, uint8 CHW tensor); a bad file comes back as its error.

    The error travels as a value so the main process raises it with its own one-line message
    (DataLoader would wrap an exception raised in a worker in a traceback).
    """

    def __init__(self, items: Sequence[tuple[int, Path]]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | DataError]:
        image_id, path = self.items[index]
        try:
            rgb = read_rgb(path)
        except DataError as err:
            return image_id, err
        return image_id, torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


def _as_list(batch: list[Any]) -> list[Any]:
    """Images differ in size: a batch stays a list."""
    return batch


def decode_workers(num_workers: int, device: torch.device) -> int:
    """Decoding processes that run beside the model, not against it.

    On a GPU, all of `num_workers`. On the CPU the model's threads already use the cores:
    workers there only take the cores those threads leave free (measured: 2 workers on a
    2-core machine made inference ~10% slower than decoding in the main process).
    """
    if device.type != "cpu":
        return num_workers
    free = (os.cpu_count() or 1) - torch.get_num_threads()
    return max(0, min(num_workers, free))


def image_loader(
    items: Sequence[tuple[int, Path]], batch_size: int, num_workers: int, device: torch.device
) -> DataLoader:
    """Batches of decoded images in input order, decoded by up to `num_workers` processes."""
    workers = decode_workers(num_workers, device)
    if workers < num_workers:
        log.info(
            "inference: decoding with %d of %d workers: the model's %d threads use the other "
            "cores", workers, num_workers, torch.get_num_threads(),
        )  # fmt: skip
    return DataLoader(
        ImageFiles(items),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_as_list,
        pin_memory=device.type == "cuda",
        worker_init_fn=worker_init,
    )


def to_model_input(image: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A uint8 CHW image as the float [0, 1] tensor the model takes, converted on the device."""
    return F.to_dtype(image.to(device, non_blocking=True), torch.float32, scale=True)


def threshold_masks(probabilities: torch.Tensor, mask_threshold: float) -> torch.Tensor:
    """(N, 1, H, W) mask probabilities as a dense (N, W, H) uint8 block: 1 where > threshold.

    Computed on the model's device. Each mask is stored column-major, pycocotools' layout,
    so once on the host and viewed as (N, H, W) it is encoded without a copy.
    """
    return (probabilities[:, 0] > mask_threshold).transpose(1, 2).to(torch.uint8).contiguous()


def host_output(output: dict[str, torch.Tensor], mask_threshold: float) -> dict[str, Any]:
    """One image's detections moved to the host: boxes, labels, scores and thresholded masks."""
    return {
        "boxes": output["boxes"].float().cpu(),
        "labels": output["labels"].cpu(),
        "scores": output["scores"].float().cpu(),
        "masks": threshold_masks(output["masks"], mask_threshold).cpu().transpose(1, 2),
    }


def encode_masks(masks: torch.Tensor) -> list[dict[str, Any]]:
    """Binary masks (N, H, W) as compressed COCO RLEs with `counts` as str."""
    if masks.shape[0] == 0:
        return []
    array = masks.to(torch.uint8).cpu().numpy().transpose(1, 2, 0)  # (H, W, N)
    rles = mask_utils.encode(np.asfortranarray(array))  # no copy when column-major already
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def coco_results(image_id: int, detections: dict[str, Any]) -> list[dict[str, Any]]:
    """One image's host detections as COCO results: xywh boxes, RLE masks."""
    boxes = detections["boxes"]
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    rles = encode_masks(detections["masks"])
    return [
        {
            "image_id": int(image_id),
            "category_id": int(label),
            "bbox": box,
            "score": float(score),
            "segmentation": rle,
        }
        for label, score, box, rle in zip(
            detections["labels"].tolist(), detections["scores"].tolist(), xywh, rles, strict=True
        )
    ]


def to_coco_results(
    image_id: int, output: dict[str, torch.Tensor], mask_threshold: float = 0.5
) -> list[dict[str, Any]]:
    """One image's model output as COCO results: xywh boxes, RLE masks (prob > threshold)."""
    return coco_results(image_id, host_output(output, mask_threshold))


def _encode_batch(batch: list[tuple[int, dict[str, Any]]]) -> list[dict[str, Any]]:
    """COCO results of one batch of host detections (runs in the encoder thread)."""
    return [r for image_id, detections in batch for r in coco_results(image_id, detections)]


def _run_model(
    model: torch.nn.Module, images: list[torch.Tensor], device: torch.device, amp: bool
) -> list[dict[str, torch.Tensor]]:
    """The model's detections on one batch; AMP only on CUDA."""
    inputs = [to_model_input(image, device) for image in images]
    with torch.autocast(device_type=device.type, enabled=amp and device.type == "cuda"):
        return model(inputs)


def predict_images(
    model: torch.nn.Module,
    items: Sequence[tuple[int, Path]],
    *,
    device: str | torch.device,
    batch_size: int = 2,
    mask_threshold: float = 0.5,
    num_workers: int = 0,
    amp: bool = True,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run the model on (image_id, path) items; return COCO results for every detection.

    Eval mode, no gradients. A file that does not decode stops the run, naming it.
    """
    device = torch.device(device)
    model.eval()
    results: list[dict[str, Any]] = []
    pending: deque[Future[list[dict[str, Any]]]] = deque()
    loader = image_loader(items, batch_size, num_workers, device)
    bar = tqdm(loader, desc="inference", unit="batch", disable=not progress)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rle") as encoder:
        with torch.inference_mode():
            for batch in bar:
                for _, image in batch:
                    if isinstance(image, DataError):
                        raise image
                outputs = _run_model(model, [image for _, image in batch], device, amp)
                on_host = [
                    (image_id, host_output(output, mask_threshold))
                    for (image_id, _), output in zip(batch, outputs, strict=True)
                ]
                pending.append(encoder.submit(_encode_batch, on_host))
                while len(pending) > MAX_PENDING:
                    results.extend(pending.popleft().result())
        while pending:
            results.extend(pending.popleft().result())
    return results


def run_trained_model(
    model_path: str | Path,
    items: Sequence[tuple[int, Path]],
    settings: EvaluateParams | PredictParams,
    *,
    expect_classes: Sequence[str] = (),
    progress: bool = True,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Load models/model.pt (its classes must be `expect_classes`, when given) and predict items.

    Returns every detection the model keeps, as COCO results, and the model's class names.
    """
    device = resolve_device(settings.device)
    model, classes = load_trained_model(model_path, device, expect_classes)
    log.info("inference: %d images on %s with %s", len(items), device, model_path)
    results = predict_images(
        model,
        items,
        device=device,
        batch_size=settings.batch_size,
        mask_threshold=settings.mask_threshold,
        num_workers=settings.num_workers,
        progress=progress,
    )
    return results, classes


def add_category_names(results: Sequence[dict], classes: Sequence[str]) -> list[dict]:
    """Each result with "category_name" added (category ids are 1..K over `classes`)."""
    named = []
    for r in results:
        cid = r["category_id"]
        if not 1 <= cid <= len(classes):
            raise DataError(f"prediction has category_id {cid}; the model knows 1..{len(classes)}")
        named.append({**r, "category_name": classes[cid - 1]})
    return named
