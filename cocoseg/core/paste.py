"""Paste Mask R-CNN's 28x28 mask probabilities into the image, all detections at once.

torchvision's `paste_masks_in_image` pastes one detection at a time (~13 host syncs per mask):
most of the model's GPU time at 100 detections. `paste_masks` batches groups of masks with one
sync per image, keeping torchvision's padding and box expansion, and computes for the pixels in
each box what `F.interpolate(align_corners=False)` gives: its weights, order of operations and
fused multiply-adds (emulated in float64). Values match but for rare rounding ties; thresholded
masks match. `BatchedPasteTransform` is torchvision's transform with this paste.
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

CHUNK_BYTES = 128 * 2**20  # scratch per step: memory stays flat however many masks
SCRATCH_BYTES = 96  # per pasted pixel: indices, float32 and float64 intermediates
PASTE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# PyTorch's CPU bilinear kernel sends outputs with h + w <= 128 to its channels-last kernel
# (four taps at once, float32 weights); larger ones to its generic kernel (along x, then y;
# weights stored in the input dtype). CUDA's kernel, as its source reads, goes along x then y
# with float32 weights (tests/test_paste.py checks that where a GPU is).
CPU_FOUR_TAP_MAX = 128


def batched_paste_supported(masks: Tensor) -> bool:
    """Exact on CPU and CUDA (float64 scratch) for the dtypes Mask R-CNN's head gives."""
    return masks.dtype in PASTE_DTYPES and masks.device.type in ("cpu", "cuda")


def paste_masks(
    masks: Tensor, boxes: Tensor, image_shape: tuple[int, int], padding: int = 1
) -> Tensor:
    """(N, 1, M, M) mask probabilities in their (N, 4) xyxy boxes as (N, 1, H, W) image masks:
    torchvision's `paste_masks_in_image` result and dtype, zero outside the boxes."""
    height, width = image_shape
    out = masks.new_zeros((masks.shape[0], 1, height, width))
    if masks.shape[0] == 0:
        return out
    padded, scale = expand_masks(masks, padding=padding)
    int_boxes = expand_boxes(boxes, scale).to(dtype=torch.int64)
    regions = pasted_regions(int_boxes, height, width)
    four_tap = uses_four_tap_kernel(int_boxes, masks.device)
    sizes = torch.stack([regions[:, 2], regions[:, 3], four_tap.to(torch.int64)])
    widths, heights, four_taps = sizes.tolist()  # the one device-to-host sync
    for group in mask_groups(widths, heights, four_taps, padded.shape[-1]):
        index = torch.tensor(group, device=masks.device)
        counts = [sum(widths[m] for m in group), sum(heights[m] for m in group),
                  sum(widths[m] * heights[m] for m in group)]  # fmt: skip
        _paste_group(
            padded[index, 0], int_boxes[index], regions[index], index, out.view(-1),
            (height, width), counts, four_tap=bool(four_taps[group[0]]),
        )  # fmt: skip
    return out


def pasted_regions(int_boxes: Tensor, height: int, width: int) -> Tensor:
    """(N, 4) x, y, width, height of the part of each integer box inside the image (torchvision
    writes box columns x0..x1 and rows y0..y1, inclusive, that lie in it)."""
    x0, y0, x1, y1 = int_boxes.clamp(min=0).unbind(1)
    x0, x1 = x0.clamp(max=width), (x1 + 1).clamp(max=width)
    y0, y1 = y0.clamp(max=height), (y1 + 1).clamp(max=height)
    return torch.stack([x0, y0, (x1 - x0).clamp(min=0), (y1 - y0).clamp(min=0)], dim=1)


def box_sizes(int_boxes: Tensor) -> tuple[Tensor, Tensor]:
    """Width and height torchvision interpolates each mask to (at least 1)."""
    widths = (int_boxes[:, 2] - int_boxes[:, 0] + 1).clamp(min=1)
    return widths, (int_boxes[:, 3] - int_boxes[:, 1] + 1).clamp(min=1)


def uses_four_tap_kernel(int_boxes: Tensor, device: torch.device) -> Tensor:
    """Per mask: whether PyTorch interpolates it with the CPU's small-output kernel."""
    widths, heights = box_sizes(int_boxes)
    return (widths + heights <= CPU_FOUR_TAP_MAX) & (device.type == "cpu")


