"""Stage eda on the synthetic subset: counts match a direct recount, figures are sane PNGs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cocoseg.common.errors import DataError
from cocoseg.common.params import EdaParams
from cocoseg.eda import analysis as eda
from cocoseg.eda.analysis import FIGURES, run_eda, sample_ids
from cocoseg.viz import figures as visualize
from cocoseg.viz.overlays import class_colors

PROJECT = Path(__file__).resolve().parents[2]


def recount(coco: dict) -> dict:
    """summary.json's numbers for one split, counted the plain way."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    out = {"images": len(coco["images"])}
    if "annotations" not in coco:
        return out
    anns = coco["annotations"]
    out["instances"] = sum(1 for a in anns if a["iscrowd"] == 0)
    out["crowd"] = sum(1 for a in anns if a["iscrowd"] == 1)
    with_objects = {a["image_id"] for a in anns if a["iscrowd"] == 0}
    out["empty_images"] = len(coco["images"]) - len(with_objects)
    out["per_class"] = {}
    for cid, name in names.items():
        mine = [a for a in anns if a["category_id"] == cid and a["iscrowd"] == 0]
        out["per_class"][name] = {
            "instances": len(mine),
            "images": len({a["image_id"] for a in mine}),
            "small": sum(1 for a in mine if a["area"] < 1024),
            "medium": sum(1 for a in mine if 1024 <= a["area"] < 9216),
            "large": sum(1 for a in mine if a["area"] >= 9216),
        }
    return out


@pytest.fixture(scope="module")
def eda_out(synthetic_subset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """reports/eda written once by the stage script, as DVC runs it."""
    out = tmp_path_factory.mktemp("eda")
    proc = subprocess.run(
        [sys.executable, "stages/eda.py", "--subset", str(synthetic_subset), "--out", str(out)],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return out


def test_summary_matches_direct_count(eda_out: Path, synthetic_subset: Path):
    summary = json.loads((eda_out / "summary.json").read_text())
    assert set(summary) == {"train", "val", "test"}
    for split in ("train", "val", "test"):
        coco = json.loads((synthetic_subset / "annotations" / f"{split}.json").read_text())
        assert summary[split] == recount(coco), split
    # The synthetic data has crowds, and every class in every labelled split.
    assert summary["train"]["crowd"] > 0
    assert all(row["instances"] > 0 for row in summary["train"]["per_class"].values())


def test_summary_is_flat_numbers_for_dvc_metrics(eda_out: Path):
    def leaves(node):
        if isinstance(node, dict):
            for v in node.values():
                yield from leaves(v)
        else:
            yield node

    summary = json.loads((eda_out / "summary.json").read_text())
    assert all(isinstance(v, int) for v in leaves(summary))


def test_every_figure_is_a_sensible_png(eda_out: Path):
    written = sorted(p.name for p in (eda_out / "figures").iterdir())
    assert written == sorted(FIGURES)
    for name in FIGURES:
        with Image.open(eda_out / "figures" / name) as img:
            assert img.format == "PNG", name
            img.load()
            w, h = img.size
        assert 300 <= w <= 3000 and 300 <= h <= 3000, (name, img.size)


def test_every_figure_has_a_title_and_every_chart_axis_titles(
    synthetic_subset: Path, tmp_path: Path, monkeypatch
):
    figures = {}

    def keep(fig, path, **options):  # instead of writing: remember the figure by file name
        figures[Path(path).name] = fig

    monkeypatch.setattr(eda, "save_figure", keep)
    monkeypatch.setattr(visualize, "save_figure", keep)
    run_eda(synthetic_subset, tmp_path, EdaParams())
    assert sorted(figures) == sorted(FIGURES)
    for name, fig in figures.items():
        assert fig.get_suptitle() or any(ax.get_title() for ax in fig.axes), name
        charts = [ax for ax in fig.axes if ax.axison and not ax.images]
        for ax in charts:
            assert ax.get_xlabel() and ax.get_ylabel(), (name, ax.get_title())
    assert len([ax for fig in figures.values() for ax in fig.axes if not ax.images]) >= 7


def _has_color(path: Path, rgb: tuple[int, int, int], min_pixels: int = 50) -> bool:
    with Image.open(path) as img:
        pixels = np.asarray(img.convert("RGB")).reshape(-1, 3)
    return int((pixels == np.array(rgb)).all(1).sum()) >= min_pixels


def test_class_colours_same_across_figures(eda_out: Path):
    colors = class_colors(["person", "cat", "sports ball", "book"])
    assert colors == class_colors(["person", "cat", "sports ball", "book"])
    for name in ("class_counts.png", "object_sizes.png", "samples.png"):
        for cls in ("person", "book"):
            assert _has_color(eda_out / "figures" / name, colors[cls]), (name, cls)


def test_samples_are_seeded_and_prefer_images_with_objects(synthetic_subset: Path):
    coco = json.loads((synthetic_subset / "annotations" / "train.json").read_text())
    with_objects = {a["image_id"] for a in coco["annotations"] if not a["iscrowd"]}
    a = sample_ids(coco, 3, seed=0)
    assert a == sample_ids(coco, 3, seed=0)
    assert len(a) == 3 and set(a) <= with_objects
    assert len(sample_ids(coco, 100, seed=1)) == len(coco["images"])


def test_missing_image_is_named(synthetic_subset: Path, tmp_path: Path):
    subset = tmp_path / "subset"
    shutil.copytree(synthetic_subset, subset)
    shutil.rmtree(subset / "images" / "train")
    with pytest.raises(DataError, match=r"images/train/\d+\.jpg"):
        run_eda(subset, tmp_path / "eda", EdaParams(n_samples=2))


def test_missing_annotations_and_bad_refs_are_named(synthetic_subset: Path, tmp_path: Path):
    subset = tmp_path / "subset"
    shutil.copytree(synthetic_subset, subset)
    val = subset / "annotations" / "val.json"
    coco = json.loads(val.read_text())
    coco["annotations"][0]["category_id"] = 99
    val.write_text(json.dumps(coco))
    with pytest.raises(DataError, match=r"val\.json: annotation .* unknown category_id"):
        run_eda(subset, tmp_path / "eda", EdaParams())
    val.unlink()
    with pytest.raises(DataError, match=r"val\.json: annotation file not found"):
        run_eda(subset, tmp_path / "eda", EdaParams())
