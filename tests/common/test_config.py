"""params.yaml validation: every mistake is rejected with the key, the value and what is allowed."""

from __future__ import annotations

import re
import subprocess
import sys
import typing
from pathlib import Path

import msgspec
import pytest
import yaml

from cocoseg.common.errors import ParamError
from cocoseg.common.params import (
    ArchName,
    Params,
    PredictParams,
    load_params,
    override,
    parse_params,
    read_yaml,
    to_dict,
)
from cocoseg.modeling import registry

PROJECT = Path(__file__).resolve().parents[2]


def test_the_recipe_is_the_struct_defaults():
    p = Params()
    assert p.subset.classes == ["person", "cat", "sports ball", "book"]
    assert (p.subset.n_train, p.subset.n_val, p.subset.n_test) == (300, 300, 30)
    t = p.train
    assert (t.lr, t.momentum, t.weight_decay, t.epochs) == (0.005, 0.9, 0.0005, 6)
    assert (t.min_size, t.max_size) == (800, 1333)


def test_every_arch_name_the_params_accept_is_a_registry_entry():
    accepted = typing.get_args(ArchName)
    assert set(accepted) == set(registry.ARCHS)


def test_the_project_params_file_is_valid_and_names_every_key():
    """Structure only: users change the values (`dvc exp run -S`, `dvc exp apply`)."""
    load_params(PROJECT / "params.yaml")
    raw = read_yaml((PROJECT / "params.yaml").read_text())
    defaults = to_dict(Params())
    assert {s: sorted(keys) for s, keys in raw.items()} == {
        s: sorted(keys) for s, keys in defaults.items()
    }
    for section, keys in defaults.items():
        for key, default in keys.items():
            kind = (int, float) if isinstance(default, float) else type(default)
            assert isinstance(raw[section][key], kind), f"{section}.{key}"


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
        (
            {"train": {"sampler": "rfs"}},
            r"^params.yaml: train.sampler = 'rfs' is not allowed; "
            r"choose one of \['repeat_factor', 'uniform'\]$",
        ),
        (
            {"train": {"repeat_threshold": -1}},
            r"^params.yaml: train.repeat_threshold = -1 is out of range: must be > 0$",
        ),
        ({"train": {"repeat_threshold": 1.5}}, r"train.repeat_threshold = 1.5 .*: must be <= 1$"),
        (
            {"train": {"augment": "crop"}},
            r"^params.yaml: train.augment = 'crop' is not allowed; choose one of \[.*'random_crop'",
        ),
        ({"train": {"min_size": 900, "max_size": 800}}, r"train.max_size = 800 must be >= "),
        ({"evaluate": {"score_threshold": 1.5}}, r"evaluate.score_threshold = 1.5 .* <= 1"),
        ({"evaluate": {"mask_threshold": -0.1}}, r"evaluate.mask_threshold = -0.1 .* >= 0"),
        ({"subset": {"classes": "person"}}, r"subset.classes = 'person' must be a list of str"),
        ({"subset": {"classes": ["cat", "cat"]}}, r"names \['cat'\] more than once"),
        ({"subset": {"test_from": "train2017"}}, r"subset.test_from = 'train2017' is not allowed"),
        ({"subset": {"n_train": 0}}, r"subset.n_train = 0 is out of range"),
        ({"train": {"lr_milestones": [5, 3]}}, r"train.lr_milestones = \[5, 3\] must be"),
        ({"data": "here"}, r"data must be a mapping"),
        ({"train": [1, 2]}, r"train must be a mapping of keys to values, got \[1, 2\]"),
        ({"train": {1: 2}}, r"train has the key 1; keys must be names"),
        ({"evalute": {}}, r"^params.yaml: unknown key 'evalute' \(did you mean 'evaluate'\?\)"),
        (
            {"train": {"lrr": 1}},
            r"unknown key 'train.lrr' \(did you mean 'train.lr'\?\); allowed: ",
        ),
        ({"train": {"epochs": "six"}}, r"^params.yaml: train.epochs = 'six' must be an integer$"),
        ({"train": {"lr": -1}}, r"^params.yaml: train.lr = -1 is out of range: must be > 0$"),
        ({"train": {"lr": True}}, r"train.lr = True must be a number"),
        ({"train": {"device": ""}}, r"train.device = '' must be a non-empty string"),
        ({"train": {"keep_checkpoints": -1}}, r"train.keep_checkpoints = -1 .* must be >= 0$"),
        ({"train": {"keep_checkpoints": 1.5}}, r"train.keep_checkpoints = 1.5 must be an integer"),
        (
            {"train": {"select": "best", "eval_every": 0}},
            r"^params.yaml: train.select = best needs train.eval_every > 0 \(got 0\)$",
        ),
        ({"train": {"patience": 3, "eval_every": 0}}, r"train.patience = 3 needs train.eval_every"),
        ({"train": {"select": "first"}}, r"train.select = 'first' is not allowed"),
        ({"train": {"device": "gpu"}}, r"train.device = 'gpu' is not allowed; choose auto, cpu"),
        ({"train": {"device": 3}}, r"train.device = 3 must be a non-empty string; choose auto"),
        ({"predict": {"device": "cuda:x"}}, r"predict.device = 'cuda:x' is not allowed"),
        ({"evaluate": {"device": "cuda0"}}, r"evaluate.device = 'cuda0' is not allowed"),
        ({"train": {"device": "cpu\n"}}, r"train.device = 'cpu\\n' is not allowed"),
        ({"train": {"eval_every": -1}}, r"train.eval_every = -1 is out of range: must be >= 0"),
        (
            {"train": {"anchor_sizes": [32, 64, 128, 256]}},
            r"train.anchor_sizes = \[32, 64, 128, 256\] must have exactly 5 entries: "
            r"one size per FPN level \(5 levels\)",
        ),
        ({"train": {"anchor_sizes": [16, *range(32, 1024, 128)]}}, r"must have exactly 5 entries"),
        ({"train": {"anchor_sizes": 32}}, r"train.anchor_sizes = 32 must be a list of int"),
        ({"train": {"anchor_sizes": [32, 64, 0, 256, 512]}}, r"anchor_sizes\[2\] = 0 .* >= 1"),
        (
            {"train": {"anchor_sizes": [32, 64, 64.5, 128, 256]}},
            r"sizes\[2\] = 64.5 must be an int",
        ),
        ({"train": {"anchor_sizes": [64, 32, 128, 256, 512]}}, r"must be strictly increasing"),
        ({"train": {"anchor_sizes": [32, 64, 64, 256, 512]}}, r"must be strictly increasing"),
        (
            {"train": {"anchor_ratios": []}},
            r"train.anchor_ratios = \[\] must have at least 1 entry$",
        ),
        ({"train": {"anchor_ratios": [1.0, -2]}}, r"anchor_ratios\[1\] = -2 .*: must be > 0$"),
        ({"train": {"anchor_ratios": ["1:2"]}}, r"anchor_ratios\[0\] = '1:2' must be a number"),
        (
            {"train": {"augment": "seed"}},
            r"train.augment = 'seed' is not allowed; choose one of \[.*'flip_rotate_color'.*\]",
        ),
        (
            {"evaluate": {"slice_size": 16}},
            r"^params.yaml: evaluate.slice_size = 16 must be 0 \(off\) or 32..2048 pixels$",
        ),
        ({"predict": {"slice_size": 1}}, r"^params.yaml: predict.slice_size = 1 must be 0 \(off"),
        ({"evaluate": {"slice_size": -512}}, r"evaluate.slice_size = -512 .*: must be >= 0$"),
        ({"predict": {"slice_size": 4096}}, r"predict.slice_size = 4096 .*: must be <= 2048$"),
        ({"evaluate": {"slice_size": 51.2}}, r"evaluate.slice_size = 51.2 must be an integer$"),
        ({"evaluate": {"slice_overlap": 1}}, r"evaluate.slice_overlap = 1 .*: must be < 1$"),
        ({"predict": {"slice_overlap": 1.5}}, r"predict.slice_overlap = 1.5 .*: must be < 1$"),
        ({"evaluate": {"slice_overlap": -0.2}}, r"evaluate.slice_overlap = -0.2 .* >= 0$"),
        ({"evaluate": {"tta": "flip"}}, r"^params.yaml: evaluate.tta = 'flip' must be true or"),
        (
            {"predict": {"tta_scales": [600, 800]}},
            r"^params.yaml: predict.tta_scales = \[600, 800\] needs predict.tta = true "
            r"\(got false\)$",
        ),
        (
            {"evaluate": {"tta": True, "tta_scales": [800, 600, 800]}},
            r"^params.yaml: evaluate.tta_scales = \[800, 600, 800\] names a size more than once$",
        ),
        (
            {"evaluate": {"tta": True, "tta_scales": [16]}},
            r"tta_scales\[0\] = 16 .*: must be >= 32$",
        ),
        ({"evaluate": {"tta": True, "tta_scales": [2000]}}, r"tta_scales\[0\] = 2000 .* <= 1600$"),
        (
            {"evaluate": {"tta": True, "tta_scales": 800}},
            r"evaluate.tta_scales = 800 must be a list",
        ),
        (
            {"predict": {"tta": True, "tta_scales": list(range(100, 1000, 100))}},
            r"predict.tta_scales = \[100, .*\] must have 0 to 8 entries$",
        ),
    ],
)
def test_bad_params_are_rejected_by_name(raw, expected):
    with pytest.raises(ParamError, match=expected):
        parse_params(raw)


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "mps"])
def test_every_device_form_is_accepted(device):
    assert parse_params({"train": {"device": device}}).train.device == device


