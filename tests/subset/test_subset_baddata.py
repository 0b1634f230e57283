"""The subset stage on broken input: each problem stops naming the file and id, or is counted.

Every test starts from a fresh small COCO copy (annotations copied, image folders linked)
and breaks one thing in it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import synthcoco
import yaml
from httpserver import FileServer, slow_folder_server
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from cocoseg.common.errors import DataError, DownloadError
from cocoseg.common.params import DataParams, parse_params
from cocoseg.subset.make import make_subset

PROJECT = Path(__file__).resolve().parents[2]
# 20 train images of which 16 hold a target class, 12 val (10): all of them are selected.
ALL = {"n_train": 16, "n_val": 10, "n_test": 2, "test_from": "val2017"}
ALL.update(min_images_per_class=1, workers=2)


@pytest.fixture(scope="module")
def base_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small pristine COCO copy; tests break copies of it, never it."""
    return synthcoco.make_coco_root(tmp_path_factory.mktemp("base"), n_train=20, n_val=12, n_test=4)


@pytest.fixture
def root(base_root: Path, tmp_path: Path) -> Path:
    """A breakable copy: annotation files copied, image folders symlinked to the base."""
    copy = tmp_path / "coco"
    shutil.copytree(base_root / "annotations", copy / "annotations")
    for folder in ("train2017", "val2017", "test2017"):
        (copy / folder).symlink_to(base_root / folder)
    return copy


def own_images(root: Path, folder: str) -> Path:
    """Replace a linked image folder by a real copy that a test may break."""
    link = root / folder
    target = link.resolve()
    link.unlink()
    shutil.copytree(target, link)
    return link


def edit(root: Path, name: str, change: Callable[[dict], object]) -> None:
    """Load annotations/<name>, let `change` mutate it, write it back."""
    path = root / "annotations" / name
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


TRAIN = "instances_train2017.json"


def run(root: Path, out: Path, **overrides: object) -> dict:
    data = DataParams(coco_root=str(root), retries=0, timeout=10.0)
    params = parse_params({"subset": {**ALL, **overrides}}).subset
    return make_subset(data, params, out)


def first_target_ann(doc: dict, *, crowd: bool = False, index: int = 0) -> dict:
    """The index-th annotation of a target class (crowd or not)."""
    anns = [
        a
        for a in doc["annotations"]
        if a["category_id"] in synthcoco.TARGETS and bool(a["iscrowd"]) == crowd
    ]
    return anns[index]


def out_anns(out: Path, split: str = "train") -> dict[int, dict]:
    doc = json.loads((out / "annotations" / f"{split}.json").read_text())
    return {a["id"]: a for a in doc["annotations"]}


def dropped(out: Path, what: str) -> int:
    return json.loads((out / "stats.json").read_text())["dropped"]["train2017"][what]


# --------------------------------------------------------------------------- json files


