"""Start weights: COCO head rows, offline messages, fine-tuning layout, weights-only loading."""

from __future__ import annotations

import logging
import pickle
import urllib.error
from pathlib import Path

import pytest
import torch
from torchvision.ops import FrozenBatchNorm2d

from cocoseg.common.errors import DataError, ParamError
from cocoseg.common.io import atomic_write
from cocoseg.modeling import weights as model_mod
from cocoseg.modeling.maskrcnn import (
    COCO_CATEGORIES,
    PREDICTOR_PREFIXES,
    coco_rows,
    select_coco_rows,
)
from cocoseg.modeling.records import load_record, load_trained_model, model_record
from cocoseg.modeling.registry import arch_named, build_model, pretrained_layout
from cocoseg.modeling.weights import build_for_training
from cocoseg.train.checkpoints import find_resume

CLASSES = ["person", "cat", "sports ball", "book"]
ARCH = "maskrcnn_resnet50_fpn"
SMALL = {"min_size": 64, "max_size": 64}


@pytest.fixture(scope="module")
def coco_like_state() -> dict[str, torch.Tensor]:
    """A randomly initialised 91-class model standing in for torchvision's COCO download."""
    torch.manual_seed(0)
    return coco_like_model().state_dict()


def coco_like_model() -> torch.nn.Module:
    """91 classes with the layout of torchvision's pretrained model (frozen batch norm)."""
    return pretrained_layout(build_model(ARCH, len(COCO_CATEGORIES), **SMALL), ARCH, "coco")


def test_coco_rows_are_background_then_the_classes_in_order():
    assert coco_rows(CLASSES) == [0, 1, 17, 37, 84]
    assert [COCO_CATEGORIES[i] for i in coco_rows(CLASSES)[1:]] == CLASSES
    with pytest.raises(ParamError, match="not COCO category names"):
        coco_rows(["person", "unicorn"])


def test_head_rows_land_in_the_right_places(coco_like_state):
    heads = select_coco_rows(coco_like_state, CLASSES)
    box, mask = "roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits."
    for new, old in enumerate([0, 1, 17, 37, 84]):
        for key in ("weight", "bias"):
            assert torch.equal(
                heads[f"{box}cls_score.{key}"][new], coco_like_state[f"{box}cls_score.{key}"][old]
            )
            assert torch.equal(heads[f"{mask}{key}"][new], coco_like_state[f"{mask}{key}"][old])
            assert torch.equal(
                heads[f"{box}bbox_pred.{key}"][4 * new : 4 * new + 4],
                coco_like_state[f"{box}bbox_pred.{key}"][4 * old : 4 * old + 4],
            )
    assert heads[f"{box}cls_score.weight"].shape[0] == 5
    assert heads[f"{box}bbox_pred.weight"].shape[0] == 20
    assert heads[f"{mask}weight"].shape[0] == 5


def fake_download(monkeypatch, state):
    """Serve `state` where torchvision's download would be."""
    monkeypatch.setattr(model_mod, "fetch_state_dict", lambda weights, value: state)


def test_coco_start_scores_our_classes_like_the_91_class_model(monkeypatch, coco_like_state):
    fake_download(monkeypatch, coco_like_state)
    model = build_for_training(ARCH, CLASSES, weights="coco", init_heads=True, **SMALL)
    coco = coco_like_model()
    coco.load_state_dict(coco_like_state)
    state = model.state_dict()
    for key, value in coco_like_state.items():
        if not key.startswith(PREDICTOR_PREFIXES):
            assert torch.equal(state[key], value), key
    features = torch.randn(7, 1024)
    ours = model.roi_heads.box_predictor(features)
    theirs = coco.roi_heads.box_predictor(features)
    assert torch.allclose(ours[0], theirs[0][:, [0, 1, 17, 37, 84]], atol=1e-6)
    rois = torch.randn(3, 256, 14, 14)
    assert torch.allclose(
        model.roi_heads.mask_predictor(rois),
        coco.roi_heads.mask_predictor(rois)[:, [0, 1, 17, 37, 84]],
        atol=1e-6,
    )


def test_coco_start_without_head_copy_keeps_fresh_heads(monkeypatch, coco_like_state):
    fake_download(monkeypatch, coco_like_state)
    model = build_for_training(ARCH, CLASSES, weights="coco", init_heads=False, **SMALL)
    weight = model.state_dict()["roi_heads.box_predictor.cls_score.weight"]
    assert not torch.equal(weight, coco_like_state["roi_heads.box_predictor.cls_score.weight"][:5])


