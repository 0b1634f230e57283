"""train.anchor_sizes / anchor_ratios reach the model; COCO weights load while the RPN fits."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn

from cocoseg.common.errors import ParamError
from cocoseg.common.params import parse_params
from cocoseg.modeling import weights as model_mod
from cocoseg.modeling.maskrcnn import COCO_CATEGORIES
from cocoseg.modeling.records import load_trained_model, model_record
from cocoseg.modeling.registry import build_model
from cocoseg.modeling.weights import build_for_training

ARCH = "maskrcnn_resnet50_fpn"
CLASSES = ["person", "cat", "sports ball", "book"]
SMALL = {"min_size": 64, "max_size": 64}
SMALL_ANCHORS = [8, 16, 32, 64, 128]


@pytest.fixture(scope="module")
def coco_shaped_state() -> dict[str, torch.Tensor]:
    """Random tensors with the shapes of torchvision's 91-class COCO state dict."""
    torch.manual_seed(0)
    return build_model(ARCH, len(COCO_CATEGORIES), **SMALL).state_dict()


def anchor_layout(model: torch.nn.Module) -> tuple[tuple, tuple]:
    generator = model.rpn.anchor_generator
    return tuple(generator.sizes), tuple(tuple(r) for r in generator.aspect_ratios)


def test_defaults_are_torchvisions_anchors():
    ours = build_model(ARCH, 5, **SMALL)
    theirs = maskrcnn_resnet50_fpn(num_classes=5, weights=None, weights_backbone=None, **SMALL)
    assert anchor_layout(ours) == anchor_layout(theirs)
    assert ours.rpn.head.cls_logits.out_channels == 3


@pytest.mark.parametrize("arch", ["maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2"])
def test_the_built_model_has_the_anchor_sizes_and_ratios(arch):
    model = build_model(arch, 5, anchor_sizes=SMALL_ANCHORS, anchor_ratios=[0.25, 1, 4], **SMALL)
    sizes, ratios = anchor_layout(model)
    assert sizes == tuple((s,) for s in SMALL_ANCHORS)
    assert ratios == ((0.25, 1, 4),) * 5
    model.eval()
    with torch.no_grad():
        model([torch.rand(3, 64, 64)])  # the RPN head fits the anchors it is given


def test_coco_weights_still_load_with_other_anchor_sizes(monkeypatch, coco_shaped_state):
    monkeypatch.setattr(model_mod, "fetch_state_dict", lambda weights, value: coco_shaped_state)
    model = build_for_training(
        ARCH, CLASSES, weights="coco", init_heads=True, anchor_sizes=SMALL_ANCHORS, **SMALL
    )
    assert anchor_layout(model)[0] == tuple((s,) for s in SMALL_ANCHORS)
    rpn = "rpn.head.cls_logits.weight"
    assert torch.equal(model.state_dict()[rpn], coco_shaped_state[rpn])


def test_another_ratio_count_cannot_start_from_coco_weights(monkeypatch, coco_shaped_state):
    monkeypatch.setattr(model_mod, "fetch_state_dict", lambda weights, value: coco_shaped_state)
    with pytest.raises(ParamError, match=r"train\.anchor_ratios = \[0\.5, 1\.0, 2\.0, 4\.0\].*4"):
        build_for_training(
            ARCH, CLASSES, weights="coco", init_heads=True, anchor_ratios=[0.5, 1, 2, 4], **SMALL
        )
    # From scratch any count works: the RPN head is built for it.
    model = build_for_training(
        ARCH, CLASSES, weights="none", init_heads=False, anchor_ratios=[0.5, 1, 2, 4], **SMALL
    )
    assert model.rpn.head.cls_logits.out_channels == 4


def test_a_trained_model_is_rebuilt_with_its_own_anchors(tmp_path):
    model = build_model(ARCH, 5, anchor_sizes=SMALL_ANCHORS, anchor_ratios=[1.0, 2.0], **SMALL)
    params = {"weights": "none", "anchor_sizes": SMALL_ANCHORS, "anchor_ratios": [1.0, 2.0]}
    torch.save(model_record(model, CLASSES, ARCH, 64, 64, params), tmp_path / "model.pt")
    loaded, _ = load_trained_model(tmp_path / "model.pt")
    assert anchor_layout(loaded) == anchor_layout(model)


def test_a_wrong_count_of_sizes_is_a_params_error_naming_the_key():
    with pytest.raises(ParamError, match=r"train\.anchor_sizes = \[16, 32\].*FPN level"):
        parse_params({"train": {"anchor_sizes": [16, 32]}})
