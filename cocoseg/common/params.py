"""Typed params: a frozen msgspec Struct per section of params.yaml, whose types hold constraints,
so bad keys and values stop before any work; params.yaml restates the defaults (tested equal)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta
from ruamel.yaml import YAML, YAMLError

from cocoseg.common.committed import committed_text
from cocoseg.common.errors import ParamError
from cocoseg.common.validation import convert

PARAMS_FILE = "params.yaml"
T = TypeVar("T")

NonNegInt = Annotated[int, Meta(ge=0)]
PositiveInt = Annotated[int, Meta(ge=1)]
NonNegFloat = Annotated[float, Meta(ge=0)]
PositiveFloat = Annotated[float, Meta(gt=0)]
Fraction = Annotated[float, Meta(ge=0, le=1)]
Text = Annotated[str, Meta(min_length=1)]
# The devices a stage runs on; auto picks cuda, then mps, then cpu (cocoseg.modeling.device).
DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:[0-9]+)?)\Z"  # \Z: "$" would let "cpu\n" through
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"
Device = Annotated[str, Meta(pattern=DEVICE_PATTERN, description=f"choose {DEVICE_CHOICES}")]
# torchvision's RPN anchors: one size per feature map of the ResNet-FPN (P2-P5 and a pooled P6),
# every ratio at each; the Mask R-CNN builder (cocoseg.modeling.maskrcnn) defaults to them.
ANCHOR_SIZES = (32, 64, 128, 256, 512)
ANCHOR_RATIOS = (0.5, 1.0, 2.0)
PerFpnLevel = Meta(min_length=5, max_length=5, description="one size per FPN level (5 levels)")
Augment = Literal["flip_rotate_color", "multiscale", "scale_jitter", "random_crop", "none"]
# train.arch's semantic models (cocoseg.modeling.deeplab), to which the Mask R-CNN keys below mean
# nothing: a value other than the default is refused (this layer cannot import the registry).
SEMANTIC_ARCHS = frozenset({"deeplabv3plus_resnet50", "deeplabv3plus_resnet101"})
DETECTION_ONLY = {
    "anchor_sizes": "a semantic model has no anchors",
    "anchor_ratios": "a semantic model has no anchors",
    "rois_per_image": "a semantic model has no RoIs",
}
# Sliced inference and TTA (cocoseg.modeling.slicing, cocoseg.modeling.tta). A tile's masks are
# kept until the merge (100 detections x side^2 float32: 1.7 GB at 2048); a TTA size is the
# shorter side one pass resizes to (detectron2's COCO TTA tops out at 1200).
SLICE_SIZE_MIN, SLICE_SIZE_MAX = 32, 2048
TTA_SCALE_MAX = 1600
SliceSize = Annotated[int, Meta(ge=0, le=SLICE_SIZE_MAX)]
SliceOverlap = Annotated[float, Meta(ge=0, lt=1)]
TtaScales = Annotated[list[Annotated[int, Meta(ge=32, le=TTA_SCALE_MAX)]], Meta(max_length=8)]
# train.arch: the names of cocoseg.modeling.registry's entries (a test keeps them equal).
ArchName = Literal[
    "maskrcnn_resnet50_fpn",
    "maskrcnn_resnet50_fpn_v2",
    "maskrcnn_resnet101_fpn",
    "cascade_maskrcnn_resnet50_fpn",
    "cascade_maskrcnn_resnet101_fpn",
    "deeplabv3plus_resnet50",
    "deeplabv3plus_resnet101",
]


def _list(*items: Any) -> Any:
    """A list default; each instance gets its own copy."""
    return msgspec.field(default_factory=lambda: list(items))


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Immutable; a key the section does not define is an error, not ignored."""


class DataParams(_Section):
    """Where the COCO-2017 copy lives and where its annotation zips are fetched from."""

    coco_root: Text = "data/coco"
    base_url: Text = "http://images.cocodataset.org"
    retries: NonNegInt = 5
    timeout: PositiveFloat = 60.0


