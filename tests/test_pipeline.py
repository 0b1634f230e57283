"""The whole pipeline as users drive it: dvc repro, exp run -S, metrics diff, plots, the model
registry, push/pull."""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
from pathlib import Path

import pytest
import synthcoco
import torch
from dvcrepo import PROJECT, dvc, make_dvc_repo, run, stages_ran
from PIL import Image
from pycocotools.coco import COCO

pytestmark = pytest.mark.slow

ALL_STAGES = {"check_params", "download", "subset", "eda", "train", "infer", "evaluate", "predict"}
CHECK = {"check_params"}  # runs whenever params.yaml changes; cheap, and changes nothing else
ARTIFACT = "cocoseg-maskrcnn"  # dvc.yaml's artifacts: entry for models/model.pt


def tiny_params(coco_root: Path, n_train: int, n_val: int, n_test: int) -> dict:
    """Params small enough for a CPU run in about a minute; everything else as shipped."""
    return {
        "data": {"coco_root": str(coco_root)},
        "subset": {
            "n_train": n_train,
            "n_val": n_val,
            "n_test": n_test,
            "test_from": "val2017",
            "min_images_per_class": 1,
            "workers": 2,
        },
        "eda": {"n_samples": 4},
        "train": {
            "weights": "none",
            "epochs": 1,
            "batch_size": 2,
            "num_workers": 0,
            "min_size": 128,
            "max_size": 160,
            "warmup_iters": 2,
            "amp": False,
            "device": "cpu",
            "eval_every": 1,
            "rois_per_image": 64,  # torchvision's 512 takes 4x the time here
        },
        "evaluate": {"n_samples": 2, "device": "cpu", "score_threshold": 0.05, "num_workers": 0},
        "predict": {"device": "cpu", "score_threshold": 0.05, "num_workers": 0},
    }


def commit_all(repo: Path, message: str) -> None:
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-q", "-m", message)


def check_outputs(repo: Path) -> None:
    """Every declared output exists and holds what it should."""
    subset = repo / "data" / "subset"
    val = COCO(str(subset / "annotations" / "val.json"))
    for name in ("train", "val", "test"):
        assert (subset / "annotations" / f"{name}.json").stat().st_size > 0
    assert json.loads((repo / "data" / "download.json").read_text())["files"]

    figures = sorted((repo / "reports" / "eda" / "figures").glob("*.png"))
    assert len(figures) >= 4
    for png in figures:
        with Image.open(png) as im:
            assert im.format == "PNG" and 200 <= im.width <= 4000 and 150 <= im.height <= 4000
    summary = json.loads((repo / "reports" / "eda" / "summary.json").read_text())
    assert summary["val"]["images"] == len(val.getImgIds())

    record_keys = {"model", "classes", "arch", "min_size", "max_size", "params"}
    record = torch.load(repo / "models" / "model.pt", weights_only=True)
    assert record_keys <= set(record) and record["classes"] == synthcoco.TARGET_NAMES
    assert sorted((repo / "models" / "checkpoints").glob("epoch_*.pt"))
    live = repo / "reports" / "train" / "live"
    epochs = [row["epoch"] for row in json.loads((live / "plots/custom/epochs.json").read_text())]
    scored = json.loads((live / "plots" / "custom" / "val.json").read_text())
    assert [row["epoch"] for row in scored] == epochs and epochs  # eval_every 1: every epoch
    assert all(0 <= row["segm_AP"] <= 1 for row in scored)
    assert json.loads((live / "metrics.json").read_text())["step"] == epochs[-1]
    assert json.loads((repo / "reports/train/summary.json").read_text())["epochs"] == len(epochs)
    sampling = json.loads((repo / "reports/train/sampling.json").read_text())
    n_train = len(json.loads((subset / "annotations" / "train.json").read_text())["images"])
    assert sampling["sampler"] == "uniform" and sampling["epochs"][0]["images"] == n_train

    metrics = json.loads((repo / "reports" / "metrics.json").read_text())
    assert set(metrics) == {"segm", "bbox", "semantic", "iou", "dice", "precision", "recall", "f1"}
    assert set(metrics["semantic"]) == {"mIoU"} and 0 <= metrics["semantic"]["mIoU"] <= 1
    details = json.loads((repo / "reports" / "eval" / "details.json").read_text())
    assert list(details["per_class"]) == synthcoco.TARGET_NAMES
    predictions = repo / "reports" / "eval" / "predictions.json"
    if json.loads(predictions.read_text()):
        val.loadRes(str(predictions))

    test_json = repo / "reports" / "predictions" / "test.json"
    assert isinstance(json.loads(test_json.read_text()), list)
    assert (repo / "reports" / "predictions" / "contact_sheet.png").exists()