def test_head_copy_is_ignored_and_logged_for_random_weights(caplog):
    with caplog.at_level(logging.INFO, logger="cocoseg"):
        model = build_for_training(ARCH, CLASSES, weights="none", init_heads=True, **SMALL)
    assert "init_heads_from_coco ignored" in caplog.text
    assert all(p.requires_grad for p in model.parameters())  # from scratch: all trains


@pytest.mark.parametrize("value", ["coco", "imagenet"])
def test_offline_pretrained_weights_fail_at_once_saying_where_and_what_works(
    monkeypatch, tmp_path, value
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(DataError) as err:
        build_for_training(ARCH, CLASSES, weights=value, init_heads=True, **SMALL)
    message = str(err.value)
    weights = getattr(arch_named(ARCH), value)  # torchvision's file for this arch
    expected = tmp_path / "torch" / "hub" / "checkpoints" / Path(weights.url).name
    assert str(expected) in message and weights.url in message
    assert "train.weights = none" in message and "path to a checkpoint" in message
    assert f"train.weights = {value}" in message


def test_checkpoint_start_and_trained_model_share_the_fine_tuning_layout(tmp_path):
    torch.manual_seed(1)
    start = tmp_path / "start.pt"
    source = build_model(ARCH, 5, **SMALL)
    torch.save(model_record(source, CLASSES, ARCH, 64, 64, {"weights": "none"}), start)
    model = build_for_training(ARCH, CLASSES, weights=str(start), init_heads=True, **SMALL)
    assert isinstance(model.backbone.body.bn1, FrozenBatchNorm2d)
    frozen = {n for n, p in model.backbone.body.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("conv1", "layer1")) for n in frozen)
    for key, value in source.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(model.state_dict()[key], value), key

    record = model_record(model, CLASSES, ARCH, 64, 64, {"weights": str(start)})
    path = tmp_path / "model.pt"
    torch.save(record, path)
    loaded, classes = load_trained_model(path)
    assert classes == CLASSES and isinstance(loaded.backbone.body.bn1, FrozenBatchNorm2d)
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = model.eval().backbone(image)
        got = loaded.backbone(image)
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


def test_v2_arch_builds_with_its_own_layout(tmp_path):
    model = build_for_training(
        "maskrcnn_resnet50_fpn_v2", CLASSES, weights="none", init_heads=False, **SMALL
    )
    assert model.roi_heads.box_predictor.cls_score.out_features == 5
    start = tmp_path / "v2.pt"
    torch.save(model.state_dict(), start)
    tuned = build_for_training(
        "maskrcnn_resnet50_fpn_v2", CLASSES, weights=str(start), init_heads=False, **SMALL
    )
    assert isinstance(tuned.backbone.body.bn1, torch.nn.BatchNorm2d)  # v2 keeps batch norm
    assert not tuned.backbone.body.conv1.weight.requires_grad


def test_checkpoint_of_another_arch_is_refused_by_name(tmp_path):
    start = tmp_path / "v1.pt"
    torch.save(build_model(ARCH, 5, **SMALL).state_dict(), start)
    with pytest.raises(DataError, match=r"do not fit this train\.arch"):
        build_for_training(
            "maskrcnn_resnet50_fpn_v2", CLASSES, weights=str(start), init_heads=False, **SMALL
        )


class RunsCode:
    """Unpickling this would run code: it writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("fmt", ["torch.save", "raw pickle"])
def test_a_pickle_that_runs_code_is_refused_everywhere(tmp_path, fmt, caplog):
    marker = tmp_path / "pwned"
    evil = {"model": RunsCode(marker), "classes": CLASSES, "epoch": 1}
    folder = tmp_path / "checkpoints"
    path = folder / "epoch_01.pt"
    with atomic_write(path) as f:
        torch.save(evil, f) if fmt == "torch.save" else pickle.dump(evil, f, protocol=2)
    with pytest.raises(DataError, match="weights-only"):
        load_record(path)
    with pytest.raises(DataError, match="weights-only"):
        build_for_training(ARCH, CLASSES, weights=str(path), init_heads=False, **SMALL)
    with caplog.at_level(logging.WARNING, logger="cocoseg"):
        assert find_resume(folder, {"params": {}, "classes": CLASSES, "data": ""}, 6) is None
    assert "skipping unreadable checkpoint" in caplog.text
    assert not marker.exists()


def test_a_downloaded_coco_pth_given_as_path_gets_the_head_rows_too(tmp_path, coco_like_state):
    pth = tmp_path / "maskrcnn_resnet50_fpn_coco.pth"
    torch.save(coco_like_state, pth)
    model = build_for_training(ARCH, CLASSES, weights=str(pth), init_heads=True, **SMALL)
    state = model.state_dict()
    for key, value in select_coco_rows(coco_like_state, CLASSES).items():
        assert torch.equal(state[key], value), key
