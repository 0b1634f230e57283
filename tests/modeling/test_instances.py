"""Instances from class probabilities: components per class, scores, specks, boxes, masks."""

from __future__ import annotations

import pytest
import torch

from cocoseg.modeling.instances import MIN_INSTANCE_AREA, instances_from_probabilities

H, W = 20, 24


def probabilities(blobs: list[tuple[int, slice, slice, float]], classes: int = 3) -> torch.Tensor:
    """(C, H, W) probabilities: background 0.9 everywhere, then each (class, rows, cols, p)
    blob with its class at p and the rest shared by the others."""
    probs = torch.full((classes, H, W), 0.1 / (classes - 1))
    probs[0] = 0.9
    for c, rows, cols, p in blobs:
        probs[:, rows, cols] = (1 - p) / (classes - 1)
        probs[c, rows, cols] = p
    return probs


def test_two_blobs_of_one_class_are_two_instances_and_a_speck_is_dropped():
    blobs = [
        (1, slice(2, 6), slice(2, 6), 0.8),  # 16 px: just kept
        (1, slice(10, 15), slice(10, 16), 0.6),  # 30 px, same class, apart: its own instance
        (2, slice(2, 8), slice(16, 22), 0.9),  # 36 px
        (2, slice(17, 20), slice(2, 5), 0.95),  # 9 px: a speck, dropped despite its score
    ]
    out = instances_from_probabilities(probabilities(blobs))
    assert MIN_INSTANCE_AREA == 16
    assert out["labels"].tolist() == [2, 1, 1]  # best score first
    assert out["scores"].tolist() == pytest.approx([0.9, 0.8, 0.6])
    assert out["boxes"].tolist() == [[16, 2, 22, 8], [2, 2, 6, 6], [10, 10, 16, 15]]
    masks = out["masks"]
    assert masks.shape == (3, 1, H, W) and masks.dtype == torch.float32
    expected = torch.zeros(H, W)
    expected[2:6, 2:6] = 0.8
    assert torch.allclose(masks[1, 0], expected)  # its class probability inside, 0 outside
    assert ((out["scores"] >= 0) & (out["scores"] <= 1)).all()


def test_a_component_is_scored_by_the_mean_probability_of_its_class():
    blobs = [(1, slice(0, 4), slice(0, 4), 0.6), (1, slice(0, 4), slice(4, 8), 0.9)]  # touching
    out = instances_from_probabilities(probabilities(blobs))
    assert out["labels"].tolist() == [1]  # one component: touching objects merge
    assert out["scores"].tolist() == pytest.approx([0.75])
    assert out["boxes"].tolist() == [[0, 0, 8, 4]]


def test_corner_neighbours_join_and_the_best_detections_are_kept():
    probs = probabilities([(1, slice(0, 4), slice(0, 4), 0.7), (1, slice(4, 8), slice(4, 8), 0.7)])
    assert len(instances_from_probabilities(probs)["labels"]) == 1  # 8-connected
    blobs = [(1, slice(r, r + 4), slice(0, 4), 0.5 + r / 100) for r in range(0, 20, 5)]
    out = instances_from_probabilities(probabilities(blobs), max_detections=2)
    assert out["scores"].tolist() == pytest.approx([0.65, 0.6])


def test_nothing_but_background_gives_empty_detections_of_the_right_shapes():
    out = instances_from_probabilities(probabilities([]))
    assert out["boxes"].shape == (0, 4) and out["labels"].shape == (0,)
    assert out["scores"].shape == (0,) and out["masks"].shape == (0, 1, H, W)
