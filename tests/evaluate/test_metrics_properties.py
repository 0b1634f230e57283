"""Property tests: overlap metrics on random masks, and mask/RLE/polygon conversions."""

from __future__ import annotations

import numpy as np
import synthcoco
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from maskcases import encode_masks
from pycocotools import mask as mask_utils

from cocoseg.coco import cocoeval
from cocoseg.evaluate import matching, metrics

# Decorator, not a profile: other test files keep their own hypothesis settings.
SETTINGS = settings(deadline=None, max_examples=80, suppress_health_check=[HealthCheck.too_slow])

shapes = st.tuples(st.integers(1, 24), st.integers(1, 24))


@st.composite
def mask_pairs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    shape = draw(shapes)
    return draw(arrays(np.bool_, shape)), draw(arrays(np.bool_, shape))


def rle(mask: np.ndarray) -> dict:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


@SETTINGS
@given(mask_pairs())
def test_iou_and_dice_are_bounded_symmetric_and_agree_with_each_other(pair):
    a, b = pair
    iou, dice = matching.pair_overlap(rle(a), rle(b))
    assert 0.0 <= iou <= dice <= 1.0
    assert matching.pair_overlap(rle(b), rle(a)) == (iou, dice)
    assert abs(dice - 2 * iou / (1 + iou)) < 1e-12


@SETTINGS
@given(mask_pairs())
def test_iou_and_dice_equal_their_pixel_definitions(pair):
    a, b = pair
    iou, dice = matching.pair_overlap(rle(a), rle(b))
    inter, union, total = (a & b).sum(), (a | b).sum(), a.sum() + b.sum()
    assert iou == (inter / union if union else 0.0)
    assert dice == (2 * inter / total if total else 0.0)
    if union:
        assert iou == mask_utils.iou([rle(a)], [rle(b)], [0])[0, 0]


@SETTINGS
@given(mask_pairs())
def test_identical_masks_give_one_and_disjoint_masks_zero(pair):
    a, b = pair
    assume(a.any())
    assert matching.pair_overlap(rle(a), rle(a)) == (1.0, 1.0)
    assert matching.pair_overlap(rle(a), rle(b & ~a)) == (0.0, 0.0)


@SETTINGS
@given(st.integers(0, 5), shapes, st.data())
def test_encoded_model_masks_decode_back_with_the_same_area(n, shape, data):
    masks = data.draw(arrays(np.bool_, (n, *shape)))
    rles = encode_masks(masks)
    assert len(rles) == n
    for mask, r in zip(masks, rles, strict=True):
        assert isinstance(r["counts"], str) and r["size"] == list(shape)
        assert (mask_utils.decode(r) == mask).all()
        assert mask_utils.area(r) == mask.sum()


@SETTINGS
@given(shapes, st.data())
def test_uncompressed_rle_predictions_keep_their_pixels(shape, data):
    mask = data.draw(arrays(np.bool_, shape))
    gt = cocoeval.coco_from_dataset(
        {
            "images": [{"id": 1, "height": shape[0], "width": shape[1]}],
            "annotations": [],
            "categories": [{"id": 1, "name": "a"}],
        }
    )
    p = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}
    p["segmentation"] = synthcoco.uncompressed_rle(mask)
    checked = metrics.check_predictions([p], gt, "p")[0]["segmentation"]
    assert mask_utils.area(checked) == mask.sum()
    assert (mask_utils.decode(checked) == mask).all()


@SETTINGS
@given(
    st.floats(0.15, 0.45),
    st.integers(3, 12),
    st.floats(0, 6.3),
    st.integers(16, 64),
    st.integers(16, 64),
)
def test_a_polygon_and_its_rasterised_rle_agree(radius, sides, phase, h, w):
    """A polygon ground truth and the RLE of its own mask have the same area and IoU 1."""
    poly = synthcoco.polygon(w / 2, h / 2, radius * min(h, w), sides, phase)
    polygon_rle = mask_utils.merge(mask_utils.frPyObjects([poly], h, w))
    area = float(mask_utils.area(polygon_rle))
    assume(area > 0)
    gt = cocoeval.coco_from_dataset(
        {
            "images": [{"id": 1, "height": h, "width": w}],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [poly],
                 "area": area, "bbox": mask_utils.toBbox(polygon_rle).tolist(), "iscrowd": 0}
            ],
            "categories": [{"id": 1, "name": "a"}],
        }
    )  # fmt: skip
    mask = gt.annToMask(gt.anns[1])
    assert mask.sum() == area
    pred = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1.0}
    pred["segmentation"] = encode_masks(mask[None].astype(bool))[0]
    found = metrics.class_matches(matching.match(gt, [pred], 0.5))[1]
    assert found.ious == found.dices == [1.0] and (found.tp, found.fp) == (1, 0)


@st.composite
def scenes(draw: st.DrawFn) -> tuple[list, list]:
    """Random ground truths and scored predictions of two classes on one small image."""
    masks = arrays(np.bool_, (10, 12))
    gts = draw(st.lists(st.tuples(st.integers(1, 2), masks), max_size=4))
    preds = draw(st.lists(st.tuples(st.integers(1, 2), masks, st.floats(0, 1)), max_size=5))
    return [(c, m) for c, m in gts if m.any()], preds


@SETTINGS
@given(scenes(), st.floats(0, 1))
def test_greedy_matching_equals_brute_force_and_counts_stay_consistent(scene, threshold):
    gts, preds = scene
    gt = cocoeval.coco_from_dataset(
        {
            "images": [{"id": 1, "height": 10, "width": 12}],
            "annotations": [
                {"id": i + 1, "image_id": 1, "category_id": c, "segmentation": rle(m),
                 "area": float(m.sum()), "bbox": [0, 0, 1, 1], "iscrowd": 0}
                for i, (c, m) in enumerate(gts)
            ],
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        }
    )  # fmt: skip
    results = [
        {"image_id": 1, "category_id": c, "bbox": [0, 0, 1, 1], "score": s, "segmentation": rle(m)}
        for c, m, s in preds
    ]
    found = metrics.class_matches(matching.match(gt, results, threshold))
    for cat in (1, 2):
        kept = [m for c, m, s in preds if c == cat and s >= threshold]
        expected = [
            max([(g & p).sum() / (g | p).sum() for p in kept], default=0.0)
            for c, g in gts
            if c == cat
        ]
        assert np.allclose(found[cat].ious, expected, rtol=0, atol=1e-12)
        assert all(d >= i for d, i in zip(found[cat].dices, found[cat].ious, strict=True))
        assert 0 <= found[cat].tp <= min(len(expected), len(kept))
        assert found[cat].tp + found[cat].fp == len(kept)  # no crowds: each is TP or FP
