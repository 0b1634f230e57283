"""Semantic metrics: pixel IoU and Dice against a hand count on tiny maps, overlap rules, crowds."""

from __future__ import annotations

import functools

import maskcases
import numpy as np
import pytest

from cocoseg.evaluate import metrics, semantic

H = W = 10
CATS = {1: "a", 2: "b", 3: "c", 4: "d"}
box = functools.partial(maskcases.box, size=(H, W))
gt_coco = functools.partial(maskcases.gt_coco, cats=CATS, size=(H, W))
pred = maskcases.pred

# Image 1: b (9 px) overlaps a (16 px) and wins the 4 shared pixels (the smaller wins); an
# uncovered crowd (16 px) is ignored. Image 2: c alone. d is nowhere.
OBJECTS = {
    1: [(1, box(0, 0, 4, 4)), (2, box(2, 2, 5, 5)), (1, box(6, 6, 10, 10), True)],
    2: [(3, box(0, 0, 5, 2))],
}
PREDS = [
    pred(1, 1, box(0, 0, 4, 4), 0.9),  # wins (3, 3) from b: the higher score
    pred(1, 2, box(3, 3, 6, 6), 0.8),
    pred(1, 1, box(6, 6, 8, 8), 0.7),  # on the crowd: not counted
    pred(1, 3, box(0, 8, 2, 10), 0.3),  # under the score threshold
    pred(2, 1, box(8, 0, 10, 2), 0.95),  # on background
]


def test_pixel_iou_and_dice_equal_a_hand_count():
    gt = gt_coco(OBJECTS)
    m = semantic.semantic_metrics(gt, metrics.check_predictions(PREDS, gt, "t"), 0.5)
    rows = m["per_class"]
    # a: 12 true pixels (16 less b's 4), predicted 16 + 4, all 12 found.
    assert rows["a"] == {"iou": 12 / 20, "dice": 24 / 32, "gt_pixels": 12, "pred_pixels": 20}
    # b: 9 true, 8 predicted (9 less the one a took), 3 shared.
    assert rows["b"] == {"iou": 3 / 14, "dice": 6 / 17, "gt_pixels": 9, "pred_pixels": 8}
    assert rows["c"] == {"iou": 0.0, "dice": 0.0, "gt_pixels": 10, "pred_pixels": 0}
    assert rows["d"] == {"iou": None, "dice": None, "gt_pixels": 0, "pred_pixels": 0}
    # background: 63 + 90 true, 60 + 96 predicted, 58 + 86 shared.
    assert rows["background"]["iou"] == pytest.approx(144 / 165)
    assert list(rows) == ["background", "a", "b", "c", "d"]
    # the means: the classes with pixels (not d), background left out
    assert m["mIoU"] == pytest.approx((12 / 20 + 3 / 14 + 0) / 3)
    assert m["mDice"] == pytest.approx((24 / 32 + 6 / 17 + 0) / 3)


def test_the_score_threshold_decides_which_predictions_are_flattened():
    gt = gt_coco(OBJECTS)
    preds = metrics.check_predictions(PREDS, gt, "t")
    rows = semantic.semantic_metrics(gt, preds, 0.3)["per_class"]
    assert rows["c"]["pred_pixels"] == 4 and rows["c"]["iou"] == 0.0
    assert semantic.semantic_metrics(gt, preds, 1.0)["mIoU"] == 0.0  # nothing kept


def test_ground_truth_map_smaller_instance_wins_and_covered_crowd_counts():
    objects = {1: [(1, box(0, 0, 6, 6)), (2, box(1, 1, 3, 3)), (1, box(0, 0, 10, 10), True)]}
    gt = gt_coco(objects)
    truth = semantic.truth_map(gt, 1, {1: 1, 2: 2, 3: 3, 4: 4})
    expected = np.full((H, W), semantic.IGNORED)
    expected[0:6, 0:6] = 1
    expected[1:3, 1:3] = 2
    assert (truth == expected).all()


def test_perfect_predictions_score_one_and_the_headline_carries_the_mean(tmp_path):
    objects = {1: [(1, box(0, 0, 4, 4)), (2, box(5, 5, 9, 9))]}
    gt = gt_coco(objects)
    preds = [pred(1, c, m, 0.9) for c, m in objects[1]]
    evaluation = metrics.evaluate(gt, metrics.check_predictions(preds, gt, "t"), 0.5)
    assert evaluation.metrics["semantic"]["mIoU"] == 1.0
    assert metrics.headline(evaluation.metrics)["semantic"] == {"mIoU": 1.0}
