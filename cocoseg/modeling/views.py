"""The views of each image inference runs the model on: the image alone, or with its tiles
(cocoseg.modeling.slicing) and its TTA passes (cocoseg.modeling.tta), merged back to one set of
detections per image in the arch contract (cocoseg.modeling.arch), so they serve every arch.

With either on, images go one at a time: an image's views share forwards (at most `batch_size`
images each), and only that image's views' detections are held until its merge.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from cocoseg.common.errors import ParamError
from cocoseg.common.params import EvaluateParams, InferenceParams
from cocoseg.modeling.slicing import image_windows, merge_windows, tile_windows
from cocoseg.modeling.tta import model_resize, tta_detections


@dataclass(frozen=True)
class Views:
    """Sliced inference and TTA as a params section sets them (`section` names it in errors)."""

    slice_size: int = 0
    slice_overlap: float = 0.2
    tta: bool = False
    tta_scales: tuple[int, ...] = ()
    section: str = "evaluate"

    @classmethod
    def of(cls, settings: InferenceParams) -> Views:
        """The views `settings` ask for."""
        return cls(
            settings.slice_size, settings.slice_overlap, settings.tta, tuple(settings.tta_scales),
            "evaluate" if isinstance(settings, EvaluateParams) else "predict",
        )  # fmt: skip

    @property
    def plain(self) -> bool:
        """The image alone: no tiles, no TTA."""
        return not (self.slice_size or self.tta)

    def check(self, model: nn.Module, source: str) -> None:
        """Refuse in one line what this model (loaded from `source`) cannot do: tiles wider than
        its resize's max_size (it would shrink them: slicing is there to enlarge), TTA sizes
        without a resize it lets be set."""
        resize = model_resize(model)
        if self.slice_size and resize and self.slice_size > resize[1]:
            raise ParamError(
                f"{self.section}.slice_size = {self.slice_size} is over the max_size "
                f"{resize[1]} of {source}: its resize would shrink each tile; choose "
                f"{resize[1]} or less"
            )
        if self.tta_scales and resize is None:
            raise ParamError(
                f"{self.section}.tta_scales = {list(self.tta_scales)} needs a model whose resize "
                f"can be set (transform.min_size, max_size); {source} holds a "
                f"{type(model).__name__} without one: use tta_scales: [] (flip only)"
            )

    def describe(self) -> str:
        """The views in words, for the log."""
        parts = []
        if self.slice_size:
            parts.append(
                f"{self.slice_size} px tiles overlapping {self.slice_overlap:g} and the whole image"
            )
        if self.tta:
            sizes = f"sizes {list(self.tta_scales)}" if self.tta_scales else "the model's size"
            parts.append(f"TTA: each as is and mirrored, at {sizes}")
        return "; ".join(parts) or "the whole image"

    def untiled(self, height: int, width: int) -> bool:
        """Slicing is on but an image of this size fits in one tile: it runs whole only."""
        return bool(self.slice_size) and not tile_windows(
            height, width, self.slice_size, self.slice_overlap
        )


PLAIN = Views()  # the image alone


def detect(
    model: nn.Module, images: list[Tensor], views: Views, batch_size: int
) -> list[dict[str, Tensor]]:
    """The model's detections on float CHW images, over their `views`."""
    if views.plain:
        return model(images)
    return [detect_image(model, image, views, batch_size) for image in images]


def detect_image(
    model: nn.Module, image: Tensor, views: Views, batch_size: int
) -> dict[str, Tensor]:
    """One image's detections: each window's (TTA-merged when on), then merged across windows."""
    windows = image_windows(*image.shape[-2:], views.slice_size, views.slice_overlap)
    crops = [image[:, y0:y1, x0:x1] for x0, y0, x1, y1 in windows]
    if views.tta:
        found = [tta_detections(model, crop, views.tta_scales, batch_size) for crop in crops]
    else:
        found = [
            detections
            for start in range(0, len(crops), batch_size)
            for detections in model(crops[start : start + batch_size])
        ]
    return found[0] if len(windows) == 1 else merge_windows(found, windows)