@pytest.mark.parametrize("section", ["evaluate", "predict"])
def test_slicing_and_tta_are_off_by_default_and_read_as_given(section):
    assert (getattr(Params(), section).slice_size, getattr(Params(), section).tta) == (0, False)
    raw = {"slice_size": 512, "slice_overlap": 0, "tta": True, "tta_scales": [640, 800, 960]}
    given = getattr(parse_params({section: raw}), section)
    assert (given.slice_size, given.slice_overlap, given.tta, given.tta_scales) == (
        512, 0.0, True, [640, 800, 960]
    )  # fmt: skip


def test_an_int_is_accepted_where_a_float_is_expected():
    assert parse_params({"train": {"lr": 1}}).train.lr == 1.0
    assert parse_params({"train": {"anchor_ratios": [1, 2]}}).train.anchor_ratios == [1.0, 2.0]


def test_new_train_params_are_exposed_as_given():
    raw = {"keep_checkpoints": 3, "anchor_sizes": [16, 32, 64, 128, 256], "anchor_ratios": [1.0]}
    train = parse_params({"train": raw}).train
    assert (train.keep_checkpoints, train.anchor_sizes, train.anchor_ratios) == (
        3,
        [16, 32, 64, 128, 256],
        [1.0],
    )
    assert to_dict(train)["anchor_sizes"] == [16, 32, 64, 128, 256]