def test_truncated_json_stops_naming_the_file(root, tmp_path):
    path = root / "annotations" / TRAIN
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError, match=r"instances_train2017\.json: not valid JSON"):
        run(root, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fraction", [0.3, 0.7, 0.999])
def test_json_cut_anywhere_stops_naming_the_file(root, tmp_path, fraction):
    path = root / "annotations" / TRAIN
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(DataError, match=r"instances_train2017\.json: not valid JSON"):
        run(root, tmp_path / "out")


@pytest.mark.parametrize(
    ("find", "replace"),
    [
        (b'}, {"id"', b'} {"id"'),
        (b'"iscrowd": 0', b'"iscrowd": 0,,'),
        (b'"bbox": [', b'"bbox": [,'),
    ],
)
def test_corrupt_bytes_inside_the_annotations_stop_naming_the_file(root, tmp_path, find, replace):
    path = root / "annotations" / TRAIN
    doc = json.loads(path.read_text())
    doc["annotations"] = [{"id": a.pop("id"), **a} for a in doc["annotations"]]  # id first
    data = json.dumps(doc).encode()
    assert data.count(find) > 10
    at = data.index(find, len(data) // 2)
    path.write_bytes(data[:at] + replace + data[at + len(find) :])
    with pytest.raises(DataError, match=r"instances_train2017\.json: not valid JSON"):
        run(root, tmp_path / "out")


def test_any_valid_json_layout_gives_the_same_subset(root, tmp_path):
    out = tmp_path / "compact"
    run(root, out)

    def relayout(doc: dict) -> None:
        tricky = 'has "quotes" \\ and [brackets] {braces} and "annotations": [1]'
        reordered = {"annotations": doc["annotations"], **doc}  # annotations first
        reordered["info"] = {**doc["info"], "description": tricky}
        doc.clear()
        doc.update(reordered)

    edit(root, TRAIN, relayout)
    path = root / "annotations" / TRAIN
    path.write_text(json.dumps(json.loads(path.read_text()), indent=3, ensure_ascii=True))
    other = tmp_path / "pretty"
    run(root, other)
    for split in ("train", "val", "test"):
        mine = json.loads((other / "annotations" / f"{split}.json").read_text())
        theirs = json.loads((out / "annotations" / f"{split}.json").read_text())
        if split == "train":
            assert mine["info"]["description"].startswith('has "quotes" \\ and [')
            mine["info"] = theirs["info"]
        assert mine == theirs


def test_json_that_is_not_coco_stops_naming_the_file_and_key(root, tmp_path):
    edit(root, "instances_val2017.json", lambda d: d.pop("annotations"))
    with pytest.raises(DataError, match=r"instances_val2017\.json: 'annotations' is missing"):
        run(root, tmp_path / "out")


def test_orphan_annotation_is_skipped_and_counted_in_logs_and_stats(root, tmp_path, caplog):
    def add_orphan(doc: dict) -> None:
        doc["annotations"].append({**first_target_ann(doc), "id": 77, "image_id": 424242})

    edit(root, TRAIN, add_orphan)
    out = tmp_path / "out"
    run(root, out)
    assert dropped(out, "orphan_annotations") == 1
    assert 77 not in out_anns(out)
    assert "dropped 1 (orphan annotations)" in caplog.text


@pytest.mark.parametrize("dupe", ["image", "annotation"])
def test_duplicate_ids_stop_naming_the_id(root, tmp_path, dupe):
    def duplicate(doc: dict) -> None:
        key = f"{dupe}s"
        doc[key].append(dict(doc[key][3]))

    edit(root, TRAIN, duplicate)
    doc = json.loads((root / "annotations" / TRAIN).read_text())
    dupe_id = doc[f"{dupe}s"][3]["id"]
    with pytest.raises(DataError, match=rf"{TRAIN}: duplicate {dupe} id {dupe_id}$"):
        run(root, tmp_path / "out")


def test_unknown_category_id_stops_naming_the_annotation(root, tmp_path):
    bad = {}

    def bad_category(doc: dict) -> None:
        ann = first_target_ann(doc, index=2)
        ann["category_id"] = 999
        bad["id"] = ann["id"]

    edit(root, TRAIN, bad_category)
    with pytest.raises(DataError, match=rf"annotation id {bad['id']} has category_id 999,"):
        run(root, tmp_path / "out")


def set_field(section: str, index: int, key: str, value: object) -> Callable[[dict], None]:
    """A change that sets (value given) or removes (value None) one field of one record."""

    def change(doc: dict) -> None:
        record = doc[section][index]
        if value is None:
            record.pop(key)
        else:
            record[key] = value

    return change


@pytest.mark.parametrize(
    ("section", "index", "key", "value", "expected"),
    [
        ("images", 4, "id", None, "images[4] has no usable 'id' ("),
        ("images", 4, "id", "1005", "images[4] has no usable 'id' (Expected `int`, got `str`)"),
        ("images", 3, "width", None, "image id {id} (images[3]): Object missing required field"),
        ("images", 3, "file_name", 7, "image id {id} (images[3]): Expected `str`, got `int` in"),
        (
            "annotations", 5, "image_id", None,
            "annotations[5] lacks a usable 'id', 'image_id' or 'category_id' (Object missing",
        ),
        (
            "annotations", 5, "category_id", "1",
            "annotations[5] lacks a usable 'id', 'image_id' or 'category_id' (Expected `int`",
        ),
        ("annotations", 6, "bbox", "1,2,3,4", "annotation id {id} (annotations[6]): Expected `arr"),
        ("annotations", 6, "iscrowd", [0], "annotation id {id} (annotations[6]): Expected `bool"),
        ("categories", 2, "name", None, "categories[2] lacks 'id' or 'name' (Object missing"),
        ("categories", 2, "id", 1.5, "categories[2] lacks 'id' or 'name' (Expected `int`"),
    ],
)  # fmt: skip
def test_wrongly_typed_field_stops_naming_file_record_and_field(
    root, tmp_path, section, index, key, value, expected
):
    record_id = json.loads((root / "annotations" / TRAIN).read_text())[section][index]["id"]
    edit(root, TRAIN, set_field(section, index, key, value))
    with pytest.raises(DataError) as err:
        run(root, tmp_path / "out")
    message = str(err.value)
    assert message.startswith(f"{root / 'annotations' / TRAIN}: ")
    assert expected.format(id=record_id) in message and key in message.split(": ", 1)[1]
    assert "\n" not in message and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d.update(categories={}), "'categories' is missing or not a list"),
        (lambda d: d.pop("images"), "'images' is missing or not a list"),
        (lambda d: d.update(annotations=None), "'annotations' is missing or not a list"),
    ],
)
def test_top_level_list_missing_or_wrong_stops_naming_file_and_key(
    root, tmp_path, change, expected
):
    edit(root, TRAIN, change)
    with pytest.raises(DataError, match=rf"instances_train2017\.json: {expected}"):
        run(root, tmp_path / "out")


