"""Metrics: hand-computed cases, and COCO numbers equal to pycocotools run directly."""

from __future__ import annotations

import contextlib
import copy
import csv
import functools
import io
import json
from pathlib import Path

import maskcases
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cocoseg.coco import cocoeval
from cocoseg.common.errors import DataError
from cocoseg.evaluate import matching, metrics

H = W = 20
CATS = {1: "a", 2: "b"}


box = functools.partial(maskcases.box, size=(H, W))
gt_coco = functools.partial(maskcases.gt_coco, cats=CATS, size=(H, W))
rle, pred = maskcases.rle, maskcases.pred


def score(objects: dict, preds: list[dict], threshold: float = 0.5) -> dict:
    gt = gt_coco(objects)
    return metrics.evaluate(gt, metrics.check_predictions(preds, gt, "test"), threshold).metrics


# --- hand-computed cases ----------------------------------------------------------------------


def test_two_overlapping_squares_have_the_known_iou_and_dice():
    # 10x10 squares offset by 5 columns: intersection 50, union 150, sizes 100 + 100.
    m = score({1: [(1, box(0, 0, 10, 10))]}, [pred(1, 1, box(5, 0, 15, 10))])
    assert m["iou"]["mean"] == m["iou"]["a"] == round(1 / 3, 6)
    assert m["dice"]["mean"] == m["dice"]["a"] == 0.5
    # IoU 1/3 < 0.5: one false positive and one miss for the one-to-one matching.
    assert m["match"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "tp": 0, "fp": 1, "fn": 1}


def test_pair_overlap_counts_pixels():
    iou, dice = matching.pair_overlap(rle(box(0, 0, 4, 5)), rle(box(2, 0, 8, 5)))
    # |A| = 20, |B| = 30, |A∩B| = 10: IoU 10/40, Dice 20/50.
    assert (iou, dice) == (0.25, 0.4)


def test_a_missed_ground_truth_counts_zero():
    objects = {1: [(1, box(0, 0, 5, 5)), (1, box(10, 10, 20, 20))]}
    m = score(objects, [pred(1, 1, box(0, 0, 5, 5))])
    assert m["iou"]["a"] == m["dice"]["a"] == 0.5
    assert m["match"] == {"precision": 1.0, "recall": 0.5, "f1": round(2 / 3, 6), "tp": 1,
                          "fp": 0, "fn": 1}  # fmt: skip


def test_a_prediction_of_another_class_does_not_match():
    m = score({1: [(1, box(0, 0, 10, 10))]}, [pred(1, 2, box(0, 0, 10, 10))])
    assert m["iou"] == {"mean": 0.0, "a": 0.0, "b": None}
    assert m["dice"] == {"mean": 0.0, "a": 0.0, "b": None}
    assert (m["match"]["tp"], m["match"]["fp"], m["match"]["fn"]) == (0, 1, 1)
    assert m["per_class"]["a"]["segm_AP"] == 0.0
    assert m["per_class"]["b"]["segm_AP"] is None  # no ground truth: COCO's -1


@pytest.mark.parametrize(("threshold", "expected"), [(0.5, 0.0), (0.3, 1.0), (0.29, 1.0)])
def test_scores_below_the_threshold_are_ignored(threshold, expected):
    objects = {1: [(1, box(0, 0, 10, 10))]}
    m = score(objects, [pred(1, 1, box(0, 0, 10, 10), score=0.3)], threshold)
    assert m["iou"]["mean"] == m["dice"]["mean"] == m["match"]["recall"] == expected
    assert m["segm"]["AP"] == 1.0  # COCO mAP uses every prediction whatever the threshold


def test_an_image_without_predictions_and_an_image_without_ground_truth():
    objects = {1: [(1, box(0, 0, 10, 10))], 2: [(2, box(0, 0, 10, 10))], 3: []}
    preds = [pred(1, 1, box(0, 0, 10, 10)), pred(3, 2, box(5, 5, 15, 15))]
    m = score(objects, preds)
    # Image 2's ground truth is missed (0); image 3's prediction is a false positive only.
    assert m["iou"] == {"mean": 0.5, "a": 1.0, "b": 0.0}
    assert (m["match"]["tp"], m["match"]["fp"], m["match"]["fn"]) == (1, 1, 1)
    assert m["per_class"]["b"]["n_gt"] == 1