def test_an_empty_section_means_its_defaults():
    assert parse_params({"eda": None, "train": {}}) == Params()


@pytest.mark.parametrize(
    ("text", "got"),
    [("", "an empty file"), ("# only a comment\n", "an empty file"), ("- train\n", "a list"),
     ("lr\n", "a str")],
)  # fmt: skip
def test_an_empty_or_non_mapping_params_file_is_one_line_naming_the_file(tmp_path, text, got):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamError, match=rf"^{path}: must be a mapping of sections .*got {got}$"):
        load_params(path)


@pytest.mark.parametrize(
    ("written", "value"),
    [("1e-5", 1e-5), ("1e-05", 1e-5), ("1e+30", 1e30), ("1E-4", 1e-4), ("5.e-3", 5e-3),
     (".5", 0.5), ("0.005", 0.005), ("2", 2.0)],
)  # fmt: skip
def test_every_yaml_1_2_float_form_is_a_number(tmp_path, written, value):
    """DVC writes params as YAML 1.2 (`-S train.lr=1e-5` lands as `1e-05`)."""
    path = tmp_path / "params.yaml"
    path.write_text(f"train:\n  lr: {written}\n  weight_decay: {written}\n")
    train = load_params(path).train
    assert (train.lr, train.weight_decay) == (value, value)
    assert type(train.lr) is float


@pytest.mark.parametrize(
    ("written", "named"),
    [("train:\n  lr: .inf\n", "train.lr = inf"), ("train:\n  lr: -.inf\n", "train.lr = -inf"),
     ("train:\n  clip_grad_norm: .nan\n", "train.clip_grad_norm = nan"),
     ("data:\n  timeout: .inf\n", "data.timeout = inf"),
     ("train:\n  anchor_ratios: [1.0, .nan]\n", "train.anchor_ratios[1] = nan")],
)  # fmt: skip
def test_non_finite_numbers_are_refused_naming_the_key(tmp_path, written, named):
    path = tmp_path / "params.yaml"
    path.write_text(written)
    with pytest.raises(ParamError, match=rf"^{path}: {re.escape(named)} must be a finite number$"):
        load_params(path)


def test_override_validates_like_the_params_file():
    changed = override(PredictParams(), "predict", score_threshold=0.25)
    assert (changed.score_threshold, changed.mask_threshold) == (0.25, 0.5)
    with pytest.raises(ParamError, match=r"predict.score_threshold = 1.5 is out of range"):
        override(PredictParams(), "predict", score_threshold=1.5)
    with pytest.raises(ParamError, match=r"predict.score_threshold = nan must be a finite"):
        override(PredictParams(), "predict", score_threshold=float("nan"))


def test_params_are_frozen_and_replace_makes_a_changed_copy():
    settings = PredictParams(device="cpu")
    with pytest.raises(AttributeError):
        settings.score_threshold = 0.9
    changed = msgspec.structs.replace(settings, score_threshold=0.9)
    assert (changed.score_threshold, changed.device, settings.score_threshold) == (0.9, "cpu", 0.5)


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
