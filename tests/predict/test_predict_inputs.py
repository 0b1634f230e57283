"""Predict on inputs as users have them: phone photos with an EXIF orientation (predicted and drawn
as a viewer shows them), a corrupt file among good ones (skipped by name), a folder where nothing
decodes. A stand-in detector that finds the red object keeps the model out of the way."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from exifphotos import GRAY, RED, photo, save_oriented, stored
from paramfiles import write_params
from PIL import Image
from pycocotools import mask as mask_utils

from cocoseg.coco.inputs import folder_images, subset_images
from cocoseg.common.cli import run_stage
from cocoseg.common.io import write_json
from cocoseg.common.params import PredictParams
from cocoseg.modeling import inference
from cocoseg.predict.outputs import predict
from cocoseg.viz.overlays import FIXED_COLORS, MASK_ALPHA
from stages import predict as predict_stage

CLASSES = ["person", "cat", "sports ball", "book"]
CPU = PredictParams(device="cpu")
SHOWN, MASK = photo()  # 48 wide, 80 high as a viewer shows it


class FindsRed(torch.nn.Module):
    """A stand-in detector: one 'person' (score 0.9) exactly where the image it is given is red."""

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        outputs = []
        for image in images:
            red = (image[0] > 0.6) & (image[1] < 0.3) & (image[2] < 0.3)
            ys, xs = torch.nonzero(red, as_tuple=True)
            box = [[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]] if len(xs) else []
            n = len(box)
            outputs.append({
                "boxes": torch.tensor(box, dtype=torch.float32).reshape(n, 4),
                "labels": torch.ones(n, dtype=torch.int64),
                "scores": torch.full((n,), 0.9),
                "masks": red.float()[None, None].expand(n, 1, *red.shape),
            })  # fmt: skip
        return outputs


@pytest.fixture
def finds_red(monkeypatch):
    """models/model.pt loads as FindsRed (the path is never read)."""
    monkeypatch.setattr(inference, "load_trained_model", lambda *_: (FindsRed(), CLASSES))


def box_of(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()),
            float(ys.max() + 1 - ys.min())]  # fmt: skip


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_photos_are_predicted_and_drawn_as_a_viewer_shows_them(tmp_path: Path, finds_red):
    folder = tmp_path / "phone"
    folder.mkdir()
    for k in range(1, 9):
        save_oriented(folder / f"o{k}.jpg", SHOWN, k)
    out = tmp_path / "out"
    images, skipped = folder_images(folder)
    assert skipped == [] and [(i.width, i.height) for i in images] == [(48, 80)] * 8
    results = predict("model.pt", images, out, CPU, name="predictions")

    index = json.loads((out / "images.json").read_text())["images"]
    assert [(i["file_name"], i["width"], i["height"]) for i in index] == [
        (f"o{k}.jpg", 48, 80) for k in range(1, 9)
    ]
    assert sorted(r["image_id"] for r in results) == list(range(1, 9))  # one detection each
    blended = np.asarray(RED) * (1 - MASK_ALPHA) + np.asarray(FIXED_COLORS["person"]) * MASK_ALPHA
    for r in results:
        name = f"o{r['image_id']}.jpg"
        assert (mask_utils.decode(r["segmentation"]).astype(bool) == MASK).all(), name
        assert r["bbox"] == box_of(MASK), name
        drawn = read_png(out / "overlays" / f"o{r['image_id']}.png")
        assert drawn.shape == SHOWN.shape, name
        inside = drawn[18:38, 10:22].reshape(-1, 3)  # the mask, its 1-px outline left out
        assert np.abs(inside - blended).max() <= 1, name
        assert (drawn[50:, 28:] == GRAY).all(), name  # far from the object: the photo itself


def test_a_subset_image_keeps_the_frame_its_record_has(tmp_path: Path, finds_red):
    """COCO's own records are of the stored frame: predicted there, tag or no tag."""
    subset = tmp_path / "subset"
    (subset / "images" / "test").mkdir(parents=True)
    save_oriented(subset / "images" / "test" / "000000000007.jpg", SHOWN, 6)  # stored 80x48
    record = {"id": 7, "file_name": "000000000007.jpg", "width": 80, "height": 48}
    write_json(subset / "annotations" / "test.json",
               {"images": [record], "categories": [{"id": 1, "name": "person"}]})  # fmt: skip
    images, _ = subset_images(subset, "test")
    out = tmp_path / "out"
    (result,) = predict("model.pt", images, out, CPU, name="test")
    as_stored = stored(MASK[..., None], 6)[..., 0]
    assert (mask_utils.decode(result["segmentation"]).astype(bool) == as_stored).all()
    assert json.loads((out / "images.json").read_text())["images"] == [record]
    assert read_png(out / "overlays" / "000000000007.png").shape == (48, 80, 3)


def run_folder(folder: Path, out: Path, model: Path, monkeypatch) -> int:
    """`stages/predict.py --images folder --out out` in this process, from the folder's parent
    (holding a params.yaml)."""
    write_params(folder.parent / "params.yaml", {"predict": {"device": "cpu"}})
    monkeypatch.chdir(folder.parent)
    argv = ["--model", str(model), "--images", str(folder), "--out", str(out)]
    return run_stage(predict_stage.main, predict_stage.parser(), argv)


def test_good_images_are_predicted_beside_a_corrupt_one(
    tmp_path: Path, finds_red, monkeypatch, caplog
):
    folder = tmp_path / "mine"
    folder.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        save_oriented(folder / name, SHOWN, 1)
    (folder / "fake.jpg").write_bytes(b"\xff\xd8 a download that stopped halfway")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    caplog.set_level(logging.INFO, logger="cocoseg")
    assert run_folder(folder, out, tmp_path / "model.pt", monkeypatch) == 0

    lines = [r.getMessage() for r in caplog.records]
    named = [line for line in lines if "fake.jpg" in line]
    assert len(named) == 2, named  # the line skipping it, and the summary
    assert "fake.jpg: image does not decode" in named[0] and named[0].endswith("; skipped")
    assert lines[-1] == named[1] == "predict: 3 predicted, 1 skipped: fake.jpg"
    index = json.loads((out / "images.json").read_text())["images"]
    assert [i["file_name"] for i in index] == ["a.jpg", "b.jpg", "c.jpg"]
    results = json.loads((out / "predictions.json").read_text())
    assert sorted(r["image_id"] for r in results) == [1, 2, 3]
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["a.png", "b.png", "c.png"]
    assert (out / "contact_sheet.png").is_file()
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temp file left


def test_a_folder_where_nothing_decodes_fails_in_one_line_and_writes_nothing(
    tmp_path: Path, monkeypatch, capsys
):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "empty.png").write_bytes(b"")
    out = tmp_path / "new" / "out"  # its parent does not exist yet either
    assert run_folder(folder, out, tmp_path / "absent.pt", monkeypatch) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {folder}: none of its 2 image file(s) decodes: broken.jpg, empty.png"]
    assert not out.parent.exists()  # the folders this run made are gone again


def test_a_run_that_fails_leaves_no_empty_out_folder(tmp_path: Path, monkeypatch, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    save_oriented(folder / "a.jpg", SHOWN, 1)
    out = tmp_path / "out"
    assert run_folder(folder, out, tmp_path / "absent.pt", monkeypatch) == 2
    assert "absent.pt: model file not found" in capsys.readouterr().err
    assert not out.exists()
