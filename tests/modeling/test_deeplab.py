"""DeepLabV3+: targets, losses, start weights, params it refuses, model.pt round trip."""

from __future__ import annotations

import logging

import maskcases
import numpy as np
import pytest
import torch
import torchvision
from torchvision.ops import FrozenBatchNorm2d

from cocoseg.common.errors import ParamError
from cocoseg.common.params import parse_params
from cocoseg.evaluate import semantic
from cocoseg.modeling import deeplab
from cocoseg.modeling import weights as weights_mod
from cocoseg.modeling.maskrcnn import COCO_CATEGORIES
from cocoseg.modeling.records import load_trained_model, model_record
from cocoseg.modeling.registry import arch_named, build_model, pretrained_layout
from cocoseg.modeling.weights import build_for_training, published

ARCH = "deeplabv3plus_resnet50"
CLASSES = ["person", "cat", "sports ball", "book"]
SMALL = {"min_size": 64, "max_size": 64}


def square(y0: int, x0: int, side: int, size: tuple[int, int] = (64, 64)) -> torch.Tensor:
    mask = torch.zeros(size, dtype=torch.uint8)
    mask[y0 : y0 + side, x0 : x0 + side] = 1
    return mask


def test_class_map_smaller_instance_wins_crowd_ignored_as_evaluate_flattens():
    masks = torch.stack([square(0, 0, 30), square(10, 10, 8), square(40, 40, 20)])
    labels = torch.tensor([1, 2, 3])
    crowd = square(35, 35, 29)
    cmap = deeplab.class_map(masks, labels, crowd)
    assert cmap[12, 12] == 2 and cmap[5, 5] == 1  # the small square wins the overlap
    assert cmap[45, 45] == 3 and cmap[36, 36] == deeplab.IGNORE and cmap[0, 63] == 0
    objects = {1: [(int(c), m.numpy()) for c, m in zip(labels, masks, strict=True)]}
    objects[1].append((1, crowd.numpy(), True))
    gt = maskcases.gt_coco(objects, {1: "a", 2: "b", 3: "c"}, (64, 64))
    truth = semantic.truth_map(gt, 1, {1: 1, 2: 2, 3: 3})
    learned = cmap.numpy().astype(np.int16)
    expected = np.where(learned == deeplab.IGNORE, semantic.IGNORED, learned)
    assert (truth == expected).all()  # evaluate scores against the map DeepLab learns


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ARCH, len(CLASSES) + 1, **SMALL)


def test_training_returns_the_mask_loss_and_crowd_only_pixels_score_nothing(model):
    model.train()
    image = torch.rand(3, 64, 48)
    target = {"masks": square(0, 0, 20, (64, 48))[None], "labels": torch.tensor([2])}
    losses = model([image], [{**target, "crowd": torch.zeros(64, 48, dtype=torch.uint8)}])
    assert set(losses) == {"loss_mask"} and losses["loss_mask"] > 0  # a batch of one trains
    crowded = model([image], [{**target, "crowd": torch.ones(64, 48, dtype=torch.uint8)}])
    assert crowded["loss_mask"] > 0  # the instance still counts where the crowd covers it
    empty = {"masks": torch.zeros(0, 64, 48, dtype=torch.uint8), "labels": torch.zeros(0).long()}
    ignored = model([image], [{**empty, "crowd": torch.ones(64, 48, dtype=torch.uint8)}])
    assert ignored["loss_mask"] == 0
    ignored["loss_mask"].backward()  # a graph, with zero gradients


def test_batched_maps_resize_each_map_and_pad_with_ignore():
    cmap = torch.zeros(4, 6, dtype=torch.uint8)
    cmap[:, 3:] = 2
    like = torch.zeros(1, 5, 16, 16)
    out = deeplab.batched_maps([cmap], [(8, 12)], like)
    assert out.shape == (1, 16, 16)
    assert (out[0, :8, :6] == 0).all() and (out[0, :8, 6:12] == 2).all()
    assert (out[0, 8:] == deeplab.IGNORE).all() and (out[0, :, 12:] == deeplab.IGNORE).all()


def test_eval_answers_like_mask_rcnn_at_the_original_size(model):
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, 50, 70), torch.rand(3, 64, 64)])
    assert len(out) == 2 and set(out[0]) == {"boxes", "labels", "scores", "masks"}
    for detections, size in zip(out, [(50, 70), (64, 64)], strict=True):
        assert detections["masks"].shape[1:] == (1, *size)
        assert ((detections["scores"] >= 0) & (detections["scores"] <= 1)).all()
        assert ((detections["labels"] >= 1) & (detections["labels"] <= 4)).all()


