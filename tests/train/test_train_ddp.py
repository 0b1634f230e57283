"""Two-process DistributedDataParallel on the CPU (gloo) through torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import synthcoco
from paramfiles import write_params

from cocoseg.modeling.records import load_trained_model

PROJECT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_torchrun_two_processes_train_and_rank_0_alone_writes(tmp_path):
    subset = synthcoco.make_subset(tmp_path / "subset", n_train=4, size=(64, 64))
    train = {
        "weights": "none", "epochs": 1, "batch_size": 2, "num_workers": 0, "min_size": 64,
        "max_size": 64, "warmup_iters": 1, "amp": False, "device": "cpu", "eval_every": 1,
        "rois_per_image": 64,
    }  # fmt: skip
    params = write_params(tmp_path / "params.yaml", {"train": train})
    out, reports = tmp_path / "models", tmp_path / "reports"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(PROJECT / "stages" / "train.py"), "--params", str(params), "--subset", str(subset),
        "--out", str(out), "--reports", str(reports),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "device cpu x2" in proc.stderr  # both ranks joined; only rank 0 logs
    assert proc.stderr.count("wrote ") == 1

    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["epoch_01.pt", "model.pt"]
    _, classes = load_trained_model(out / "model.pt")
    assert classes == ["person", "cat", "sports ball", "book"]
    live = reports / "live"
    iterations = json.loads((live / "plots" / "custom" / "iterations.json").read_text())
    assert len(iterations) == 1  # 4 images, 2 per rank, batch 2: one step per rank
    (epoch,) = json.loads((live / "plots" / "custom" / "epochs.json").read_text())
    assert epoch["images_per_s"] > 0 and epoch["epoch"] == 1
    (val,) = json.loads((live / "plots" / "custom" / "val.json").read_text())  # rank 0 scored
    assert val["epoch"] == 1 and 0 <= val["segm_AP"] <= 1
    assert json.loads((live / "metrics.json").read_text())["step"] == 1
