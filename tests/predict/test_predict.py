"""Stage predict with a small random Mask R-CNN: folder mode, DVC mode, thresholds, bad inputs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import synthcoco
import torch
from paramfiles import write_params
from PIL import Image
from pycocotools.coco import COCO

from cocoseg.coco.inputs import InputImage, folder_images
from cocoseg.common.cli import run_stage
from cocoseg.common.errors import DataError
from cocoseg.common.params import PredictParams
from cocoseg.modeling.records import model_record
from cocoseg.modeling.registry import build_model
from cocoseg.predict.outputs import add_category_names, keep_confident, overlay_names, predict
from stages import predict as predict_stage

PROJECT = Path(__file__).resolve().parents[2]
CLASSES = ["person", "cat", "sports ball", "book"]
CPU = PredictParams(device="cpu")


def params_folder(folder: Path) -> Path:
    """A folder holding the recipe's params.yaml, to run a stage from."""
    write_params(folder / "params.yaml", {"predict": {"score_threshold": 0.5}})
    return folder


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised, small-input Mask R-CNN saved as a cocoseg model file."""
    torch.manual_seed(0)
    model = build_model("maskrcnn_resnet50_fpn", 5, min_size=128, max_size=128)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    record = model_record(model, CLASSES, "maskrcnn_resnet50_fpn", 128, 128, {})
    torch.save(record, path)
    return path


@pytest.fixture(scope="module")
def folder(synthetic_subset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's folder: one JPEG, one PNG (named to sort first) and a text file."""
    folder = tmp_path_factory.mktemp("mine")
    jpgs = sorted((synthetic_subset / "images" / "test").glob("*.jpg"))
    shutil.copy(jpgs[0], folder / "b_photo.JPG")
    Image.open(jpgs[1]).save(folder / "a_shot.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def coco_from_folder(folder: Path) -> COCO:
    """A COCO index of the folder's images built independently: sorted names, ids 1..N."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    images = []
    for i, p in enumerate(files, start=1):
        with Image.open(p) as img:
            images.append({"id": i, "file_name": p.name, "width": img.width, "height": img.height})
    coco = COCO()
    coco.dataset = {
        "images": images,
        "annotations": [],
        "categories": [{"id": k, "name": n} for k, n in enumerate(CLASSES, start=1)],
    }
    coco.createIndex()
    return coco


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        assert img.format == "PNG", path
        img.load()
        return img.size


def test_folder_mode_cli(model_file: Path, folder: Path, tmp_path: Path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "stages.predict", "--model", str(model_file), "--images"]
    cmd += [str(folder), "--out", str(out), "--score-threshold", "0"]
    proc = subprocess.run(cmd, cwd=PROJECT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "skipped 1 file" in proc.stderr

    results = json.loads((out / "predictions.json").read_text())
    assert results, "a random model at threshold 0 still proposes detections"
    assert all(r["category_name"] == CLASSES[r["category_id"] - 1] for r in results)
    assert all(isinstance(r["segmentation"]["counts"], str) for r in results)
    gt = coco_from_folder(folder)
    loaded = gt.loadRes(str(out / "predictions.json"))
    assert len(loaded.getAnnIds()) == len(results)
    assert set(loaded.getImgIds()) == {1, 2}

    index = json.loads((out / "images.json").read_text())
    assert index["images"] == gt.dataset["images"]
    assert [c["name"] for c in index["categories"]] == CLASSES

    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["a_shot.png", "b_photo.png"]
    for name, img in (("a_shot.png", "a_shot.png"), ("b_photo.png", "b_photo.JPG")):
        with Image.open(folder / img) as original:
            assert png_size(out / "overlays" / name) == original.size
    w, h = png_size(out / "contact_sheet.png")
    assert 300 < w < 3000 and 200 < h < 3000


def test_threshold_one_keeps_nothing_but_writes_everything(
    model_file: Path, synthetic_subset: Path, tmp_path: Path
):
    folder = tmp_path / "one"
    folder.mkdir()
    src = next((synthetic_subset / "images" / "test").glob("*.jpg"))
    shutil.copy(src, folder / "x.jpg")
    out = tmp_path / "out"
    params = PredictParams(score_threshold=1.0, device="cpu")
    results = predict(model_file, folder_images(folder).images, out, params, name="predictions")
    assert results == []
    assert json.loads((out / "predictions.json").read_text()) == []
    assert json.loads((out / "images.json").read_text())["images"][0]["file_name"] == "x.jpg"
    drawn = np.asarray(Image.open(out / "overlays" / "x.png").convert("RGB"))
    with Image.open(src) as original:
        assert (drawn == np.asarray(original.convert("RGB"))).all(), "nothing kept, nothing drawn"
    png_size(out / "contact_sheet.png")


def test_dvc_mode_writes_test_json(model_file: Path, tmp_path: Path, monkeypatch):
    subset = synthcoco.make_subset(tmp_path / "subset", n_train=1, n_val=1, n_test=1)
    out = tmp_path / "reports" / "predictions"
    monkeypatch.chdir(params_folder(tmp_path))  # predict.score_threshold 0.5, the recipe's
    argv = ["--model", str(model_file), "--subset", str(subset), "--out", str(out)]
    assert run_stage(predict_stage.main, predict_stage.parser(), argv) == 0
    test = json.loads((subset / "annotations" / "test.json").read_text())
    results = json.loads((out / "test.json").read_text())
    threshold = 0.5  # the recipe's predict.score_threshold
    assert all(r["score"] >= threshold for r in results)
    assert {r["image_id"] for r in results} <= {img["id"] for img in test["images"]}
    assert json.loads((out / "images.json").read_text())["images"][0]["id"] == 20_000
    assert [p.name for p in (out / "overlays").iterdir()] == ["000000020000.png"]
    png_size(out / "contact_sheet.png")


def test_folder_mode_refuses_bad_arguments(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.chdir(params_folder(tmp_path))
    parser = predict_stage.parser()
    assert run_stage(predict_stage.main, parser, ["--images", str(tmp_path)]) == 2
    assert "--out" in capsys.readouterr().err
    same = ["--images", str(tmp_path), "--out", str(tmp_path)]
    assert run_stage(predict_stage.main, parser, same) == 2
    assert "is inside --images" in capsys.readouterr().err
    with pytest.raises(DataError, match=r"no \.jpg"):
        folder_images(tmp_path)
    with pytest.raises(DataError, match="not a folder"):
        folder_images(tmp_path / "missing")


@pytest.mark.parametrize("where", ["existing file", "inside the images", "read-only parent"])
def test_a_bad_out_is_refused_in_one_line_before_the_model_loads(
    tmp_path: Path, capsys, monkeypatch, where
):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (40, 30)).save(folder / "good.png")
    if where == "existing file":
        out, expected = tmp_path / "results.json", "is an existing file"
        out.write_text("{}")
    elif where == "inside the images":
        out, expected = folder / "predictions", "is inside --images"
    else:
        out, expected = Path("/proc/cocoseg-out"), "/proc/cocoseg-out: "  # not creatable
    monkeypatch.chdir(params_folder(tmp_path))
    argv = ["--model", str(tmp_path / "absent.pt"), "--images", str(folder), "--out", str(out)]
    assert run_stage(predict_stage.main, predict_stage.parser(), argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and expected in err[-1], err
    assert "absent.pt" not in err[-1]  # refused before the model is looked at
    if where == "existing file":
        assert out.read_text() == "{}"


def test_folder_mode_draws_16_bit_and_transparent_images_as_they_look(
    model_file: Path, tmp_path: Path
):
    gray = np.arange(40 * 30, dtype=np.uint32).reshape(30, 40) % 256
    folder = tmp_path / "imgs"
    folder.mkdir()
    sixteen = Image.frombuffer("I;16", (40, 30), (gray * 257).astype("<u2").tobytes(), "raw",
                               "I;16", 0, 1)  # fmt: skip
    sixteen.save(folder / "gray16.png")
    rgba = np.zeros((30, 40, 4), dtype=np.uint8)
    rgba[:, :20] = (200, 10, 10, 255)  # left half opaque red, right half transparent
    Image.fromarray(rgba, "RGBA").save(folder / "cutout.png")
    out = tmp_path / "out"
    params = PredictParams(score_threshold=1.0, device="cpu")  # nothing kept: the image alone
    predict(model_file, folder_images(folder).images, out, params, name="predictions")
    drawn = np.asarray(Image.open(out / "overlays" / "gray16.png").convert("RGB"))
    assert (drawn == np.repeat(gray[..., None], 3, axis=2)).all()
    drawn = np.asarray(Image.open(out / "overlays" / "cutout.png").convert("RGB"))
    assert (drawn[:, :20] == (200, 10, 10)).all() and (drawn[:, 20:] == 255).all()


def test_model_and_subset_classes_must_agree(model_file: Path, tmp_path: Path):
    image = InputImage(1, tmp_path / "x.jpg", "x.jpg", 10, 10)
    with pytest.raises(DataError, match="retrain"):
        predict(model_file, [image], tmp_path, CPU, name="t", expect_classes=["dog"])


def test_filtering_naming_and_overlay_names():
    results = [
        {"image_id": 1, "category_id": 2, "score": 0.5},
        {"image_id": 1, "category_id": 4, "score": 0.49},
    ]
    assert keep_confident(results, 0.5) == results[:1]
    assert keep_confident(results, 0.0) == results
    named = add_category_names(results, CLASSES)
    assert [r["category_name"] for r in named] == ["cat", "book"]
    assert "category_name" not in results[0]
    with pytest.raises(DataError, match="category_id 7"):
        add_category_names([{"category_id": 7}], CLASSES)
    images = [
        InputImage(1, Path("a.jpg"), "a.jpg", 1, 1),
        InputImage(2, Path("a.png"), "a.png", 1, 1),
        InputImage(3, Path("b.jpeg"), "b.jpeg", 1, 1),
    ]
    assert overlay_names(images) == {1: "a_jpg.png", 2: "a_png.png", 3: "b.png"}
