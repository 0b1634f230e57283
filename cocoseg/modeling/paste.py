"""Paste Mask R-CNN's 28x28 mask probabilities into the image, all detections at once.

torchvision's `paste_masks_in_image` allocates a zeroed image per detection, stacks them and
reads each box from the device (~13 host syncs per mask on a GPU). `paste_masks` writes into
one output with one sync per image. On the CPU it resizes each box with the same
`F.interpolate` call (bit-identical); on a GPU it pastes groups of masks at once, computing
what CUDA's bilinear kernel does for the pixels in each box (its weights and fused
multiply-adds, emulated in float64), so thresholded masks match but for rare rounding ties.
"""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor
from torchvision.models.detection.roi_heads import expand_boxes, expand_masks, paste_masks_in_image
from torchvision.models.detection.transform import (
    GeneralizedRCNNTransform,
    resize_boxes,
    resize_keypoints,
)

from cocoseg.common.io import MB

CHUNK_BYTES = 128 * MB  # scratch per step: memory stays flat however many masks
SCRATCH_BYTES = 96  # per pasted pixel: indices, float32 and float64 intermediates
PASTE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# What `F.interpolate(mode="bilinear", align_corners=False)` calls, minus its ~15 us of checks.
_upsample_bilinear = torch._C._nn.upsample_bilinear2d


def paste_masks(
    masks: Tensor,
    boxes: Tensor,
    image_shape: tuple[int, int],
    batched: bool | None = None,
) -> Tensor:
    """(N, 1, M, M) mask probabilities in their (N, 4) xyxy boxes as (N, 1, H, W) image masks:
    torchvision's `paste_masks_in_image` result and dtype, zero outside the boxes. `batched`:
    CUDA's kernel emulated for groups of masks (the default off the CPU)."""
    height, width = image_shape
    out = masks.new_zeros((masks.shape[0], 1, height, width))
    if masks.shape[0] == 0:
        return out
    padded, scale = expand_masks(masks, padding=1)  # paste_masks_in_image's padding
    int_boxes = expand_boxes(boxes, scale).to(dtype=torch.int64)
    regions = pasted_regions(int_boxes, height, width)
    if not (masks.device.type != "cpu" if batched is None else batched):
        _paste_each(padded, int_boxes, regions, out)
        return out
    widths, heights = regions[:, 2:].T.tolist()  # the one device-to-host sync
    for group in mask_groups(widths, heights, padded.shape[-1]):
        index = torch.tensor(group, device=masks.device)
        counts = [sum(widths[m] for m in group), sum(heights[m] for m in group),
                  sum(widths[m] * heights[m] for m in group)]  # fmt: skip
        _paste_group(
            padded[index, 0], int_boxes[index], regions[index], index, out.view(-1),
            (height, width), counts,
        )  # fmt: skip
    return out


def _paste_each(padded: Tensor, int_boxes: Tensor, regions: Tensor, out: Tensor) -> None:
    """Each mask resized to its box by the kernel `F.interpolate` calls, its part inside the
    image written into `out`: torchvision's values without a zeroed image per mask. A box
    wholly inside is resized straight into `out`; strided views skip Python indexing."""
    sizes = torch.stack(box_sizes(int_boxes), dim=1)
    rows = torch.cat([regions, int_boxes[:, :2], sizes], dim=1).tolist()
    height, width = out.shape[-2:]
    plane = height * width
    for n, (x0, y0, w, h, box_x, box_y, box_w, box_h) in enumerate(rows):
        if not (w and h):
            continue
        target = out.as_strided((1, 1, h, w), (plane, plane, width, 1), n * plane + y0 * width + x0)
        mask = padded[n : n + 1]
        if (w, h) == (box_w, box_h):
            _upsample_bilinear(mask, (box_h, box_w), False, None, None, out=target)
        else:
            resized = _upsample_bilinear(mask, (box_h, box_w), False, None)
            offset = (y0 - box_y) * box_w + x0 - box_x
            target.copy_(resized.as_strided((1, 1, h, w), (0, 0, box_w, 1), offset))