def test_json_array_instead_of_object_and_cut_file_name_what_was_found(root, tmp_path):
    path = root / "annotations" / TRAIN
    whole = path.read_bytes()
    path.write_bytes(b"[" + whole + b"]")
    with pytest.raises(DataError, match=r"\.json: expected a JSON object with 'images' and"):
        run(root, tmp_path / "out")
    path.write_bytes(whole[:5000])
    with pytest.raises(DataError, match=r"\.json: not valid JSON \(truncated or corrupt\?; 5,000 "):
        run(root, tmp_path / "out")


# --------------------------------------------------------------------------- annotations


def test_short_polygons_and_degenerate_boxes_are_dropped_and_counted(root, tmp_path, caplog):
    ids = {}

    def damage(doc: dict) -> None:
        two_parts, only_short, flat_w, flat_h = (first_target_ann(doc, index=i) for i in range(4))
        two_parts["segmentation"] = [*two_parts["segmentation"], [5.0, 5.0, 9.0, 9.0]]
        only_short["segmentation"] = [[5.0, 5.0, 9.0, 9.0]]  # pycocotools would read a box
        flat_w["bbox"][2] = 0
        flat_h["bbox"][3] = 0.0
        ids.update(two=two_parts["id"], short=only_short["id"], w=flat_w["id"], h=flat_h["id"])
        ids["poly"] = two_parts["segmentation"][0]
        gone = {ids["short"], ids["w"], ids["h"]}
        usable = [a for a in doc["annotations"] if a["id"] not in gone and not a["iscrowd"]]
        targets = {a["image_id"] for a in usable if a["category_id"] in synthcoco.TARGETS}
        ids["n_train"] = len(targets)  # every image still holding a usable target instance

    edit(root, TRAIN, damage)
    out = tmp_path / "out"
    run(root, out, n_train=ids["n_train"])
    anns = out_anns(out)
    assert anns[ids["two"]]["segmentation"] == [ids["poly"]]
    assert not {ids["short"], ids["w"], ids["h"]} & set(anns)
    assert dropped(out, "short_polygons") == 2
    assert dropped(out, "empty_segmentations") == 1
    assert dropped(out, "degenerate_boxes") == 2
    assert "dropped 2 (degenerate boxes)" in caplog.text
    assert "dropped 2 (short polygons)" in caplog.text


def test_crowd_rle_with_list_or_string_counts_is_kept_and_bad_rle_dropped(root, tmp_path):
    ids = {}

    def mix_rle(doc: dict) -> None:
        listed, stringed, broken = (first_target_ann(doc, crowd=True, index=i) for i in range(3))
        image = next(i for i in doc["images"] if i["id"] == stringed["image_id"])
        rle = mask_utils.frPyObjects(stringed["segmentation"], image["height"], image["width"])
        stringed["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
        broken["segmentation"]["size"] = [1, 1]
        ids.update(listed=listed["id"], stringed=stringed["id"], broken=broken["id"])

    edit(root, TRAIN, mix_rle)
    src = COCO(str(root / "annotations" / TRAIN))  # masks as the source file gives them
    out = tmp_path / "out"
    run(root, out)
    anns = out_anns(out)
    assert isinstance(anns[ids["listed"]]["segmentation"]["counts"], list)
    assert isinstance(anns[ids["stringed"]]["segmentation"]["counts"], str)
    subset = COCO(str(out / "annotations" / "train.json"))
    for key in ("listed", "stringed"):
        ann_id = ids[key]
        assert anns[ann_id]["iscrowd"] == 1
        mask = subset.annToMask(subset.anns[ann_id])
        assert mask.sum() > 0 and np.array_equal(mask, src.annToMask(src.anns[ann_id]))
    assert ids["broken"] not in anns and dropped(out, "invalid_rle") == 1


# --------------------------------------------------------------------------- images


def train_image(root: Path, index: int) -> dict:
    return json.loads((root / "annotations" / TRAIN).read_text())["images"][index]


def test_jpeg_that_does_not_decode_stops_naming_file_and_image_id(root, tmp_path):
    image = train_image(root, 3)
    path = own_images(root, "train2017") / image["file_name"]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError) as err:
        run(root, tmp_path / "out")
    assert image["file_name"] in str(err.value) and f"image id {image['id']}" in str(err.value)
    assert not (tmp_path / "out" / "annotations").exists()


