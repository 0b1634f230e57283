"""Which epoch model.pt holds (train.select) and when training stops early (train.patience), by
the val rows' segm AP. With select best, checkpoints/best.pt holds the best epoch's weights
(written after that epoch's checkpoint, never thinned), so a resumed run still has them."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from cocoseg.common.errors import CocosegError, DataError
from cocoseg.modeling.records import load_record
from cocoseg.train.checkpoints import checkpoint_path, save_torch

log = logging.getLogger(__name__)

BEST = "best.pt"


def _ap(row: dict[str, Any]) -> float:
    """A row's val segm AP; COCO's 'nothing to score' ranks below every score."""
    return -1.0 if row["segm_AP"] is None else row["segm_AP"]


def best_row(val: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The val row with the highest segm AP; a tie goes to the later epoch."""
    return max(val, key=lambda row: (_ap(row), row["epoch"]), default=None)


def stalled(val: list[dict[str, Any]], patience: int) -> bool:
    """True once `patience` epochs have passed since val segm AP last rose (patience 0: never);
    the first scored epoch is a rise, an equal AP is not (max keeps the first best)."""
    if patience == 0 or not val:
        return False
    return val[-1]["epoch"] - max(val, key=_ap)["epoch"] >= patience


def save_best(folder: Path, model: torch.nn.Module, history: dict[str, list]) -> None:
    """best.pt := this model's weights when its epoch, the newest, is the best so far."""
    best = best_row(history["val"])
    if best is not None and best["epoch"] == history["epochs"][-1]["epoch"]:
        weights = getattr(model, "module", model).state_dict()
        save_torch(folder / BEST, {"model": weights, "epoch": best["epoch"], "val": best})


def _kept_epoch(folder: Path) -> int | None:
    """The epoch best.pt holds, or None when there is none to read."""
    try:
        return load_record(folder / BEST)["epoch"] if (folder / BEST).exists() else None
    except DataError as err:
        log.warning("ignoring %s", err)
        return None


def recover_best(folder: Path, state: dict[str, Any], write: bool) -> bool:
    """Before resuming from `state`: best.pt holds its history's best epoch, or False (start
    fresh) when best.pt, `state` and that epoch's checkpoint all lack it. Only `write` writes."""
    best = best_row(state["history"]["val"])
    if best is None or _kept_epoch(folder) == best["epoch"]:
        return True
    source = checkpoint_path(folder, best["epoch"])
    if best["epoch"] != state["epoch"] and not source.exists():
        log.info("select best: epoch %d's weights are not kept: starting fresh", best["epoch"])
        return False
    if write:
        weights = (state if best["epoch"] == state["epoch"] else load_record(source))["model"]
        save_torch(folder / BEST, {"model": weights, "epoch": best["epoch"], "val": best})
    return True


def selected(
    folder: Path, model: torch.nn.Module, history: dict[str, list], select: str
) -> tuple[int, dict[str, Any], dict[str, Any] | None]:
    """(epoch, weights, val row) for model.pt: the last epoch's, or the best's from best.pt."""
    last = history["epochs"][-1]["epoch"]
    rows = {row["epoch"]: row for row in history["val"]}
    row = best_row(history["val"]) if select == "best" else rows.get(last)
    if row is None or row["epoch"] == last:
        return last, getattr(model, "module", model).state_dict(), row
    kept = load_record(folder / BEST)
    if kept["epoch"] != row["epoch"]:
        raise CocosegError(f"{folder / BEST} holds epoch {kept['epoch']}, not {row['epoch']}")
    return row["epoch"], kept["model"], row
