"""The one matching: its threshold views equal direct matchings, its TPs COCOeval's own."""

from __future__ import annotations

import contextlib
import io
import json

import maskcases
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycocotools.cocoeval import COCOeval

from cocoseg.coco import cocoeval
from cocoseg.evaluate import error_analysis as ea
from cocoseg.evaluate import matching, metrics
from cocoseg.evaluate.matching import CROWD, TP

SIZE = (12, 12)
SCORES = (0.2, 0.4, 0.6, 0.8)  # few values: tied scores and thresholds on a score are common


@st.composite
def boxes(draw: st.DrawFn) -> tuple[int, int, int, int]:
    x0, y0 = draw(st.integers(0, 9)), draw(st.integers(0, 9))
    return x0, y0, x0 + draw(st.integers(1, 5)), y0 + draw(st.integers(1, 5))


@st.composite
def scenes(draw: st.DrawFn) -> tuple[dict, list]:
    """Two images of boxes of classes 1 and 2 (some crowd); predictions near them or anywhere."""
    objects = {
        image_id: draw(st.lists(st.tuples(st.integers(1, 2), boxes(), st.booleans()), max_size=4))
        for image_id in (1, 2)
    }
    preds = []
    for _ in range(draw(st.integers(0, 12))):
        image_id, cat = draw(st.sampled_from([1, 2])), draw(st.integers(1, 2))
        near = objects[image_id] and draw(st.booleans())
        x0, y0, x1, y1 = draw(st.sampled_from(objects[image_id]))[1] if near else draw(boxes())
        dx, dy = draw(st.integers(-1, 1)), draw(st.integers(-1, 1))
        mask = maskcases.box(max(x0 + dx, 0), max(y0 + dy, 0), x1 + dx, y1 + dy, SIZE)
        preds.append(maskcases.pred(image_id, cat, mask, draw(st.sampled_from(SCORES))))
    return objects, preds


def summary(m: matching.Matching) -> tuple:
    """Everything a matching says, with predictions by identity."""
    verdicts = [(id(v.pred), v.outcome, v.gt_category_id, v.gt_id) for v in m.verdicts]
    overlaps = [m.best_overlap(a) for a in m.ground_truths]
    return verdicts, [a["id"] for a in m.missed], overlaps


@settings(deadline=None, max_examples=120, suppress_health_check=[HealthCheck.too_slow])
@given(scenes(), st.sampled_from((0.0, *SCORES, 0.5, 1.0)), st.integers(1, 4))
def test_the_matching_at_a_threshold_is_the_all_scores_matching_restricted(
    scene, threshold, max_dets
):
    objects, preds = scene
    gt = maskcases.gt_coco(
        {
            i: [(c, maskcases.box(*b, SIZE), crowd) for c, b, crowd in objs]
            for i, objs in objects.items()
        },
        {1: "a", 2: "b"},
        SIZE,
    )
    everything = matching.match(gt, preds, max_dets=max_dets)
    direct = matching.match(gt, preds, threshold, max_dets=max_dets)
    assert summary(everything.at(threshold)) == summary(direct)
    assert summary(everything.at(threshold).at(0.0)) == summary(direct)  # a view stays a view
    kept = [p for p in preds if p["score"] >= threshold]
    assert our_outcomes(direct, kept) == cocoeval_outcomes(gt, kept, max_dets)


def test_a_tie_goes_to_the_later_ground_truth_as_in_cocoeval():
    # The first prediction overlaps both objects at IoU 80/120; the second only the first, at
    # 0.9. Taking the later object on the tie leaves the first free: two hits, no miss.
    first, second = maskcases.box(0, 0, 10, 10, (20, 20)), maskcases.box(4, 0, 14, 10, (20, 20))
    gt = maskcases.gt_coco({1: [(1, first), (1, second)]}, {1: "a"}, (20, 20))
    preds = [
        maskcases.pred(1, 1, maskcases.box(2, 0, 12, 10, (20, 20)), 0.9),
        maskcases.pred(1, 1, maskcases.box(0, 0, 9, 10, (20, 20)), 0.8),
    ]
    found = matching.match(gt, preds)
    assert [(v.outcome, v.gt_id) for v in found.verdicts] == [(TP, 2), (TP, 1)]
    assert our_outcomes(found, preds) == cocoeval_outcomes(gt, preds)


# --- against pycocotools' own matching on real COCO annotations -------------------------------


def four_class_sample(coco_sample, n_images: int) -> dict:
    """The val sample's person, cat, sports ball and book annotations on its first images."""
    source = json.loads((coco_sample / "annotations" / "instances_val2017.json").read_text())
    keep_cats = {1, 17, 37, 84}
    anns = [a for a in source["annotations"] if a["category_id"] in keep_cats]
    image_ids = set(sorted({a["image_id"] for a in anns})[:n_images])
    return {
        "images": [i for i in source["images"] if i["id"] in image_ids],
        "annotations": [a for a in anns if a["image_id"] in image_ids],
        "categories": [c for c in source["categories"] if c["id"] in keep_cats],
    }


