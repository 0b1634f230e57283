"""A value `dvc exp run -S` wrote into params.yaml stays there when the run refuses it: the
one-line error says so and quotes the value git HEAD has, in a real repository and through DVC."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from dvcrepo import dvc, make_dvc_repo
from paramfiles import write_params

from cocoseg.common.cli import run_stage
from cocoseg.common.errors import ParamError
from cocoseg.common.params import load_params
from stages import download as download_stage
from stages import predict as predict_stage

NOTE = "params.yaml holds it since dvc exp run -S; HEAD has "


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@cocoseg.invalid", *args],
        cwd=repo, check=True, capture_output=True, timeout=60,
    )  # fmt: skip


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository whose HEAD holds the recipe's params.yaml (train.lr 0.005)."""
    git(tmp_path, "init", "-q")
    write_params(tmp_path / "params.yaml")
    git(tmp_path, "add", "params.yaml")
    git(tmp_path, "commit", "-q", "-m", "recipe")
    return tmp_path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"train": {"lr": "abc"}}, "train.lr = 'abc' must be a number; " + NOTE + "0.005"),
        ({"train": {"lrr": 0.1}}, "unknown key 'train.lrr' .*; " + NOTE + "no train.lrr"),
        ({"train": {"anchor_sizes": [32, 64, 0, 256, 512]}},
         r"train\.anchor_sizes\[2\] = 0 .*; " + NOTE + re.escape("[32, 64, 128, 256, 512]")),
        ({"train": {"min_size": 2000}}, "train.max_size = 1333 must be >= train.min_size = 2000; "
         + NOTE + "train.min_size = 800"),
        ({"data": {"timeout": float("inf")}}, "data.timeout = inf must be a finite number; "
         + NOTE + "60.0"),
    ],
)  # fmt: skip
def test_a_refused_value_that_differs_from_head_names_heads_value(repo: Path, changes, message):
    write_params(repo / "params.yaml", changes)
    with pytest.raises(ParamError, match=f"^{repo / 'params.yaml'}: {message}$"):
        load_params(repo / "params.yaml")


def test_a_bad_value_head_has_too_or_a_file_outside_git_is_left_as_it_is(repo: Path, tmp_path):
    write_params(repo / "params.yaml", {"train": {"lr": "abc"}})
    git(repo, "commit", "-q", "-am", "a bad value committed")
    with pytest.raises(ParamError, match=r"train.lr = 'abc' must be a number$"):
        load_params(repo / "params.yaml")
    elsewhere = tmp_path.parent / f"{tmp_path.name}-nogit"  # no repository above it
    elsewhere.mkdir()
    write_params(elsewhere / "params.yaml", {"train": {"lr": "abc"}})
    if subprocess.run(["git", "rev-parse"], cwd=elsewhere, capture_output=True).returncode == 0:
        pytest.skip("the temp folder lies inside a git repository")
    with pytest.raises(ParamError, match=r"train.lr = 'abc' must be a number$"):
        load_params(elsewhere / "params.yaml")


@pytest.mark.slow
def test_dvc_exp_run_with_a_refused_value_names_the_committed_one(tmp_path: Path):
    """Through DVC itself: check_params refuses train.lr=abc before any other stage runs."""
    project = make_dvc_repo(tmp_path / "project")
    proc = dvc(project, "exp", "run", "-S", "train.lr=abc", check=False, timeout=300)
    assert proc.returncode != 0
    line = "error: params.yaml: train.lr = 'abc' must be a number; " + NOTE + "0.005"
    assert line in (proc.stdout + proc.stderr).splitlines(), proc.stdout + proc.stderr
    assert "lr: abc" in (project / "params.yaml").read_text()  # what DVC left behind


def test_a_value_a_stage_refuses_names_heads_value_too(repo: Path, monkeypatch, capsys):
    """-S data.coco_root=typo: the download stage names the missing folder, and HEAD's value."""
    write_params(repo / "params.yaml", {"data": {"coco_root": "typo/path"}})
    monkeypatch.chdir(repo)
    assert run_stage(download_stage.main, download_stage.parser(), []) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: data.coco_root = typo/path (") and "does not exist" in line
    assert line.endswith("; " + NOTE + "'data/coco'")
    assert not (repo / "typo").exists()


def test_a_bad_command_line_value_is_not_blamed_on_params_yaml(repo: Path, monkeypatch, capsys):
    write_params(repo / "params.yaml", {"predict": {"score_threshold": 0.7}})
    monkeypatch.chdir(repo)
    argv = ["--images", str(repo), "--out", str(repo / "out"), "--score-threshold", "2"]
    assert run_stage(predict_stage.main, predict_stage.parser(), argv) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == "error: predict.score_threshold = 2.0 is out of range: must be <= 1"