def test_greedy_takes_the_highest_iou_not_the_highest_score():
    objects = {1: [(1, box(0, 0, 10, 10))]}
    preds = [pred(1, 1, box(0, 0, 10, 5), score=0.99), pred(1, 1, box(0, 0, 10, 9), score=0.6)]
    m = score(objects, preds)
    assert m["iou"]["a"] == 0.9
    assert m["dice"]["a"] == round(2 * 90 / 190, 6)


def test_one_prediction_may_serve_several_ground_truths_greedily_but_one_to_one_once():
    objects = {1: [(1, box(0, 0, 10, 10)), (1, box(10, 0, 20, 10))]}
    m = score(objects, [pred(1, 1, box(0, 0, 20, 10))])
    assert m["iou"]["a"] == 0.5 and m["dice"]["a"] == round(2 * 100 / 300, 6)
    assert (m["match"]["tp"], m["match"]["fp"], m["match"]["fn"]) == (1, 0, 1)


def test_a_duplicate_prediction_is_a_false_positive():
    objects = {1: [(1, box(0, 0, 10, 10))]}
    preds = [pred(1, 1, box(0, 0, 10, 10), 0.9), pred(1, 1, box(0, 0, 10, 10), 0.8)]
    m = score(objects, preds)
    assert (m["match"]["tp"], m["match"]["fp"]) == (1, 1)
    assert m["match"]["precision"] == 0.5 and m["iou"]["a"] == 1.0


def test_crowd_regions_are_neither_ground_truths_nor_false_positives():
    objects = {1: [(1, box(0, 0, 10, 10)), (1, box(10, 10, 20, 20), 1)]}
    preds = [pred(1, 1, box(0, 0, 10, 10)), pred(1, 1, box(12, 12, 18, 18))]
    m = score(objects, preds)
    assert m["per_class"]["a"]["n_gt"] == 1 and m["iou"]["a"] == 1.0
    assert (m["match"]["tp"], m["match"]["fp"], m["match"]["fn"]) == (1, 0, 0)
    # Outside the crowd region the same prediction is a false positive.
    preds[1] = pred(1, 1, box(12, 0, 18, 6))
    assert score(objects, preds)["match"]["fp"] == 1


def test_zero_predictions_finish_with_zeros_and_nulls():
    objects = {1: [(1, box(0, 0, 10, 10))], 2: [(2, box(0, 0, 5, 5))]}
    m = score(objects, [])
    assert m["segm"]["AP"] == m["bbox"]["AP"] == m["segm"]["AR100"] == 0.0
    assert m["iou"]["mean"] == m["dice"]["mean"] == 0.0
    assert m["match"] == {"precision": None, "recall": 0.0, "f1": 0.0, "tp": 0, "fp": 0, "fn": 2}


def test_perfect_predictions_score_one_on_the_synthetic_subset(synthetic_subset):
    gt = metrics.load_ground_truth(synthetic_subset / "annotations" / "val.json")
    preds = [
        {**a, "segmentation": rle(gt.annToMask(a)), "score": 1.0}
        for a in gt.dataset["annotations"]
        if not a["iscrowd"]
    ]
    m = metrics.evaluate(gt, metrics.check_predictions(preds, gt, "perfect"), 0.5).metrics
    assert m["segm"]["AP"] == m["bbox"]["AP"] == 1.0
    assert m["dice"]["mean"] == m["iou"]["mean"] == m["match"]["f1"] == 1.0
    assert all(v == 1.0 for v in m["dice"].values())
    assert {r["segm_AP"] for r in m["per_class"].values()} == {1.0}


# --- COCO numbers against pycocotools run directly ---------------------------------------------


def quiet(fn, *args):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


