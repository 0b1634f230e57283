"""Cascade Mask R-CNN in training: COCO's Mask R-CNN in every stage, checkpoint starts, the train
stage end to end (resume, select best, DVCLive) then infer and predict, and it learns."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging

import msgspec
import numpy as np
import pytest
import synthcoco
import torch
from learning import FEW_RPN_ROIS, MASK_IOU_BAR, best_mask_ious, learn_shapes, loss_drop
from pycocotools.coco import COCO
from torchvision.models.detection._utils import BoxCoder

from cocoseg.coco.inputs import subset_images
from cocoseg.common.params import EvaluateParams, PredictParams, TrainParams
from cocoseg.modeling import registry
from cocoseg.modeling import weights as weights_mod
from cocoseg.modeling.infer import infer_val
from cocoseg.modeling.records import load_record, model_record
from cocoseg.modeling.registry import build_model, pretrained_layout
from cocoseg.modeling.weights import build_for_training
from cocoseg.predict.outputs import predict
from cocoseg.train.engine import train
from cocoseg.train.trainlog import LOSS_PARTS

ARCH = "cascade_maskrcnn_resnet50_fpn"
CLASSES = ["person", "cat", "sports ball", "book"]
COCO_ROWS = [0, 1, 17, 37, 84]  # background, then CLASSES among COCO's 91 outputs
SMALL = {"min_size": 64, "max_size": 64}
BOX, MASK = "roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits."


@pytest.fixture(scope="module")
def coco_like_state() -> dict[str, torch.Tensor]:
    """A random 91-class Mask R-CNN in the layout of torchvision's COCO download."""
    torch.manual_seed(0)
    arch = "maskrcnn_resnet50_fpn"
    return pretrained_layout(build_model(arch, 91, **SMALL), arch, "coco").state_dict()


def assert_coco_in_every_stage(state: dict, coco: dict, heads: bool) -> None:
    """COCO's weights where the cascade start puts them, tensor by tensor."""
    for key, value in coco.items():
        if not key.startswith(("roi_heads.box_head.", BOX, MASK)):
            assert torch.equal(state[key], value), key
    for k in range(3):
        prefix = f"roi_heads.stages.{k}."
        for name in ("fc6.weight", "fc6.bias", "fc7.weight", "fc7.bias"):
            assert torch.equal(state[f"{prefix}head.{name}"], coco[f"roi_heads.box_head.{name}"])
        for key in ("weight", "bias"):
            cls_score = state[f"{prefix}predictor.cls_score.{key}"]
            assert torch.equal(cls_score, coco[f"{BOX}cls_score.{key}"][COCO_ROWS]) is heads
            coco_box = coco[f"{BOX}bbox_pred.{key}"]
            mean = sum(coco_box[4 * c : 4 * c + 4] for c in COCO_ROWS[1:]) / len(CLASSES)
            # (20, 20, 10, 10) and (30, 30, 15, 15) are 2 and 3 times (10, 10, 5, 5)
            bbox_pred = state[f"{prefix}predictor.bbox_pred.{key}"]
            assert torch.allclose(bbox_pred, mean * (k + 1), atol=1e-6) is heads
    for key in ("weight", "bias"):
        assert torch.equal(state[f"{MASK}{key}"], coco[f"{MASK}{key}"][COCO_ROWS]) is heads


def test_coco_start_puts_coco_mask_rcnn_into_every_stage(monkeypatch, coco_like_state):
    monkeypatch.setattr(weights_mod, "fetch_state_dict", lambda w, value: coco_like_state)
    model = build_for_training(ARCH, CLASSES, weights="coco", init_heads=True, **SMALL)
    assert_coco_in_every_stage(model.state_dict(), coco_like_state, heads=True)
    features, boxes = torch.randn(6, 1024), [torch.tensor([[4.0, 6.0, 30.0, 40.0]]).repeat(6, 1)]
    with torch.no_grad():  # every stage starts out moving a box the same way
        moved = [BoxCoder(s.box_coder.weights).decode(s.predictor(features)[1], boxes)
                 for s in model.roi_heads.stages]  # fmt: skip
    assert not torch.allclose(moved[0], boxes[0][:, None])
    assert torch.allclose(moved[0], moved[1], atol=1e-4)
    assert torch.allclose(moved[0], moved[2], atol=1e-4)

    fresh = build_for_training(ARCH, CLASSES, weights="coco", init_heads=False, **SMALL)
    assert_coco_in_every_stage(fresh.state_dict(), coco_like_state, heads=False)


def test_a_downloaded_coco_pth_given_as_path_maps_into_every_stage(tmp_path, coco_like_state):
    pth = tmp_path / "maskrcnn_resnet50_fpn_coco.pth"
    torch.save(coco_like_state, pth)
    model = build_for_training(ARCH, CLASSES, weights=str(pth), init_heads=True, **SMALL)
    assert_coco_in_every_stage(model.state_dict(), coco_like_state, heads=True)


