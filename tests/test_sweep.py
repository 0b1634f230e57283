"""A sweep through DVC's queue: `dvc exp run --queue -S 'train.lr=a,b'`, `dvc queue start`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import synthcoco
from dvcrepo import dvc, make_dvc_repo
from paramfiles import deep_update
from test_pipeline import tiny_params

pytestmark = pytest.mark.slow

SWEEP = {"0.001", "0.002"}
PENDING = {"Queued", "Running"}
QUEUE_TIMEOUT_S = 900


def sweep_params(coco_root: Path) -> dict:
    """The smallest settings that still train, evaluate and predict on the CPU."""
    smaller = {
        "subset": {"strategy": "random", "workers": 1},  # balanced wants a val image per class
        "train": {"min_size": 96, "max_size": 128},
        "evaluate": {"num_workers": 0},
        "predict": {"num_workers": 0},
    }
    return deep_update(tiny_params(coco_root, n_train=2, n_val=2, n_test=1), smaller)


def queue_tasks(repo: Path) -> dict[str, str]:
    """Experiment name -> status ("Queued", "Running", "Success", "Failed") from `queue status`."""
    out = dvc(repo, "queue", "status").stdout
    tasks = {}
    for line in out.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 4 and fields[-1] in {*PENDING, "Success", "Failed"}:
            tasks[fields[1]] = fields[-1]
    return tasks


def worker_log(repo: Path) -> str:
    """What the celery queue worker printed (it runs detached; its output goes to a file)."""
    logs = sorted((repo / ".dvc" / "tmp" / "exps" / "celery").glob("dvc-exp-worker-*.out"))
    return "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-4000:]}" for p in logs)


def wait_for_queue(repo: Path, timeout_s: float) -> dict[str, str]:
    """Poll `dvc queue status` until no task is queued or running; fail after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        tasks = queue_tasks(repo)
        if tasks and not PENDING & set(tasks.values()):
            return tasks
        time.sleep(5)
    status = dvc(repo, "queue", "status").stdout
    raise AssertionError(f"queue still busy after {timeout_s} s:\n{status}\n{worker_log(repo)}")


def explain(repo: Path, tasks: dict[str, str]) -> str:
    """Each task's status and, for any that failed, its `dvc queue logs`."""
    parts = [json.dumps(tasks)]
    for name, status in tasks.items():
        if status != "Success":
            logs = dvc(repo, "queue", "logs", name, check=False)
            parts.append(f"--- dvc queue logs {name}\n{logs.stdout}{logs.stderr}")
    return "\n".join(parts)


def experiments(repo: Path) -> dict[str, dict]:
    """Experiment name -> {"executor": ..., "data": params and metrics} from `exp show --json`."""
    rows = json.loads(dvc(repo, "exp", "show", "--json").stdout)
    found = {}
    for row in rows:
        for exp in row.get("experiments") or []:
            for rev in exp["revs"]:
                found[rev["name"]] = {"executor": exp["executor"], "data": rev["data"]}
    return found


def test_lr_sweep_through_the_queue_runs_each_value_as_an_experiment(tmp_path):
    coco_root = synthcoco.make_coco_root(
        tmp_path / "coco", n_train=4, n_val=4, n_test=0, size=(64, 80)
    )
    repo = make_dvc_repo(tmp_path / "repo", sweep_params(coco_root))

    # Up to train: the queue is under test here; the stages after it are test_pipeline's.
    sweep = "train.lr=" + ",".join(sorted(SWEEP))
    queued = dvc(repo, "exp", "run", "--queue", "-S", sweep, "train")
    assert queued.stdout.count("Queued experiment") == 2, queued.stdout
    finished = False
    try:
        dvc(repo, "queue", "start", "-j", "1")
        tasks = wait_for_queue(repo, QUEUE_TIMEOUT_S)
        finished = True
    finally:  # never leave a detached worker training after a failure
        dvc(repo, "queue", "stop", *([] if finished else ["--kill"]), check=False)
    assert len(tasks) == 2 and set(tasks.values()) == {"Success"}, explain(repo, tasks)

    shown = experiments(repo)
    assert set(shown) == set(tasks), json.dumps(shown, indent=1)[:4000]
    lr_of = {}
    for name, exp in shown.items():
        assert exp["executor"]["name"] == "dvc-task", exp["executor"]  # ran by the queue worker
        params = exp["data"]["params"]["params.yaml"]["data"]
        lr_of[name] = str(params["train"]["lr"])
        assert params["data"]["coco_root"] == str(coco_root)
        metrics = exp["data"]["metrics"]["reports/train/live/metrics.json"]["data"]
        assert isinstance(metrics["val"]["segm_AP"], float), (name, metrics)
    assert set(lr_of.values()) == SWEEP

    # The headline metrics leave room for train.lr in DVC's table (no --no-pager, so it is
    # not squeezed to a terminal's width).
    table = dvc(repo, "exp", "show", "--only-changed", "--drop", "Created").stdout
    for name, lr in lr_of.items():
        row = next((line for line in table.splitlines() if f"[{name}]" in line), "")
        assert f" {lr} " in row, table