class SubsetParams(_Section):
    """Which images and classes the experiment uses."""

    classes: list[Text] = _list("person", "cat", "sports ball", "book")
    n_train: PositiveInt = 300
    n_val: PositiveInt = 300
    n_test: NonNegInt = 30
    seed: int = 42
    test_from: Literal["test2017", "val2017"] = "test2017"
    strategy: Literal["random", "balanced"] = "balanced"
    min_images_per_class: NonNegInt = 20
    workers: PositiveInt = 8


class EdaParams(_Section):
    """What the exploratory figures show."""

    n_samples: PositiveInt = 8
    seed: int = 0


class TrainParams(_Section):
    """The Mask R-CNN fine-tuning recipe."""

    arch: ArchName = "maskrcnn_resnet50_fpn"
    weights: Text = "coco"  # coco | imagenet | none | path to a checkpoint
    init_heads_from_coco: bool = True
    epochs: PositiveInt = 6
    lr: PositiveFloat = 0.005
    momentum: Annotated[float, Meta(ge=0, lt=1)] = 0.9
    weight_decay: NonNegFloat = 0.0005
    batch_size: PositiveInt = 2
    num_workers: NonNegInt = 2
    min_size: Annotated[int, Meta(ge=32)] = 800
    max_size: Annotated[int, Meta(ge=32)] = 1333
    augment: Augment = "flip_rotate_color"  # see cocoseg/train/transforms.py PRESETS
    sampler: Literal["uniform", "repeat_factor"] = "uniform"  # see cocoseg/train/sampler.py
    # repeat_factor: a class in fewer than this fraction of the train images is repeated
    repeat_threshold: Annotated[float, Meta(gt=0, le=1)] = 0.2
    warmup_iters: NonNegInt = 100
    warmup_factor: Annotated[float, Meta(gt=0, le=1)] = 0.001
    schedule: Literal["none", "multistep", "cosine"] = "none"
    lr_milestones: list[PositiveInt] = _list(4, 5)
    lr_gamma: Annotated[float, Meta(gt=0, le=1)] = 0.1
    clip_grad_norm: NonNegFloat = 0.0  # 0 turns clipping off
    rois_per_image: PositiveInt = 512  # RoIs sampled per image for the box and mask losses
    amp: bool = True
    device: Device = "auto"
    seed: int = 42
    deterministic: bool = False
    keep_checkpoints: NonNegInt = 0  # 0 keeps all; N keeps the newest N
    anchor_sizes: Annotated[list[PositiveInt], PerFpnLevel] = _list(*ANCHOR_SIZES)
    anchor_ratios: Annotated[list[PositiveFloat], Meta(min_length=1)] = _list(*ANCHOR_RATIOS)
    eval_every: NonNegInt = 1  # score val mAP every N epochs and after the last; 0 = off
    select: Literal["last", "best"] = "last"  # model.pt: the last epoch or the best val segm AP
    patience: NonNegInt = 0  # stop after N epochs without a better val segm AP; 0 = off


class InferenceParams(_Section):
    """How a trained model is run over images (stages infer and predict), with slicing and TTA."""

    score_threshold: Fraction = 0.5
    mask_threshold: Fraction = 0.5
    batch_size: PositiveInt = 2
    num_workers: NonNegInt = 2
    device: Device = "auto"
    slice_size: SliceSize = 0  # tile side in pixels for sliced inference; 0 = off
    slice_overlap: SliceOverlap = 0.2  # tiles overlap by this fraction of slice_size
    tta: bool = False  # test-time augmentation: horizontal flip (and tta_scales)
    tta_scales: TtaScales = _list()  # shorter-side sizes of the TTA passes; [] = the model's


class EvaluateParams(InferenceParams):
    """How the val subset is predicted (stage infer) and scored (stage evaluate)."""

    n_samples: PositiveInt = 6
    n_worst: NonNegInt = 6  # val images with the most errors in worst_images.png


