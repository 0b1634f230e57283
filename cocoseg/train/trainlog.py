"""The train stage's logs: a row per iteration and per epoch (CSV) and metrics.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cocoseg.core.io import write_csv, write_json

LOSS_PARTS = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")
ITERATION_COLUMNS = ("iteration", "epoch", "lr", "loss", *LOSS_PARTS)
EPOCH_COLUMNS = ("epoch", "lr", "loss", *LOSS_PARTS, "seconds", "images_per_s")


def epoch_summary(rows: list[dict[str, Any]], n_images: int, seconds: float) -> dict[str, Any]:
    """An epoch's row from its iteration rows: last lr, mean losses, time and throughput."""
    summary = {"epoch": rows[-1]["epoch"], "lr": rows[-1]["lr"], "seconds": seconds}
    summary.update({k: float(np.mean([r[k] for r in rows])) for k in ("loss", *LOSS_PARTS)})
    summary["images_per_s"] = n_images / seconds
    return summary


def write_reports(reports: Path, history: dict[str, list], peak_mb: float | None) -> None:
    """iterations.csv, epochs.csv and metrics.json from the whole run's history."""
    write_csv(reports / "iterations.csv", history["iterations"], ITERATION_COLUMNS)
    write_csv(reports / "epochs.csv", history["epochs"], EPOCH_COLUMNS)
    epochs = history["epochs"]
    if not epochs:
        return
    metrics: dict[str, Any] = {k: epochs[-1][k] for k in ("loss", *LOSS_PARTS)}
    metrics["epochs"] = len(epochs)
    metrics["iterations"] = len(history["iterations"])
    metrics["images_per_s"] = float(np.mean([e["images_per_s"] for e in epochs]))
    metrics["seconds_per_epoch"] = float(np.mean([e["seconds"] for e in epochs]))
    if peak_mb is not None:
        metrics["peak_gpu_memory_mb"] = peak_mb
    write_json(reports / "metrics.json", metrics)
