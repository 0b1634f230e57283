"""The subset stage on good data: selection, class remapping, counts, splits, fetching, DVC."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import synthcoco
from dvcrepo import dvc, make_dvc_repo, stages_ran
from httpserver import FileServer
from PIL import Image

from cocoseg.common.errors import ParamError
from cocoseg.common.params import DataParams, SubsetParams, parse_params
from cocoseg.subset.make import make_subset

SMALL = {
    "n_train": 12,
    "n_val": 8,
    "n_test": 4,
    "min_images_per_class": 2,
    "workers": 2,
    "test_from": "val2017",
}
TARGET_IDS = list(synthcoco.TARGETS)  # COCO ids in classes order


def subset_params(**overrides: object) -> SubsetParams:
    """Validated subset params: SMALL plus overrides."""
    return parse_params({"subset": {**SMALL, **overrides}}).subset


def run(root: Path, out: Path, **overrides: object) -> dict:
    """Run the stage into out from the COCO copy at root; return stats."""
    data = DataParams(coco_root=str(root), retries=0, timeout=10.0)
    return make_subset(data, subset_params(**overrides), out)


def read(out: Path, split: str) -> dict:
    return json.loads((out / "annotations" / f"{split}.json").read_text())


def source(root: Path, name: str) -> dict:
    return json.loads((root / "annotations" / f"instances_{name}.json").read_text())


def all_files(out: Path) -> dict[str, bytes]:
    """Every file under out, by relative path, with its bytes."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def ids(out: Path, split: str) -> list[int]:
    return [image["id"] for image in read(out, split)["images"]]


def eligible(doc: dict) -> set[int]:
    """Images with a non-crowd, non-degenerate instance of a target class (recomputed here)."""
    return {
        a["image_id"]
        for a in doc["annotations"]
        if a["category_id"] in synthcoco.TARGETS
        and not a["iscrowd"]
        and a["bbox"][2] > 0
        and a["bbox"][3] > 0
    }