class PredictParams(InferenceParams):
    """How test-set predictions are made and drawn."""


class Params(_Section):
    """All of params.yaml."""

    data: DataParams = msgspec.field(default_factory=DataParams)
    subset: SubsetParams = msgspec.field(default_factory=SubsetParams)
    eda: EdaParams = msgspec.field(default_factory=EdaParams)
    train: TrainParams = msgspec.field(default_factory=TrainParams)
    evaluate: EvaluateParams = msgspec.field(default_factory=EvaluateParams)
    predict: PredictParams = msgspec.field(default_factory=PredictParams)


def _check_cross_fields(params: Params) -> None:
    """Rules the types cannot say: uniqueness, order, one key against another."""
    classes, train = params.subset.classes, params.train
    if not classes:
        raise ParamError("subset.classes = [] must name at least one COCO class",
                         keys=("subset.classes",))  # fmt: skip
    dupes = sorted({c for c in classes if classes.count(c) > 1})
    if dupes:
        raise ParamError(f"subset.classes = {classes!r} names {dupes} more than once",
                         keys=("subset.classes",))  # fmt: skip
    if train.max_size < train.min_size:
        raise ParamError(
            f"train.max_size = {train.max_size} must be >= train.min_size = {train.min_size}",
            keys=("train.max_size", "train.min_size"),
        )
    if train.lr_milestones != sorted(train.lr_milestones):
        raise ParamError(
            f"train.lr_milestones = {train.lr_milestones!r} must be increasing epoch numbers >= 1",
            keys=("train.lr_milestones",),
        )
    if train.arch in SEMANTIC_ARCHS:
        _refuse_detection_keys(train)
    if any(a >= b for a, b in itertools.pairwise(train.anchor_sizes)):
        raise ParamError(
            f"train.anchor_sizes = {train.anchor_sizes!r} must be strictly increasing "
            "(one size per FPN level, finest first)",
            keys=("train.anchor_sizes",),
        )
    for key, value in (("select", train.select), ("patience", train.patience)):
        if value not in ("last", 0) and train.eval_every == 0:
            raise ParamError(f"train.{key} = {value} needs train.eval_every > 0 (got 0)",
                             keys=(f"train.{key}", "train.eval_every"))  # fmt: skip
    for name in ("evaluate", "predict"):
        _check_views(name, getattr(params, name))


def _check_views(name: str, section: InferenceParams) -> None:
    """A tile size of 0 (off) or in range; TTA sizes once each, and only with TTA on."""
    size, scales = section.slice_size, section.tta_scales
    if 0 < size < SLICE_SIZE_MIN:
        raise ParamError(
            f"{name}.slice_size = {size} must be 0 (off) or {SLICE_SIZE_MIN}..{SLICE_SIZE_MAX} "
            "pixels",
            keys=(f"{name}.slice_size",),
        )
    if len(set(scales)) < len(scales):
        raise ParamError(
            f"{name}.tta_scales = {scales!r} names a size more than once",
            keys=(f"{name}.tta_scales",),
        )
    if scales and not section.tta:
        raise ParamError(
            f"{name}.tta_scales = {scales!r} needs {name}.tta = true (got false)",
            keys=(f"{name}.tta_scales", f"{name}.tta"),
        )


def _refuse_detection_keys(train: TrainParams) -> None:
    """A Mask R-CNN key set away from its default is refused for a semantic arch, by name."""
    defaults = TrainParams()
    for key, reason in DETECTION_ONLY.items():
        value = getattr(train, key)
        if value != getattr(defaults, key):
            raise ParamError(
                f"train.{key} = {value} has no meaning for train.arch = {train.arch} ({reason}); "
                "remove it or use a Mask R-CNN arch",
                keys=(f"train.{key}", "train.arch"),
            )


