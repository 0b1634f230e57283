"""The fine-tuning layout keeps every tensor where the model is (device and dtype)."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import FrozenBatchNorm2d

from cocoseg.modeling.registry import build_model, pretrained_layout

ARCH = "maskrcnn_resnet50_fpn"


def test_layout_on_a_meta_model_leaves_every_tensor_on_meta():
    with torch.device("meta"):
        model = build_model(ARCH, 5)
    pretrained_layout(model, ARCH, "coco")  # built outside the device context, as after .to()
    frozen = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(frozen) == 53  # every batch norm of the ResNet-50 body
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    elsewhere = {name: t.device for name, t in tensors.items() if t.device.type != "meta"}
    assert not elsewhere


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_frozen_batch_norm_keeps_the_dtype_and_statistics_it_replaces(dtype):
    model = build_model(ARCH, 5, min_size=64, max_size=64).to(dtype)
    bn = model.backbone.body.bn1
    bn.running_mean.uniform_(-1, 1)
    expected = bn.running_mean.clone()
    pretrained_layout(model, ARCH, "coco")
    frozen = model.backbone.body.bn1
    assert isinstance(frozen, FrozenBatchNorm2d)
    assert frozen.running_mean.dtype == dtype and torch.equal(frozen.running_mean, expected)