def check_exp_show_is_readable(repo: Path) -> None:
    """No EDA numbers and no per-class numbers in `dvc exp show`: the headline only."""
    shown = json.loads(dvc(repo, "exp", "show", "--json").stdout)
    metrics = {}
    for rev in shown:
        for path, data in (rev.get("data", {}).get("metrics") or {}).items():
            metrics[path] = data["data"]
    assert set(metrics) == {"reports/metrics.json", "reports/train/live/metrics.json"}, metrics
    assert set(metrics["reports/metrics.json"]) == {
        "segm", "bbox", "semantic", "iou", "dice", "precision", "recall", "f1"
    }  # fmt: skip
    train = metrics["reports/train/live/metrics.json"]  # DVCLive's summary: the epoch as step
    assert set(train) == {"train", "val", "selected_epoch", "step"}, train
    assert set(train["val"]) == {"segm_AP", "bbox_AP"} and 0 <= train["val"]["segm_AP"] <= 1
    assert (train["step"], train["selected_epoch"]) == (2, 2) and train["train"]["loss"] > 0


def check_the_model_registry(repo: Path, got: Path) -> None:
    """dvc.yaml's artifact, tagged as GTO does, comes back by name through `dvc artifacts get`."""
    run(repo, "git", "tag", "-a", f"{ARTIFACT}@v0.1.0", "-m", "Registering version v0.1.0")
    dvc(repo, "artifacts", "get", ".", ARTIFACT, "-o", str(got))
    assert got.read_bytes() == (repo / "models" / "model.pt").read_bytes()
    assert torch.load(got, weights_only=True)["epoch"] == 2


def readme_exp_show() -> list[str]:
    """The README's one `dvc exp show` recipe, as arguments."""
    readme = (PROJECT / "README.md").read_text()
    (line,) = [s for s in readme.splitlines() if s.startswith("dvc exp show --only-changed")][:1]
    return shlex.split(line)[1:]


def check_the_readme_exp_show_fits_120_columns(repo: Path) -> None:
    """The varied param and the headline metrics, whole, in a 120-column terminal."""
    table = run(repo, sys.executable, "-m", "dvc", *readme_exp_show(), "--no-pager",
                env={"COLUMNS": "120"}).stdout  # fmt: skip
    lines = [line.rstrip() for line in table.splitlines() if line.strip()]
    assert max(map(len, lines)) <= 120, table
    header = next(line for line in lines if "Experiment" in line).split()
    wanted = ["segm.AP", "bbox.AP", "semantic.mIoU", "iou", "dice", "recall", "f1", "train.lr"]
    assert all(name in header for name in wanted) and "…" not in header, table
    assert not any("/" in name for name in header), table  # no dependency columns


