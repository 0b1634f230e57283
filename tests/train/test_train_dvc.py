"""The train stage under DVC: repro from synthetic COCO, its metrics, the model as a registry
artifact (`dvc artifacts get`), then an experiment on train.lr.
"""

from __future__ import annotations

import json

import pytest
import synthcoco
import torch
from dvcrepo import dvc, make_dvc_repo, run, stages_ran

pytestmark = pytest.mark.slow
ARTIFACT = "cocoseg-maskrcnn"  # dvc.yaml's artifacts: entry for models/model.pt


def test_dvc_repro_train_then_exp_run_lr_reruns_train_not_subset(tmp_path):
    coco_root = synthcoco.make_coco_root(
        tmp_path / "coco", n_train=8, n_val=6, n_test=0, size=(64, 80)
    )
    params = {
        "data": {"coco_root": str(coco_root)},
        "subset": {"n_train": 4, "n_val": 2, "n_test": 1, "test_from": "val2017",
                   "strategy": "random", "workers": 1},
        "train": {"weights": "none", "epochs": 1, "batch_size": 2, "num_workers": 0,
                  "min_size": 64, "max_size": 64, "warmup_iters": 1, "amp": False,
                  "device": "cpu", "eval_every": 1},
    }  # fmt: skip
    repo = make_dvc_repo(tmp_path / "repo", params)

    first = dvc(repo, "repro", "train")
    assert stages_ran(first.stdout) == {"check_params", "download", "subset", "train"}, first.stdout
    assert (repo / "models" / "model.pt").exists()
    assert (repo / "models" / "checkpoints" / "epoch_01.pt").exists()
    # DVCLive's summary is the stage's one metrics file: a few numbers, the epoch as its step.
    shown = json.loads(dvc(repo, "metrics", "show", "--json").stdout)
    (workspace,) = shown.values()
    metrics = {path: m["data"] for path, m in workspace["data"].items() if "data" in m}
    assert set(metrics) == {"reports/train/live/metrics.json"}, metrics  # evaluate's not yet run
    live = metrics["reports/train/live/metrics.json"]
    assert set(live) == {"train", "val", "selected_epoch", "step"}, live
    assert set(live["val"]) == {"segm_AP", "bbox_AP"} and 0 <= live["val"]["segm_AP"] <= 1
    assert (live["step"], live["selected_epoch"]) == (1, 1) and live["train"]["loss"] > 0
    assert stages_ran(dvc(repo, "repro", "train").stdout) == set()
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-q", "-m", "baseline")

    # The model registry: a GTO version tag, then `dvc artifacts get` by name, offline.
    run(repo, "git", "tag", "-a", f"{ARTIFACT}@v0.1.0", "-m", "Registering version v0.1.0")
    dvc(repo, "artifacts", "get", ".", ARTIFACT, "-o", str(tmp_path / "got.pt"))
    got = (tmp_path / "got.pt").read_bytes()
    assert got == (repo / "models" / "model.pt").read_bytes()
    assert torch.load(tmp_path / "got.pt", weights_only=True)["epoch"] == 1

    exp = dvc(repo, "exp", "run", "-S", "train.lr=0.01", "train")
    assert stages_ran(exp.stdout) == {"check_params", "train"}, exp.stdout
    log = exp.stdout + exp.stderr
    assert "train params changed: lr: 0.005 -> 0.01): starting fresh" in log  # no stale resume

    plots = json.loads(dvc(repo, "plots", "show", "--json").stdout)
    drawn = json.dumps(plots)
    for column in ("loss", "loss_mask", "loss_rpn_box_reg", "segm_AP", "bbox_AP50",
                   "Training loss per iteration", "Validation AP per epoch"):  # fmt: skip
        assert column in drawn, column