def direct_cocoeval(gt_file: Path, preds_file: Path, iou_type: str, cat_ids=None) -> COCOeval:
    """pycocotools on the files: bbox on the file as is, segm on it without the boxes."""
    gt = quiet(COCO, str(gt_file))
    if iou_type == "bbox":
        dt = quiet(gt.loadRes, str(preds_file))
    else:
        anns = json.loads(preds_file.read_text())
        dt = quiet(gt.loadRes, [{k: v for k, v in a.items() if k != "bbox"} for a in anns])
    evaluator = COCOeval(gt, dt, iou_type)
    if cat_ids is not None:
        evaluator.params.catIds = cat_ids
    quiet(evaluator.evaluate)
    quiet(evaluator.accumulate)
    quiet(evaluator.summarize)
    return evaluator


def coco_value(s: float):
    return None if s < 0 else float(s)


def assert_same_as_pycocotools(gt_file: Path, preds_file: Path, threshold: float = 0.5) -> dict:
    """Summary and per-class numbers equal pycocotools' exactly; the report holds them rounded."""
    gt = metrics.load_ground_truth(gt_file)
    preds = metrics.load_predictions(preds_file, gt)
    m = metrics.evaluate(gt, preds, threshold).metrics
    for iou_type in metrics.IOU_TYPES:
        ours = cocoeval.run_cocoeval(gt, preds, iou_type)
        direct = direct_cocoeval(gt_file, preds_file, iou_type)
        assert np.array_equal(ours.stats, direct.stats), iou_type
        assert list(m[iou_type].values()) == metrics.rounded(list(map(coco_value, direct.stats)))
        per_class = metrics.per_class_ap(ours)
        for cat_id, cat in gt.cats.items():
            one = direct_cocoeval(gt_file, preds_file, iou_type, [cat_id]).stats[:3]
            assert list(per_class[cat_id].values()) == list(map(coco_value, one)), cat["name"]
            report = m["per_class"][cat["name"]]
            got = [report[f"{iou_type}_{k}"] for k in ("AP", "AP50", "AP75")]
            assert got == metrics.rounded(list(map(coco_value, one)))
    return m


def perturbed(gt: COCO, rng: np.random.Generator, *, keep: float = 0.8, extra: int = 1) -> list:
    """Ground truth turned into scored predictions: shifted, eroded, dropped, plus extras."""
    preds = []
    for ann in gt.dataset["annotations"]:
        if ann["iscrowd"] or rng.random() > keep:
            continue
        mask = gt.annToMask(ann)
        if rng.random() < 0.5:
            mask = np.roll(mask, tuple(rng.integers(-6, 7, 2)), axis=(0, 1))
        else:
            mask = erode(mask, int(rng.integers(1, 4)))
        if mask.any():
            preds.append(pred(ann["image_id"], ann["category_id"], mask, float(rng.random())))
    images = sorted(gt.imgs)
    for image_id in rng.choice(images, size=extra * len(images)):
        img = gt.imgs[int(image_id)]
        mask = np.zeros((img["height"], img["width"]), dtype=np.uint8)
        y, x = rng.integers(0, img["height"] - 10), rng.integers(0, img["width"] - 10)
        mask[y : y + rng.integers(5, 60), x : x + rng.integers(5, 60)] = 1
        cat = int(rng.choice(sorted(gt.cats)))
        preds.append(pred(int(image_id), cat, mask, float(rng.random())))
    return preds


def erode(mask: np.ndarray, steps: int) -> np.ndarray:
    """Binary erosion by a 3x3 cross, `steps` times (array shifts, no pixel loops)."""
    m = mask.astype(bool)
    for _ in range(steps):
        p = np.pad(m, 1)
        m = m & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m.astype(np.uint8)


def test_coco_numbers_equal_pycocotools_on_synthetic_data(synthetic_subset, tmp_path):
    gt_file = synthetic_subset / "annotations" / "val.json"
    preds = perturbed(metrics.load_ground_truth(gt_file), np.random.default_rng(0))
    preds_file = tmp_path / "preds.json"
    preds_file.write_text(json.dumps(preds))
    m = assert_same_as_pycocotools(gt_file, preds_file)
    assert 0 < m["segm"]["AP"] < 1 and 0 < m["bbox"]["AP"] < 1


