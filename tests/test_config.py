"""params.yaml validation: every mistake is rejected with the key, the value and what is allowed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cocoseg.config import Params, load_params, parse_params
from cocoseg.errors import ParamError

PROJECT = Path(__file__).resolve().parents[1]


def test_project_params_file_is_valid_and_holds_the_seed_recipe():
    params = load_params(PROJECT / "params.yaml")
    assert params.subset.classes == ["person", "cat", "sports ball", "book"]
    assert (params.subset.n_train, params.subset.n_val, params.subset.n_test) == (300, 300, 30)
    t = params.train
    assert (t.lr, t.momentum, t.weight_decay, t.epochs) == (0.005, 0.9, 0.0005, 6)
    assert (t.min_size, t.max_size) == (800, 1333)


def test_every_params_key_matches_a_dataclass_default():
    """params.yaml and the dataclass defaults agree, so a missing key changes nothing."""
    raw = yaml.safe_load((PROJECT / "params.yaml").read_text())
    assert parse_params(raw) == Params()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"train": {"epoch": 3}}, r"unknown key 'train.epoch' \(did you mean 'train.epochs'\?\)"),
        ({"trian": {}}, r"unknown key 'trian' \(did you mean 'train'\?\)"),
        ({"train": {"lr": 0}}, r"train.lr = 0 is out of range: must be > 0"),
        ({"train": {"lr": -0.1}}, r"train.lr = -0.1 is out of range"),
        ({"train": {"epochs": 0}}, r"train.epochs = 0 is out of range: must be >= 1"),
        ({"train": {"batch_size": 0}}, r"train.batch_size = 0 is out of range: must be >= 1"),
        ({"train": {"epochs": 2.5}}, r"train.epochs = 2.5 must be an integer"),
        ({"train": {"epochs": "6"}}, r"train.epochs = '6' must be an integer"),
        ({"train": {"amp": "yes"}}, r"train.amp = 'yes' must be true or false"),
        ({"train": {"augment": "mixup"}}, r"train.augment = 'mixup' is not allowed; choose one"),
        ({"train": {"min_size": 900, "max_size": 800}}, r"train.max_size = 800 must be >= "),
        ({"evaluate": {"score_threshold": 1.5}}, r"evaluate.score_threshold = 1.5 .* <= 1"),
        ({"evaluate": {"mask_threshold": -0.1}}, r"evaluate.mask_threshold = -0.1 .* >= 0"),
        ({"subset": {"classes": "person"}}, r"subset.classes = 'person' must be a list of str"),
        ({"subset": {"classes": ["cat", "cat"]}}, r"names \['cat'\] more than once"),
        ({"subset": {"test_from": "train2017"}}, r"subset.test_from = 'train2017' is not allowed"),
        ({"subset": {"n_train": 0}}, r"subset.n_train = 0 is out of range"),
        ({"train": {"lr_milestones": [5, 3]}}, r"train.lr_milestones = \[5, 3\] must be"),
        ({"data": "here"}, r"data must be a mapping"),
    ],
)
def test_bad_params_are_rejected_by_name(raw, expected):
    with pytest.raises(ParamError, match=expected):
        parse_params(raw)


def test_an_int_is_accepted_where_a_float_is_expected():
    assert parse_params({"train": {"lr": 1}}).train.lr == 1.0


def test_invalid_yaml_and_missing_file_name_the_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ParamError, match=rf"{bad}: not valid YAML"):
        load_params(bad)
    with pytest.raises(ParamError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("stage", "bad", "named"),
    [
        ("download", {"data": {"retries": -1}}, "data.retries = -1"),
        ("subset", {"subset": {"n_train": 0}}, "subset.n_train = 0"),
        ("eda", {"eda": {"n_samples": "many"}}, "eda.n_samples = 'many'"),
        ("train", {"train": {"lr": -1}}, "train.lr = -1"),
        ("evaluate", {"evaluate": {"score_threshold": 2}}, "evaluate.score_threshold = 2"),
        ("predict", {"predict": {"mask_threshold": -0.5}}, "predict.mask_threshold = -0.5"),
    ],
)
def test_every_stage_refuses_bad_params_before_any_work(tmp_path, stage, bad, named):
    """The entry point prints one line naming the key and exits 2, writing nothing."""
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(bad))
    proc = subprocess.run(
        [sys.executable, str(PROJECT / "stages" / f"{stage}.py"), "--params", str(params)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert named in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
