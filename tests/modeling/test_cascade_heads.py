"""Cascade R-CNN's heads follow the recipe: stage IoUs and box coders, labels at each stage's IoU,
later stages on the previous stage's boxes, losses summed over stages, mean softmax at test."""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import box_iou, clip_boxes_to_image

from cocoseg.modeling.cascade_heads import AgnosticPredictor, CascadeRoIHeads, _ScaleGradient
from cocoseg.modeling.registry import build_model

ARCH = "cascade_maskrcnn_resnet50_fpn"
NUM_CLASSES = 5  # background + 4


def small_cascade(**kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ARCH, NUM_CLASSES, min_size=64, max_size=64, **kwargs)


def inputs(model: torch.nn.Module, targets: list[dict] | None = None):
    """(features, proposals, image shapes, targets) as the RoI heads receive them."""
    torch.manual_seed(1)
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    image_list, targets = model.transform(images, targets)
    features = model.backbone(image_list.tensors)
    proposals, _ = model.rpn(image_list, features, targets)
    return features, [p.detach() for p in proposals], image_list.image_sizes, targets


def square_targets() -> list[dict]:
    """Image 0: one cat square; image 1: background only."""
    mask = torch.zeros(1, 64, 64, dtype=torch.uint8)
    mask[0, 10:40, 12:44] = 1
    return [
        {"boxes": torch.tensor([[12.0, 10.0, 44.0, 40.0]]), "labels": torch.tensor([2]),
         "masks": mask},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
         "masks": torch.zeros(0, 64, 64, dtype=torch.uint8)},
    ]  # fmt: skip


def test_three_stages_with_the_recipe_ious_box_coders_and_agnostic_regressors():
    model = small_cascade(box_batch_size_per_image=64)
    heads = model.roi_heads
    assert isinstance(heads, CascadeRoIHeads) and len(heads.stages) == 3
    for stage, iou, weights in zip(
        heads.stages, (0.5, 0.6, 0.7), [(10, 10, 5, 5), (20, 20, 10, 10), (30, 30, 15, 15)],
        strict=True,
    ):  # fmt: skip
        assert stage.matcher.high_threshold == stage.matcher.low_threshold == iou
        assert not stage.matcher.allow_low_quality_matches
        assert stage.box_coder.weights == weights
        assert isinstance(stage.predictor, AgnosticPredictor)
        assert stage.predictor.cls_score.out_features == NUM_CLASSES
        assert stage.predictor.bbox_pred.out_features == 4  # one box per RoI, any class
        assert (stage.head.fc6.in_features, stage.head.fc6.out_features) == (256 * 7 * 7, 1024)
    assert heads.fg_bg_sampler.batch_size_per_image == 64  # train.rois_per_image reaches it
    assert heads.proposal_matcher is heads.stages[0].matcher
    keys = set(model.state_dict())
    assert "roi_heads.stages.2.head.fc7.weight" in keys
    assert "roi_heads.stages.0.predictor.cls_score.weight" in keys
    assert not any(k.startswith(("roi_heads.box_head.", "roi_heads.box_predictor.")) for k in keys)


def test_each_stage_labels_boxes_at_its_own_iou_and_encodes_with_its_own_weights():
    heads = small_cascade().roi_heads
    gt = {"boxes": torch.tensor([[0.0, 0.0, 100.0, 100.0]]), "labels": torch.tensor([3])}
    heights = [40.0, 55.0, 65.0, 75.0]  # box [0, 0, 100, h] has IoU h / 100 with the gt
    boxes = torch.tensor([[0.0, 0.0, 100.0, h] for h in heights])
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    expected_labels = [[0, 3, 3, 3], [0, 0, 3, 3], [0, 0, 0, 3]]
    for k, (wx, wy, ww, wh) in enumerate([(10, 10, 5, 5), (20, 20, 10, 10), (30, 30, 15, 15)]):
        labels, targets = heads.label_boxes(k, [boxes, boxes[:2]], [gt, empty])
        assert labels[0].tolist() == expected_labels[k]
        assert labels[1].tolist() == [0, 0]  # no ground truth: background
        for h, target in zip(heights, targets[0], strict=True):
            hand = [0.0, wy * (50 - h / 2) / h, 0.0, wh * math.log(100 / h)]
            assert torch.allclose(target, torch.tensor(hand), atol=1e-5), (k, h)
        assert ww == wx / 2