def pasted_regions(int_boxes: Tensor, height: int, width: int) -> Tensor:
    """(N, 4) x, y, width, height of the part of each integer box inside the image (torchvision
    writes box columns x0..x1 and rows y0..y1, inclusive, that lie in it)."""
    limits = int_boxes.new_tensor([width, height])
    starts = int_boxes[:, :2].clamp(min=0).minimum(limits)
    ends = (int_boxes[:, 2:] + 1).minimum(limits)
    return torch.cat([starts, (ends - starts).clamp(min=0)], dim=1)


def box_sizes(int_boxes: Tensor) -> tuple[Tensor, Tensor]:
    """Width and height torchvision interpolates each mask to (at least 1)."""
    widths = (int_boxes[:, 2] - int_boxes[:, 0] + 1).clamp(min=1)
    return widths, (int_boxes[:, 3] - int_boxes[:, 1] + 1).clamp(min=1)


def mask_groups(
    widths: list[int], heights: list[int], mask_size: int, budget: int = CHUNK_BYTES
) -> list[list[int]]:
    """Masks that paste something, grouped within `budget` of scratch (which grows with pixels
    and box columns); a mask over the budget alone is a group."""
    groups: list[list[int]] = []
    used = budget
    for m, (width, height) in enumerate(zip(widths, heights, strict=True)):
        if not (width and height):
            continue
        scratch = width * (height + mask_size) * SCRATCH_BYTES
        if used + scratch > budget:
            groups.append([])
            used = 0
        groups[-1].append(m)
        used += scratch
    return groups


def _paste_group(
    padded: Tensor,
    int_boxes: Tensor,
    regions: Tensor,
    index: Tensor,
    flat_out: Tensor,
    image_shape: tuple[int, int],
    counts: list[int],
) -> None:
    """Write a group of masks into `flat_out`, the output viewed as one dimension.

    Along x: each box column of each mask ("column items") takes the two taps of every padded
    mask row. Along y: each pixel of each box row combines two rows of its column item, as
    the kernel does. `counts`: the group's column items, box rows and pixels.
    """
    device, size = padded.device, padded.shape[-1]
    height, width = image_shape
    n_columns, n_rows, n_pixels = counts
    x0, y0, widths, heights = regions.unbind(1)
    box_w, box_h = box_sizes(int_boxes)

    column_mask, column_x = _spans(widths, x0, n_columns)
    x_offset = column_x - int_boxes[column_mask, 0]
    x_lo, x_hi, wx_lo, wx_hi = interpolation_taps(x_offset, box_w[column_mask], size)
    by_column = padded.float().transpose(1, 2).contiguous()  # (masks, x, y)
    at_lo, at_hi = by_column[column_mask, x_lo], by_column[column_mask, x_hi]  # (items, S)

    row_mask, row_y = _spans(heights, y0, n_rows)
    y_offset = row_y - int_boxes[row_mask, 1]
    y_lo, y_hi, wy_lo, wy_hi = interpolation_taps(y_offset, box_h[row_mask], size)
    row_width = widths[row_mask]
    first_pixel = torch.cumsum(row_width, 0) - row_width
    # Pixel p of row r is column item first_item[r] + (p - first_pixel[r]), and it lands at
    # image_row[r] * width + x0 + (p - first_pixel[r]): per row, a base plus p.
    item_base = (torch.cumsum(widths, 0) - widths)[row_mask] - first_pixel
    target_base = (index[row_mask] * height + row_y) * width + x0[row_mask] - first_pixel
    per_row = torch.stack([item_base * size + y_lo, y_hi - y_lo, target_base], 1)
    pixel_row = torch.repeat_interleave(
        torch.arange(n_rows, device=device), row_width, output_size=n_pixels
    )
    pixel = torch.arange(n_pixels, device=device)
    lo_base, step, target = per_row.index_select(0, pixel_row).unbind(1)
    lo = lo_base + pixel * size  # in (items * S,): column item, then mask row
    hi = lo + step
    w_lo, w_hi = torch.stack([wy_lo, wy_hi], 1).index_select(0, pixel_row).unbind(1)
    across = fma32(at_lo, wx_lo[:, None], at_hi * wx_hi[:, None]).reshape(-1)
    pasted = fma32(across.index_select(0, lo), w_lo, across.index_select(0, hi) * w_hi)
    flat_out.put_(target + pixel, pasted.to(flat_out.dtype))


