"""A stand-in detector with known outputs, in the arch contract (cocoseg.modeling.arch).

Each 8-connected blob of a class colour is one detection: its box the blob's pixel bounds, its
mask exactly its pixels (probability 1), its score growing with its area. Like a real model it
sees the image at its resize (`transform.min_size`, `max_size`): a blob with fewer than
`min_pixels` pixels at that scale is not found, so a small object is missed on the whole image and
found on a tile the resize enlarges. Boxes and masks stay exact at the input's own resolution.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import Tensor, nn
from torch.nn import functional as F

# Class id -> RGB in [0, 1]: a pixel belongs to a class when every channel is within 0.25.
COLORS = {1: (1.0, 0.0, 0.0), 2: (0.0, 1.0, 0.0)}


def blobs(foreground: Tensor) -> list[Tensor]:
    """The 8-connected components of an (H, W) bool image, as bool masks, in raster order."""
    height, width = foreground.shape
    labels = torch.arange(1, height * width + 1, dtype=torch.float32).view(height, width)
    labels = labels * foreground
    while True:
        grown = F.max_pool2d(labels[None, None], 3, 1, 1)[0, 0] * foreground
        if torch.equal(grown, labels):
            break
        labels = grown
    return [labels == value for value in labels[foreground].unique().flip(0)]


class BlobDetector(nn.Module):
    """Blobs of `COLORS` as detections; `calls` records each forward's (min_size, image sizes)."""

    def __init__(self, min_size: int, max_size: int, min_pixels: int = 1) -> None:
        super().__init__()
        self.transform = SimpleNamespace(min_size=(min_size,), max_size=max_size)
        self.min_pixels = min_pixels
        self.calls: list[tuple[int, list[tuple[int, int]]]] = []

    def scale(self, height: int, width: int) -> float:
        """The factor torchvision's resize would apply to an image of this size."""
        size, limit = self.transform.min_size[-1], self.transform.max_size
        return min(size / min(height, width), limit / max(height, width))

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        self.calls.append((self.transform.min_size[-1], [tuple(i.shape[-2:]) for i in images]))
        return [self.detect(image) for image in images]

    def detect(self, image: Tensor) -> dict[str, Tensor]:
        """One image's blobs (class by class) as boxes, labels, scores, masks."""
        height, width = image.shape[-2:]
        seen = self.scale(height, width) ** 2
        found: list[tuple[int, Tensor]] = []
        for label, color in COLORS.items():
            near = (image - torch.tensor(color)[:, None, None]).abs().amax(0) <= 0.25
            found += [(label, b) for b in blobs(near) if b.sum() * seen >= self.min_pixels]
        masks = (
            torch.stack([b for _, b in found]).float() if found else torch.zeros(0, height, width)
        )
        boxes = [blob_box(b) for _, b in found]
        areas = torch.tensor([float(b.sum()) for _, b in found])
        return {
            "boxes": torch.tensor(boxes, dtype=torch.float32).view(-1, 4),
            "labels": torch.tensor([label for label, _ in found], dtype=torch.int64),
            "scores": areas / (areas + 100.0),
            "masks": masks[:, None],
        }


def blob_box(mask: Tensor) -> list[float]:
    """xyxy of a bool mask's pixels: the first pixel's corner to the last one's far corner."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def canvas(height: int, width: int) -> Tensor:
    """A grey float CHW image to paint blobs on."""
    return torch.full((3, height, width), 0.5)


def paint(image: Tensor, label: int, x0: int, y0: int, x1: int, y1: int) -> Tensor:
    """Fill image[y0:y1, x0:x1] with the colour of `label`; returns that region's mask."""
    image[:, y0:y1, x0:x1] = torch.tensor(COLORS[label])[:, None, None]
    mask = torch.zeros(image.shape[-2:], dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    return mask
