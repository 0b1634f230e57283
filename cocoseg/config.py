"""Typed, validated params: one frozen dataclass per stage section of params.yaml.

Unknown keys, wrong types and out-of-range values are rejected before any work starts,
with a message naming the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from cocoseg.errors import ParamError

PARAMS_FILE = "params.yaml"


def _param(
    default: Any,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    doc: str = "",
) -> Any:
    """A dataclass field with bounds that `validate_section` enforces."""
    meta = {"ge": ge, "gt": gt, "le": le, "lt": lt, "doc": doc}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DataParams:
    """Where the COCO-2017 copy lives and where to fetch it from when it is missing."""

    coco_root: str = "data/coco"
    base_url: str = "http://images.cocodataset.org"
    retries: int = _param(5, ge=0, doc="retries per HTTP request on transient errors")
    timeout: float = _param(60.0, gt=0, doc="seconds before an HTTP read gives up")


@dataclass(frozen=True)
class SubsetParams:
    """Which images and classes the experiment uses."""

    classes: list[str] = _param(["person", "cat", "sports ball", "book"])
    n_train: int = _param(300, ge=1)
    n_val: int = _param(300, ge=1)
    n_test: int = _param(30, ge=0)
    seed: int = 42
    test_from: Literal["test2017", "val2017"] = "test2017"
    strategy: Literal["random", "balanced"] = "balanced"
    min_images_per_class: int = _param(20, ge=0, doc="with balanced: images guaranteed per class")
    workers: int = _param(8, ge=1, doc="parallel image downloads")


@dataclass(frozen=True)
class EdaParams:
    """What the exploratory figures show."""

    n_samples: int = _param(8, ge=1, doc="images in the sample grid")
    seed: int = 0


@dataclass(frozen=True)
class TrainParams:
    """The Mask R-CNN fine-tuning recipe (the seed's defaults)."""

    arch: Literal["maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2"] = "maskrcnn_resnet50_fpn"
    weights: str = _param("coco", doc="coco | imagenet | none | path to a checkpoint")
    init_heads_from_coco: bool = True
    epochs: int = _param(6, ge=1)
    lr: float = _param(0.005, gt=0)
    momentum: float = _param(0.9, ge=0, lt=1)
    weight_decay: float = _param(0.0005, ge=0)
    batch_size: int = _param(2, ge=1)
    num_workers: int = _param(2, ge=0)
    min_size: int = _param(800, ge=32)
    max_size: int = _param(1333, ge=32)
    augment: Literal["seed", "multiscale", "scale_jitter", "none"] = "seed"
    warmup_iters: int = _param(100, ge=0)
    warmup_factor: float = _param(0.001, gt=0, le=1)
    schedule: Literal["none", "multistep", "cosine"] = "none"
    lr_milestones: list[int] = _param([4, 5], doc="epochs at which multistep multiplies lr")
    lr_gamma: float = _param(0.1, gt=0, le=1)
    clip_grad_norm: float = _param(0.0, ge=0, doc="0 turns clipping off")
    amp: bool = True
    device: str = _param("auto", doc="auto | cpu | cuda | cuda:N | mps")
    seed: int = 42
    deterministic: bool = False
    keep_checkpoints: int = _param(0, ge=0, doc="newest epoch checkpoints kept; 0 keeps all")


@dataclass(frozen=True)
class EvaluateParams:
    """How predictions on the val subset are scored."""

    score_threshold: float = _param(0.5, ge=0, le=1)
    mask_threshold: float = _param(0.5, ge=0, le=1)
    batch_size: int = _param(2, ge=1)
    num_workers: int = _param(2, ge=0, doc="DataLoader processes decoding val images")
    n_samples: int = _param(6, ge=1, doc="val images in reports/eval/samples.png")
    device: str = "auto"


@dataclass(frozen=True)
class PredictParams:
    """How test-set predictions are made and drawn."""

    score_threshold: float = _param(0.5, ge=0, le=1)
    mask_threshold: float = _param(0.5, ge=0, le=1)
    batch_size: int = _param(2, ge=1)
    num_workers: int = _param(2, ge=0, doc="DataLoader processes decoding images")
    device: str = "auto"


@dataclass(frozen=True)
class Params:
    """All of params.yaml."""

    data: DataParams = field(default_factory=DataParams)
    subset: SubsetParams = field(default_factory=SubsetParams)
    eda: EdaParams = field(default_factory=EdaParams)
    train: TrainParams = field(default_factory=TrainParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    predict: PredictParams = field(default_factory=PredictParams)


SECTIONS: dict[str, type] = typing.get_type_hints(Params)


def _unknown_key_error(section: str | None, key: str, allowed: list[str]) -> ParamError:
    """Name the unknown key in dotted form, with the closest allowed key when one is near."""
    dotted = (lambda k: f"{section}.{k}") if section else (lambda k: k)
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.4)
    hint = f" (did you mean '{dotted(close[0])}'?)" if close else ""
    return ParamError(f"unknown key '{dotted(key)}'{hint}; allowed: {', '.join(allowed)}")


def _check_type(name: str, value: Any, hint: Any) -> Any:
    """Return value coerced to hint (int -> float only), or raise naming key and value."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ParamError(f"{name} = {value!r} is not allowed; choose one of {list(choices)}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _check_type(name, value, args[0])
    if origin is list:
        (item_type,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ParamError(f"{name} = {value!r} must be a list of {item_type.__name__}")
        return [_check_type(f"{name}[{i}]", v, item_type) for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ParamError(f"{name} = {value!r} must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamError(f"{name} = {value!r} must be an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamError(f"{name} = {value!r} must be a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str) or not value:
            raise ParamError(f"{name} = {value!r} must be a non-empty string")
        return value
    raise TypeError(f"no validator for {hint!r} ({name})")


def _check_bounds(name: str, value: Any, meta: typing.Mapping[str, Any], shown: Any) -> None:
    """Enforce the field's ge/gt/le/lt bounds (on each item of a list); `shown` is as typed."""
    values = value if isinstance(value, list) else [value]
    for v in values:
        for op, bound, ok in (
            (">=", meta.get("ge"), lambda v, b: v >= b),
            (">", meta.get("gt"), lambda v, b: v > b),
            ("<=", meta.get("le"), lambda v, b: v <= b),
            ("<", meta.get("lt"), lambda v, b: v < b),
        ):
            if bound is not None and not ok(v, bound):
                raise ParamError(f"{name} = {shown!r} is out of range: must be {op} {bound}")


def validate_section(section: str, raw: Any, cls: type) -> Any:
    """Build the section's dataclass from a raw mapping, rejecting anything off."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamError(f"{section} must be a mapping of keys to values, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            raise _unknown_key_error(section, str(key), list(fields))
    values = {}
    for key, value in raw.items():
        name = f"{section}.{key}"
        values[key] = _check_type(name, value, hints[key])
        _check_bounds(name, values[key], fields[key].metadata, shown=value)
    return cls(**values)


def _check_cross_fields(params: Params) -> None:
    """Rules that involve more than one key."""
    classes = params.subset.classes
    if not classes:
        raise ParamError("subset.classes = [] must name at least one COCO class")
    dupes = sorted({c for c in classes if classes.count(c) > 1})
    if dupes:
        raise ParamError(f"subset.classes = {classes!r} names {dupes} more than once")
    if params.train.max_size < params.train.min_size:
        raise ParamError(
            f"train.max_size = {params.train.max_size} must be >= train.min_size = "
            f"{params.train.min_size}"
        )
    milestones = params.train.lr_milestones
    if any(m < 1 for m in milestones) or milestones != sorted(milestones):
        raise ParamError(
            f"train.lr_milestones = {milestones!r} must be increasing epoch numbers >= 1"
        )


def parse_params(raw: Any, source: str = PARAMS_FILE) -> Params:
    """Validate a whole params mapping (as read from YAML) into `Params`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamError(f"{source}: the top level must be a mapping of sections")
    for key in raw:
        if key not in SECTIONS:
            raise ParamError(f"{source}: {_unknown_key_error(None, str(key), list(SECTIONS))}")
    try:
        sections = {
            name: validate_section(name, raw.get(name), cls) for name, cls in SECTIONS.items()
        }
        params = Params(**sections)
        _check_cross_fields(params)
    except ParamError as err:
        raise ParamError(f"{source}: {err}") from None
    return params


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml; raise ParamError naming the file on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamError(f"{path}: params file not found (run from the project root)") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ParamError(f"{path}: not valid YAML: {err}") from None
    return parse_params(raw, str(path))


def to_dict(section: Any) -> dict[str, Any]:
    """A section as a plain dict (for checkpoints and reports)."""
    return dataclasses.asdict(section)
