"""Instances from a semantic model's class probabilities, so that it answers like Mask R-CNN
(boxes, labels, scores, masks) and inference, evaluate and predict serve it unchanged.

Each connected component of a class in the argmax map is one instance. Touching objects of one
class therefore come out as one instance: the price a semantic model pays on COCO mAP.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from cocoseg.modeling.arch import MAX_DETECTIONS

# A component of fewer pixels (at the image's own size) is a speck, dropped: under one 4x4 cell
# of DeepLab's stride-4 logits, it is interpolation noise, and no COCO object is that small.
MIN_INSTANCE_AREA = 16
CONNECTIVITY = np.ones((3, 3), dtype=bool)  # 8-connected: pixels touching at a corner are one


def component_ids(classes: np.ndarray, num_classes: int) -> tuple[np.ndarray, list[int]]:
    """(H, W) ids of the connected components of each foreground class of an argmax map, 1..N
    over all classes (0: background), and the class of each id."""
    ids = np.zeros(classes.shape, dtype=np.int32)
    labels: list[int] = []
    for c in range(1, num_classes):
        components, n = ndimage.label(classes == c, structure=CONNECTIVITY)
        if n:
            inside = components > 0
            ids[inside] = components[inside] + len(labels)
            labels += [c] * n
    return ids, labels


def instances_from_probabilities(
    probabilities: Tensor,
    min_area: int = MIN_INSTANCE_AREA,
    max_detections: int = MAX_DETECTIONS,
) -> dict[str, Tensor]:
    """One image's detections from its (C, H, W) class probabilities (class 0 background): a
    component of `min_area` pixels or more is an instance, scored by the mean probability of
    its class over it; its mask holds that probability inside it and 0 outside (so a mask
    threshold cuts it as it cuts Mask R-CNN's); its box is tight, xyxy with exclusive ends.
    The `max_detections` best scores are kept, best first."""
    top, winner = probabilities.max(0)
    classes, confidence = winner.cpu().numpy(), top.float().cpu().numpy()  # the one host sync
    ids, labels = component_ids(classes, probabilities.shape[0])
    flat = ids.ravel()
    areas = np.bincount(flat, minlength=len(labels) + 1)
    sums = np.bincount(flat, weights=confidence.ravel(), minlength=len(labels) + 1)
    kept = np.flatnonzero(areas[1:] >= min_area) + 1
    scores = sums[kept] / areas[kept]
    order = np.argsort(-scores, kind="stable")[:max_detections]
    kept, scores = kept[order], scores[order]
    spans = ndimage.find_objects(ids)
    boxes = [[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in (spans[k - 1] for k in kept)]
    device = probabilities.device
    kept_ids = torch.from_numpy(kept.astype(np.int32)).to(device)
    inside = torch.from_numpy(ids).to(device)[None] == kept_ids[:, None, None]
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32, device=device).reshape(-1, 4),
        "labels": torch.tensor([labels[k - 1] for k in kept], dtype=torch.int64, device=device),
        "scores": torch.from_numpy(scores.astype(np.float32)).to(device),
        "masks": (inside * top[None])[:, None],
    }