def test_model_pt_round_trip_answers_the_same(model, tmp_path):
    with torch.no_grad():
        model.net.segmentation_head[0].bias.copy_(torch.tensor([0.0, 3, 0, 0, 0]))  # finds cats
    path = tmp_path / "model.pt"
    torch.save(model_record(model, CLASSES, ARCH, 64, 64, {"weights": "none"}), path)
    loaded, classes = load_trained_model(path)
    assert classes == CLASSES and not loaded.training
    image = [torch.rand(3, 64, 64)]
    model.eval()
    with torch.no_grad():
        ours, theirs = model(image)[0], loaded(image)[0]
    assert len(ours["labels"]) > 0
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key


def test_a_checkpoint_start_keeps_its_head(model, tmp_path, caplog):
    path = tmp_path / "model.pt"
    torch.save(model_record(model, CLASSES, ARCH, 64, 64, {"weights": "none"}), path)
    with caplog.at_level(logging.INFO, logger="cocoseg"):
        started = build_for_training(ARCH, CLASSES, weights=str(path), init_heads=False, **SMALL)
    assert "heads included" in caplog.text
    saved = model.state_dict()
    for key, value in started.state_dict().items():  # batch norm frozen: its statistics kept
        assert torch.equal(saved[key], value), key
    assert any(key.startswith(deeplab.HEAD) for key in started.state_dict())


def test_imagenet_loads_torchvision_resnet_weights_into_a_frozen_encoder(monkeypatch):
    torch.manual_seed(1)
    fake = torchvision.models.resnet50().state_dict()  # stands in for the ImageNet download
    asked = []
    monkeypatch.setattr(
        weights_mod, "fetch_state_dict", lambda w, value: asked.append(w) or dict(fake)
    )
    model = build_for_training(ARCH, CLASSES, weights="imagenet", init_heads=True, **SMALL)
    assert asked == [torchvision.models.ResNet50_Weights.IMAGENET1K_V1]
    encoder = model.net.encoder
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, fake[key]), key
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in encoder.modules()) == 53
    assert not encoder.conv1.weight.requires_grad and encoder.layer2[0].conv1.weight.requires_grad
    assert all(p.requires_grad for p in model.net.decoder.parameters())


def test_coco_starts_the_encoder_from_mask_rcnn_resnet_body(monkeypatch, caplog):
    maskrcnn = "maskrcnn_resnet50_fpn"
    torch.manual_seed(2)
    coco = pretrained_layout(build_model(maskrcnn, len(COCO_CATEGORIES), **SMALL), maskrcnn, "coco")
    state = coco.state_dict()
    monkeypatch.setattr(weights_mod, "fetch_state_dict", lambda w, value: state)
    with caplog.at_level(logging.INFO, logger="cocoseg"):
        model = build_for_training(ARCH, CLASSES, weights="coco", init_heads=True, **SMALL)
    assert "init_heads_from_coco ignored" in caplog.text
    body = coco.backbone.body.state_dict()
    encoder = model.net.encoder.state_dict()
    assert set(encoder) == set(body)  # every tensor loaded, frozen batch norm included
    for key, value in body.items():
        assert torch.equal(encoder[key], value), key
    assert model.net.encoder.bn1.eps == 0.0  # as COCO_V1 was trained
    with pytest.raises(ParamError, match="no COCO model with a ResNet-101 body"):
        published(arch_named("deeplabv3plus_resnet101"), "coco")


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("rois_per_image", 128, "a semantic model has no RoIs"),
        ("anchor_sizes", [16, 32, 64, 128, 256], "a semantic model has no anchors"),
        ("anchor_ratios", [1.0], "a semantic model has no anchors"),
    ],
)
def test_mask_rcnn_params_are_refused_by_name(key, value, reason):
    with pytest.raises(ParamError) as err:
        parse_params({"train": {"arch": ARCH, key: value}})
    assert str(err.value) == (
        f"params.yaml: train.{key} = {value} has no meaning for train.arch = {ARCH} ({reason}); "
        "remove it or use a Mask R-CNN arch"
    )
    parse_params({"train": {"arch": "maskrcnn_resnet50_fpn", key: value}})  # meaningful there
    parse_params({"train": {"arch": ARCH}})  # the defaults pass
    with pytest.raises(ParamError, match="has no meaning"):
        build_model(ARCH, 5, box_batch_size_per_image=128)
