"""Inference to COCO results, the infer and evaluate stages, --predictions mode, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import synthcoco
import torch
from dvcrepo import dvc, make_dvc_repo, run, stages_ran
from paramfiles import write_params
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

import stages.evaluate as evaluate_stage
import stages.infer as infer_stage
from cocoseg.coco.images import read_rgb
from cocoseg.common.cli import run_stage
from cocoseg.common.errors import DataError
from cocoseg.common.params import EvaluateParams
from cocoseg.evaluate import reports as evaluation
from cocoseg.modeling.inference import (
    ImageFiles,
    decode_workers,
    encode_batch,
    host_detections,
    predict_images,
)
from cocoseg.modeling.records import model_record
from cocoseg.modeling.registry import build_model
from cocoseg.viz import figures as visualize

PROJECT = Path(__file__).resolve().parents[2]
CLASSES = list(synthcoco.TARGETS.values())
RESULT_KEYS = {"image_id", "category_id", "bbox", "score", "segmentation"}


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("maskrcnn_resnet50_fpn", len(CLASSES) + 1, min_size=128, max_size=128)


def save_model(model: torch.nn.Module, path: Path, classes: list[str] = CLASSES) -> Path:
    torch.save(model_record(model, classes, "maskrcnn_resnet50_fpn", 128, 128, {}), path)
    return path


def val_items(subset: Path, n: int) -> list[tuple[int, Path, tuple[int, int]]]:
    """The first n val images as inference items: (id, path, recorded size)."""
    images = json.loads((subset / "annotations" / "val.json").read_text())["images"]
    folder = subset / "images" / "val"
    return [(im["id"], folder / im["file_name"], (im["width"], im["height"])) for im in images[:n]]


# --- inference --------------------------------------------------------------------------------


def test_coco_results_convert_boxes_and_binarises_masks_above_the_threshold():
    probs = torch.zeros(1, 1, 6, 8)
    probs[0, 0, 1:4, 2:5] = 0.9
    probs[0, 0, 4, 2:5] = 0.5  # exactly at the threshold: left out
    output = {
        "boxes": torch.tensor([[2.0, 1.0, 5.0, 4.0]]),
        "labels": torch.tensor([3]),
        "scores": torch.tensor([0.75]),
        "masks": probs,
    }
    (result,) = encode_batch([42], *host_detections([output], 0.5))
    assert set(result) == RESULT_KEYS
    assert (result["image_id"], result["category_id"], result["score"]) == (42, 3, 0.75)
    assert result["bbox"] == [2.0, 1.0, 3.0, 3.0]
    assert isinstance(result["segmentation"]["counts"], str)
    assert (mask_utils.decode(result["segmentation"]) == (probs[0, 0] > 0.5).numpy()).all()
    empty = {k: v[:0] for k, v in output.items()}
    assert encode_batch([42], *host_detections([empty], 0.5)) == []


def test_predict_images_returns_coco_results_for_every_detection(synthetic_subset, capsys):
    model = tiny_model()
    model.roi_heads.detections_per_img = 8  # keep the CPU mask head cheap
    model.train()
    items = val_items(synthetic_subset, 2)  # the second image is a grayscale JPEG
    loose = predict_images(model, items, device="cpu", mask_threshold=0.3)
    assert "inference" in capsys.readouterr().err  # the progress bar
    assert not model.training
    strict = predict_images(model, items, device="cpu", mask_threshold=0.7, progress=False)

    assert loose and {r["image_id"] for r in loose} <= {i for i, _, _ in items}
    sizes = {i: Image.open(p).size for i, p, _ in items}
    for r in loose:
        assert set(r) == RESULT_KEYS and 1 <= r["category_id"] <= len(CLASSES)
        w, h = sizes[r["image_id"]]
        assert r["segmentation"]["size"] == [h, w] and 0 <= r["score"] <= 1
        x, y, bw, bh = r["bbox"]
        assert x >= 0 and y >= 0 and x + bw <= w + 1e-3 and y + bh <= h + 1e-3
    # Same detections, masks cut at a higher probability: never larger, smaller overall.
    assert [r["bbox"] for r in strict] == [r["bbox"] for r in loose]
    small = [mask_utils.area(r["segmentation"]) for r in strict]
    large = [mask_utils.area(r["segmentation"]) for r in loose]
    assert all(s <= lg for s, lg in zip(small, large, strict=True)) and sum(small) < sum(large)


def test_images_are_read_as_rgb_and_bad_files_named(synthetic_subset, tmp_path):
    (_, gray, size), = val_items(synthetic_subset, 2)[1:]  # fmt: skip
    assert Image.open(gray).mode == "L"
    rgb = read_rgb(gray)
    assert rgb.shape[2] == 3 and rgb.dtype == np.uint8
    with pytest.raises(DataError, match=r"missing\.jpg: image file not found"):
        read_rgb(tmp_path / "missing.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(DataError, match=r"bad\.jpg: image does not decode"):
        read_rgb(tmp_path / "bad.jpg")
    # In a DataLoader worker the error travels back as a value, to be raised whole.
    image_id, tensor = ImageFiles([(7, gray, size)])[0]
    assert image_id == 7 and tensor.dtype == torch.uint8 and tensor.shape[0] == 3
    assert isinstance(ImageFiles([(8, tmp_path / "bad.jpg", None)])[0][1], DataError)


@pytest.fixture
def one_model_thread():
    """The model on one thread, so a 2-core machine leaves a core to a decoding worker."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_cpu_workers_take_only_the_cores_the_model_leaves(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 6)
    assert decode_workers(4, torch.device("cpu")) == 2
    assert decode_workers(1, torch.device("cpu")) == 1
    assert decode_workers(4, torch.device("cuda")) == 4
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert decode_workers(4, torch.device("cpu")) == 0