def _check_finite(value: Any, name: str) -> None:
    """Refuse .inf and .nan anywhere: no param of this pipeline means anything infinite."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ParamError(f"{name} = {value} must be a finite number", keys=(name.split("[")[0],))
    if isinstance(value, dict):
        for key, item in value.items():
            _check_finite(item, f"{name}.{key}" if name else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_finite(item, f"{name}[{index}]")


def parse_params(raw: Any, source: str = PARAMS_FILE) -> Params:
    """Validate a params mapping (as read from YAML); sections left out or empty take defaults."""
    if not isinstance(raw, dict):
        got = "an empty file" if raw is None else f"a {type(raw).__name__}"
        raise ParamError(
            f"{source}: must be a mapping of sections ({', '.join(Params.__struct_fields__)}), "
            f"got {got}"
        )
    sections = {key: {} if value is None else value for key, value in raw.items()}
    try:
        _check_finite(sections, "")
        params = convert(sections, Params, error=ParamError)
        _check_cross_fields(params)
    except ParamError as err:
        raise ParamError(f"{source}: {err}", keys=err.keys) from None
    return params


def read_yaml(text: str) -> Any:
    """YAML 1.2, as DVC writes params.yaml (DVC's own parser): `1e-5` is a number; PyYAML's
    YAML 1.1 would read `dvc exp run -S train.lr=1e-5` as the string '1e-05'."""
    return YAML(typ="safe", pure=True).load(text)


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml; raise ParamError naming the file on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamError(f"{path}: params file not found (run from the project root)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ParamError(f"{path}: cannot read the params file: {err}") from None
    try:
        raw = read_yaml(text)
    except YAMLError as err:
        detail = " ".join(str(err).split())
        raise ParamError(f"{path}: not valid YAML: {detail}") from None
    try:
        return parse_params(raw, str(path))
    except ParamError as err:
        raise with_committed_note(err, path, raw) from None


def with_committed_note(err: ParamError, path: str | Path, raw: Any) -> ParamError:
    """err, with `committed_note` appended when there is one (raw: the params in effect)."""
    note = committed_note(Path(path), raw, err.keys)
    return ParamError(f"{err}; {note}", keys=err.keys) if note else err


def committed_note(path: Path, raw: Any, keys: tuple[str, ...]) -> str:
    """Where a refused value at `keys` differs from git HEAD's params file (as `dvc exp run -S`
    leaves it): '<file> holds it since dvc exp run -S; HEAD has <value>'; else ''."""
    text = committed_text(path) if keys else None
    try:
        head = read_yaml(text) if text is not None else None
    except YAMLError:
        head = None
    if not isinstance(head, dict):  # no git, no commit, or nothing to compare with
        return ""
    changed = [
        (key, _value_at(head, key)) for key in keys if _value_at(raw, key) != _value_at(head, key)
    ]
    if not changed:
        return ""
    held = ", ".join(
        f"no {key}" if value is _ABSENT else repr(value) if len(keys) == 1 else f"{key} = {value!r}"
        for key, value in changed
    )
    return f"{path.name} holds it since dvc exp run -S; HEAD has {held}"


_ABSENT = object()


def _value_at(tree: Any, key: str) -> Any:
    """The value at a dotted key of nested mappings, or _ABSENT."""
    for name in key.split("."):
        if not isinstance(tree, dict) or name not in tree:
            return _ABSENT
        tree = tree[name]
    return tree


def override(section: T, name: str, **changes: Any) -> T:
    """A section with some keys changed (command-line overrides), validated like params.yaml."""
    raw = {**to_dict(section), **changes}
    try:
        _check_finite(raw, name)
        return convert(raw, type(section), error=ParamError, prefix=name)
    except ParamError as err:  # a command-line value: params.yaml's keys are not at fault
        raise ParamError(str(err)) from None


def to_dict(section: Any) -> dict[str, Any]:
    """A section as plain dicts and lists (for checkpoints and reports)."""
    return msgspec.to_builtins(section)
