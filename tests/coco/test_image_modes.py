"""Every image mode reads as it looks: 16/32-bit gray, float, transparency, palette, CMYK.

Each mode is checked against a reference conversion written out here with numpy, and then
through each place that reads images: training's dataset, inference's loader and predict's
folder mode (its overlays show the image as read).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cocoseg.coco.images import BACKGROUND, read_rgb
from cocoseg.common.io import write_json
from cocoseg.modeling.inference import ImageFiles
from cocoseg.train.dataset import coco_dataset
from cocoseg.train.transforms import build_transforms

RNG = np.random.default_rng(0)
GRAY8 = RNG.integers(0, 256, (24, 32), dtype=np.uint8)  # H=24, W=32
RGB8 = RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8)
ALPHA = RNG.integers(0, 256, (24, 32), dtype=np.uint8)


def gray3(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


def over_background(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Alpha compositing onto BACKGROUND, the textbook formula."""
    a = alpha[..., None].astype(np.float64) / 255
    return np.round(rgb * a + np.asarray(BACKGROUND) * (1 - a)).astype(np.uint8)


def save_16bit(path: Path, values: np.ndarray, mode: str) -> None:
    """A 16-bit grayscale PNG (stored big-endian) or TIFF of the given values."""
    dtype = ">u2" if mode == "I;16B" else "<u2"
    Image.frombuffer(mode, values.shape[::-1], values.astype(dtype).tobytes(), "raw", mode, 0, 1
                     ).save(path)  # fmt: skip


def cases(folder: Path) -> dict[str, tuple[Path, np.ndarray]]:
    """name -> (file, the RGB a person sees), one per mode."""
    out: dict[str, tuple[Path, np.ndarray]] = {}

    def add(name: str, image: Image.Image, expected: np.ndarray, suffix: str = ".png") -> None:
        path = folder / f"{name}{suffix}"
        image.save(path)
        out[name] = (path, expected)

    path = folder / "gray16.png"  # the 8-bit image scaled to 16 bits: x * 257
    save_16bit(path, GRAY8.astype(np.uint32) * 257, "I;16")
    out["I;16"] = (path, gray3(GRAY8))
    path = folder / "gray16b.tif"
    save_16bit(path, GRAY8.astype(np.uint32) * 257, "I;16B")
    out["I;16B"] = (path, gray3(GRAY8))
    wide = GRAY8.astype(np.int32) * 1000 - 50_000  # 32-bit ints beyond 16 bits: their range
    span = (wide - wide.min()) / (wide.max() - wide.min())
    add("I", Image.fromarray(wide, "I"), gray3(np.round(span * 255).astype(np.uint8)), ".tif")
    unit = GRAY8.astype(np.float32) / 255  # floats in [0, 1]
    add("F", Image.fromarray(unit, "F"), gray3(GRAY8), ".tif")
    add("RGBA", Image.fromarray(np.dstack([RGB8, ALPHA]), "RGBA"), over_background(RGB8, ALPHA))
    gray_alpha = Image.fromarray(np.dstack([GRAY8, ALPHA]), "LA")
    add("LA", gray_alpha, over_background(gray3(GRAY8), ALPHA))
    palette = Image.fromarray(RGB8).quantize(16)
    palette.info["transparency"] = 3
    index = np.asarray(palette)
    colours = np.asarray(palette.getpalette()[: 3 * 16], dtype=np.uint8).reshape(16, 3)[index]
    add("P+transparency", palette, over_background(colours, np.where(index == 3, 0, 255)))
    cmyk = RNG.integers(0, 256, (24, 32, 4), dtype=np.uint8)
    c, k = cmyk[..., :3].astype(np.float64), cmyk[..., 3:].astype(np.float64)
    expected = np.round((255 - c) * (255 - k) / 255).astype(np.uint8)  # the standard formula
    add("CMYK", Image.fromarray(cmyk, "CMYK"), expected, ".tif")
    add("L", Image.fromarray(GRAY8, "L"), gray3(GRAY8))
    return out


@pytest.fixture(scope="module")
def mode_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, np.ndarray]]:
    return cases(tmp_path_factory.mktemp("modes"))


def assert_close(got: np.ndarray, expected: np.ndarray, name: str) -> None:
    assert got.shape == expected.shape and got.dtype == np.uint8, name
    diff = np.abs(got.astype(int) - expected.astype(int))
    assert diff.max() <= 1, f"{name}: off by up to {diff.max()}"


def test_the_16_bit_gray_image_is_not_read_as_white(mode_files):
    path, expected = mode_files["I;16"]
    with Image.open(path) as im:
        assert im.mode.startswith("I")
        assert np.asarray(im.convert("RGB")).mean() > 250  # PIL's own conversion: all white
    assert abs(read_rgb(path).mean() - expected.mean()) < 0.5


@pytest.mark.parametrize(
    "mode", ["I;16", "I;16B", "I", "F", "RGBA", "LA", "P+transparency", "CMYK", "L"]
)
def test_every_mode_reads_like_its_reference_conversion(mode_files, mode):
    path, expected = mode_files[mode]
    assert_close(read_rgb(path), expected, mode)


def test_training_and_inference_read_every_mode_the_same_way(mode_files, tmp_path):
    """The train dataset (CocoDetection) and inference's loader give the reference pixels."""
    images = [
        {"id": i, "file_name": path.name, "width": 32, "height": 24}
        for i, (path, _) in enumerate(mode_files.values(), start=1)
    ]
    subset = tmp_path / "subset"
    for path, _ in mode_files.values():
        target = subset / "images" / "train" / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    write_json(
        subset / "annotations" / "train.json",
        {"images": images, "annotations": [], "categories": [{"id": 1, "name": "person"}]},
    )
    dataset = coco_dataset(subset, "train", build_transforms("none"))
    folder = subset / "images" / "train"
    loader = ImageFiles([(i["id"], folder / i["file_name"], (32, 24)) for i in images])
    for index, (mode, (_, expected)) in enumerate(mode_files.items()):
        image, _ = dataset[index]  # float in [0, 1], CHW
        trained = torch.round(image * 255).to(torch.uint8).permute(1, 2, 0).numpy()
        assert_close(trained, expected, f"training, {mode}")
        _, inferred = loader[index]  # uint8 CHW
        assert_close(inferred.permute(1, 2, 0).numpy(), expected, f"inference, {mode}")