def test_later_stages_train_on_the_previous_stage_refined_boxes_and_losses_sum(monkeypatch):
    model = small_cascade(box_batch_size_per_image=32).train()
    heads = model.roi_heads
    with torch.no_grad():  # zero predictors: logits 0, so each stage's cross entropy is ln 5
        for stage in heads.stages:
            for p in (
                *stage.predictor.cls_score.parameters(),
                *stage.predictor.bbox_pred.parameters(),
            ):
                p.zero_()
            stage.predictor.bbox_pred.bias.copy_(torch.tensor([0.3, -0.2, 0.1, 0.2]))
    seen = []
    run_stage = heads.run_stage

    def recording(k, features, boxes, image_shapes):
        logits, deltas = run_stage(k, features, boxes, image_shapes)
        seen.append((k, boxes, deltas.detach()))
        return logits, deltas

    monkeypatch.setattr(heads, "run_stage", recording)
    features, proposals, shapes, targets = inputs(model, square_targets())
    losses = heads(features, proposals, shapes, targets)[1]

    assert [k for k, _, _ in seen] == [0, 1, 2]
    assert [len(b) for b in seen[0][1]] == [32, 32]  # stage 0: torchvision's sampled RoIs
    for (k, boxes, deltas), (_, next_boxes, _) in itertools.pairwise(seen):
        coder = BoxCoder(heads.stages[k].box_coder.weights)
        refined = coder.decode(deltas, boxes).reshape(-1, 4).split([len(b) for b in boxes])
        for mine, given, shape in zip(refined, next_boxes, shapes, strict=True):
            assert not given.requires_grad
            assert torch.allclose(given, clip_boxes_to_image(mine, shape), atol=1e-4)
        assert not torch.allclose(torch.cat(boxes), torch.cat(next_boxes))  # really moved

    assert torch.isclose(losses["loss_classifier"], torch.tensor(3 * math.log(5)), atol=1e-5)
    hand_box_loss = 0.0
    for (k, boxes, deltas), iou in zip(seen, (0.5, 0.6, 0.7), strict=True):
        coder, gt = BoxCoder(heads.stages[k].box_coder.weights), targets[0]["boxes"]
        positive = box_iou(boxes[0], gt)[:, 0] >= iou  # image 1 has no ground truth
        wanted = coder.encode_single(gt.expand(int(positive.sum()), 4), boxes[0][positive])
        got = deltas[: len(boxes[0])][positive]
        total = F.smooth_l1_loss(got, wanted, beta=1 / 9, reduction="sum")
        hand_box_loss += float(total) / sum(len(b) for b in boxes)
    assert hand_box_loss > 0
    assert math.isclose(losses["loss_box_reg"].item(), hand_box_loss, rel_tol=1e-4)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask"}


def test_the_shared_features_get_a_third_of_each_stage_gradient_in_training():
    x = torch.randn(4, 3, requires_grad=True)
    weight = torch.randn(4, 3)
    (_ScaleGradient.apply(x, 1 / 3) * weight).sum().backward()
    assert torch.allclose(x.grad, weight / 3)

    heads = small_cascade().roi_heads
    features = {str(i): torch.randn(1, 256, s, s, requires_grad=True) for i, s in
                enumerate((16, 8, 4, 2))}  # fmt: skip
    boxes, shapes = [torch.tensor([[4.0, 4.0, 40.0, 30.0], [10.0, 20.0, 60.0, 60.0]])], [(64, 64)]
    grads = {}
    for training in (True, False):
        heads.train(training)
        logits, deltas = heads.run_stage(1, features, boxes, shapes)
        grads[training] = torch.autograd.grad((logits.sum() + deltas.sum()), features["0"])[0]
    assert grads[False].abs().sum() > 0
    assert torch.allclose(grads[True], grads[False] / 3, atol=1e-7)


def test_inference_scores_are_the_mean_softmax_of_the_stages_on_the_last_stage_boxes():
    everything = {"box_score_thresh": 0.0, "box_nms_thresh": 1.0,  # keep every (RoI, class)
                  "box_detections_per_img": 10_000, "rpn_post_nms_top_n_test": 10}  # fmt: skip
    model = small_cascade(**everything).eval()
    heads = model.roi_heads
    with torch.no_grad():
        features, proposals, shapes, _ = inputs(model)
        boxes, probabilities = proposals, []
        for stage in heads.stages:  # by hand, straight through the stage modules
            pooled = heads.box_roi_pool(features, boxes, shapes)
            logits, deltas = stage.predictor(stage.head(pooled))
            probabilities.append(F.softmax(logits, -1))
            decoded = stage.box_coder.decode(deltas, boxes).reshape(-1, 4)
            decoded = decoded.split([len(b) for b in boxes])
            boxes = [clip_boxes_to_image(b, s) for b, s in zip(decoded, shapes, strict=True)]
        mean = (probabilities[0] + probabilities[1] + probabilities[2]) / 3
        result = heads(features, proposals, shapes)[0]

    rows = mean.split([len(p) for p in proposals])
    for image_rows, final, out in zip(rows, boxes, result, strict=True):
        assert len(out["scores"]) == image_rows[:, 1:].numel()  # every (RoI, class) kept
        assert torch.allclose(out["scores"], image_rows[:, 1:].flatten().sort(descending=True)[0])
        flat = image_rows[:, 1:].flatten()  # row r, class c at r * 4 + c - 1
        index = (out["scores"][:, None] - flat[None]).abs().argmin(1)
        roi, label = index // (NUM_CLASSES - 1), index % (NUM_CLASSES - 1) + 1
        assert torch.equal(out["labels"], label)
        assert torch.allclose(out["boxes"], final[roi], atol=1e-4)
        assert out["masks"].shape == (len(out["scores"]), 1, 28, 28)  # pasted later
        assert float(out["masks"].min()) >= 0 and float(out["masks"].max()) <= 1
