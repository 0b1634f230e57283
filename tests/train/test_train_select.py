"""train.select and train.patience: which epoch model.pt holds, best.pt, stopping early."""

from __future__ import annotations

import json
import logging

import pytest
import synthcoco
import torch

from cocoseg.common.params import TrainParams
from cocoseg.modeling.records import load_record
from cocoseg.train import validate
from cocoseg.train.checkpoints import checkpoint_path, save_torch
from cocoseg.train.engine import train
from cocoseg.train.selection import BEST, best_row, recover_best, stalled


def rows(*aps: float | None) -> list[dict]:
    return [{"epoch": e, "segm_AP": ap} for e, ap in enumerate(aps, start=1)]


def test_the_best_epoch_has_the_highest_segm_ap_and_a_tie_goes_to_the_later_one():
    assert best_row(rows(0.1, 0.3, 0.2))["epoch"] == 2
    assert best_row(rows(0.1, 0.3, 0.3))["epoch"] == 3
    assert best_row(rows(None, 0.0))["epoch"] == 2  # nothing to score ranks below 0
    assert best_row([]) is None


@pytest.mark.parametrize(
    ("aps", "patience", "stop"),
    [((0.1, 0.3, 0.2), 2, False), ((0.1, 0.3, 0.2, 0.25), 2, True), ((0.2, 0.2, 0.2), 2, True),
     ((0.1, 0.2, 0.3), 1, False), ((0.3, 0.1), 1, True), ((0.3, 0.1, 0.1), 0, False)],
)  # fmt: skip
def test_training_stalls_after_patience_epochs_without_a_higher_ap(aps, patience, stop):
    assert stalled(rows(*aps), patience) is stop


def fake_state(folder, epoch: int, aps: tuple[float, ...]) -> dict:
    """A checkpoint of `epoch` whose weights are the number `epoch`, saved in folder."""
    state = {"epoch": epoch, "model": {"w": torch.tensor(float(epoch))},
             "history": {"val": rows(*aps)}}  # fmt: skip
    save_torch(checkpoint_path(folder, epoch), state)
    return state


def kept(folder) -> tuple[int, float]:
    record = load_record(folder / BEST)
    return record["epoch"], float(record["model"]["w"])


def test_a_resume_finds_the_best_weights_where_they_are_kept(tmp_path):
    fake_state(tmp_path, 2, (0.1, 0.5))
    state = fake_state(tmp_path, 3, (0.1, 0.5, 0.2))
    assert recover_best(tmp_path, state, write=True)  # best.pt missing: epoch 2's checkpoint
    assert kept(tmp_path) == (2, 2.0)
    later = fake_state(tmp_path, 4, (0.1, 0.5, 0.2, 0.6))
    assert recover_best(tmp_path, later, write=False) and kept(tmp_path) == (2, 2.0)
    assert recover_best(tmp_path, later, write=True)  # the best is the checkpoint resumed from
    assert kept(tmp_path) == (4, 4.0)
    checkpoint_path(tmp_path, 2).unlink()
    assert not recover_best(tmp_path, state, write=True)  # best.pt holds 4, epoch 2 is gone
    assert kept(tmp_path) == (4, 4.0)


def scripted(aps: dict[int, float]):
    """validate.score answering the given segm AP per epoch (bbox: half of it)."""

    def fake_score(model, val, epoch, p, device):
        ap = aps[epoch]
        return {"epoch": epoch, "segm_AP": ap, "segm_AP50": ap, "bbox_AP": ap / 2,
                "bbox_AP50": ap / 2, "val_seconds": 0.0}  # fmt: skip

    return fake_score


def weights(path) -> dict[str, torch.Tensor]:
    return load_record(path)["model"]


@pytest.mark.slow
def test_select_best_with_patience_stops_early_and_keeps_the_best_epoch(
    tmp_path, monkeypatch, caplog
):
    monkeypatch.setattr(validate, "score", scripted({1: 0.1, 2: 0.3, 3: 0.2, 4: 0.25}))
    subset = synthcoco.make_subset(tmp_path / "subset", n_train=2, n_val=1, size=(64, 64))
    p = TrainParams(
        weights="none", epochs=6, num_workers=0, min_size=64, max_size=64, augment="none",
        warmup_iters=1, amp=False, device="cpu", eval_every=1, select="best", patience=2,
        keep_checkpoints=1, rois_per_image=64,
    )  # fmt: skip
    out, reports = tmp_path / "models", tmp_path / "reports"
    with caplog.at_level(logging.INFO, logger="cocoseg"):
        train(p, subset, out, reports)
    assert "stopping early: no better val segm AP for 2 epochs" in caplog.text
    folder = out / "checkpoints"
    assert sorted(path.name for path in folder.iterdir()) == ["best.pt", "epoch_04.pt"]
    record = load_record(out / "model.pt")
    assert record["epoch"] == 2 and record["val"]["segm_AP"] == 0.3
    best, last = weights(folder / BEST), weights(folder / "epoch_04.pt")
    assert all(torch.equal(record["model"][k], best[k]) for k in best)
    assert any(not torch.equal(record["model"][k], last[k]) for k in last)
    summary = json.loads((reports / "live" / "metrics.json").read_text())
    assert summary["selected_epoch"] == 2 and summary["step"] == 4
    assert summary["val"] == {"segm_AP": 0.25, "bbox_AP": 0.125}  # the newest epoch's
    assert json.loads((reports / "summary.json").read_text())["selected_epoch"] == 2

    caplog.clear()  # a rerun resumes, stops at once and writes the same model
    (out / "model.pt").unlink()
    with caplog.at_level(logging.INFO, logger="cocoseg"):
        train(p, subset, out, reports)
    assert "resuming after epoch 4 of 6" in caplog.text and "stopping early" in caplog.text
    again = load_record(out / "model.pt")
    assert again["epoch"] == 2 and all(torch.equal(again["model"][k], best[k]) for k in best)
