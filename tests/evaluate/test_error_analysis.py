"""Error analysis: hand-built masks with one error of each type, counts, confusion and ΔAP."""

from __future__ import annotations

import colorsys
import csv
import functools
import io
import itertools
import json

import maskcases
import numpy as np
import pytest
from PIL import Image

from cocoseg.evaluate import error_analysis as ea
from cocoseg.evaluate import metrics
from cocoseg.evaluate.matching import match
from cocoseg.viz import figures as visualize
from cocoseg.viz.figures import OUTCOME_COLORS, error_bars, error_grid, error_type_style, mpl_color

H = W = 128
CATS = {1: "a", 2: "b"}
A, B = 1, 2


box = functools.partial(maskcases.box, size=(H, W))
gt_coco = functools.partial(maskcases.gt_coco, cats=CATS, size=(H, W))
rle, pred = maskcases.rle, maskcases.pred


def checked(gt, preds):
    return metrics.check_predictions(preds, gt, "test")


def analyse(gt, preds, threshold, base_ap=None):
    return ea.analyse(gt, match(gt, checked(gt, preds)), threshold, base_ap)


# One prediction of each outcome on image 1; image 2 holds a missed small and a missed large.
A1, B1, A2 = box(0, 0, 20, 20), box(30, 0, 50, 20), box(60, 0, 100, 40)  # A2: 1600 px, medium
CROWD_A = box(100, 60, 128, 100)
MIXED_GT = {
    1: [(A, A1), (B, B1), (A, A2), (A, CROWD_A, 1)],
    2: [(A, box(0, 0, 10, 10)), (B, box(0, 20, 128, 128))],  # 100 px small, 13824 px large
}
MIXED_PREDS = [
    pred(1, B, B1, 0.95),  # true positive (b)
    pred(1, A, A1, 0.9),  # true positive (a)
    pred(1, A, A1, 0.8),  # duplicate of A1
    pred(1, A, B1, 0.7),  # classification: on b's object
    pred(1, A, box(80, 0, 120, 40), 0.6),  # localisation: IoU 800 / 2400 with A2
    pred(1, B, box(0, 100, 10, 110), 0.5),  # background
    pred(1, A, box(100, 60, 128, 80), 0.4),  # inside a's crowd region: ignored
]


@pytest.fixture
def mixed():
    gt = gt_coco(MIXED_GT)
    return gt, analyse(gt, MIXED_PREDS, 0.3)


def test_each_prediction_gets_its_one_outcome(mixed):
    _, report = mixed
    outcomes = [v.outcome for v in report.matching.verdicts]
    assert outcomes == [ea.TP, ea.TP, "duplicate", "classification", "localisation",
                        "background", ea.CROWD]  # fmt: skip
    assert [a["id"] for a in report.matching.missed] == [3, 5, 6]


def test_counts_per_class_and_overall(mixed):
    _, report = mixed
    zero = dict.fromkeys(ea.ERROR_TYPES, 0)
    a_errors = ["localisation", "classification", "duplicate", "missed_small", "missed_medium"]
    assert report.counts["a"] == {**zero, **dict.fromkeys(a_errors, 1)}
    assert report.counts["b"] == {**zero, "background": 1, "missed_large": 1}
    assert report.counts["all"] == dict.fromkeys(ea.ERROR_TYPES, 1)


def test_confusion_rows(mixed):
    _, report = mixed
    pairs = [(r["actual"], r["predicted"]) for r in report.confusion]
    assert pairs == [
        ("b", "b"),
        ("a", "a"),
        ("background", "a"),  # duplicate
        ("b", "a"),  # classification
        ("background", "a"),  # localisation
        ("background", "b"),  # background; the crowd-ignored prediction has no row
        ("a", "background"),  # A2 (medium), missed
        ("a", "background"),  # image 2's small a
        ("b", "background"),  # image 2's large b
    ]


def test_scores_below_the_threshold_take_no_part(mixed):
    gt, _ = mixed
    report = analyse(gt, MIXED_PREDS, 0.85)
    assert [v.outcome for v in report.matching.verdicts] == [ea.TP, ea.TP]
    assert report.counts["all"] == {**dict.fromkeys(ea.ERROR_TYPES, 0), "missed_small": 1,
                                    "missed_medium": 1, "missed_large": 1}  # fmt: skip


@pytest.mark.parametrize(
    ("objects", "expected"),
    [
        # Same mask for an a and a b object: the second a prediction is a duplicate, not a
        # classification error.
        ([(A, A1), (B, A1)], "duplicate"),
        # A crowd region of a covers it too: COCOeval ignores it before calling it a duplicate.
        ([(A, A1), (B, A1), (A, A1, 1)], ea.CROWD),
        # b's object under it and an a object at IoU 1/3: classification before localisation.
        ([(B, A1), (A, box(10, 0, 30, 20))], "classification"),
    ],
)
def test_precedence_when_several_outcomes_apply(objects, expected):
    gt = gt_coco({1: objects})
    preds = [pred(1, A, A1, 0.9), pred(1, A, A1, 0.8)]
    verdicts = match(gt, checked(gt, preds), 0.0).verdicts
    assert verdicts[1].outcome == expected


