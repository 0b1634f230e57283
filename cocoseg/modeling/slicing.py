"""Sliced inference (SAHI, Akyon et al. 2022): overlapping tiles, each of which the model's resize
enlarges, plus the whole image; tile detections shifted to image coordinates and merged.

Written here rather than with the `sahi` package (0.12.8), which needs OpenCV and shapely, runs
each slice as a host array through its own model wrapper and merges masks as polygons (lossy,
holes dropped). Here the tiles are views of the image on the device, run as one batch, and stay
tile-sized probabilities until the merge; only the kept detections are made full-size.

The rules are SAHI's defaults: its tile grid (`get_slice_bboxes`) and greedy non-maximum merging
(GREEDYNMM, IOS >= 0.5, class-wise: `greedy_merge`); a merged box is the union, the score the
highest, the mask the pixelwise maximum (which thresholds to the union at any threshold). An
object cut by a tile edge (a part box inside the whole one) thus comes back once.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import product

import numpy as np
import torch
from torch import Tensor

from cocoseg.modeling.arch import MAX_DETECTIONS

Window = tuple[int, int, int, int]  # x0, y0, x1, y1 of a view in image pixels
MATCH_IOS = 0.5  # SAHI's postprocess_match_threshold with its IOS metric


def tile_windows(height: int, width: int, size: int, overlap: float) -> list[Window]:
    """SAHI's tiles: `size` squares (clipped to the image) every `size - int(overlap * size)`
    pixels, the last of each row and column moved back to end at the image's edge. None when
    the image fits in one tile: that tile would be the whole image, which runs anyway."""
    if height <= size and width <= size:
        return []
    step = size - int(overlap * size)
    xs, ys = _starts(width, size, step), _starts(height, size, step)
    return [(x, y, min(x + size, width), min(y + size, height)) for y, x in product(ys, xs)]


def _starts(length: int, size: int, step: int) -> list[int]:
    """Tile starts along one side: every `step` while a tile ends inside, then the last flush."""
    if length <= size:
        return [0]
    return [*range(0, length - size, step), length - size]


def image_windows(height: int, width: int, size: int, overlap: float) -> list[Window]:
    """The views sliced inference runs: the whole image first, then its tiles (none if off)."""
    tiles = tile_windows(height, width, size, overlap) if size else []
    return [(0, 0, width, height), *tiles]


def greedy_merge(
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    threshold: float = MATCH_IOS,
    limit: int | None = None,
) -> list[list[int]]:
    """SAHI's class-wise greedy NMM: groups of detection indices, each its keeper (the highest
    score) first, then those it absorbs (same label, box IOS >= threshold), keepers in score
    order, the first `limit` groups. IOS: intersection over the smaller box's area (0 for an
    empty box). One keeper's row at a time: memory linear in the detections (tiles of a large
    image give tens of thousands), time linear in them per group kept."""
    order = np.argsort(-scores, kind="stable")
    boxes, labels = boxes[order], labels[order]
    area = np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), axis=1)
    free = np.ones(len(boxes), dtype=bool)
    groups: list[list[int]] = []
    for rank in range(len(boxes)):
        if limit is not None and len(groups) == limit:
            break
        if not free[rank]:
            continue
        free[rank] = False
        later = rank + 1 + np.flatnonzero(free[rank + 1 :] & (labels[rank + 1 :] == labels[rank]))
        lo = np.maximum(boxes[later, :2], boxes[rank, :2])
        hi = np.minimum(boxes[later, 2:], boxes[rank, 2:])
        inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
        smaller = np.minimum(area[later], area[rank])
        with np.errstate(divide="ignore", invalid="ignore"):
            absorbed = later[np.where(smaller > 0, inter / smaller, 0) >= threshold]
        free[absorbed] = False
        groups.append(order[[rank, *absorbed]].tolist())
    return groups


def merge_windows(
    outputs: Sequence[dict[str, Tensor]], windows: Sequence[Window], limit: int = MAX_DETECTIONS
) -> dict[str, Tensor]:
    """One image's detections from those of its views (`windows[0]` the whole image): boxes
    shifted to image coordinates, `greedy_merge`d, the best `limit` groups kept; each kept
    mask is the maximum of its members' tile masks, the only full-size masks made."""
    width, height = windows[0][2:]
    device, dtype = outputs[0]["masks"].device, outputs[0]["masks"].dtype
    shifts = torch.tensor([[x0, y0, x0, y0] for x0, y0, _, _ in windows], device=device)
    boxes = torch.cat(
        [o["boxes"] + s.to(o["boxes"].dtype) for o, s in zip(outputs, shifts, strict=True)]
    )
    scores = torch.cat([o["scores"] for o in outputs])
    labels = torch.cat([o["labels"] for o in outputs])
    host = torch.cat([boxes.float(), scores.float()[:, None], labels.float()[:, None]], 1).cpu()
    host_boxes = host[:, :4].numpy()
    groups = greedy_merge(host_boxes, host[:, 4].numpy(), host[:, 5].numpy(), limit=limit)
    members = np.array([m for g in groups for m in g], dtype=np.int64)
    group_of = np.repeat(np.arange(len(groups)), [len(g) for g in groups])
    counts = [len(o["scores"]) for o in outputs]
    view_of = np.repeat(np.arange(len(outputs)), counts)[members]
    in_view = (np.arange(sum(counts)) - np.repeat(np.cumsum(counts) - counts, counts))[members]
    masks = torch.zeros((len(groups), 1, height, width), dtype=dtype, device=device)
    for view in np.unique(view_of):
        x0, y0, x1, y1 = windows[view]
        at = view_of == view
        _max_into(
            masks[:, :, y0:y1, x0:x1], group_of[at].tolist(), outputs[view]["masks"],
            in_view[at].tolist(),
        )  # fmt: skip
    keepers = torch.tensor([g[0] for g in groups], dtype=torch.int64, device=device)
    return {
        "boxes": _group_unions(host_boxes[members], group_of, len(groups)).to(device, boxes.dtype),
        "labels": labels[keepers],
        "scores": scores[keepers],
        "masks": masks,
    }


def _group_unions(boxes: np.ndarray, group_of: np.ndarray, n: int) -> Tensor:
    """(n, 4) xyxy box enclosing each group's boxes."""
    union = np.empty((n, 4), dtype=np.float32)
    union[:, :2], union[:, 2:] = np.inf, -np.inf
    np.minimum.at(union[:, :2], group_of, boxes[:, :2])
    np.maximum.at(union[:, 2:], group_of, boxes[:, 2:])
    return torch.from_numpy(union)


def _max_into(region: Tensor, rows: list[int], masks: Tensor, sources: list[int]) -> None:
    """region[rows[j]] = max(region[rows[j]], masks[sources[j]]) for each j, a row any number of
    times (in rounds where each row appears once: an indexed write keeps one value per row)."""
    while rows:
        seen: set[int] = set()
        now = [j for j, row in enumerate(rows) if not (row in seen or seen.add(row))]
        index = torch.tensor([rows[j] for j in now], device=region.device)
        source = masks[torch.tensor([sources[j] for j in now], device=masks.device)]
        region[index] = torch.maximum(region[index], source.to(region.dtype))
        left = set(now)
        rows = [row for j, row in enumerate(rows) if j not in left]
        sources = [s for j, s in enumerate(sources) if j not in left]
