"""The ResNet-101 and Cascade entries: train a few steps, round-trip through model.pt (meta-device
rebuild), predict valid COCO results; start weights they have and the ones they refuse."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import synthcoco
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torchvision.models import ResNet101_Weights, resnet101
from torchvision.ops import FrozenBatchNorm2d

from cocoseg.coco.inputs import subset_images
from cocoseg.common.errors import ParamError
from cocoseg.common.io import atomic_write
from cocoseg.common.params import TrainParams, parse_params, to_dict
from cocoseg.modeling import weights as weights_mod
from cocoseg.modeling.inference import predict_images
from cocoseg.modeling.records import load_trained_model, model_record
from cocoseg.modeling.registry import ARCHS, arch_named
from cocoseg.modeling.weights import build_for_training, published
from cocoseg.train.dataset import class_names, coco_dataset, train_loader
from cocoseg.train.engine import make_optimizer, train_step, training_model
from cocoseg.train.runtime import Context
from cocoseg.train.trainlog import LOSS_PARTS
from cocoseg.train.transforms import build_transforms

R101_ARCHS = ["maskrcnn_resnet101_fpn", "cascade_maskrcnn_resnet101_fpn"]
CLASSES = ["person", "cat", "sports ball", "book"]
SMALL = {"min_size": 64, "max_size": 64}


@pytest.fixture(scope="module")
def subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthcoco.make_subset(
        tmp_path_factory.mktemp("subset"), n_train=2, n_val=2, n_test=0, size=(64, 64), seed=1
    )


# cascade_maskrcnn_resnet50_fpn runs the same path in tests/train/test_train_cascade.py (train).
# 32 RoIs per image: at most 8 positives each for the mask head, most of a 64 px step's time.
@pytest.mark.parametrize(
    "arch", [R101_ARCHS[0], pytest.param(R101_ARCHS[1], marks=pytest.mark.slow)]
)  # the cascade on ResNet-101 (~20 s here): both halves are tested alone, fast
def test_trains_round_trips_through_model_pt_and_predicts_coco_results(arch, subset, tmp_path):
    torch.manual_seed(0)
    recipe = TrainParams(
        arch=arch, weights="none", batch_size=2, num_workers=0, augment="none", amp=False,
        device="cpu", rois_per_image=32, warmup_iters=1, clip_grad_norm=10.0, **SMALL,
    )  # fmt: skip
    ctx = Context(torch.device("cpu"))
    model = training_model(recipe, CLASSES, ctx.device)
    assert all(p.requires_grad for p in model.parameters())  # from scratch all five layers train
    loader = train_loader(coco_dataset(subset, "train", build_transforms("none")), recipe)
    optimizer, _, scaler = make_optimizer(model, recipe, [len(loader)] * recipe.epochs, ctx.device)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    for images, targets in loader:  # one step: two images, batch 2
        losses = train_step(model, images, targets, optimizer, scaler, ctx)
    assert set(losses) == {"loss", *LOSS_PARTS} and all(map(math.isfinite, losses.values()))
    moved = [k for k, v in model.state_dict().items() if v.is_floating_point()
             and not torch.equal(v, before[k])]  # fmt: skip
    assert any(k.startswith("backbone.body.conv1") for k in moved)
    assert any(k.startswith("roi_heads.mask_predictor") for k in moved)

    path = tmp_path / "model.pt"
    record = model_record(model, class_names(subset / "annotations" / "train.json"), arch, 64, 64,
                          to_dict(recipe))  # fmt: skip
    with atomic_write(path) as f:
        torch.save(record, f)
    loaded, classes = load_trained_model(path)
    assert classes == CLASSES
    rebuilt = loaded.state_dict()
    assert all(torch.equal(v, rebuilt[k]) for k, v in model.state_dict().items())
    loaded.roi_heads.detections_per_img = 20  # keep the CPU mask head cheap
    val = COCO(str(subset / "annotations" / "val.json"))
    items = [image.item for image in subset_images(subset, "val")[0]]
    results = predict_images(loaded, items, device="cpu", batch_size=2, progress=False)
    assert results, "a random model still returns detections"
    assert {r["image_id"] for r in results} <= set(val.imgs)
    assert all(1 <= r["category_id"] <= 4 and 0 <= r["score"] <= 1 for r in results)
    for r in results[:5]:
        image = val.imgs[r["image_id"]]
        assert mask_utils.decode(r["segmentation"]).shape == (image["height"], image["width"])
    assert len(val.loadRes(results).getAnnIds()) == len(results)  # pycocotools accepts them


@pytest.mark.parametrize("arch", R101_ARCHS)
def test_coco_start_weights_are_refused_in_one_line_saying_what_works(arch):
    with pytest.raises(ParamError) as err:
        published(arch_named(arch), "coco")
    message = str(err.value)
    assert "\n" not in message and f"train.arch = {arch}" in message
    assert "train.weights = coco" in message and "ResNet-101" in message
    assert all(word in message for word in ("imagenet", "none", "checkpoint"))
    assert published(arch_named(arch), "imagenet") is ResNet101_Weights.IMAGENET1K_V1


def test_the_refusal_stops_a_coco_start_before_any_download(monkeypatch):
    def no_download(weights, value):
        raise AssertionError("nothing to download")

    monkeypatch.setattr(weights_mod, "fetch_state_dict", no_download)
    with pytest.raises(ParamError, match="no COCO-trained Mask R-CNN with a ResNet-101"):
        build_for_training(R101_ARCHS[0], CLASSES, weights="coco", init_heads=True, **SMALL)


def test_imagenet_start_loads_resnet101_into_the_body_with_frozen_batch_norm(monkeypatch):
    torch.manual_seed(0)
    imagenet = resnet101().state_dict()  # stands in for torchvision's download
    asked = []
    monkeypatch.setattr(
        weights_mod, "fetch_state_dict", lambda w, value: asked.append(w) or imagenet
    )
    model = build_for_training(R101_ARCHS[0], CLASSES, weights="imagenet", init_heads=False,
                               **SMALL)  # fmt: skip
    assert asked == [ResNet101_Weights.IMAGENET1K_V1]
    body = model.backbone.body
    assert isinstance(body.layer3[22].bn1, FrozenBatchNorm2d)  # ResNet-101: 23 blocks there
    for key, value in body.state_dict().items():
        assert torch.equal(value, imagenet[key]), key
    frozen = {n for n, p in body.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("conv1", "layer1")) for n in frozen)


def test_an_unknown_arch_is_one_line_naming_every_choice():
    with pytest.raises(ParamError) as err:
        parse_params({"train": {"arch": "cascade"}})
    message = str(err.value)
    assert "\n" not in message and "train.arch = 'cascade' is not allowed" in message
    assert all(name in message for name in ARCHS)
    for name in ARCHS:
        assert parse_params({"train": {"arch": name}}).train.arch == name