def greedy_reference(gt: COCO, preds: list[dict], threshold: float) -> tuple[float, float]:
    """Mean greedy IoU and Dice by brute force on decoded masks (numpy, per image)."""
    ious, dices = [], []
    for ann in gt.dataset["annotations"]:
        if ann["iscrowd"]:
            continue
        g = gt.annToMask(ann).astype(bool)
        best = (0.0, 0.0)
        for p in preds:
            if (p["image_id"], p["category_id"]) != (ann["image_id"], ann["category_id"]):
                continue
            if p["score"] < threshold:
                continue
            d = mask_utils.decode(p["segmentation"]).astype(bool)
            inter, union = (g & d).sum(), (g | d).sum()
            if union and inter / union > best[0]:
                best = (inter / union, 2 * inter / (g.sum() + d.sum()))
        ious.append(best[0])
        dices.append(best[1])
    return float(np.mean(ious)), float(np.mean(dices))


@pytest.mark.real_data
def test_coco_numbers_equal_pycocotools_on_real_masks(coco_sample, tmp_path):
    """Real COCO polygons and crowd RLEs (original ids 1, 17, 37, 84), perturbed."""
    source = json.loads((coco_sample / "annotations" / "instances_val2017.json").read_text())
    keep_cats = {1, 17, 37, 84}
    anns = [a for a in source["annotations"] if a["category_id"] in keep_cats]
    image_ids = sorted({a["image_id"] for a in anns})[:40]
    subset = {
        "images": [i for i in source["images"] if i["id"] in set(image_ids)],
        "annotations": [a for a in anns if a["image_id"] in set(image_ids)],
        "categories": [c for c in source["categories"] if c["id"] in keep_cats],
    }
    assert any(a["iscrowd"] for a in subset["annotations"])
    gt_file = tmp_path / "gt.json"
    gt_file.write_text(json.dumps(subset))
    gt = metrics.load_ground_truth(gt_file)
    preds = perturbed(gt, np.random.default_rng(1), keep=0.85, extra=2)
    preds_file = tmp_path / "preds.json"
    preds_file.write_text(json.dumps(preds))

    m = assert_same_as_pycocotools(gt_file, preds_file, threshold=0.3)
    assert 0.2 < m["segm"]["AP"] < 1
    iou, dice = greedy_reference(gt, preds, 0.3)
    checked = metrics.check_predictions(preds, gt, "p")
    found = metrics.class_matches(matching.match(gt, checked, 0.3))
    assert np.mean([v for f in found.values() for v in f.ious]) == pytest.approx(iou, abs=1e-12)
    assert np.mean([v for f in found.values() for v in f.dices]) == pytest.approx(dice, abs=1e-12)
    assert m["iou"]["mean"] == round(iou, 6) and m["dice"]["mean"] == round(dice, 6)


def test_thousands_of_predictions_per_image_are_capped_like_coco(tmp_path):
    objects = {1: [(1, box(0, 0, 10, 10)), (2, box(10, 10, 20, 20))], 2: [(1, box(5, 5, 15, 15))]}
    gt = gt_coco(objects)
    rng = np.random.default_rng(0)
    preds = [pred(a["image_id"], a["category_id"], gt.annToMask(a), 1.0)
             for a in gt.dataset["annotations"]]  # fmt: skip
    for image_id in (1, 2):
        for k in range(1500):  # junk: tiny squares off the objects, lower scores
            cat = 1 + k % 2
            x, y = (int(v) for v in rng.integers(0, 3, 2))
            preds.append(pred(image_id, cat, box(17 + x, y, 18 + x, y + 1), float(rng.random())))
    gt_file, preds_file = tmp_path / "gt.json", tmp_path / "preds.json"
    gt_file.write_text(json.dumps(gt.dataset))
    preds_file.write_text(json.dumps(preds))

    m = assert_same_as_pycocotools(gt_file, preds_file, threshold=0.0)
    assert m["segm"]["AP"] == 1.0
    # At most 100 predictions per image and class take part: 4 such groups, 3 hold a hit.
    assert (m["match"]["tp"], m["match"]["fp"]) == (3, 4 * 100 - 3)
    assert m["iou"]["mean"] == 1.0


