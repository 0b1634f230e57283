"""The train stage's log, written by DVCLive: one step per epoch, each from the whole history.
reports/train/live holds the stage's DVC metrics (newest epoch's losses and APs) and the plots
dvc.yaml draws; each write starts from the checkpoints' history, so a resumed run neither repeats
nor loses a row. summary.json is plain JSON, not a DVC metric (`dvc exp show` stays narrow)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from dvclive import Live

from cocoseg.common.io import write_json

LOSS_PARTS = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")
LIVE_DIR = "live"
# DVCLive summary name -> (history list, key): the newest row's value is shown.
SUMMARY = {
    "train/loss": ("epochs", "loss"),
    "val/segm_AP": ("val", "segm_AP"),
    "val/bbox_AP": ("val", "bbox_AP"),
}
# Custom plot -> (history list, x, main y). dvc.yaml's plots draw them, with titles and axes.
PLOTS = {"iterations": ("iterations", "iteration", "loss"), "epochs": ("epochs", "epoch", "loss"),
         "val": ("val", "epoch", "segm_AP")}  # fmt: skip


def epoch_summary(rows: list[dict[str, Any]], n_images: int, seconds: float) -> dict[str, Any]:
    """An epoch's row from its iteration rows: last lr, mean losses (the parts the arch has),
    time and throughput."""
    summary = {"epoch": rows[-1]["epoch"], "lr": rows[-1]["lr"], "train_seconds": seconds}
    parts = [k for k in LOSS_PARTS if k in rows[-1]]
    summary.update({k: float(np.mean([r[k] for r in rows])) for k in ("loss", *parts)})
    summary["images_per_s"] = n_images / seconds
    return summary


def with_every_part(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Loss rows holding every part dvc.yaml's charts name, null where the arch has none
    (DeepLab has only loss_mask): DVC draws no chart that names a missing field."""
    return [
        r if all(k in r for k in LOSS_PARTS) else {**dict.fromkeys(LOSS_PARTS), **r} for r in rows
    ]


def open_log(reports: Path) -> Live:
    """DVCLive over reports/train/live, emptied (write_log refills it); no dvc.yaml, report or
    experiment of its own: the pipeline's dvc.yaml declares the files."""
    return Live(
        dir=str(reports / LIVE_DIR), resume=False, save_dvc_exp=False, dvcyaml=False,
        report=None, monitor_system=False,
    )  # fmt: skip


def write_log(live: Live, history: dict[str, list], selected_epoch: int | None = None) -> None:
    """Summary and plots of every epoch so far, as the step of the newest epoch."""
    if not history["epochs"]:
        return
    live.summary = {}
    live.step = history["epochs"][-1]["epoch"]
    for name, (part, key) in SUMMARY.items():
        value = history[part][-1][key] if history[part] else None
        if value is not None:  # COCO's "nothing to score" stays out of the summary
            live.log_metric(name, value, plot=False)
    if selected_epoch is not None:
        live.log_metric("selected_epoch", selected_epoch, plot=False)
    for name, (part, x, y) in PLOTS.items():
        rows = history[part] if part == "val" else with_every_part(history[part])
        live.log_plot(name, rows, x=x, y=y, template="linear")
    live.next_step()


def write_summary(
    reports: Path, history: dict[str, list], model: dict[str, Any], peak_mb: float | None
) -> None:
    """summary.json: epochs and iterations run, mean time and speed, which epoch model.pt holds."""
    epochs, val = history["epochs"], history["val"]
    summary: dict[str, Any] = {
        "epochs": len(epochs),
        "iterations": len(history["iterations"]),
        "selected_epoch": model["epoch"],
        "selected_val": model["val"],
        "images_per_s": float(np.mean([e["images_per_s"] for e in epochs])),
        "train_seconds_per_epoch": float(np.mean([e["train_seconds"] for e in epochs])),
        "val_seconds_per_epoch": float(np.mean([v["val_seconds"] for v in val])) if val else None,
    }
    if peak_mb is not None:
        summary["peak_gpu_memory_mb"] = peak_mb
    write_json(reports / "summary.json", summary)
