"""Sliced inference and TTA through the one inference path, for every arch the registry builds,
on the CPU (and CUDA where there is one): COCO results at the image's size, forwards of at most
batch_size images, bad values for the model in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from blobdetector import BlobDetector, canvas, paint
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from cocoseg.common.errors import ParamError
from cocoseg.common.params import EvaluateParams, PredictParams
from cocoseg.modeling.arch import MAX_DETECTIONS
from cocoseg.modeling.inference import predict_images, run_trained_model
from cocoseg.modeling.records import model_record
from cocoseg.modeling.registry import ARCHS, build_model
from cocoseg.modeling.slicing import image_windows
from cocoseg.modeling.tta import model_resize
from cocoseg.modeling.views import Views

CLASSES = ["person", "cat", "sports ball", "book"]
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")),
]


def noise_image(path: Path, width: int, height: int) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def coco_of(width: int, height: int) -> COCO:
    coco = COCO()
    categories = [{"id": k, "name": n} for k, n in enumerate(CLASSES, 1)]
    image = {"id": 1, "width": width, "height": height}
    coco.dataset = {"images": [image], "annotations": [], "categories": categories}
    coco.createIndex()
    return coco


def calibrated(model: torch.nn.Module) -> torch.nn.Module:
    """A random model in eval mode whose batch norms hold one noise image's statistics: with
    their initial ones a random ResNet-101's activations overflow and its RPN proposes nothing."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # a cumulative mean: after one batch, that batch's statistics
    body = getattr(model, "backbone", None) or model.net.encoder
    with torch.no_grad():
        body.train()(model.transform([torch.rand(3, 80, 112)])[0].tensors)
    return model.eval()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_slicing_and_tta_serve_every_arch(arch, device, tmp_path):
    torch.manual_seed(0)
    model = calibrated(build_model(arch, len(CLASSES) + 1, min_size=64, max_size=96)).to(device)
    if hasattr(model, "roi_heads"):  # a random model keeps its cap: 100 masks a view, ~5 s
        model.roi_heads.detections_per_img = 10  # of CPU each; the merge is tested elsewhere
        model.roi_heads.score_thresh = 0.0  # random weights: some archs score nothing above 0.05
    forwards: list[int] = []
    model.register_forward_pre_hook(lambda module, args: forwards.append(len(args[0])))
    width, height = 112, 80
    items = [(1, noise_image(tmp_path / "a.png", width, height), None)]
    views = Views(slice_size=64, slice_overlap=0.25, tta=True, tta_scales=(48,))
    results = predict_images(
        model,
        items,
        device=device,
        batch_size=2,
        num_workers=0,
        progress=False,
        views=views,
        mask_threshold=0.05,  # a random DeepLab's class probabilities stay under 0.5
    )
    windows = image_windows(height, width, 64, 0.25)
    assert len(windows) == 5  # the whole image and 2 x 2 tiles
    assert forwards == [2] * len(windows), "each window with its mirror, at the TTA size"
    assert model_resize(model) == (64, 96), "the model's own resize is back"
    assert 0 < len(results) <= MAX_DETECTIONS
    loaded = coco_of(width, height).loadRes(results)
    assert len(loaded.anns) == len(results)
    for r in results:
        x, y, w, h = r["bbox"]
        assert min(x, y) >= 0 and x + w <= width + 1e-3 and y + h <= height + 1e-3
        assert r["segmentation"]["size"] == [height, width]
    assert sum(mask_utils.area([r["segmentation"] for r in results])) > 0


def saved_model(path: Path) -> Path:
    torch.manual_seed(0)
    model = build_model("maskrcnn_resnet50_fpn", len(CLASSES) + 1, min_size=64, max_size=96)
    torch.save(model_record(model, CLASSES, "maskrcnn_resnet50_fpn", 64, 96, {}), path)
    return path


def test_tiles_over_the_models_max_size_are_refused_in_one_line(tmp_path):
    path = saved_model(tmp_path / "model.pt")
    items = [(1, noise_image(tmp_path / "a.png", 300, 200), None)]
    for settings, key in ((EvaluateParams(slice_size=128, device="cpu"), "evaluate"),
                          (PredictParams(slice_size=97, device="cpu"), "predict")):  # fmt: skip
        size = settings.slice_size
        with pytest.raises(ParamError) as err:
            run_trained_model(path, items, settings, progress=False)
        assert str(err.value) == (
            f"{key}.slice_size = {size} is over the max_size 96 of {path}: its resize would "
            "shrink each tile; choose 96 or less"
        )


def test_the_views_are_read_from_either_section():
    settings = PredictParams(slice_size=512, slice_overlap=0.1, tta=True, tta_scales=[600, 800])
    assert Views.of(settings) == Views(512, 0.1, True, (600, 800), "predict")
    assert Views.of(EvaluateParams()).plain and Views.of(EvaluateParams()).section == "evaluate"
    assert Views.of(settings).describe() == (
        "512 px tiles overlapping 0.1 and the whole image; TTA: each as is and mirrored, at sizes "
        "[600, 800]"
    )


def test_sliced_results_are_exact_coco_results_and_untiled_images_are_counted(tmp_path, caplog):
    """The stand-in detector's blobs, through tiles, the merge, the crops and RLE, come back
    as the painted pixels; an image no larger than a tile runs whole, and the log says so."""
    image = canvas(120, 150)
    cut = paint(image, 1, 50, 30, 90, 60)  # across the first tile's right edge (64)
    small = canvas(50, 60)
    paint(small, 2, 10, 10, 20, 30)
    items = []
    for k, pixels in enumerate((image, small), start=1):
        path = tmp_path / f"{k}.png"
        Image.fromarray((pixels * 255).round().byte().permute(1, 2, 0).numpy()).save(path)
        items.append((k, path, None))
    model = BlobDetector(min_size=64, max_size=150)
    with caplog.at_level("INFO", logger="cocoseg.modeling.inference"):
        results = predict_images(
            model, items, device="cpu", num_workers=0, progress=False,
            views=Views(slice_size=64, section="predict"),
        )  # fmt: skip
    assert [(r["image_id"], r["category_id"]) for r in results] == [(1, 1), (2, 2)]
    assert results[0]["bbox"] == [50, 30, 40, 30] and results[1]["bbox"] == [10, 10, 10, 20]
    assert np.array_equal(mask_utils.decode(results[0]["segmentation"]), cut.numpy())
    assert "1 of 2 images are no larger than predict.slice_size = 64" in caplog.text