# --- checked inputs and written reports --------------------------------------------------------


@pytest.fixture
def gt_file(tmp_path) -> Path:
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt_coco({7: [(1, box(0, 0, 10, 10))]}).dataset))
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"image_id": 99}, "prediction #0: image_id 99 is not in the ground truth"),
        ({"category_id": 5}, "prediction #0: category_id 5 is not in the ground truth"),
        ({"image_id": "7"}, "image_id '7' is not an integer id"),
        ({"score": "0.9"}, "score '0.9' is not a finite number"),
        ({"bbox": [1, 2, 3]}, "bbox [1, 2, 3] is not [x, y, width, height]"),
        ({"segmentation": [[0, 0, 5, 0, 5, 5]]}, "'segmentation' must be an RLE"),
        ({"segmentation": {"size": [10, 20], "counts": "a"}}, "mask size [10, 20] differs"),
    ],
)
def test_a_bad_prediction_is_named_with_the_file_and_the_id(gt_file, tmp_path, change, message):
    preds_file = tmp_path / "preds.json"
    preds_file.write_text(json.dumps([{**pred(7, 1, box(0, 0, 5, 5)), **change}]))
    gt = metrics.load_ground_truth(gt_file)
    with pytest.raises(DataError, match=r"preds\.json") as err:
        metrics.load_predictions(preds_file, gt)
    assert message in str(err.value)


def test_a_missing_key_is_named(gt_file, tmp_path):
    preds_file = tmp_path / "preds.json"
    p = pred(7, 1, box(0, 0, 5, 5))
    del p["score"]
    preds_file.write_text(json.dumps([p]))
    with pytest.raises(DataError, match=r"preds.json: prediction #0: missing \['score'\]"):
        metrics.load_predictions(preds_file, metrics.load_ground_truth(gt_file))


@pytest.mark.parametrize("text", ['[{"image_id": 7, "categ', '{"image_id": 7}', ""])
def test_a_truncated_or_non_list_file_is_refused_by_name(gt_file, tmp_path, text):
    preds_file = tmp_path / "preds.json"
    preds_file.write_text(text)
    with pytest.raises(DataError, match=r"preds\.json: (not valid JSON|COCO results must be)"):
        metrics.load_predictions(preds_file, metrics.load_ground_truth(gt_file))


@pytest.mark.parametrize(
    ("text", "detail"),
    [('{"names": ["a"]}', "missing required field `classes`"), ('["a"]', "Expected `object`"),
     ('{"classes": [1]}', "Expected `str`, got `int` - at `$.classes[0]`")],
)  # fmt: skip
def test_a_malformed_classes_record_is_named(gt_file, tmp_path, text, detail):
    preds_file = tmp_path / "preds.json"
    preds_file.write_text(json.dumps([pred(7, 1, box(0, 0, 5, 5))]))
    (tmp_path / "preds.classes.json").write_text(text)
    with pytest.raises(DataError, match=r"preds\.classes\.json: expected") as err:
        metrics.load_predictions(preds_file, metrics.load_ground_truth(gt_file))
    assert detail in str(err.value)


def test_uncompressed_rle_predictions_are_accepted(gt_file):
    gt = metrics.load_ground_truth(gt_file)
    mask = box(0, 0, 5, H)  # column-major runs: 0 unset, 100 set (5 columns), 300 unset
    p = {**pred(7, 1, mask), "segmentation": {"size": [H, W], "counts": [0, 100, 300]}}
    checked = metrics.check_predictions([p], gt, "x")[0]["segmentation"]
    assert isinstance(checked["counts"], str)
    assert (mask_utils.decode(checked) == mask).all()


