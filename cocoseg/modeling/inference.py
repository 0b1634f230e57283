"""Batched Mask R-CNN inference to COCO results with RLE masks: the one path for val and predict.

The model stays busy: DataLoader workers decode, only mask crops go to the host (without
blocking on CUDA) and a thread RLE-encodes them (`cocoseg.modeling.rle`) at most `MAX_PENDING`
batches behind, so memory stays flat. Results come back in input order. Sliced inference and
TTA, when asked, run in the model's place (`cocoseg.modeling.views`).
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
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as F
from tqdm import tqdm

from cocoseg.coco.images import ImageItem, read_rgb
from cocoseg.common.cli import worker_init
from cocoseg.common.errors import DataError
from cocoseg.common.params import InferenceParams
from cocoseg.modeling.device import resolve_device
from cocoseg.modeling.records import load_trained_model
from cocoseg.modeling.rle import crop_bounds, crop_rles, gather_crops
from cocoseg.modeling.views import PLAIN, Views, detect

log = logging.getLogger(__name__)

MAX_PENDING = 2  # batches encoded behind the model: enough to overlap, bounded memory


class ImageFiles(Dataset):
    """(image_id, path, recorded size) items as (image_id, uint8 CHW tensor) in the frame
    `read_rgb` picks; a bad file comes back as its error, for the main process to raise as one
    line (DataLoader would wrap it in a traceback)."""

    def __init__(self, items: Sequence[ImageItem]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | DataError]:
        image_id, path, recorded = self.items[index]
        try:
            rgb = read_rgb(path, recorded=recorded)
        except DataError as err:
            return image_id, err
        return image_id, torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


def decode_workers(num_workers: int, device: torch.device) -> int:
    """Decoding processes that run beside the model, not against it: on the CPU only the cores
    its threads leave free (2 workers on 2 cores made inference ~10% slower than none)."""
    if device.type != "cpu":
        return num_workers
    free = (os.cpu_count() or 1) - torch.get_num_threads()
    return max(0, min(num_workers, free))


def image_loader(
    items: Sequence[ImageItem], batch_size: int, num_workers: int, device: torch.device
) -> DataLoader:
    """Batches of decoded images in input order, decoded by up to `num_workers` processes."""
    workers = decode_workers(num_workers, device)
    if workers < num_workers:
        log.info(
            "inference: decoding with %d of %d workers: the model's %d threads use the other "
            "cores", workers, num_workers, torch.get_num_threads(),
        )  # fmt: skip
    return DataLoader(
        ImageFiles(items), batch_size=batch_size, shuffle=False, num_workers=workers,
        collate_fn=list, pin_memory=device.type == "cuda", worker_init_fn=worker_init,
    )  # fmt: skip


def host_detections(
    outputs: list[dict[str, torch.Tensor]], mask_threshold: float
) -> tuple[list[dict[str, Any]], torch.cuda.Event | None]:
    """Each image's detections on their way to the host: boxes, labels, scores, and each mask's
    pixels above `mask_threshold` within its bounds (`cocoseg.modeling.rle`). One sync per batch;
    on CUDA the copies land without blocking: wait for the returned event before reading."""
    probabilities = [output["masks"][:, 0] for output in outputs]
    bounds = [crop_bounds(p, mask_threshold) for p in probabilities]
    host_bounds = torch.cat(bounds).cpu().split([len(b) for b in bounds])  # the one sync
    detections = []
    for output, p, b, on_host in zip(outputs, probabilities, bounds, host_bounds, strict=True):
        crops = gather_crops(p, b, on_host.tolist()) > mask_threshold
        detections.append(
            {
                "boxes": _to_host(output["boxes"].float()),
                "labels": _to_host(output["labels"]),
                "scores": _to_host(output["scores"].float()),
                "crops": _to_host(crops),
                "bounds": on_host,
                "size": tuple(p.shape[1:]),
            }
        )
    event = None
    if any(p.device.type == "cuda" for p in probabilities):
        event = torch.cuda.Event()
        event.record()
    return detections, event


def _to_host(tensor: torch.Tensor) -> torch.Tensor:
    """A copy on the host: from CUDA into pinned memory without waiting for it."""
    if tensor.device.type != "cuda":
        return tensor.cpu()
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    return host.copy_(tensor, non_blocking=True)


def coco_results(image_id: int, detections: dict[str, Any]) -> list[dict[str, Any]]:
    """One image's host detections as COCO results: xywh boxes, RLE masks."""
    boxes = detections["boxes"]
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    rles = crop_rles(detections["crops"].numpy(), detections["bounds"].numpy(), *detections["size"])
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