def synthetic_predictions(gt, rng: np.random.Generator) -> list[dict]:
    """Ground-truth masks shifted, relabelled, duplicated or kept, on crowds, plus random boxes."""
    preds = []
    cats = sorted(gt.cats)

    def add(ann, mask, cat=None):
        if mask.any():
            cat = cat or ann["category_id"]
            preds.append(maskcases.pred(ann["image_id"], cat, mask, float(rng.random())))

    for ann in gt.dataset["annotations"]:
        mask, kind = gt.annToMask(ann), rng.integers(6)
        if kind == 0 or ann["iscrowd"]:
            add(ann, mask)
        elif kind == 1:  # shifted: any IoU
            add(ann, np.roll(mask, tuple(rng.integers(-15, 16, 2)), axis=(0, 1)))
        elif kind == 2:
            add(ann, mask, int(rng.choice([c for c in cats if c != ann["category_id"]])))
        elif kind == 3:
            add(ann, mask)
            add(ann, np.roll(mask, tuple(rng.integers(-2, 3, 2)), axis=(0, 1)))
    for image_id in rng.choice(sorted(gt.imgs), size=len(gt.imgs)):
        img = gt.imgs[int(image_id)]
        mask = np.zeros((img["height"], img["width"]), dtype=np.uint8)
        y, x = rng.integers(0, img["height"] - 10), rng.integers(0, img["width"] - 10)
        mask[y : y + rng.integers(5, 150), x : x + rng.integers(5, 150)] = 1
        add({"image_id": int(image_id), "category_id": int(rng.choice(cats))}, mask)
    person = next(a for a in gt.dataset["annotations"] if a["category_id"] == 1)
    for k in range(120):  # more than COCOeval's 100 on one image and class
        add(person, np.roll(gt.annToMask(person), (k % 11, k // 11), axis=(0, 1)))
    return preds


def cocoeval_outcomes(gt, preds: list[dict], max_dets: int = 100) -> dict[str, set]:
    """COCOeval's own matching at IoU 0.5, area all: dt ids are 1 + index in `preds`."""
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(gt, cocoeval.results_coco(gt, preds, "segm"), "segm")
        evaluator.params.areaRng, evaluator.params.areaRngLbl = [[0, 1e5**2]], ["all"]
        evaluator.params.iouThrs, evaluator.params.maxDets = np.array([0.5]), [max_dets]
        evaluator.evaluate()
    found: dict[str, set] = {"tp": set(), "crowd": set(), "fp": set(), "missed": set()}
    for entry in filter(None, evaluator.evalImgs):
        dts = zip(entry["dtIds"], entry["dtMatches"][0], entry["dtIgnore"][0], strict=True)
        for dt_id, gt_id, ignored in dts:
            if ignored:
                found["crowd"].add(dt_id)
            elif gt_id:
                found["tp"].add((dt_id, int(gt_id)))
            else:
                found["fp"].add(dt_id)
        gts = zip(entry["gtIds"], entry["gtMatches"][0], entry["gtIgnore"], strict=True)
        found["missed"] |= {gt_id for gt_id, taken, ignored in gts if not (taken or ignored)}
    return found


def our_outcomes(m: matching.Matching, preds: list[dict]) -> dict[str, set]:
    """The same sets from our matching, predictions numbered as COCOeval's loadRes does."""
    dt_id = {id(p): k + 1 for k, p in enumerate(preds)}
    found: dict[str, set] = {
        "tp": {(dt_id[id(v.pred)], v.gt_id) for v in m.verdicts if v.outcome == TP},
        "crowd": {dt_id[id(v.pred)] for v in m.verdicts if v.outcome == CROWD},
        "missed": {a["id"] for a in m.missed},
    }
    found["fp"] = (
        {dt_id[id(v.pred)] for v in m.verdicts} - found["crowd"] - {d for d, _ in found["tp"]}
    )
    return found


@pytest.mark.real_data
def test_tp_fp_fn_equal_cocoevals_own_matching_on_real_annotations(coco_sample):
    gt = cocoeval.coco_from_dataset(four_class_sample(coco_sample, 40))
    assert any(a["iscrowd"] for a in gt.dataset["annotations"])
    preds = metrics.check_predictions(synthetic_predictions(gt, np.random.default_rng(3)), gt, "p")
    everything = matching.match(gt, preds)
    assert {v.outcome for v in everything.verdicts} == {TP, CROWD, *matching.PREDICTION_ERRORS}
    for threshold in (0.0, 0.4, 0.8):
        kept = [p for p in preds if p["score"] >= threshold]
        expected = cocoeval_outcomes(gt, kept)
        found = everything.at(threshold)
        assert our_outcomes(found, kept) == expected, threshold
        # The metrics and the error breakdown read these same verdicts.
        per_class = metrics.class_matches(found).values()
        tp, fp, fn = (sum(getattr(c, k) for c in per_class) for k in ("tp", "fp", "fn"))
        assert (tp, fp, fn) == tuple(len(expected[k]) for k in ("tp", "fp", "missed"))
        counts = ea.error_counts(found)["all"]
        assert sum(counts[t] for t in matching.PREDICTION_ERRORS) == fp
        assert sum(counts[t] for t in ea.MISSED_SIZES) == fn
