"""COCO RLEs of thresholded masks from their crops, packed column by column (pycocotools' order)
on the device into one buffer for the host, where numpy finds the runs (without the GIL) and
pycocotools only compresses them: the `counts` `mask.encode` gives for the full-image masks."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch import Tensor

CROP_CHUNK = 2**24  # crop pixels gathered per step (int64 indices: 128 MiB)


def crop_bounds(probabilities: Tensor, threshold: float) -> Tensor:
    """(N, 4) x, y, width, height of where each (N, H, W) mask is above `threshold` (0 if nowhere),
    from each row's and column's maximum, without a full-image boolean mask."""
    x, width = _span(probabilities.amax(dim=1) > threshold)
    y, height = _span(probabilities.amax(dim=2) > threshold)
    return torch.stack([x, y, width, height], dim=1)


def _span(hits: Tensor) -> tuple[Tensor, Tensor]:
    """First True of each row of `hits` and the length up to its last True (0 if none)."""
    first = hits.to(torch.uint8).argmax(dim=1)
    last = hits.shape[1] - 1 - hits.flip(1).to(torch.uint8).argmax(dim=1)
    return first, torch.where(hits.any(dim=1), last - first + 1, 0)


def gather_crops(values: Tensor, bounds: Tensor, host_bounds: list[list[int]]) -> Tensor:
    """The `bounds` crops of (N, H, W) `values` in one flat tensor, each column by column, in steps
    of at most `CROP_CHUNK` pixels; `host_bounds` (`bounds` on the host) spares a sync."""
    steps, start, pixels = [], 0, 0
    for end, (_, _, w, h) in enumerate(host_bounds):
        if pixels and pixels + w * h > CROP_CHUNK:
            steps.append((start, end))
            start, pixels = end, 0
        pixels += w * h
    steps.append((start, len(host_bounds)))
    return torch.cat(
        [_gather(values, bounds, start, host_bounds[start:end]) for start, end in steps]
    )


def _gather(values: Tensor, bounds: Tensor, start: int, host: list[list[int]]) -> Tensor:
    """Crops of the masks from `start` on whose bounds `host` holds, column by column."""
    end = start + len(host)
    n_columns = sum(w for _, _, w, _ in host)
    n_pixels = sum(w * h for _, _, w, h in host)
    _, height, width = values.shape
    device = values.device
    x, y, crop_w, crop_h = bounds[start:end].unbind(1)
    masks = torch.arange(start, end, device=device)
    column_mask = torch.repeat_interleave(masks, crop_w, output_size=n_columns)
    k = column_mask - start
    j = torch.arange(len(column_mask), device=device) - (torch.cumsum(crop_w, 0) - crop_w)[k]
    column_start = (column_mask * height + y[k]) * width + x[k] + j  # its top pixel
    rows = crop_h[k]
    first = torch.cumsum(rows, 0) - rows  # its first place in the output
    # pixel p of the output, in column c: column_start[c] + (p - first[c]) * width
    index = torch.repeat_interleave(column_start - first * width, rows, output_size=n_pixels)
    index += torch.arange(n_pixels, device=device) * width
    return values.reshape(-1)[index]


def crop_rles(crops: np.ndarray, bounds: np.ndarray, height: int, width: int) -> list[dict]:
    """COCO RLEs (`counts` as str) of the full-image masks whose crops `gather_crops` packed: a
    mask's runs are its crop columns' with zeros between (a full-height crop is one stretch)."""
    if len(bounds) == 0:
        return []
    x, y, crop_w, crop_h = (bounds[:, k].astype(np.int64) for k in range(4))
    areas = crop_w * crop_h
    whole = crop_h == height  # its columns follow each other in the image's order
    segments = np.where(areas == 0, 0, np.where(whole, 1, crop_w))
    length = np.repeat(np.where(whole, areas, crop_h), segments)
    mask_of = np.repeat(np.arange(len(bounds)), segments)
    column = np.arange(len(mask_of)) - np.repeat(np.cumsum(segments) - segments, segments)
    start = (x[mask_of] + column) * height + y[mask_of]  # image position of each stretch
    # Each stretch behind a zero, and a zero at the end: a change at index p of the padded
    # buffer's differences is a run starting at stretch k's position + (p - its zero's index).
    zero_at = np.cumsum(length + 1) - (length + 1)
    padded = np.zeros(len(crops) + len(length) + 1, dtype=bool)
    padded[np.arange(len(crops)) + np.repeat(np.arange(1, len(length) + 1), length)] = crops
    change = np.flatnonzero(padded[1:] != padded[:-1])
    stretch = np.searchsorted(zero_at, change, side="right") - 1
    position = start[stretch] + change - zero_at[stretch]
    inside = position < height * width  # a run that ends with the image is not a change
    position, owner = position[inside], mask_of[stretch[inside]]
    limits = np.searchsorted(owner, np.arange(len(bounds) + 1))
    uncompressed = [
        {"size": [height, width],
         "counts": np.diff(position[a:b], prepend=0, append=height * width)}
        for a, b in pairwise(limits)
    ]  # fmt: skip
    rles: list[dict[str, Any]] = mask_utils.frPyObjects(uncompressed, height, width)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles
