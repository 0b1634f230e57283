"""Resume: which checkpoint a re-run picks up, and a SIGKILLed run ending as if uninterrupted.

The DVCLive log a resumed run leaves holds each epoch once, in order, with the values of an
uninterrupted run (timings aside), however far the killed run had logged.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import synthcoco
import torch
from paramfiles import write_params
from PIL import Image

from cocoseg.common.io import write_bytes
from cocoseg.common.params import TrainParams, to_dict
from cocoseg.modeling.records import load_record
from cocoseg.train.checkpoints import (
    CHECKPOINT_FORMAT,
    checkpoint_path,
    clear_checkpoints,
    data_fingerprint,
    find_resume,
    save_torch,
)
from cocoseg.train.engine import train

PROJECT = Path(__file__).resolve().parents[2]
CLASSES = ["person", "cat", "sports ball", "book"]


def identity(**changes) -> dict:
    return {"params": to_dict(TrainParams(**changes)), "classes": CLASSES, "data": "abc"}


def fake_checkpoint(folder: Path, epoch: int, **changes) -> Path:
    path = checkpoint_path(folder, epoch)
    save_torch(path, {"format": CHECKPOINT_FORMAT, "epoch": epoch, **identity(**changes)})
    return path


def test_resume_picks_the_newest_checkpoint_of_the_same_run(tmp_path):
    for epoch in (1, 2, 3):
        fake_checkpoint(tmp_path, epoch)
    assert find_resume(tmp_path, identity(), 6)["epoch"] == 3
    assert find_resume(tmp_path, identity(epochs=9), 9)["epoch"] == 3  # more epochs: go on
    assert find_resume(tmp_path, identity(epochs=2), 2)["epoch"] == 2  # fewer: finish there
    assert find_resume(tmp_path / "missing", identity(), 6) is None


def test_other_params_classes_or_data_start_fresh_and_say_why(tmp_path, caplog):
    fake_checkpoint(tmp_path, 1)
    with caplog.at_level(logging.INFO, logger="cocoseg"):
        assert find_resume(tmp_path, identity(lr=0.01), 6) is None
    assert "(train params changed: lr: 0.005 -> 0.01): starting fresh" in caplog.text
    assert find_resume(tmp_path, {**identity(), "classes": CLASSES[:3]}, 6) is None
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cocoseg"):
        assert find_resume(tmp_path, {**identity(), "data": "other"}, 6) is None
    expected = f"checkpoints in {tmp_path} are from another run (training data changed): starting"
    assert f"{expected} fresh" in caplog.text
    fake_checkpoint(tmp_path, 2, schedule="cosine")
    assert find_resume(tmp_path, identity(schedule="cosine", epochs=8), 8) is None  # curve moved


def test_a_checkpoint_of_another_format_starts_fresh(tmp_path, caplog):
    path = fake_checkpoint(tmp_path, 1)
    save_torch(path, {**torch.load(path), "format": CHECKPOINT_FORMAT + 1})
    with caplog.at_level(logging.INFO, logger="cocoseg"):
        assert find_resume(tmp_path, identity(), 6) is None
    assert f"(checkpoint format {CHECKPOINT_FORMAT + 1} -> {CHECKPOINT_FORMAT})" in caplog.text


def test_the_data_fingerprint_sees_pixels_the_annotation_file_does_not(tmp_path):
    subset = synthcoco.make_subset(tmp_path / "subset", n_train=2, size=(64, 64))
    images, ann_file = subset / "images" / "train", subset / "annotations" / "train.json"
    before = data_fingerprint(images, ann_file)
    assert data_fingerprint(images, ann_file) == before
    victim = sorted(images.glob("*.jpg"))[0]
    with Image.open(victim) as im:
        changed = np.asarray(im).copy()
    changed[0, 0] = 255 - changed[0, 0]  # one pixel, same size, same annotation record
    Image.fromarray(changed).save(victim, quality=100)
    assert data_fingerprint(images, ann_file) != before


@pytest.mark.slow
def test_a_checkpoint_of_other_pixels_is_not_resumed(tmp_path, caplog):
    """The fault probe: same params and json, one train image's pixels corrected."""
    subset = synthcoco.make_subset(tmp_path / "subset", n_train=2, size=(64, 64))
    p = TrainParams(
        weights="none", epochs=1, num_workers=0, min_size=64, max_size=64, augment="none",
        warmup_iters=1, amp=False, device="cpu", rois_per_image=64,
    )  # fmt: skip
    out = tmp_path / "models"
    train(p, subset, out, tmp_path / "reports")
    first = weights(out / "model.pt")
    victim = sorted((subset / "images" / "train").glob("*.jpg"))[0]
    with Image.open(victim) as im:
        Image.fromarray(255 - np.asarray(im)).save(victim)
    with caplog.at_level(logging.INFO, logger="cocoseg"):
        train(p, subset, out, tmp_path / "reports")
    assert "(training data changed): starting fresh" in caplog.text
    assert "resuming" not in caplog.text
    second = weights(out / "model.pt")
    assert any(not torch.equal(first[k], second[k]) for k in first)


def test_unreadable_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    fake_checkpoint(tmp_path, 1)
    write_bytes(checkpoint_path(tmp_path, 2), b"PK\x03\x04 truncated")
    with caplog.at_level(logging.WARNING, logger="cocoseg"):
        assert find_resume(tmp_path, identity(), 6)["epoch"] == 1
    assert "epoch_02.pt" in caplog.text


def test_keep_checkpoints_and_select_are_no_reason_to_start_fresh(tmp_path):
    fake_checkpoint(tmp_path, 1, keep_checkpoints=0)
    assert find_resume(tmp_path, identity(keep_checkpoints=2), 6)["epoch"] == 1
    assert find_resume(tmp_path, identity(select="best"), 6)["epoch"] == 1
    assert find_resume(tmp_path, identity(eval_every=2), 6) is None  # another log


def test_repeat_threshold_is_no_reason_to_start_fresh_unless_it_repeats(tmp_path):
    fake_checkpoint(tmp_path, 1)  # uniform: the threshold repeats nothing
    assert find_resume(tmp_path, identity(repeat_threshold=0.5), 6)["epoch"] == 1
    fake_checkpoint(tmp_path, 2, sampler="repeat_factor")
    assert find_resume(tmp_path, identity(sampler="repeat_factor"), 6)["epoch"] == 2
    assert find_resume(tmp_path, identity(sampler="repeat_factor", repeat_threshold=0.5), 6) is None


@pytest.mark.parametrize(
    ("keep", "left"), [(1, ["epoch_02.pt"]), (0, ["epoch_01.pt", "epoch_02.pt"])]
)
def test_keep_checkpoints_leaves_the_newest_n_after_each_epoch(tmp_path, keep, left):
    subset = synthcoco.make_subset(tmp_path / "subset", n_train=2, size=(64, 64))
    p = TrainParams(
        weights="none", epochs=2, num_workers=0, min_size=64, max_size=64, augment="none",
        warmup_iters=1, amp=False, device="cpu", keep_checkpoints=keep, rois_per_image=64,
    )  # fmt: skip
    out = tmp_path / "models"
    train(p, subset, out, tmp_path / "reports")
    assert sorted(path.name for path in (out / "checkpoints").iterdir()) == left
    assert load_record(out / "checkpoints" / "epoch_02.pt")["epoch"] == 2


def test_fresh_start_clears_old_checkpoints_best_pt_and_killed_temp_files(tmp_path):
    fake_checkpoint(tmp_path, 1)
    (tmp_path / ".epoch_02.pt.x1y2.tmp").write_bytes(b"half")
    (tmp_path / "best.pt").write_bytes(b"another run's best epoch")
    (tmp_path / "notes.txt").write_text("kept")
    clear_checkpoints(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


# --- the stage, killed and re-run --------------------------------------------------------

TRAIN = {
    "weights": "none", "epochs": 2, "batch_size": 2, "num_workers": 0, "min_size": 64,
    "max_size": 64, "augment": "flip_rotate_color", "warmup_iters": 2, "schedule": "cosine",
    "amp": False, "device": "cpu", "deterministic": True, "seed": 7, "eval_every": 1,
    "rois_per_image": 64,
}  # fmt: skip
TIMINGS = ("train_seconds", "images_per_s", "val_seconds")


def stage_cmd(root: Path, subset: Path, run: str) -> list[str]:
    """`python stages/train.py` writing under root/run."""
    params = root / "params.yaml"
    if not params.exists():
        write_params(params, {"train": TRAIN})
    out = root / run
    return [
        sys.executable, str(PROJECT / "stages" / "train.py"), "--params", str(params),
        "--subset", str(subset), "--out", str(out / "models"), "--reports", str(out / "reports"),
    ]  # fmt: skip


def stage_env() -> dict[str, str]:
    """One thread per process: the same float arithmetic in every run."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_stage(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, env=stage_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def kill_mid_epoch_2(cmd: list[str], checkpoints: Path) -> None:
    """Start the stage, SIGKILL it a moment after epoch 1's checkpoint lands."""
    proc = subprocess.Popen(
        cmd, env=stage_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while not checkpoint_path(checkpoints, 1).exists():
        assert proc.poll() is None, "the stage ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint after 5 minutes"
        time.sleep(0.05)
    time.sleep(1.5)  # into epoch 2: an iteration here takes seconds
    assert not checkpoint_path(checkpoints, 2).exists(), "epoch 2 ended before the kill"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def read_log(reports: Path) -> dict[str, object]:
    """What DVCLive wrote: its summary and the rows of each custom plot, timings left out."""
    live = reports / "live"
    log = {"summary": json.loads((live / "metrics.json").read_text())}
    for name in ("iterations", "epochs", "val"):
        rows = json.loads((live / "plots" / "custom" / f"{name}.json").read_text())
        log[name] = [{k: v for k, v in row.items() if k not in TIMINGS} for row in rows]
    return log


def steps(log: dict) -> tuple[list, list, list, int]:
    """The iteration, epoch and val epoch numbers logged, and the summary's step."""
    return (
        [r["iteration"] for r in log["iterations"]],
        [r["epoch"] for r in log["epochs"]],
        [r["epoch"] for r in log["val"]],
        log["summary"]["step"],
    )


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_ends_like_an_uninterrupted_run(tmp_path):
    subset = synthcoco.make_subset(tmp_path / "subset", n_train=4, size=(64, 64))
    run_stage(stage_cmd(tmp_path, subset, "whole"))

    cmd = stage_cmd(tmp_path, subset, "killed")
    killed = tmp_path / "killed"
    kill_mid_epoch_2(cmd, killed / "models" / "checkpoints")
    assert not (killed / "models" / "model.pt").exists()
    assert steps(read_log(killed / "reports")) == ([1, 2], [1], [1], 1)  # logged up to epoch 1
    rerun = run_stage(cmd)
    assert "resuming after epoch 1 of 2" in rerun.stderr

    whole = tmp_path / "whole"
    expected, got = weights(whole / "models" / "model.pt"), weights(killed / "models" / "model.pt")
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected), "weights differ"
    # Nothing lost, nothing twice: the log equals the uninterrupted run's (timings aside).
    expected_log = read_log(whole / "reports")
    assert steps(expected_log) == ([1, 2, 3, 4], [1, 2], [1, 2], 2)
    assert expected_log["summary"]["selected_epoch"] == 2
    assert read_log(killed / "reports") == expected_log

    # DVC deletes model.pt before re-running a stage: the finished checkpoint restores it.
    (killed / "models" / "model.pt").unlink()
    again = run_stage(cmd)
    assert "resuming after epoch 2 of 2" in again.stderr
    restored = weights(killed / "models" / "model.pt")
    assert all(torch.equal(expected[k], restored[k]) for k in expected)
    assert read_log(killed / "reports") == expected_log

    # Killed after epoch 2 was logged but before its checkpoint: epoch 2 is logged once.
    checkpoint_path(whole / "models" / "checkpoints", 2).unlink()
    (whole / "models" / "model.pt").unlink()
    assert "resuming after epoch 1 of 2" in run_stage(stage_cmd(tmp_path, subset, "whole")).stderr
    assert read_log(whole / "reports") == expected_log