def test_downloaded_image_that_does_not_decode_stops_naming_image_id(base_root, tmp_path):
    served = tmp_path / "served"
    with FileServer(served) as server:
        synthcoco.make_coco_root(served, n_train=20, n_val=12, n_test=4, base_url=server.url)
        local = tmp_path / "local"
        shutil.copytree(served / "annotations", local / "annotations")
        image = train_image(local, 5)
        server.replace(f"/train2017/{image['file_name']}", b"<html>not an image</html>")
        with pytest.raises(DownloadError) as err:
            run(local, tmp_path / "out", workers=1)
    assert f"image id {image['id']}" in str(err.value) and "does not decode" in str(err.value)
    assert not (tmp_path / "out" / "images" / "train" / image["file_name"]).exists()


def test_grayscale_and_cmyk_images_are_kept_as_is_and_counted(root, tmp_path, caplog):
    gray, cmyk = train_image(root, 1), train_image(root, 2)  # the generator made index 1 'L'
    folder = own_images(root, "train2017")
    with Image.open(folder / cmyk["file_name"]) as im:
        im.convert("CMYK").save(folder / cmyk["file_name"], quality=95)
    out = tmp_path / "out"
    stats = run(root, out)
    for image, mode in ((gray, "L"), (cmyk, "CMYK")):
        kept = out / "images" / "train" / image["file_name"]
        assert kept.read_bytes() == (folder / image["file_name"]).read_bytes()
        with Image.open(kept) as im:
            assert im.mode == mode
    assert stats["splits"]["train"]["image_modes"] == {"CMYK": 1, "L": 1, "RGB": 14}
    assert stats["splits"]["train"]["non_rgb_images"] == 2
    on_disk = json.loads((out / "stats.json").read_text())
    assert on_disk["splits"]["train"]["non_rgb_images"] == 2
    assert f"id {gray['id']} L" in caplog.text and f"id {cmyk['id']} CMYK" in caplog.text


@pytest.mark.parametrize("hostile", ["../../x.jpg", "/tmp/x.jpg", "..\\..\\x.jpg"])
def test_hostile_file_name_is_refused_naming_the_image(root, tmp_path, hostile):
    def poison(doc: dict) -> None:
        doc["images"][3]["file_name"] = hostile

    edit(root, TRAIN, poison)
    image_id = train_image(root, 3)["id"]
    with pytest.raises(DataError) as err:
        run(root, tmp_path / "out")
    assert f"image id {image_id}" in str(err.value) and "unsafe path" in str(err.value)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- interruption


@pytest.fixture
def slow_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(base url, folder it serves) of a web server taking a fifth of a second per file."""
    with slow_folder_server(tmp_path / "served", delay=0.2) as served:
        yield served


def stage(params: Path, out: Path) -> subprocess.Popen:
    """Start `python stages/subset.py` as DVC would, on the given params file."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    return subprocess.Popen(
        [sys.executable, str(PROJECT / "stages" / "subset.py"), "--params", str(params),
         "--out", str(out)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


def files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_stage_killed_mid_way_then_rerun_gives_the_uninterrupted_result(slow_server, tmp_path):
    url, served = slow_server
    synthcoco.make_coco_root(served, n_train=20, n_val=12, n_test=4, base_url=url)
    local = tmp_path / "local"  # annotations only: every image comes over the slow server
    shutil.copytree(served / "annotations", local / "annotations")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"data": {"coco_root": str(local)}, "subset": ALL}))
    out = tmp_path / "out"

    proc = stage(params, out)
    deadline = time.monotonic() + 30
    while len(list((out / "images" / "train").glob("*.jpg"))) < 3:
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline, "stage made no progress"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "stats.json").exists()  # really stopped part-way
    for jpg in out.rglob("*.jpg"):  # whatever has a final name is whole
        with Image.open(jpg) as im:
            im.load()

    rerun = stage(params, out)
    log = rerun.communicate(timeout=120)[0].decode()
    assert rerun.returncode == 0, log

    # Reference: an uninterrupted run on the same annotations, images already local.
    whole = tmp_path / "whole"
    shutil.copytree(served, whole)
    reference = tmp_path / "reference"
    run(whole, reference)
    got = files(out)
    assert not [name for name in got if name.endswith((".part", ".tmp"))]
    assert got == files(reference)