def test_reports_are_nested_json_and_csvs_dvc_can_plot(tmp_path):
    objects = {1: [(1, box(0, 0, 10, 10))], 2: [(1, box(2, 2, 12, 12))]}
    gt = gt_coco(objects)
    preds = [pred(1, 1, box(0, 0, 10, 10), 0.9), pred(2, 1, box(4, 4, 14, 14), 0.8)]
    evaluation = metrics.evaluate(gt, metrics.check_predictions(preds, gt, "t"), 0.5)
    metrics.write_reports(evaluation, tmp_path / "m.json", tmp_path / "d.json", tmp_path / "eval")

    # metrics.json: the few numbers `dvc exp show` compares, to 3 decimals; details.json: all.
    written = json.loads((tmp_path / "m.json").read_text())
    details = json.loads((tmp_path / "d.json").read_text())
    assert written == {
        "segm": {"AP": round(details["segm"]["AP"], 3)},
        "bbox": {"AP": round(details["bbox"]["AP"], 3)},
        "semantic": {"mIoU": round(details["semantic"]["mIoU"], 3)},
        "iou": round(details["iou"]["mean"], 3), "dice": round(details["dice"]["mean"], 3),
        "precision": round(details["match"]["precision"], 3),
        "recall": round(details["match"]["recall"], 3), "f1": round(details["match"]["f1"], 3),
    }  # fmt: skip
    assert details["iou"]["mean"] != written["iou"]  # rounded: the detail has more digits
    assert details == json.loads(json.dumps(evaluation.metrics))
    assert list(details["segm"]) == list(cocoeval.SUMMARY_NAMES) == list(details["bbox"])
    assert details["per_class"]["b"]["segm_AP"] is None  # no ground truth: null, not -1

    with (tmp_path / "eval" / "per_class.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == ["a", "b"]
    assert rows[0]["segm_AP"] == str(details["per_class"]["a"]["segm_AP"])
    assert rows[1]["segm_AP"] == ""  # no ground truth: an empty cell, not -1

    for name in ("pr_iou50.csv", "pr_iou50_95.csv"):
        with (tmp_path / "eval" / name).open() as f:
            curve = list(csv.DictReader(f))
        assert len(curve) == 101 and list(curve[0]) == ["recall", "a", "b"]
        assert float(curve[0]["recall"]) == 0.0 and float(curve[-1]["recall"]) == 1.0
        assert curve[0]["b"] == ""
    with (tmp_path / "eval" / "pr_iou50.csv").open() as f:
        iou50 = list(csv.DictReader(f))
    # Image 2's prediction has IoU 64/136 < 0.5: precision 1 up to recall 0.5, then 0.
    assert {float(r["a"]) for r in iou50 if float(r["recall"]) <= 0.5} == {1.0}
    assert {float(r["a"]) for r in iou50 if float(r["recall"]) > 0.5} == {0.0}


def test_evaluate_does_not_change_the_callers_predictions():
    gt = gt_coco({1: [(1, box(0, 0, 10, 10))]})
    preds = metrics.check_predictions([pred(1, 1, box(0, 0, 10, 10))], gt, "t")
    before = copy.deepcopy(preds)
    metrics.evaluate(gt, preds, 0.5)
    assert preds == before


@pytest.mark.parametrize(
    ("text", "message"),
    [("[]", "top level is not an object"), ('{"images": []}', "missing ['annotations',")],
)
def test_a_malformed_ground_truth_file_is_named(tmp_path, text, message):
    path = tmp_path / "val.json"
    path.write_text(text)
    with pytest.raises(DataError, match=r"val\.json: not a COCO annotation file") as err:
        metrics.load_ground_truth(path)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (7, "prediction #0: a prediction must be an object, got int"),
        ({"segmentation": {"size": [H, W], "counts": 5}}, "RLE 'counts' must be a string"),
    ],
)
def test_odd_prediction_entries_are_named(gt_file, entry, message):
    if isinstance(entry, dict):
        entry = {**pred(7, 1, box(0, 0, 5, 5)), **entry}
    with pytest.raises(DataError, match=r"p\.json") as err:
        metrics.check_predictions([entry], metrics.load_ground_truth(gt_file), "p.json")
    assert message in str(err.value)