def mask_groups(
    widths: list[int],
    heights: list[int],
    four_taps: list[int],
    mask_size: int,
    budget: int = CHUNK_BYTES,
) -> list[list[int]]:
    """Masks that paste something, grouped by kernel, each group within `budget` of scratch
    (which grows with pixels and box columns); a mask over the budget alone is a group."""
    pasting = [m for m, (w, h) in enumerate(zip(widths, heights, strict=True)) if w and h]
    groups: list[list[int]] = []
    used = 0
    for m in sorted(pasting, key=four_taps.__getitem__):
        scratch = widths[m] * (heights[m] + mask_size) * SCRATCH_BYTES
        apart = not groups or four_taps[m] != four_taps[groups[-1][0]]
        if apart or used + scratch > budget:
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
    *,
    four_tap: bool,
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
    stored = padded.dtype if padded.device.type == "cpu" and not four_tap else torch.float32

    column_mask, column_x = _spans(widths, x0, n_columns)
    x_offset = column_x - int_boxes[column_mask, 0]
    x_lo, x_hi, wx_lo, wx_hi = kernel_taps(x_offset, box_w[column_mask], size, stored)
    by_column = padded.float().transpose(1, 2).contiguous()  # (masks, x, y)
    at_lo, at_hi = by_column[column_mask, x_lo], by_column[column_mask, x_hi]  # (items, S)

    row_mask, row_y = _spans(heights, y0, n_rows)
    y_offset = row_y - int_boxes[row_mask, 1]
    y_lo, y_hi, wy_lo, wy_hi = kernel_taps(y_offset, box_h[row_mask], size, stored)
    row_width = widths[row_mask]
    first_pixel = torch.cumsum(row_width, 0) - row_width
    # Pixel p of row r is column item first_item[r] + (p - first_pixel[r]), and it lands at
    # image_row[r] * width + x0 + (p - first_pixel[r]): per row, a base plus p.
    item_base = (torch.cumsum(widths, 0) - widths)[row_mask] - first_pixel
    target_base = (index[row_mask] * height + row_y) * width + x0[row_mask] - first_pixel
    per_row = torch.stack([item_base * size + y_lo, y_hi - y_lo, target_base, item_base], 1)
    pixel_row = torch.repeat_interleave(
        torch.arange(n_rows, device=device), row_width, output_size=n_pixels
    )
    pixel = torch.arange(n_pixels, device=device)
    lo_base, step, target, item = per_row.index_select(0, pixel_row).unbind(1)
    lo = lo_base + pixel * size  # in (items * S,): column item, then mask row
    hi = lo + step
    w_lo, w_hi = torch.stack([wy_lo, wy_hi], 1).index_select(0, pixel_row).unbind(1)
    if four_tap:
        at_lo, at_hi = at_lo.reshape(-1), at_hi.reshape(-1)
        item = item + pixel
        x_w_lo, x_w_hi = wx_lo.index_select(0, item), wx_hi.index_select(0, item)
        pasted = four_tap_interpolation(
            tuple(at.index_select(0, tap) for tap in (lo, hi) for at in (at_lo, at_hi)),
            (w_lo * x_w_lo, w_lo * x_w_hi, w_hi * x_w_lo, w_hi * x_w_hi),
        )
    else:
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


def kernel_taps(offsets: Tensor, sizes: Tensor, in_size: int, stored: torch.dtype) -> tuple:
    """`interpolation_taps` with weights as the kernel stores them, in `stored`: PyTorch's generic
    CPU kernel keeps the upper weight in the input dtype and the lower as one minus it, rounded."""
    lo, hi, weight_lo, weight_hi = interpolation_taps(offsets, sizes, in_size)
    if stored == torch.float32:
        return lo, hi, weight_lo, weight_hi
    weight_hi = weight_hi.to(stored).to(torch.float32)
    return lo, hi, (1 - weight_hi).to(stored).to(torch.float32), weight_hi


def fma32(x: Tensor, y: Tensor, addend: Tensor) -> Tensor:
    """x * y + addend rounded to float32 as a fused multiply-add does: the product is exact in
    float64; rounding the sum twice (float64, float32) differs from once only in rare ties."""
    return torch.addcmul(addend.to(torch.float64), x.to(torch.float64), y.to(torch.float64)).float()


def four_tap_interpolation(values: tuple[Tensor, ...], weights: tuple[Tensor, ...]) -> Tensor:
    """v00 * w00 + v01 * w01 + v10 * w10 + v11 * w11 as the CPU's channels-last kernel rounds it:
    fma(v00, w00, v01 * w01), then the other two taps fused in turn."""
    (v00, v01, v10, v11), (w00, w01, w10, w11) = values, weights
    return fma32(v11, w11, fma32(v10, w10, fma32(v00, w00, v01 * w01)))


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
                masks = pred["masks"]
                paste = paste_masks if batched_paste_supported(masks) else paste_masks_in_image
                pred["masks"] = paste(masks, pred["boxes"], original)
            if "keypoints" in pred:
                pred["keypoints"] = resize_keypoints(pred["keypoints"], shape, original)
        return result
