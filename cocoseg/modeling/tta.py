"""Test-time augmentation: the model on the image and its horizontal mirror, at each TTA size
(the shorter side a pass resizes to: `resized_to`), merged as detectron2's
`GeneralizedRCNNWithTTA` does: every pass's boxes in image coordinates, class-wise NMS at IoU 0.5
(its NMS_THRESH_TEST), the best `MAX_DETECTIONS` kept with their own box, label and score; each
kept mask the mean of the passes' masks for it.

detectron2 gets one mask per pass for every kept box by running the mask head again on the merged
boxes; that needs the model's internals (RoI heads), which not every arch has (DeepLabv3+ takes
its instances from a semantic map). Here only the output contract is used (cocoseg.modeling.arch):
a pass's mask for a kept detection is that of its detection of the same class with the highest
box IoU, if at least 0.5 (the detection NMS merged into the kept one), and a kept mask is the mean
over the passes that have one: a pass that missed the object neither adds nor dilutes it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_iou

from cocoseg.modeling.arch import MAX_DETECTIONS

NMS_IOU = 0.5  # detectron2's MODEL.ROI_HEADS.NMS_THRESH_TEST, torchvision's box_nms_thresh
Detections = dict[str, Tensor]


def model_resize(model: nn.Module) -> tuple[int, int] | None:
    """(min_size, max_size) the model resizes images to in eval, where it says (its `transform`
    has them, as torchvision's GeneralizedRCNNTransform does); None where it does not."""
    transform = getattr(model, "transform", None)
    min_size, max_size = getattr(transform, "min_size", None), getattr(transform, "max_size", None)
    if min_size is None or max_size is None:
        return None
    return int(min_size[-1] if isinstance(min_size, Sequence) else min_size), int(max_size)


@contextlib.contextmanager
def resized_to(model: nn.Module, size: int | None) -> Iterator[None]:
    """The model resizing images' shorter side to `size` (`max_size` scaled alike) for the
    block; None leaves it as it is."""
    if size is None:
        yield
        return
    transform = model.transform
    saved = transform.min_size, transform.max_size
    min_size, max_size = model_resize(model)
    transform.min_size, transform.max_size = (size,), round(max_size * size / min_size)
    try:
        yield
    finally:
        transform.min_size, transform.max_size = saved


def tta_detections(
    model: nn.Module, image: Tensor, sizes: Sequence[int], batch_size: int
) -> Detections:
    """One float CHW image's detections merged over its passes: it and its mirror at each of
    `sizes` (the model's own when empty), at most `batch_size` images per forward."""
    passes: list[tuple[Detections, bool]] = []
    mirrored = image.flip(-1)
    for size in sizes or [None]:
        with resized_to(model, size):
            for start in range(0, 2, batch_size):
                flips = [False, True][start : start + batch_size]
                found = model([mirrored if flip else image for flip in flips])
                passes += zip(found, flips, strict=True)
    return merge_passes(passes, image.shape[-1])


def unmirrored_boxes(boxes: Tensor, width: int) -> Tensor:
    """xyxy boxes found on the mirrored image, in the image's coordinates (x -> width - x),
    within 0..width (a model's x1 resized back can pass the width by a float32 rounding)."""
    x0, x1 = (width - boxes[:, 2]).clamp(min=0), (width - boxes[:, 0]).clamp(max=width)
    return torch.stack([x0, boxes[:, 1], x1, boxes[:, 3]], 1)


def merge_passes(
    passes: Sequence[tuple[Detections, bool]], width: int, limit: int = MAX_DETECTIONS
) -> Detections:
    """The merge of (detections, found on the mirror) passes of one image `width` wide (see the
    module's docstring); masks come back float32."""
    boxes = [unmirrored_boxes(d["boxes"], width) if flip else d["boxes"] for d, flip in passes]
    scores = torch.cat([d["scores"] for d, _ in passes])
    labels = torch.cat([d["labels"] for d, _ in passes])
    every = torch.cat(boxes)
    keep = batched_nms(every.float(), scores.float(), labels, NMS_IOU)[:limit]
    kept_boxes, kept_labels = every[keep], labels[keep]
    height = passes[0][0]["masks"].shape[-2]
    masks = torch.zeros((len(keep), 1, height, width), device=every.device)
    found = torch.zeros(len(keep), device=every.device)
    for (detections, flip), pass_boxes in zip(passes, boxes, strict=True):
        if not len(keep) or not len(pass_boxes):
            continue
        iou = box_iou(kept_boxes.float(), pass_boxes.float())
        iou[kept_labels[:, None] != detections["labels"][None, :]] = 0
        best, match = iou.max(dim=1)
        rows = torch.nonzero(best >= NMS_IOU).squeeze(1)
        pass_masks = detections["masks"][match[rows]].float()
        masks.index_add_(0, rows, pass_masks.flip(-1) if flip else pass_masks)
        found.index_add_(0, rows, torch.ones_like(rows, dtype=found.dtype))
    return {
        "boxes": kept_boxes,
        "labels": kept_labels,
        "scores": scores[keep],
        "masks": masks.div_(found.clamp(min=1)[:, None, None, None]),
    }