def test_full_pipeline_on_synthetic_data(tmp_path):
    coco_root = synthcoco.make_coco_root(
        tmp_path / "coco", n_train=12, n_val=8, n_test=0, size=(96, 128)
    )
    params = tiny_params(coco_root, 8, 5, 2)
    # clip: lr 0.01 from random weights diverges within two epochs without it
    params["train"].update(epochs=2, keep_checkpoints=1, clip_grad_norm=5.0)
    repo = make_dvc_repo(tmp_path / "repo", params)

    first = dvc(repo, "repro")
    assert stages_ran(first.stdout) == ALL_STAGES
    check_outputs(repo)
    assert "not in cache" not in first.stdout.lower()
    # Two epochs, keep_checkpoints 1: one checkpoint is left, and DVC's cache holds none.
    (kept,) = (repo / "models" / "checkpoints").glob("epoch_*.pt")
    assert kept.name == "epoch_02.pt"
    digest = hashlib.md5(kept.read_bytes()).hexdigest()
    assert not (repo / ".dvc" / "cache" / "files" / "md5" / digest[:2] / digest[2:]).exists()
    assert "models/checkpoints" not in (repo / "dvc.lock").read_text()

    again = dvc(repo, "repro")
    assert stages_ran(again.stdout) == set(), again.stdout
    commit_all(repo, "baseline run")
    check_exp_show_is_readable(repo)
    check_the_model_registry(repo, tmp_path / "got.pt")

    # A bad value stops at check_params, before DVC removes any output.
    model_bytes = (repo / "models" / "model.pt").read_bytes()
    bad = dvc(repo, "exp", "run", "-S", "train.lr=-1", check=False)
    assert bad.returncode != 0
    assert "train.lr = -1 is out of range: must be > 0" in bad.stdout + bad.stderr
    assert (repo / "models" / "model.pt").read_bytes() == model_bytes
    assert (repo / "data" / "subset" / "annotations" / "train.json").exists()
    run(repo, "git", "checkout", "params.yaml")
    # Hydra's spelling (DVC parses -S with it): `inf` is a float, `.inf` the string '.inf'.
    infinite = dvc(repo, "exp", "run", "-S", "train.lr=inf", check=False)
    assert infinite.returncode != 0
    assert "train.lr = inf must be a finite number" in infinite.stdout + infinite.stderr
    run(repo, "git", "checkout", "params.yaml")

    # A misspelt section is named, though no stage reads it.
    params = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(params + "evalute:\n  n_samples: 3\n")
    misspelt = dvc(repo, "repro", check=False)
    assert misspelt.returncode != 0
    assert "unknown key 'evalute' (did you mean 'evaluate'?)" in misspelt.stdout + misspelt.stderr
    (repo / "params.yaml").write_text(params)

    # The way most people write a small rate: DVC writes it as YAML 1.2's `1e-05`.
    exp = dvc(repo, "exp", "run", "-S", "train.lr=1e-5")
    assert stages_ran(exp.stdout) == CHECK | {"train", "infer", "evaluate", "predict"}, exp.stdout
    assert "train params changed: lr: 0.005 -> 1e-05): starting fresh" in exp.stdout + exp.stderr
    assert "lr: 1e-05" in (repo / "params.yaml").read_text()
    assert torch.load(repo / "models" / "model.pt", weights_only=True)["params"]["lr"] == 1e-5

    check_the_readme_exp_show_fits_120_columns(repo)

    diff = dvc(repo, "metrics", "diff", "HEAD", "--all", "--json")
    changed = json.loads(diff.stdout)
    assert "segm.AP" in changed["reports/metrics.json"], diff.stdout

    html_dir = tmp_path / "plots"
    dvc(repo, "plots", "show", "-o", str(html_dir))
    page = (html_dir / "index.html").read_text()
    assert "Training loss per iteration" in page and "<html" in page.lower()
    assert "Val COCO AP after each scored epoch" in page  # DVCLive's val AP per epoch
    assert "Confusion at mask IoU 0.5" in page and "worst_images.png" in page  # error plots
    for column in ("loss_mask", "loss_rpn_box_reg", "segm_AP", "bbox_AP50"):
        assert column in page, column  # DVCLive's per-iteration and per-epoch columns

    # Share through a local remote, then restore everything into a fresh clone.
    remote = tmp_path / "remote"
    dvc(repo, "remote", "add", "-d", "local", str(remote))
    commit_all(repo, "remote")
    dvc(repo, "push")
    clone = tmp_path / "clone"
    run(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    dvc(clone, "pull")
    assert (clone / "models" / "model.pt").read_bytes() == (
        repo / "models" / "model.pt"
    ).read_bytes()
    assert json.loads((clone / "reports" / "metrics.json").read_text()) == json.loads(
        (repo / "reports" / "metrics.json").read_text()
    )
    status = dvc(clone, "status")
    assert "up to date" in status.stdout.lower(), status.stdout


@pytest.mark.real_data
def test_full_pipeline_on_the_real_coco_sample(tmp_path, coco_sample):
    repo = make_dvc_repo(tmp_path / "repo", tiny_params(coco_sample, 6, 4, 2))
    first = dvc(repo, "repro")
    assert stages_ran(first.stdout) == ALL_STAGES
    check_outputs(repo)
    assert stages_ran(dvc(repo, "repro").stdout) == set()