def test_a_cascade_checkpoint_starts_with_its_heads_only_for_the_same_classes(tmp_path):
    torch.manual_seed(1)
    source = build_model(ARCH, 5, **SMALL)
    start = tmp_path / "start.pt"
    torch.save(model_record(source, CLASSES, ARCH, 64, 64, {"weights": "none"}), start)
    saved = source.state_dict()
    same = build_for_training(ARCH, CLASSES, weights=str(start), init_heads=False, **SMALL)
    for key, value in same.state_dict().items():
        assert torch.equal(value, saved[key]), key
    other = build_for_training(ARCH, ["cat", "book"], weights=str(start), init_heads=False,
                               **SMALL).state_dict()  # fmt: skip
    for key, value in other.items():
        if key.startswith(registry.arch_named(ARCH).class_prefixes):  # fresh (biases are 0)
            fresh = value.shape != saved[key].shape or not torch.equal(value, saved[key])
            assert fresh or key.endswith("bias"), key
        else:
            assert torch.equal(value, saved[key]), key
    assert other["roi_heads.stages.1.predictor.cls_score.weight"].shape == (3, 1024)
    assert other["roi_heads.stages.2.predictor.bbox_pred.weight"].shape == (4, 1024)


def cheap_cascade(monkeypatch, detections: int = 10) -> None:
    """The registered cascade keeps `detections` per image: the CPU mask head stays cheap."""
    arch = registry.arch_named(ARCH)
    build = functools.partial(arch.build, box_detections_per_img=detections)
    monkeypatch.setitem(registry.ARCHS, ARCH, dataclasses.replace(arch, build=build))


@pytest.mark.slow
def test_the_train_stage_resumes_selects_and_logs_a_cascade_then_infer_and_predict(
    tmp_path, monkeypatch, caplog
):
    cheap_cascade(monkeypatch)
    subset = synthcoco.make_subset(tmp_path / "subset", n_train=2, n_val=1, n_test=1,
                                   size=(64, 64), seed=1)  # fmt: skip
    recipe = TrainParams(
        arch=ARCH, weights="none", epochs=1, batch_size=2, num_workers=0, augment="none",
        warmup_iters=1, clip_grad_norm=10.0, amp=False, device="cpu", rois_per_image=64,
        eval_every=1, select="best", **SMALL,
    )  # fmt: skip
    out, reports = tmp_path / "models", tmp_path / "reports"
    train(recipe, subset, out, reports)
    with caplog.at_level(logging.INFO, logger="cocoseg"):
        path = train(msgspec.structs.replace(recipe, epochs=2), subset, out, reports)
    assert "resuming after epoch 1 of 2" in caplog.text
    record = load_record(path)
    assert record["arch"] == ARCH and record["epoch"] in (1, 2) and record["val"] is not None
    custom = reports / "live" / "plots" / "custom"
    iterations = json.loads((custom / "iterations.json").read_text())
    assert [row["iteration"] for row in iterations] == [1, 2]  # one step per epoch, each once
    assert all(set(LOSS_PARTS) <= set(row) for row in iterations)
    val_rows = json.loads((custom / "val.json").read_text())
    assert [row["epoch"] for row in val_rows] == [1, 2]
    assert all(0 <= row["segm_AP"] <= 1 for row in val_rows)

    results = infer_val(path, subset, tmp_path / "val.json", EvaluateParams(device="cpu"))
    val = COCO(str(subset / "annotations" / "val.json"))
    assert results and len(val.loadRes(results).getAnnIds()) == len(results)
    images, _ = subset_images(subset, "test")
    settings = PredictParams(device="cpu", score_threshold=0.0)
    kept = predict(path, images, tmp_path / "predict", settings, name="test",
                   expect_classes=CLASSES)  # fmt: skip
    assert kept and {r["category_name"] for r in kept} <= set(CLASSES)
    written = json.loads((tmp_path / "predict" / "test.json").read_text())
    assert len(written) == len(kept)
    assert (tmp_path / "predict" / "contact_sheet.png").exists()
    assert len(list((tmp_path / "predict" / "overlays").glob("*.png"))) == len(images)


@pytest.mark.slow
def test_from_random_weights_a_cascade_finds_the_shapes(tmp_path):
    """50 steps on two 64 px images (three shapes), from scratch, then find them again. More
    steps and a higher lr than Mask R-CNN's test: the mean of three stages' softmax passes the
    0.5 score later than one stage's; 32 RoIs per image keep each step under a second."""
    recipe = TrainParams(
        arch=ARCH, weights="none", epochs=50, batch_size=2, num_workers=0, augment="none",
        lr=0.04, warmup_iters=5, schedule="cosine", clip_grad_norm=10.0, amp=False,
        device="cpu", seed=0, rois_per_image=32, **SMALL,
    )  # fmt: skip
    model, dataset, _, losses = learn_shapes(tmp_path, recipe, FEW_RPN_ROIS)
    first, last = loss_drop(losses)
    print(f"loss {first:.3f} -> {last:.3f}")
    assert last <= 0.4 * first
    ious = best_mask_ious(model, dataset)
    print("mask IoU per shape:", np.round(ious, 2))
    assert len(ious) == 3 and np.mean(ious) >= MASK_IOU_BAR