def test_a_corrupt_image_is_named_with_workers_too(synthetic_subset, tmp_path, one_model_thread):
    items = val_items(synthetic_subset, 2)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    items.insert(1, (999, tmp_path / "bad.jpg", None))
    with pytest.raises(DataError, match=r"^[^\n]*bad\.jpg: image does not decode[^\n]*$"):
        predict_images(tiny_model(), items, device="cpu", num_workers=2, progress=False)


def test_workers_give_the_same_results_as_the_main_process(synthetic_subset, one_model_thread):
    assert decode_workers(2, torch.device("cpu")) >= 1  # the worker path really runs
    model = tiny_model()
    model.roi_heads.detections_per_img = 8
    items = val_items(synthetic_subset, 5)
    serial = predict_images(model, items, device="cpu", batch_size=2, progress=False)
    parallel = predict_images(
        model, items, device="cpu", batch_size=2, num_workers=2, progress=False
    )
    assert serial, "the tiny model should detect something"
    assert parallel == serial  # same ids, order, boxes, scores and RLE strings


# --- the stage --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A subset with two small val images, one grayscale (CPU inference stays short)."""
    return synthcoco.make_subset(
        tmp_path_factory.mktemp("subset"), n_train=1, n_val=2, n_test=0, size=(64, 80)
    )


@pytest.fixture(scope="module")
def params_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    evaluate = {"device": "cpu", "n_samples": 2, "score_threshold": 0.3}
    return write_params(tmp_path_factory.mktemp("params") / "params.yaml", {"evaluate": evaluate})


def stage(params_file: Path, subset: Path, *args: str | Path, module=evaluate_stage) -> int:
    """A stage (evaluate unless told) in-process on `subset` with the test params; its exit code."""
    return run_stage(
        module.main,
        module.parser(),
        ["--params", str(params_file), "--subset", str(subset), *map(str, args)],
    )


def infer_then_evaluate(params_file: Path, subset: Path, model: Path, out_dir: Path) -> int:
    """Stage infer writes out_dir/eval/predictions.json; stage evaluate scores it."""
    preds, eval_dir = out_dir / "eval" / "predictions.json", out_dir / "eval"
    code = stage(params_file, subset, "--model", model, "--out", preds, module=infer_stage)
    if code:
        return code
    return stage(
        params_file, subset, "--predictions", preds, "--out", out_dir / "metrics.json",
        "--eval-dir", eval_dir,
    )  # fmt: skip


def perfect_predictions(subset: Path) -> list[dict]:
    gt = COCO(str(subset / "annotations" / "val.json"))
    preds = []
    for a in gt.dataset["annotations"]:
        if not a["iscrowd"]:
            rle = mask_utils.encode(np.asfortranarray(gt.annToMask(a)))
            rle["counts"] = rle["counts"].decode()
            preds.append({**{k: a[k] for k in ("image_id", "category_id", "bbox")},
                          "score": 1.0, "segmentation": rle})  # fmt: skip
    return preds