def test_perfect_predictions_have_no_errors_and_a_diagonal_confusion():
    gt = gt_coco({1: [(A, A1), (B, B1)], 2: [(B, A2)]})
    preds = [pred(1, A, A1, 0.9), pred(1, B, B1, 0.8), pred(2, B, A2, 0.7)]
    report = analyse(gt, preds, 0.5)
    assert all(n == 0 for counts in report.counts.values() for n in counts.values())
    assert sorted((r["actual"], r["predicted"]) for r in report.confusion) == [
        ("a", "a"),
        ("b", "b"),
        ("b", "b"),
    ]
    assert all(d == 0.0 for per_type in report.delta_ap.values() for d in per_type.values())
    assert ea.worst_images(report.matching, 5) == []


def test_delta_ap_of_absent_types_is_exactly_zero():
    gt = gt_coco({1: [(A, A1)]})
    # The background prediction outscores the true positive: precision 1/2 at recall 1.
    preds = [pred(1, A, box(50, 50, 60, 60), 0.9), pred(1, A, A1, 0.5)]
    report = analyse(gt, preds, 0.0)
    absent = {k: v for k, v in report.delta_ap["all"].items() if k != "background"}
    assert absent == dict.fromkeys(["localisation", "classification", "duplicate", "missed"], 0.0)
    assert report.delta_ap["all"]["background"] == pytest.approx(0.5)
    assert report.delta_ap["a"]["background"] == pytest.approx(0.5)
    assert report.delta_ap["b"]["background"] is None  # b has no ground truth: no AP


def test_delta_ap_of_missed_is_the_recall_it_costs(mixed):
    _, report = mixed
    # a finds 1 of 3 with its best score (precision 1 up to recall 1/3: 34 of COCO's 101
    # recall points); b finds 1 of 2 (51 points). Without the missed ones both reach AP 1.
    assert report.delta_ap["a"]["missed"] == pytest.approx(1 - 34 / 101)
    assert report.delta_ap["b"]["missed"] == pytest.approx(1 - 51 / 101)
    assert report.delta_ap["all"]["missed"] == pytest.approx(1 - 85 / 202)


def test_removing_every_error_gives_ap_one(mixed):
    gt, _ = mixed
    everything = match(gt, checked(gt, MIXED_PREDS))
    base = ea.mask_ap(*ea.fixed_inputs(gt, everything, ()))
    assert base["all"] < 1
    fixed = ea.mask_ap(*ea.fixed_inputs(gt, everything, ea.DELTA_TYPES))
    assert fixed == pytest.approx({"all": 1.0, "a": 1.0, "b": 1.0}, abs=1e-12)


def test_delta_ap_base_is_the_reports_segm_ap(mixed):
    gt, _ = mixed
    evaluation = metrics.evaluate(gt, checked(gt, MIXED_PREDS), 0.3)
    everything = match(gt, checked(gt, MIXED_PREDS))
    base = ea.mask_ap(*ea.fixed_inputs(gt, everything, ()))
    assert round(base["all"], 6) == evaluation.metrics["segm"]["AP"]
    assert base == evaluation.mask_ap  # so the scoring stage hands it over, not recomputes
    assert (
        analyse(gt, MIXED_PREDS, 0.3, evaluation.mask_ap).delta_ap
        == analyse(gt, MIXED_PREDS, 0.3).delta_ap
    )


def test_worst_images_order_by_error_count_then_id():
    small = box(0, 0, 5, 5)
    gt = gt_coco({3: [(A, small), (B, small)], 1: [(A, small)], 2: [(A, small), (B, small)], 4: []})
    matched = match(gt, [], 0.5)
    assert ea.worst_images(matched, 2) == [2, 3]
    assert ea.worst_images(matched, 10) == [2, 3, 1]