@pytest.fixture(scope="module")
def default_out(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One stage run with SMALL params, shared by the read-only checks."""
    out = tmp_path_factory.mktemp("subset") / "out"
    run(synthetic_root, out)
    return out


def test_same_seed_gives_identical_bytes_another_seed_other_ids(
    synthetic_root, default_out, tmp_path
):
    again = tmp_path / "again"
    run(synthetic_root, again)
    assert all_files(again) == all_files(default_out)
    other = tmp_path / "other"
    run(synthetic_root, other, seed=7)
    assert ids(other, "train") != ids(default_out, "train")
    assert ids(other, "test") != ids(default_out, "test")


def test_rerun_with_another_seed_leaves_no_stale_file_and_nothing_foreign_touched(
    synthetic_root, tmp_path
):
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    run(synthetic_root, out, seed=1)
    (out / "images" / "train" / "leftover.jpg.part").write_bytes(b"partial")
    (out / "notes.txt").write_text("mine")
    run(synthetic_root, out, seed=2)
    run(synthetic_root, fresh, seed=2)
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    assert all_files(out) == all_files(fresh)


def test_categories_are_1_to_k_in_classes_order_and_nothing_foreign_survives(
    synthetic_root, default_out
):
    expected = [
        {"id": i, "name": name, "supercategory": synthcoco.SUPERCATEGORY[coco_id]}
        for i, (coco_id, name) in enumerate(synthcoco.TARGETS.items(), start=1)
    ]
    for split, name in (("train", "train2017"), ("val", "val2017")):
        doc = read(default_out, split)
        assert doc["categories"] == expected
        originals = {a["id"]: a for a in source(synthetic_root, name)["annotations"]}
        assert doc["annotations"]
        for ann in doc["annotations"]:
            src = originals[ann["id"]]
            assert src["category_id"] in synthcoco.TARGETS
            assert ann == {**src, "category_id": TARGET_IDS.index(src["category_id"]) + 1}
    assert read(default_out, "test")["categories"] == expected


def test_counts_equal_a_direct_computation_from_the_source(synthetic_root, default_out):
    stats = json.loads((default_out / "stats.json").read_text())
    for split, name, n in (("train", "train2017", 12), ("val", "val2017", 8)):
        src = source(synthetic_root, name)
        chosen = set(ids(default_out, split))
        assert len(chosen) == n and chosen <= eligible(src)
        kept = [
            a
            for a in src["annotations"]
            if a["image_id"] in chosen and a["category_id"] in TARGET_IDS
        ]
        assert sorted(a["id"] for a in read(default_out, split)["annotations"]) == sorted(
            a["id"] for a in kept
        )
        split_stats = stats["splits"][split]
        assert split_stats["images"] == n and split_stats["annotations"] == len(kept)
        for coco_id, cls in synthcoco.TARGETS.items():
            mine = [a for a in kept if a["category_id"] == coco_id]
            solid = [a for a in mine if not a["iscrowd"]]
            assert split_stats["classes"][cls] == {
                "instances": len(solid),
                "images": len({a["image_id"] for a in solid}),
                "crowd": len(mine) - len(solid),
            }
    assert stats["splits"]["test"]["images"] == 4


def test_images_keep_their_records_with_basename_and_are_the_source_bytes(
    synthetic_root, default_out
):
    src_images = {i["id"]: i for i in source(synthetic_root, "train2017")["images"]}
    for image in read(default_out, "train")["images"]:
        assert image == src_images[image["id"]]
        copied = default_out / "images" / "train" / image["file_name"]
        assert (
            copied.read_bytes() == (synthetic_root / "train2017" / image["file_name"]).read_bytes()
        )
    names = {p.name for p in (default_out / "images" / "train").iterdir()}
    assert names == {i["file_name"] for i in read(default_out, "train")["images"]}


def test_test_split_has_no_annotations_and_no_val_image(synthetic_root, default_out, tmp_path):
    test = read(default_out, "test")
    assert "annotations" not in test and set(test) == {"info", "licenses", "images", "categories"}
    assert not set(ids(default_out, "test")) & set(ids(default_out, "val"))
    val2017 = {i["id"] for i in source(synthetic_root, "val2017")["images"]}
    assert set(ids(default_out, "test")) <= val2017

    out = tmp_path / "t2017"
    run(synthetic_root, out, test_from="test2017", n_test=5)
    info = json.loads((synthetic_root / "annotations" / "image_info_test2017.json").read_text())
    assert set(ids(out, "test")) <= {i["id"] for i in info["images"]}
    assert len(ids(out, "test")) == 5 and "annotations" not in read(out, "test")
    assert len(list((out / "images" / "test").iterdir())) == 5


def test_crowd_annotations_are_kept_with_iscrowd_1(synthetic_root, tmp_path):
    out = tmp_path / "all"
    run(synthetic_root, out, n_train=32, n_val=24, n_test=6)  # every eligible image
    for split, name in (("train", "train2017"), ("val", "val2017")):
        crowd_src = {
            a["id"]
            for a in source(synthetic_root, name)["annotations"]
            if a["iscrowd"] and a["category_id"] in TARGET_IDS
        }
        crowd_out = {a["id"] for a in read(out, split)["annotations"] if a["iscrowd"] == 1}
        assert crowd_src and crowd_out == crowd_src


def rare_cat_root(synthetic_root: Path, tmp: Path, keep: int) -> Path:
    """A copy of the synthetic root whose train2017 holds only `keep` images with a cat."""
    root = tmp / "rare"
    (root / "annotations").mkdir(parents=True)
    for folder in ("train2017", "val2017", "test2017"):
        (root / folder).symlink_to(synthetic_root / folder)
    for name in ("instances_val2017.json", "image_info_test2017.json"):
        shutil.copy(synthetic_root / "annotations" / name, root / "annotations" / name)
    doc = source(synthetic_root, "train2017")
    cat_images = sorted({a["image_id"] for a in doc["annotations"] if a["category_id"] == 17})
    dropped = set(cat_images[keep:])
    doc["annotations"] = [
        a for a in doc["annotations"] if not (a["category_id"] == 17 and a["image_id"] in dropped)
    ]
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(doc))
    return root


def cat_images(out: Path) -> int:
    return len({a["image_id"] for a in read(out, "train")["annotations"] if a["category_id"] == 2})


def test_balanced_meets_its_minimums_where_random_does_not(synthetic_root, tmp_path):
    root = rare_cat_root(synthetic_root, tmp_path, keep=4)
    random_counts, balanced_counts = [], []
    for seed in range(6):
        for strategy, counts in (("random", random_counts), ("balanced", balanced_counts)):
            out = tmp_path / f"{strategy}{seed}"
            run(root, out, seed=seed, strategy=strategy, n_train=8, min_images_per_class=2)
            counts.append(cat_images(out))
    assert min(balanced_counts) >= 2
    assert min(random_counts) < 2  # the guarantee is doing the work


def test_balanced_minimum_above_what_exists_takes_all_and_logs(synthetic_root, tmp_path, caplog):
    root = rare_cat_root(synthetic_root, tmp_path, keep=2)
    out = tmp_path / "out"
    run(root, out, n_train=20, n_val=16, min_images_per_class=4)
    assert cat_images(out) == 2
    assert "only 2 images with a non-crowd 'cat'" in caplog.text


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"classes": ["person", "catt"]}, ["subset.classes", "'catt'", "did you mean 'cat'"]),
        ({"classes": ["person", "zebra"]}, ["'zebra'", "valid names: ", "sports ball"]),
        ({"n_train": 500}, ["subset.n_train = 500", "train2017 has only 32 images", "person"]),
        ({"n_val": 25}, ["subset.n_val = 25", "val2017 has only 24 images"]),
        ({"n_test": 23}, ["subset.n_test = 23", "val2017 (outside the val subset)", "only 22"]),
        ({"test_from": "test2017", "n_test": 13}, ["subset.n_test = 13", "only 12 images"]),
        (
            {"min_images_per_class": 4, "n_train": 16},
            ["subset.min_images_per_class = 4", "may need 16 val images", "subset.n_val = 8"],
        ),
    ],
)
def test_impossible_params_stop_naming_key_value_and_what_is_possible(
    synthetic_root, tmp_path, overrides, expected
):
    with pytest.raises(ParamError) as err:
        run(synthetic_root, tmp_path / "out", **overrides)
    for part in expected:
        assert part in str(err.value)
    assert not (tmp_path / "out").exists()  # stopped before writing anything


def test_missing_images_are_fetched_by_coco_url_and_match_local_copies(tmp_path, default_out):
    served = tmp_path / "served"
    with FileServer(served) as server:
        synthcoco.make_coco_root(served, base_url=server.url)  # same data as synthetic_root
        # A COCO copy holding the annotations and every other train image, nothing else.
        local = tmp_path / "local"
        shutil.copytree(served / "annotations", local / "annotations")
        shutil.copytree(served / "train2017", local / "train2017")
        for image in sorted((local / "train2017").iterdir())[::2]:
            image.unlink()
        out = tmp_path / "out"
        run(local, out)
        fetched = sorted(r.path for r in server.requests if r.status == 200)
    present = {p.name for p in (local / "train2017").iterdir()}
    expected = sorted(
        f"/{source}/{image['file_name']}"
        for split, source in (("train", "train2017"), ("val", "val2017"), ("test", "val2017"))
        for image in read(out, split)["images"]
        if not (split == "train" and image["file_name"] in present)
    )
    assert fetched == expected
    assert any(f.startswith("/train2017/") for f in fetched)
    assert len(expected) < 24  # some train images came from the local copy
    images = {k: v for k, v in all_files(out).items() if k.startswith("images")}
    assert images == {k: v for k, v in all_files(default_out).items() if k.startswith("images")}
    for split in ("train", "val", "test"):
        assert ids(out, split) == ids(default_out, split)


@pytest.mark.slow
def test_dvc_repro_subset_then_nothing_to_do(synthetic_root, tmp_path):
    repo = make_dvc_repo(
        tmp_path / "repo",
        {"data": {"coco_root": str(synthetic_root)}, "subset": dict(SMALL, n_test=3)},
    )
    first = dvc(repo, "repro", "subset")
    assert "subset" in stages_ran(first.stdout), first.stdout
    out = repo / "data" / "subset"
    assert len(ids(out, "train")) == 12 and len(ids(out, "val")) == 8 and len(ids(out, "test")) == 3
    assert len(list((out / "images" / "val").iterdir())) == 8
    assert json.loads((out / "stats.json").read_text())["splits"]["train"]["images"] == 12
    again = dvc(repo, "repro", "subset")
    assert stages_ran(again.stdout) == set(), again.stdout


@pytest.mark.real_data
def test_real_coco_sample(coco_sample, tmp_path):
    out = tmp_path / "out"
    stats = run(coco_sample, out, n_train=150, n_val=100, n_test=20, min_images_per_class=5)
    splits = stats["splits"]
    assert [splits[s]["images"] for s in ("train", "val", "test")] == [150, 100, 20]
    # README counts: val2017 has only 4 images with a sports ball; all else has >= 5.
    for split in ("train", "val"):
        for cls, counts in splits[split]["classes"].items():
            assert counts["images"] >= (4 if (split, cls) == ("val", "sports ball") else 5)
        assert splits[split]["crowd_annotations"] >= 1
    assert not set(ids(out, "test")) & set(ids(out, "val"))
    for split in ("train", "val", "test"):
        modes: dict[str, int] = {}
        for image in read(out, split)["images"]:
            with Image.open(out / "images" / split / image["file_name"]) as im:
                assert im.size == (image["width"], image["height"])
                modes[im.mode] = modes.get(im.mode, 0) + 1
        assert splits[split]["image_modes"] == dict(sorted(modes.items()))
        assert splits[split]["non_rgb_images"] == sum(n for m, n in modes.items() if m != "RGB")