def _spans(lengths: Tensor, starts: Tensor, total: int) -> tuple[Tensor, Tensor]:
    """For spans of `lengths` from `starts` (`total` elements): each element's span and value."""
    owner = torch.repeat_interleave(
        torch.arange(len(lengths), device=lengths.device), lengths, output_size=total
    )
    first = torch.cumsum(lengths, 0) - lengths
    return owner, torch.arange(total, device=lengths.device) - first[owner] + starts[owner]


def interpolation_taps(offsets: Tensor, sizes: Tensor, in_size: int) -> tuple[Tensor, ...]:
    """Bilinear taps of `F.interpolate(align_corners=False)` from `in_size` to `sizes`: for output
    positions `offsets`, the two source indices and float32 weights as PyTorch's kernels compute
    them (float32 scale, source index by a fused multiply-add, `guard_index_and_lambda` clamps)."""
    scale = torch.full_like(sizes, in_size, dtype=torch.float32) / sizes.to(torch.float32)
    centre = offsets.to(torch.float64) + 0.5
    source = (centre * scale.to(torch.float64) - 0.5).to(torch.float32).clamp(min=0)
    lo = source.floor().clamp(max=in_size - 1)
    weight_hi = (source - lo).clamp(0, 1)
    lo = lo.to(torch.int64)
    hi = torch.where(lo < in_size - 1, lo + 1, lo)
    return lo, hi, 1 - weight_hi, weight_hi


def fma32(x: Tensor, y: Tensor, addend: Tensor) -> Tensor:
    """x * y + addend rounded to float32 as a fused multiply-add does: the product is exact in
    float64; rounding the sum twice (float64, float32) differs from once only in rare ties."""
    return torch.addcmul(addend.to(torch.float64), x.to(torch.float64), y.to(torch.float64)).float()


class BatchedPasteTransform(GeneralizedRCNNTransform):
    """torchvision's GeneralizedRCNNTransform whose postprocess pastes all masks at once."""

    @classmethod
    def like(cls, transform: GeneralizedRCNNTransform) -> BatchedPasteTransform:
        """The same resize, normalisation and mode as `transform`."""
        like = cls(
            min_size=transform.min_size,
            max_size=transform.max_size,
            image_mean=transform.image_mean,
            image_std=transform.image_std,
            size_divisible=transform.size_divisible,
            fixed_size=transform.fixed_size,
            _skip_resize=transform._skip_resize,
        )
        return like.train(transform.training)

    def postprocess(
        self,
        result: list[dict[str, Tensor]],
        image_shapes: list[tuple[int, int]],
        original_image_sizes: list[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """torchvision's postprocess (boxes and keypoints back to image size), batched paste."""
        if self.training or torchvision._is_tracing():
            return super().postprocess(result, image_shapes, original_image_sizes)
        for pred, shape, original in zip(result, image_shapes, original_image_sizes, strict=True):
            pred["boxes"] = resize_boxes(pred["boxes"], shape, original)
            if "masks" in pred:
                masks = pred["masks"]  # the dtypes and devices whose kernels paste_masks follows
                ours = masks.dtype in PASTE_DTYPES and masks.device.type in ("cpu", "cuda")
                paste = paste_masks if ours else paste_masks_in_image
                pred["masks"] = paste(masks, pred["boxes"], original)
            if "keypoints" in pred:
                pred["keypoints"] = resize_keypoints(pred["keypoints"], shape, original)
        return result
