"""The charts `dvc plots show` draws from dvc.yaml: real axis titles, titles without raw params."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from dvcrepo import dvc, make_dvc_repo
from paramfiles import recipe

from cocoseg.common.params import read_yaml
from cocoseg.train.trainlog import LOSS_PARTS, epoch_summary, open_log, write_log

PROJECT = Path(__file__).resolve().parents[1]
CLASSES = recipe()["subset"]["classes"]
# The charts of evaluate's tables, and of the train stage's DVCLive log.
EVAL_CHARTS = {
    "Mask precision-recall per class, IoU 0.5",
    "Mask precision-recall per class, IoU 0.5:0.95",
    "reports/eval/per_class.csv",
    "reports/eval/confusion.json",
}
TRAIN_CHARTS = {
    "Training loss per iteration",
    "Training loss components per iteration",
    "Learning rate per iteration",
    "Training loss per epoch",
    "Validation AP per epoch",
    "Seconds per epoch",
    "Training throughput per epoch",
}
CHARTS = EVAL_CHARTS | TRAIN_CHARTS
# What DVC titles an axis with when dvc.yaml names none.
FALLBACK_TITLES = {"", "x", "y", "step", "dvc_inferred_y_value"}


def param_keys(section: dict[str, Any], prefix: str = "") -> set[str]:
    """Every dotted key path of params.yaml ("evaluate.score_threshold", ...)."""
    keys = set()
    for key, value in section.items():
        keys.add(prefix + key)
        if isinstance(value, dict):
            keys |= param_keys(value, f"{prefix}{key}.")
    return keys


def write_eval_tables(eval_dir: Path) -> None:
    """Small stand-ins for the evaluate stage's plotted tables, in their real layout."""
    eval_dir.mkdir(parents=True)
    for name in ("pr_iou50.csv", "pr_iou50_95.csv"):
        rows = [",".join(["recall", *CLASSES])]
        rows += [f"{r / 100},{','.join('0.5' for _ in CLASSES)}" for r in range(101)]
        (eval_dir / name).write_text("\n".join(rows) + "\n")
    per_class = ["class,n_gt,segm_AP", *(f"{c},3,0.4" for c in CLASSES)]
    (eval_dir / "per_class.csv").write_text("\n".join(per_class) + "\n")
    confusion = [{"actual": CLASSES[0], "predicted": CLASSES[0]}]
    confusion.append({"actual": "background", "predicted": CLASSES[-1]})
    (eval_dir / "confusion.json").write_text(json.dumps(confusion))


def write_train_log(reports: Path, parts: tuple[str, ...] = LOSS_PARTS) -> None:
    """The train stage's DVCLive files, written by trainlog from a two-epoch history of an arch
    whose losses are `parts`."""
    history: dict[str, list] = {"iterations": [], "epochs": [], "val": []}
    for epoch in (1, 2):
        losses = {k: 1.0 / epoch for k in ("loss", *parts)}
        rows = [{"iteration": 2 * epoch + i - 1, "epoch": epoch, "lr": 0.005, **losses}
                for i in (0, 1)]  # fmt: skip
        history["iterations"] += rows
        history["epochs"].append(epoch_summary(rows, n_images=4, seconds=2.0))
        history["val"].append({"epoch": epoch, "segm_AP": 0.1 * epoch, "segm_AP50": 0.2 * epoch,
                               "bbox_AP": 0.1, "bbox_AP50": 0.2, "val_seconds": 1.0})  # fmt: skip
    write_log(open_log(reports), history, selected_epoch=2)


@pytest.fixture(scope="module")
def charts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Vega spec per chart id, as `dvc plots show --json` renders the project's dvc.yaml."""
    repo = make_dvc_repo(tmp_path_factory.mktemp("plots"))
    write_eval_tables(repo / "reports" / "eval")
    write_train_log(repo / "reports" / "train")
    shown = json.loads(dvc(repo, "plots", "show", "--json").stdout)["data"]
    return {
        chart_id: renders[0]["content"]
        for chart_id, renders in shown.items()
        if renders and renders[0].get("type") == "vega"
    }


def axis_titles(spec: dict[str, Any]) -> tuple[str, str]:
    """(x, y) axis titles of a vega-lite spec: faceted (confusion), layered (linear) or plain."""
    encoding = spec.get("encoding") or spec["spec"]["encoding"]
    y = encoding.get("y") or spec["layer"][0]["encoding"]["y"]
    return encoding["x"].get("title", ""), y.get("title", "")


def test_every_evaluate_and_train_chart_is_drawn(charts):
    assert set(charts) >= CHARTS


@pytest.mark.parametrize("chart_id", sorted(CHARTS))
def test_chart_axes_have_real_titles(charts, chart_id):
    x_title, y_title = axis_titles(charts[chart_id])
    assert x_title not in FALLBACK_TITLES and y_title not in FALLBACK_TITLES
    if chart_id.startswith("Mask precision-recall"):
        assert x_title == "recall" and y_title.startswith("precision")


@pytest.mark.parametrize("chart_id", sorted(CHARTS))
def test_chart_titles_name_no_unresolved_param(charts, chart_id):
    title = charts[chart_id]["title"]["text"]
    assert title and "${" not in title
    assert not [key for key in param_keys(recipe()) if "." in key and key in title], title


def test_an_arch_with_only_a_mask_loss_logs_every_field_the_train_charts_name(tmp_path):
    """DVC draws no chart naming a field its rows lack (FieldNotFoundError): DeepLab's rows
    hold every loss part dvc.yaml's charts name, null where it has none."""
    reports = tmp_path / "reports" / "train"
    write_train_log(reports, parts=("loss_mask",))
    charts = read_yaml((PROJECT / "dvc.yaml").read_text())["plots"]
    named = 0
    for chart in charts:
        specs = chart.values() if isinstance(chart, dict) else []  # a bare path: an image
        for path, fields in [item for spec in specs for item in (spec.get("y") or {}).items()]:
            if not path.startswith("reports/train/"):
                continue
            rows = json.loads((tmp_path / path).read_text())
            for field in [fields] if isinstance(fields, str) else fields:
                assert all(field in row for row in rows), (path, field)
                named += 1
    assert named > len(LOSS_PARTS)
    epochs = json.loads((reports / "live" / "plots" / "custom" / "epochs.json").read_text())
    assert epochs[0]["loss_classifier"] is None and epochs[0]["loss_mask"] == 1.0