def encode_batch(
    image_ids: list[int], detections: list[dict[str, Any]], event: torch.cuda.Event | None
) -> list[dict[str, Any]]:
    """COCO results of one batch of `host_detections` (runs in the encoder thread)."""
    if event is not None:
        event.synchronize()  # the copies to the host have landed
    return [
        r
        for image_id, d in zip(image_ids, detections, strict=True)
        for r in coco_results(image_id, d)
    ]


def _run_model(
    model: torch.nn.Module,
    images: list[torch.Tensor],
    device: torch.device,
    amp: bool,
    views: Views,
    batch_size: int,
) -> list[dict[str, torch.Tensor]]:
    """The model's detections on one batch of uint8 images (made float on the device) over their
    `views`, at most `batch_size` images per forward; AMP only on CUDA."""
    inputs = [
        F.to_dtype(i.to(device, non_blocking=True), torch.float32, scale=True) for i in images
    ]
    with torch.autocast(device_type=device.type, enabled=amp and device.type == "cuda"):
        return detect(model, inputs, views, batch_size)


def predict_images(
    model: torch.nn.Module,
    items: Sequence[ImageItem],
    *,
    device: str | torch.device,
    batch_size: int = 2,
    mask_threshold: float = 0.5,
    num_workers: int = 0,
    amp: bool = True,
    progress: bool = True,
    views: Views = PLAIN,
) -> list[dict[str, Any]]:
    """Run the model (eval mode, no gradients) on (image_id, path, recorded) items over their
    `views`; return COCO results for every detection. A file that does not decode stops the
    run, naming it."""
    device = torch.device(device)
    model.eval()
    untiled = 0
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
                images = [image for _, image in batch]
                untiled += sum(views.untiled(*i.shape[1:]) for i in images)
                outputs = _run_model(model, images, device, amp, views, batch_size)
                detections, event = host_detections(outputs, mask_threshold)
                image_ids = [image_id for image_id, _ in batch]
                pending.append(encoder.submit(encode_batch, image_ids, detections, event))
                while len(pending) > MAX_PENDING:
                    results.extend(pending.popleft().result())
        while pending:
            results.extend(pending.popleft().result())
    if untiled:
        log.info(
            "inference: %d of %d images are no larger than %s.slice_size = %d: the whole image "
            "alone", untiled, len(items), views.section, views.slice_size,
        )  # fmt: skip
    return results


def run_trained_model(
    model_path: str | Path,
    items: Sequence[ImageItem],
    settings: InferenceParams,
    *,
    expect_classes: Sequence[str] = (),
    progress: bool = True,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Load models/model.pt (its classes must be `expect_classes`, when given) and predict items;
    return every detection as COCO results, and the model's class names."""
    device = resolve_device(settings.device)
    model, classes = load_trained_model(model_path, device, expect_classes)
    views = Views.of(settings)
    views.check(model, str(model_path))
    log.info(
        "inference: %d images on %s with %s; views: %s", len(items), device, model_path,
        views.describe(),
    )  # fmt: skip
    results = predict_images(
        model, items, device=device, batch_size=settings.batch_size,
        mask_threshold=settings.mask_threshold, num_workers=settings.num_workers, progress=progress,
        views=views,
    )  # fmt: skip
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