def test_stages_predict_score_and_write_every_report(subset, params_file, tmp_path):
    model_file = save_model(tiny_model(), tmp_path / "model.pt")
    out, eval_dir = tmp_path / "metrics.json", tmp_path / "eval"
    assert infer_then_evaluate(params_file, subset, model_file, tmp_path) == 0

    preds_file = eval_dir / "predictions.json"
    gt = COCO(str(subset / "annotations" / "val.json"))
    assert len(gt.loadRes(str(preds_file)).anns) == len(json.loads(preds_file.read_text())) > 0
    written = json.loads(out.read_text())
    assert set(written) == {"segm", "bbox", "semantic", "iou", "dice", "precision", "recall", "f1"}
    details = json.loads((eval_dir / "details.json").read_text())
    assert set(details) == {
        "segm", "bbox", "iou", "dice", "match", "semantic", "per_class", "errors"
    }  # fmt: skip
    assert list(details["per_class"]) == CLASSES
    assert (
        written["segm"]["AP"] == details["segm"]["AP"] and written["f1"] == details["match"]["f1"]
    )

    # The same predictions scored from the file alone give the same metrics, no model needed.
    again = tmp_path / "again.json"
    assert stage(params_file, subset, "--predictions", preds_file, "--out", again) == 0
    assert json.loads(again.read_text()) == written
    assert json.loads((tmp_path / "again.details.json").read_text()) == details

    header = (eval_dir / "per_class.csv").read_text().splitlines()[0]
    assert header.startswith("class,n_gt,segm_AP,segm_AP50,segm_AP75,bbox_AP")
    for name in ("pr_iou50.csv", "pr_iou50_95.csv"):
        lines = (eval_dir / name).read_text().splitlines()
        assert lines[0] == "recall," + ",".join(CLASSES) and len(lines) == 102
    with Image.open(eval_dir / "samples.png") as png:
        assert png.format == "PNG" and png.height > png.width  # two rows of GT | prediction
    for name in ("errors.png", "worst_images.png"):
        with Image.open(eval_dir / name) as png:
            assert png.format == "PNG"
    confusion = json.loads((eval_dir / "confusion.json").read_text())
    counts = details["errors"]["all"]
    false_positives = sum(counts[k] for k in ("localisation", "duplicate", "background"))
    assert sum(r["actual"] == "background" for r in confusion) == false_positives


def test_evaluate_figures_are_titled_with_the_score_threshold(subset, tmp_path, monkeypatch):
    figures = {}
    save = visualize.save_figure

    def keep(fig, path, **options):  # the real save, remembering each figure by file name
        figures[Path(path).name] = fig
        save(fig, path, **options)

    monkeypatch.setattr(visualize, "save_figure", keep)
    gt = COCO(str(subset / "annotations" / "val.json"))
    preds = perfect_predictions(subset)
    image = gt.imgs[preds[0]["image_id"]]
    stray = np.zeros((image["height"], image["width"]), np.uint8)
    stray[:6, :6] = 1  # a confident extra detection: at worst a duplicate, so an error
    rle = mask_utils.encode(np.asfortranarray(stray))
    rle["counts"] = rle["counts"].decode()
    preds.append({"image_id": image["id"], "category_id": 1, "bbox": [0, 0, 6, 6],
                  "score": 0.9, "segmentation": rle})  # fmt: skip
    params = EvaluateParams(score_threshold=0.35, n_samples=2)
    paths = (tmp_path / "m.json", tmp_path / "d.json", tmp_path)
    evaluation.write_reports(gt, preds, params, paths, subset / "images" / "val")
    assert sorted(figures) == ["errors.png", "samples.png", "worst_images.png"]
    errors = figures["errors.png"].axes[0]
    assert "0.35" in errors.get_title() and errors.get_xlabel() and errors.get_ylabel()
    for name in ("samples.png", "worst_images.png"):
        assert "0.35" in figures[name].get_suptitle(), name


