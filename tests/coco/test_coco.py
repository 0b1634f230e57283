"""COCO's size ranges: equal to COCOeval's, and the EDA and the error breakdown bin alike."""

from __future__ import annotations

import contextlib
import io

import maskcases
import pytest
from pycocotools.cocoeval import COCOeval, Params

from cocoseg.coco import cocoeval
from cocoseg.coco import names as coco
from cocoseg.common.errors import DataError
from cocoseg.eda import analysis as eda
from cocoseg.evaluate import error_analysis as ea
from cocoseg.evaluate import matching

BOUNDARY_AREAS = (0.0, 1023.9, 1024.0, 1024.5, 9215.0, 9216.0, 9216.5, 1e6)


def test_area_ranges_are_cocoevals():
    params = Params(iouType="segm")
    assert list(coco.AREA_RANGES) == params.areaRngLbl
    assert [list(r) for r in coco.AREA_RANGES.values()] == params.areaRng


def objects_with_areas(areas):
    """One image, one class, an annotation per `area` (the field COCOeval and we bin on)."""
    gt = maskcases.gt_coco(
        {1: [(1, maskcases.box(0, 0, 4, 4, (8, 8)))] * len(areas)}, {1: "a"}, (8, 8)
    )
    for ann, area in zip(gt.dataset["annotations"], areas, strict=True):
        ann["area"] = area
    return cocoeval.coco_from_dataset(gt.dataset)


def cocoeval_sizes(areas) -> list[str]:
    """Per area, the first of small/medium/large whose range COCOeval counts the object in."""
    gt = objects_with_areas(areas)
    evaluator = COCOeval(gt, cocoeval.results_coco(gt, [], "segm"), "segm")
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
    counted: dict[int, list[str]] = {ann_id: [] for ann_id in gt.anns}
    for entry in evaluator.evalImgs:
        label = evaluator.params.areaRngLbl[evaluator.params.areaRng.index(entry["aRng"])]
        for ann_id, ignored in zip(entry["gtIds"], entry["gtIgnore"], strict=True):
            if label != "all" and not ignored:
                counted[ann_id].append(label)
    return [counted[ann_id][0] for ann_id in sorted(counted)]


def test_an_objects_size_is_the_first_cocoeval_range_counting_it():
    assert [coco.size_name(a) for a in BOUNDARY_AREAS] == cocoeval_sizes(BOUNDARY_AREAS)
    # COCOeval's ranges share their ends: 32² and 96² fall in the smaller bucket.
    assert [coco.size_name(a) for a in (1024, 9216)] == ["small", "medium"]


def test_eda_and_error_breakdown_bin_the_boundary_areas_alike():
    areas = (1024.0, 9216.0, 9216.5)
    gt = objects_with_areas(areas)
    summary = eda.split_summary(gt.dataset, {1: "a"})["per_class"]["a"]
    missed = ea.error_counts(matching.match(gt, []))["a"]  # no predictions: every one missed
    assert {k: summary[k] for k in coco.SIZE_NAMES} == {"small": 1, "medium": 1, "large": 1}
    assert {k: missed[f"missed_{k}"] for k in coco.SIZE_NAMES} == {k: 1 for k in coco.SIZE_NAMES}


def test_an_area_outside_every_range_is_named():
    with pytest.raises(DataError, match=r"area -1\.0 is outside"):
        coco.size_name(-1.0)