def test_metrics_and_files(mixed, tmp_path):
    _, report = mixed
    found = ea.error_metrics(report)["errors"]
    assert set(found) == {"all", "delta_ap"}  # per class: errors.csv, not metrics
    assert found["all"]["duplicate"] == 1 and found["all"]["missed_large"] == 1
    assert set(found["delta_ap"]) == set(ea.DELTA_TYPES)
    assert found["delta_ap"]["missed"] == round(1 - 85 / 202, 6)

    ea.write_error_reports(report, tmp_path)
    with open(tmp_path / "errors.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == ["a", "b"]
    assert list(rows[0])[1:] == list(ea.ERROR_TYPES)
    assert rows[1]["background"] == "1" and rows[1]["missed_large"] == "1"
    with open(tmp_path / "errors_per_class.csv", newline="") as f:
        deltas = list(csv.DictReader(f))
    assert list(deltas[0]) == ["class", *ea.DELTA_TYPES]
    assert float(deltas[0]["missed"]) == pytest.approx(1 - 34 / 101, abs=1e-6)
    assert json.loads((tmp_path / "confusion.json").read_text()) == report.confusion
    confusion_csv = list(csv.DictReader(io.StringIO((tmp_path / "confusion.csv").read_text())))
    assert confusion_csv == report.confusion


def test_every_outcome_has_a_colour():
    assert set(OUTCOME_COLORS) == {ea.TP, ea.CROWD, *ea.PREDICTION_ERRORS, "missed"}


def test_error_figures_write_pngs(mixed, tmp_path):
    gt, report = mixed
    rows = []
    for image_id in ea.worst_images(report.matching, 2):
        gts, preds = ea.image_outcomes(report.matching, gt, image_id)
        rows.append((np.full((H, W, 3), 90, dtype=np.uint8), gts, preds))
    assert {p["outcome"] for p in rows[0][2]} == {ea.TP, ea.CROWD, *ea.PREDICTION_ERRORS}
    assert {g["outcome"] for g in rows[0][1]} == {ea.TP, "missed", ea.CROWD}
    error_grid(rows, CATS, tmp_path / "worst.png", row_labels=["1", "2"])
    error_bars(ea.count_rows(report), ea.ERROR_TYPES, tmp_path / "errors.png")
    for name in ("worst.png", "errors.png"):
        with Image.open(tmp_path / name) as img:
            assert img.format == "PNG" and img.width > 300


def test_the_breakdown_refuses_a_thresholded_matching(mixed):
    gt, _ = mixed  # its ΔAP would explain the AP of the kept predictions, not the report's
    with pytest.raises(ValueError, match="matching of every prediction"):
        ea.analyse(gt, match(gt, checked(gt, MIXED_PREDS), 0.3), 0.3)


def _lab(rgb) -> np.ndarray:
    """CIE L*a*b* of an sRGB colour given as 0..1 floats (D65 white)."""
    c = np.asarray(rgb, dtype=float)
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    to_xyz = [[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]
    xyz = np.asarray(to_xyz) @ linear / [0.95047, 1.0, 1.08883]
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def _delta_e(a, b) -> float:
    """Perceptual colour difference (CIE76): about 2 is just noticeable, 25+ is obvious."""
    return float(np.linalg.norm(_lab(a) - _lab(b)))


def test_error_types_are_told_apart_and_missed_sizes_are_one_family():
    styles = {t: error_type_style(t) for t in ea.ERROR_TYPES}
    missed = [t for t in ea.ERROR_TYPES if t.startswith("missed_")]
    others = [t for t in ea.ERROR_TYPES if t not in missed]
    assert len(set(styles.values())) == len(styles)
    for a, b in itertools.combinations([*others, "missed_large"], 2):
        assert _delta_e(styles[a][0], styles[b][0]) > 25, (a, b)
    for a, b in itertools.product(others, missed):
        assert _delta_e(styles[a][0], styles[b][0]) > 40, (a, b)
    assert len({styles[t][1] for t in missed}) == len(missed), "each size its own hatch"
    hues = [colorsys.rgb_to_hsv(*styles[t][0])[0] for t in missed]
    assert max(hues) - min(hues) < 0.02, "the missed sizes share one hue"
    # worst_images.png colours its outcomes exactly as errors.png does.
    for outcome, error_type in (("localisation", "localisation"), ("missed", "missed_large")):
        assert styles[error_type][0] == mpl_color(OUTCOME_COLORS[outcome])


def test_error_chart_has_its_title_axis_titles_and_one_legend_entry_per_type(
    mixed, tmp_path, monkeypatch
):
    _, report = mixed
    figures = []
    monkeypatch.setattr(visualize, "save_figure", lambda fig, path, **options: figures.append(fig))
    error_bars(
        ea.count_rows(report), ea.ERROR_TYPES, tmp_path / "e.png", title="Errors at score ≥ 0.3"
    )
    (ax, *_) = figures[0].axes
    assert ax.get_title() == "Errors at score ≥ 0.3"
    assert ax.get_xlabel() and ax.get_ylabel()
    legend = ax.get_legend()
    assert len(legend.get_texts()) == len(ea.ERROR_TYPES)
    drawn = {(tuple(h.get_facecolor()[:3]), h.get_hatch() or "") for h in legend.legend_handles}
    assert drawn == {(tuple(c), hatch) for c, hatch in map(error_type_style, ea.ERROR_TYPES)}