def test_a_model_that_detects_nothing_still_gets_a_report(subset, params_file, tmp_path):
    model = tiny_model()
    with torch.no_grad():  # background wins everywhere: no detection passes the score cut
        model.roi_heads.box_predictor.cls_score.weight.zero_()
        model.roi_heads.box_predictor.cls_score.bias.copy_(torch.tensor([20.0, 0, 0, 0, 0]))
    model_file = save_model(model, tmp_path / "model.pt")
    out, eval_dir = tmp_path / "metrics.json", tmp_path / "eval"
    assert infer_then_evaluate(params_file, subset, model_file, tmp_path) == 0
    assert json.loads((eval_dir / "predictions.json").read_text()) == []
    m = json.loads(out.read_text())
    assert m["segm"]["AP"] == m["bbox"]["AP"] == m["iou"] == m["recall"] == 0.0
    assert m["precision"] is None
    assert json.loads((eval_dir / "details.json").read_text())["match"]["fp"] == 0
    assert (eval_dir / "samples.png").exists()


def test_scoring_a_predictions_file_writes_metrics_and_details(subset, params_file, tmp_path):
    preds_file = tmp_path / "theirs.json"
    preds_file.write_text(json.dumps(perfect_predictions(subset)))
    out = tmp_path / "theirs_metrics.json"
    assert stage(params_file, subset, "--predictions", preds_file, "--out", out) == 0
    m = json.loads(out.read_text())
    assert m["segm"]["AP"] == m["bbox"]["AP"] == m["dice"] == m["iou"] == 1.0
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["theirs.json", "theirs_metrics.details.json", "theirs_metrics.json"]


def test_predictions_mode_needs_an_explicit_out(subset, params_file, tmp_path, capsys):
    preds_file = tmp_path / "theirs.json"
    preds_file.write_text("[]")
    assert stage(params_file, subset, "--predictions", preds_file) == 2
    assert "--predictions needs --out" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda preds: [preds[0], {**preds[1], "image_id": 123}], "prediction #1: image_id 123"),
        (lambda preds: [{**preds[0], "category_id": 9}], "prediction #0: category_id 9"),
        (lambda preds: json.dumps(preds)[:40], "not valid JSON"),
    ],
)
def test_a_bad_predictions_file_stops_naming_the_file_and_the_id(
    subset, params_file, tmp_path, capsys, edit, message
):
    bad = edit(perfect_predictions(subset))
    preds_file = tmp_path / "bad.json"
    preds_file.write_text(bad if isinstance(bad, str) else json.dumps(bad))
    out = tmp_path / "m.json"
    assert stage(params_file, subset, "--predictions", preds_file, "--out", out) == 2
    err = capsys.readouterr().err
    assert f"error: {preds_file}: " in err and message in err
    assert not out.exists()


def test_predictions_made_for_a_reordered_class_list_are_refused(
    subset, params_file, tmp_path, capsys
):
    """Stage infer records the class names; evaluate checks them against the subset's."""
    model_file = save_model(tiny_model(), tmp_path / "model.pt")
    assert infer_then_evaluate(params_file, subset, model_file, tmp_path) == 0
    preds_file = tmp_path / "eval" / "predictions.json"
    recorded = json.loads((tmp_path / "eval" / "predictions.classes.json").read_text())
    assert recorded == {"classes": CLASSES}
    # subset.classes reordered and the subset rebuilt; the old predictions were not redone
    reordered = [CLASSES[1], CLASSES[0], *CLASSES[2:]]
    gt_file = tmp_path / "reordered" / "annotations" / "val.json"
    shutil.copytree(subset, tmp_path / "reordered")
    gt = json.loads(gt_file.read_text())
    gt["categories"] = [{**c, "name": reordered[c["id"] - 1]} for c in gt["categories"]]
    gt_file.write_text(json.dumps(gt))
    out = tmp_path / "m.json"
    code = stage(params_file, tmp_path / "reordered", "--predictions", preds_file, "--out", out)
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: {preds_file}: predictions were made for classes ")
    assert str(CLASSES) in err and str(reordered) in err
    assert not out.exists()


def test_a_model_for_other_classes_is_refused(subset, params_file, tmp_path, capsys):
    model_file = save_model(tiny_model(), tmp_path / "model.pt", ["dog", "car", "chair", "cat"])
    assert infer_then_evaluate(params_file, subset, model_file, tmp_path) == 2
    assert "trained for classes ['dog', 'car', 'chair', 'cat']" in capsys.readouterr().err
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "eval").exists()


# --- through DVC ------------------------------------------------------------------------------

MATCH_KEYS = ("iou", "dice", "match.", "errors.all.", "precision", "recall", "f1", "semantic.")
DETAILS = "reports/eval/details.json"
MATCH_PER_CLASS = {"iou", "dice", "precision", "recall", "f1", "tp", "fp", "fn"}


def is_matching_number(key: str) -> bool:
    """A metric the score threshold feeds (greedy IoU, Dice, P/R/F1), not a COCO number."""
    if key.startswith("per_class."):
        return key.rsplit(".", 1)[1] in MATCH_PER_CLASS
    return key.startswith(MATCH_KEYS)


@pytest.mark.slow
def test_dvc_repro_then_exp_run_changes_only_the_matching_numbers(tmp_path):
    coco_root = synthcoco.make_coco_root(
        tmp_path / "coco", n_train=6, n_val=6, n_test=0, size=(64, 96)
    )
    # Training starts from a saved random model (scores near 0.5) and barely moves it: one
    # epoch from scratch leaves a model that detects nothing, so nothing to threshold.
    start = save_model(tiny_model(), tmp_path / "start.pt")
    params = {
        "data": {"coco_root": str(coco_root)},
        "subset": {"n_train": 2, "n_val": 2, "n_test": 1, "test_from": "val2017",
                   "strategy": "random", "workers": 1},
        "train": {"weights": str(start), "epochs": 1, "lr": 1e-9, "batch_size": 2,
                  "num_workers": 0, "min_size": 128, "max_size": 128, "warmup_iters": 1,
                  "amp": False, "device": "cpu", "rois_per_image": 64},
        "evaluate": {"score_threshold": 1.0, "n_samples": 1, "device": "cpu"},
    }  # fmt: skip
    repo = make_dvc_repo(tmp_path / "repo", params)

    first = dvc(repo, "repro", "evaluate")
    assert {"train", "infer", "evaluate"} <= stages_ran(first.stdout)
    baseline = json.loads((repo / DETAILS).read_text())
    assert baseline["match"]["tp"] + baseline["match"]["fp"] == 0  # threshold 1: none kept
    scores = [p["score"] for p in json.loads((repo / "reports/eval/predictions.json").read_text())]
    assert any(s >= 0.3 for s in scores), "the tiny model should detect something above 0.3"
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-q", "-m", "baseline")

    exp = dvc(repo, "exp", "run", "-S", "evaluate.score_threshold=0.3", "evaluate")
    assert stages_ran(exp.stdout) == {"check_params", "evaluate"}, exp.stdout
    diff = dvc(repo, "metrics", "diff", "HEAD", "--json", "--targets", "reports/metrics.json",
               DETAILS)  # fmt: skip
    changed = json.loads(diff.stdout)
    assert changed[DETAILS]["match.fp"]["new"] > 0, diff.stdout
    for path in ("reports/metrics.json", DETAILS):
        assert all(is_matching_number(key) for key in changed[path]), sorted(changed[path])
    table = dvc(repo, "metrics", "diff", "HEAD").stdout  # the headline file only
    # precision goes from none (nothing kept) to a number; recall may stay 0 (no TP)
    assert "precision" in table and "segm.AP" not in table and "match.fp" not in table

    # The mask threshold feeds inference: both stages rerun and the masks' numbers move.
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-q", "-m", "score threshold 0.3")
    exp = dvc(repo, "exp", "run", "-S", "evaluate.mask_threshold=0.8", "evaluate")
    assert stages_ran(exp.stdout) == {"check_params", "infer", "evaluate"}, exp.stdout
    diff = dvc(repo, "metrics", "diff", "HEAD", "--json", "--targets", DETAILS)
    changed = json.loads(diff.stdout)[DETAILS]  # full precision: a small change may round away
    assert any(key.startswith(("iou.", "dice.", "segm.")) for key in changed), changed

    # Sliced inference feeds inference too: `dvc metrics diff` then shows what it does to the
    # small objects' AP and to the small ones missed (here on a random model: any change).
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-q", "-m", "mask threshold 0.8")
    before = (repo / "reports/eval/predictions.json").read_text()
    exp = dvc(repo, "exp", "run", "-S", "evaluate.slice_size=64", "evaluate")
    assert stages_ran(exp.stdout) == {"check_params", "infer", "evaluate"}, exp.stdout
    assert (repo / "reports/eval/predictions.json").read_text() != before
    diff = dvc(repo, "metrics", "diff", "HEAD", "--all", "--json", "--targets", DETAILS)
    keys = json.loads(diff.stdout)[DETAILS]
    assert {"segm.APs", "errors.all.missed_small"} <= set(keys), sorted(keys)
