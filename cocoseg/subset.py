"""The subset stage: pick images by seed, keep the chosen classes as ids 1..K, write COCO json.

Each source file is read once and checked in one pass over its annotations: duplicate
ids and unknown categories stop the stage naming the id; orphan annotations, degenerate
boxes, short polygons and broken RLE are dropped and counted in stats.json. Images are
then selected by seed, put in place (cocoseg.images) and the json written.

COCO's train file is ~450 MB: parsing it whole (json or orjson) peaks at 3-4 GB. So a
labelled file is indexed instead (numpy finds each annotation's byte span), annotations
are parsed in batches and reduced to what selection needs, and only the chosen images'
annotations are parsed again to be written (`AnnotationFile`).
"""

from __future__ import annotations

import difflib
import logging
import random
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import orjson

from cocoseg import io
from cocoseg.config import DataParams, SubsetParams
from cocoseg.errors import DataError, ParamError
from cocoseg.images import ImageJob, place_images

log = logging.getLogger("cocoseg.subset")

ANNOTATION_FILES = {
    "train2017": "instances_train2017.json",
    "val2017": "instances_val2017.json",
    "test2017": "image_info_test2017.json",
}
SPLITS = ("train", "val", "test")
DROP_REASONS = (
    "orphan_annotations",  # image_id not among the file's images: cannot be used
    "degenerate_boxes",  # bbox missing, or zero/negative width or height
    "short_polygons",  # polygons of < 3 points (or odd length), removed from their annotation
    "empty_segmentations",  # annotations with no usable polygon left
    "invalid_rle",  # RLE whose size or run lengths disagree with the image
)


@dataclass
class Split:
    """One output split: the chosen image records and, for train/val, their annotations."""

    name: str
    source: str
    images: list[dict[str, Any]]
    annotations: list[dict[str, Any]] | None
    info: Any = None
    licenses: Any = None
    modes: dict[int, str] = field(default_factory=dict)


@dataclass(slots=True)
class Kept:
    """What selection needs of a usable annotation of a chosen class (not the annotation)."""

    index: int  # position in the file's annotations array
    category: int  # new id, 1..K
    crowd: bool


@dataclass
class Source:
    """A labelled source file after checking and filtering to the chosen classes."""

    name: str
    file: AnnotationFile
    images: dict[int, dict[str, Any]]
    remap: dict[int, int]
    by_image: dict[int, list[Kept]]
    dropped: Counter[str]


# --------------------------------------------------------------------------- big files

BATCH = 20_000  # annotations parsed at a time


def not_json(path: Path, detail: object) -> DataError:
    """The error for a file that does not parse (same wording as cocoseg.io.read_json)."""
    return DataError(f"{path}: not valid JSON (truncated or corrupt?): {detail}")


def unescaped(a: np.ndarray, quotes: np.ndarray) -> np.ndarray:
    """Drop the quote positions that are escaped (an odd run of backslashes before them)."""
    suspects = quotes[(quotes > 0) & (a[np.maximum(quotes - 1, 0)] == ord("\\"))]
    escaped = []
    for q in suspects.tolist():
        run = 0
        while q - run - 1 >= 0 and a[q - run - 1] == ord("\\"):
            run += 1
        if run % 2:
            escaped.append(q)
    return np.setdiff1d(quotes, escaped, assume_unique=True) if escaped else quotes


def json_structure(data: bytes, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions of every bracket and brace outside strings, +1/-1 for each, depth after each.

    Vectorised over the whole file; unbalanced brackets (a truncated file) stop the stage.
    """
    a = np.frombuffer(data, np.uint8)
    quotes = unescaped(a, np.flatnonzero(a == ord('"')))
    if len(quotes) % 2:
        raise not_json(path, "a string never ends")
    found = [np.flatnonzero(a == ord(c)) for c in "{[}]"]
    n_open = len(found[0]) + len(found[1])
    events = np.concatenate(found)
    del found
    steps = np.ones(len(events), np.int8)
    steps[n_open:] = -1
    outside = np.searchsorted(quotes, events) % 2 == 0  # an even count of quotes before
    events, steps = events[outside], steps[outside]
    order = np.argsort(events, kind="stable")
    events, steps = events[order], steps[order]
    depth = np.cumsum(steps, dtype=np.int64)
    if len(depth) == 0 or depth.min() < 0 or depth[-1] != 0:
        raise not_json(path, "brackets do not balance")
    return events, steps, depth


def top_level_array(data: bytes, key: str, structure: tuple, path: Path) -> tuple[int, int]:
    """Indexes (into the structure arrays) of the '[' and ']' of a top-level key's array."""
    events, _, depth = structure
    needle = f'"{key}"'.encode()
    pos = data.find(needle)
    while pos >= 0:
        i = int(np.searchsorted(events, pos))
        if i > 0 and depth[i - 1] == 1 and i < len(events):
            between = data[pos + len(needle) : events[i]].strip()
            if between == b":" and data[events[i]] == ord("["):
                close = i + int(np.flatnonzero(depth[i:] == 1)[0])
                return i, close
        pos = data.find(needle, pos + 1)
    raise DataError(f"{path}: '{key}' is missing or not a list; is this a COCO file?")


class AnnotationFile:
    """A labelled COCO file held as bytes: all but the annotations parsed, those on demand."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.data = path.read_bytes()
        except FileNotFoundError:
            raise DataError(f"{path}: file not found") from None
        structure = json_structure(self.data, path)
        open_i, close_i = top_level_array(self.data, "annotations", structure, path)
        events, steps, depth = structure
        inner = slice(open_i + 1, close_i)
        self.starts = events[inner][(depth[inner] == 3) & (steps[inner] == 1)]
        self.ends = events[inner][(depth[inner] == 2) & (steps[inner] == -1)] + 1
        if len(self.starts) != len(self.ends):
            raise DataError(f"{path}: 'annotations' holds something other than objects")
        head, tail = self.data[: events[open_i] + 1], self.data[events[close_i] :]
        try:
            self.doc = orjson.loads(head + tail)  # everything, with "annotations": []
        except orjson.JSONDecodeError as err:
            raise not_json(path, err) from None

    def __len__(self) -> int:
        return len(self.starts)

    def batches(self, size: int | None = None) -> Iterable[tuple[int, list[Any]]]:
        """(index of the first, parsed annotations) for consecutive runs of `size` (BATCH)."""
        size = size or BATCH
        for first in range(0, len(self), size):
            last = min(first + size, len(self)) - 1
            chunk = self.data[self.starts[first] : self.ends[last]]
            try:
                if first and self.data[self.ends[first - 1] : self.starts[first]].strip() != b",":
                    raise ValueError(f"no comma before annotations[{first}]")
                anns = orjson.loads(b"[" + chunk + b"]")
            except (orjson.JSONDecodeError, ValueError) as err:
                raise not_json(self.path, f"in annotations[{first}:{last + 1}]: {err}") from None
            if len(anns) != last - first + 1:
                raise DataError(f"{self.path}: annotations[{first}:{last + 1}] is not all objects")
            yield first, anns

    def annotation(self, index: int) -> dict[str, Any]:
        """Parse one annotation again, by its position in the array."""
        return orjson.loads(self.data[self.starts[index] : self.ends[index]])


# --------------------------------------------------------------------------- loading


def check_shape(doc: Any, path: Path) -> dict[str, Any]:
    """Check a COCO file's top level: an object with 'images' and 'categories' lists."""
    if not isinstance(doc, dict):
        raise DataError(f"{path}: expected a JSON object with 'images' and 'categories'")
    for key in ("images", "categories"):
        if not isinstance(doc.get(key), list):
            raise DataError(f"{path}: '{key}' is missing or not a list; is this a COCO file?")
    return doc


def index_images(doc: dict[str, Any], path: Path) -> dict[int, dict[str, Any]]:
    """Map image id -> record; a duplicate id stops the stage naming it."""
    images: dict[int, dict[str, Any]] = {}
    for i, image in enumerate(doc["images"]):
        try:
            image_id = image["id"]
            duplicate = image_id in images
        except (KeyError, TypeError):
            raise DataError(f"{path}: images[{i}] has no usable 'id'") from None
        if duplicate:
            raise DataError(f"{path}: duplicate image id {image_id}")
        images[image_id] = image
    return images


def category_remap(categories: list[Any], classes: list[str], path: Path) -> dict[int, int]:
    """Map the file's category ids of `classes` to 1..K in classes order; unknown names stop."""
    by_name: dict[str, int] = {}
    seen: set[int] = set()
    for i, cat in enumerate(categories):
        try:
            cat_id, name = cat["id"], cat["name"]
        except (KeyError, TypeError):
            raise DataError(f"{path}: categories[{i}] lacks 'id' or 'name'") from None
        if cat_id in seen:
            raise DataError(f"{path}: duplicate category id {cat_id}")
        seen.add(cat_id)
        by_name[name] = cat_id
    for name in classes:
        if name not in by_name:
            close = difflib.get_close_matches(name, list(by_name), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ParamError(
                f"subset.classes = {classes!r}: '{name}' is not a category of {path.name}{hint}; "
                f"valid names: {', '.join(by_name)}"
            )
    return {by_name[name]: new_id for new_id, name in enumerate(classes, start=1)}


def output_categories(categories: list[dict[str, Any]], classes: list[str]) -> list[dict]:
    """The K output categories, ids 1..K in classes order, COCO names and supercategories."""
    by_name = {c["name"]: c for c in categories}
    return [
        {"id": new_id, "name": name, "supercategory": by_name[name].get("supercategory", "")}
        for new_id, name in enumerate(classes, start=1)
    ]


# --------------------------------------------------------------------------- checking


def box_ok(bbox: Any) -> bool:
    """True for an [x, y, w, h] box with positive width and height."""
    try:
        return len(bbox) == 4 and bbox[2] > 0 and bbox[3] > 0
    except TypeError:
        return False


def rle_string_total(counts: str) -> int | None:
    """Sum of the run lengths in COCO's compressed RLE string; None when it is malformed."""
    runs: list[int] = []
    pos = 0
    while pos < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(counts):
                return None
            c = ord(counts[pos]) - 48
            if not 0 <= c < 64:
                return None
            value |= (c & 0x1F) << (5 * shift)
            more = bool(c & 0x20)
            pos += 1
            shift += 1
            if not more and c & 0x10:
                value |= -1 << (5 * shift)
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            return None
        runs.append(value)
    return sum(runs)


def rle_ok(rle: dict[str, Any], image: dict[str, Any]) -> bool:
    """True when an RLE (list or string counts) has the image's size and covers it exactly."""
    if rle.get("size") != [image.get("height"), image.get("width")]:
        return False
    counts = rle.get("counts")
    if isinstance(counts, str):
        total = rle_string_total(counts)
    elif isinstance(counts, list) and counts:
        try:  # sum and min run in C: crowd RLE lists hold thousands of runs
            total = sum(counts) if min(counts) >= 0 else None
        except TypeError:
            return False
        if not isinstance(total, int):
            return False
    else:
        return False
    return total == image["height"] * image["width"]


def clean_annotation(
    ann: dict[str, Any], image: dict[str, Any], dropped: Counter[str]
) -> dict[str, Any] | None:
    """Return the annotation fit to keep (short polygons removed), or None; count what went."""
    if not box_ok(ann.get("bbox")):
        dropped["degenerate_boxes"] += 1
        return None
    seg = ann.get("segmentation")
    if isinstance(seg, dict):
        if rle_ok(seg, image):
            return ann
        dropped["invalid_rle"] += 1
        return None
    polygons = seg if isinstance(seg, list) else []
    good = [p for p in polygons if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]
    dropped["short_polygons"] += len(polygons) - len(good)
    if not good:
        dropped["empty_segmentations"] += 1
        return None
    return ann if len(good) == len(polygons) else {**ann, "segmentation": good}


def filter_annotations(
    file: AnnotationFile, images: dict[int, dict[str, Any]], remap: dict[int, int]
) -> tuple[dict[int, list[Kept]], Counter[str]]:
    """One pass over all annotations: check ids, note the chosen classes' usable ones by image.

    A duplicate annotation id or an unknown category id stops the stage (the file is wrong
    in a way we cannot guess around). An annotation whose image is missing is skipped and
    counted: it cannot touch any image we output, and hand-trimmed files often leave them.
    """
    path = file.path
    known = {c["id"] for c in file.doc["categories"]}
    seen: set[int] = set()
    by_image: dict[int, list[Kept]] = defaultdict(list)
    dropped: Counter[str] = Counter({reason: 0 for reason in DROP_REASONS})
    for first, batch in file.batches():
        for i, ann in enumerate(batch, start=first):
            try:
                ann_id, image_id, cat_id = ann["id"], ann["image_id"], ann["category_id"]
                duplicate = ann_id in seen
            except (KeyError, TypeError):
                raise DataError(
                    f"{path}: annotations[{i}] lacks a usable 'id', 'image_id' or 'category_id'"
                ) from None
            if duplicate:
                raise DataError(f"{path}: duplicate annotation id {ann_id}")
            seen.add(ann_id)
            if cat_id not in known:
                raise DataError(
                    f"{path}: annotation id {ann_id} has category_id {cat_id!r}, "
                    "which is not in the file's categories"
                )
            image = images.get(image_id)
            if image is None:
                dropped["orphan_annotations"] += 1
            elif cat_id in remap and clean_annotation(ann, image, dropped) is not None:
                by_image[image_id].append(Kept(i, remap[cat_id], bool(ann.get("iscrowd"))))
    return by_image, dropped


def load_labelled(root: Path, name: str, classes: list[str]) -> Source:
    """Load, check and filter one labelled source file (train2017 or val2017)."""
    path = root / "annotations" / ANNOTATION_FILES[name]
    file = AnnotationFile(path)
    check_shape(file.doc, path)
    images = index_images(file.doc, path)
    remap = category_remap(file.doc["categories"], classes, path)
    by_image, dropped = filter_annotations(file, images, remap)
    for reason, count in dropped.items():
        if count:
            log.warning("%s: dropped %d (%s)", path.name, count, reason.replace("_", " "))
    return Source(name, file, images, remap, dict(by_image), dropped)


# --------------------------------------------------------------------------- selecting


def split_rng(seed: int, split: str) -> random.Random:
    """A generator per split, so changing one split's count leaves the others' picks alone."""
    return random.Random(f"cocoseg-subset/{seed}/{split}")


def eligible_by_class(source: Source) -> dict[int, list[int]]:
    """New category id -> sorted ids of images holding a kept non-crowd instance of it."""
    by_class: dict[int, list[int]] = {new_id: [] for new_id in source.remap.values()}
    for image_id in sorted(source.by_image):
        cats = {kept.category for kept in source.by_image[image_id] if not kept.crowd}
        for cat in cats:
            by_class[cat].append(image_id)
    return by_class


def balanced_targets(
    by_class: dict[int, list[int]], classes: list[str], minimum: int, source: str
) -> dict[int, int]:
    """Images to guarantee per class: the minimum, or all there are (logged) when fewer."""
    targets = {}
    for cat, ids in by_class.items():
        targets[cat] = min(minimum, len(ids))
        if len(ids) < minimum:
            log.warning(
                "%s has only %d images with a non-crowd '%s' (< min_images_per_class = %d): "
                "taking all of them",
                source,
                len(ids),
                classes[cat - 1],
                minimum,
            )
    return targets


def select_balanced(
    pool: list[int], by_class: dict[int, list[int]], targets: dict[int, int], n: int, rng: Any
) -> list[int]:
    """Guarantee each class its target (rarest class first), then fill up to n at random."""
    chosen: set[int] = set()
    for cat in sorted(by_class, key=lambda c: (len(by_class[c]), c)):
        need = targets[cat] - sum(1 for i in by_class[cat] if i in chosen)
        if need > 0:
            chosen.update(rng.sample([i for i in by_class[cat] if i not in chosen], need))
    rest = [i for i in pool if i not in chosen]
    chosen.update(rng.sample(rest, n - len(chosen)))
    return sorted(chosen)


def select_labelled(source: Source, split: str, sp: SubsetParams) -> list[int]:
    """Pick n_<split> image ids holding a non-crowd instance of a chosen class, by seed."""
    n = getattr(sp, f"n_{split}")
    by_class = eligible_by_class(source)
    pool = sorted({i for ids in by_class.values() for i in ids})
    what = f"{source.name} has only {len(pool)} images with a non-crowd instance of"
    if n > len(pool):
        raise ParamError(f"subset.n_{split} = {n} but {what} [{', '.join(sp.classes)}]")
    rng = split_rng(sp.seed, split)
    if sp.strategy == "random":
        return sorted(rng.sample(pool, n))
    targets = balanced_targets(by_class, sp.classes, sp.min_images_per_class, source.name)
    needed = sum(targets.values())
    if needed > n:
        detail = ", ".join(f"{sp.classes[c - 1]} {t}" for c, t in targets.items())
        raise ParamError(
            f"subset.min_images_per_class = {sp.min_images_per_class} with strategy balanced "
            f"may need {needed} {split} images ({detail}) but subset.n_{split} = {n}; lower "
            f"min_images_per_class, raise n_{split}, or use strategy random"
        )
    return select_balanced(pool, by_class, targets, n, rng)


def select_test(pool: list[int], sp: SubsetParams, what: str) -> list[int]:
    """Pick n_test image ids from pool (sorted) by seed; too few stops naming the key."""
    if sp.n_test > len(pool):
        raise ParamError(f"subset.n_test = {sp.n_test} but {what} has only {len(pool)} images")
    return sorted(split_rng(sp.seed, "test").sample(pool, sp.n_test))


# --------------------------------------------------------------------------- building


def remapped(ann: dict[str, Any], remap: dict[int, int]) -> dict[str, Any]:
    """An output annotation: category id renumbered, iscrowd as 0/1, all else as in COCO."""
    return {
        **ann,
        "category_id": remap[ann["category_id"]],
        "iscrowd": 1 if ann.get("iscrowd") else 0,
    }


def chosen_annotations(source: Source, ids: list[int]) -> list[dict[str, Any]]:
    """The output annotations of the chosen images, parsed again and cleaned, sorted by id."""
    anns = []
    for image_id in ids:
        for kept in source.by_image.get(image_id, []):
            ann = source.file.annotation(kept.index)
            clean = clean_annotation(ann, source.images[image_id], Counter())  # counted already
            anns.append(remapped(clean, source.remap))
    return sorted(anns, key=lambda a: a["id"])


def labelled_split(source: Source, split: str, ids: list[int]) -> Split:
    """The output split for the chosen image ids of a labelled source."""
    doc = source.file.doc
    images = [source.images[i] for i in ids]
    anns = chosen_annotations(source, ids)
    return Split(split, source.name, images, anns, doc.get("info"), doc.get("licenses"))


def select_subset(root: Path, sp: SubsetParams) -> tuple[dict[str, Split], dict, list[dict]]:
    """Select all three splits (no writing); return splits, drop counts and categories."""
    train_src = load_labelled(root, "train2017", sp.classes)
    categories = output_categories(train_src.file.doc["categories"], sp.classes)
    train = labelled_split(train_src, "train", select_labelled(train_src, "train", sp))
    dropped = {"train2017": dict(train_src.dropped)}
    del train_src  # frees the train file before the val file is read

    val_src = load_labelled(root, "val2017", sp.classes)
    val = labelled_split(val_src, "val", select_labelled(val_src, "val", sp))
    dropped["val2017"] = dict(val_src.dropped)
    if sp.test_from == "val2017":
        used = {image["id"] for image in val.images}
        pool = sorted(i for i in val_src.images if i not in used)
        ids = select_test(pool, sp, "val2017 (outside the val subset)")
        test = Split("test", "val2017", [val_src.images[i] for i in ids], None)
        test.info, test.licenses = val.info, val.licenses
    else:
        test = test2017_split(root, sp)
    return {"train": train, "val": val, "test": test}, dropped, categories


def test2017_split(root: Path, sp: SubsetParams) -> Split:
    """The test split drawn from image_info_test2017.json (images only)."""
    path = root / "annotations" / ANNOTATION_FILES["test2017"]
    doc = check_shape(io.read_json(path), path)
    images = index_images(doc, path)
    ids = select_test(sorted(images), sp, f"test2017 ({path.name})")
    return Split(
        "test", "test2017", [images[i] for i in ids], None, doc.get("info"), doc.get("licenses")
    )


# --------------------------------------------------------------------------- writing


def basename(file_name: str) -> str:
    """The last part of a COCO file_name: how the image is named under images/<split>/."""
    return PurePosixPath(file_name.replace("\\", "/")).name


def image_jobs(split: Split, root: Path, out: Path) -> list[ImageJob]:
    """Where each image of a split comes from and goes; hostile or clashing names stop."""
    jobs, names = [], {}
    for image in split.images:
        image_id, file_name = image["id"], image.get("file_name")
        try:
            if not isinstance(file_name, str):
                raise DataError(f"file_name {file_name!r} is not a string")
            src = io.safe_join(root / split.source, file_name)
        except DataError as err:
            raise DataError(f"{split.source} image id {image_id}: {err}") from None
        name = basename(file_name)
        if name in names:
            raise DataError(
                f"{split.source}: image ids {names[name]} and {image_id} share the file name "
                f"{name!r}"
            )
        names[name] = image_id
        dest = out / "images" / split.name / name
        jobs.append(
            ImageJob(image_id, dest, src, image.get("coco_url"), image["width"], image["height"])
        )
    return jobs


def clear_stale(out: Path, keep: Iterable[Path]) -> int:
    """Remove a previous run's stats.json, and its files under annotations/ and images/
    that are not in keep. Nothing else in out is touched, so a wrong --out wipes nothing.
    """
    keep = {Path(p) for p in keep}
    removed = 0
    for sub in (out / "annotations", out / "images"):
        if not sub.is_dir():
            continue
        for path in sorted(sub.rglob("*"), reverse=True):
            if path.is_dir():
                if not any(path.iterdir()):
                    path.rmdir()
            elif path not in keep:
                path.unlink()
                removed += 1
    for stale in [out / "stats.json", *out.glob(".stats.json.*.tmp")]:
        if stale.is_file():
            stale.unlink()
            removed += 1
    return removed


def split_doc(split: Split, categories: list[dict]) -> dict[str, Any]:
    """The COCO dict written for a split (test: no 'annotations' key)."""
    doc: dict[str, Any] = {
        "info": split.info if split.info is not None else {},
        "licenses": split.licenses if split.licenses is not None else [],
        "images": [{**image, "file_name": basename(image["file_name"])} for image in split.images],
        "categories": categories,
    }
    if split.annotations is not None:
        doc["annotations"] = split.annotations
    return doc


def split_stats(split: Split, classes: list[str]) -> dict[str, Any]:
    """Per class instances (non-crowd), images holding one, and crowd regions."""
    stats: dict[str, Any] = {"source": split.source, "images": len(split.images)}
    if split.annotations is not None:
        per_class = {name: {"instances": 0, "images": 0, "crowd": 0} for name in classes}
        images: dict[str, set[int]] = defaultdict(set)
        for ann in split.annotations:
            name = classes[ann["category_id"] - 1]
            if ann["iscrowd"]:
                per_class[name]["crowd"] += 1
            else:
                per_class[name]["instances"] += 1
                images[name].add(ann["image_id"])
        for name in classes:
            per_class[name]["images"] = len(images[name])
        stats["annotations"] = len(split.annotations)
        stats["crowd_annotations"] = sum(c["crowd"] for c in per_class.values())
        stats["classes"] = per_class
    if split.modes:
        modes = Counter(split.modes.values())
        stats["image_modes"] = dict(sorted(modes.items()))
        stats["non_rgb_images"] = sum(c for m, c in modes.items() if m != "RGB")
    return stats


def make_stats(splits: dict[str, Split], dropped: dict, sp: SubsetParams) -> dict[str, Any]:
    """stats.json: params that shaped the subset, per-split counts and what was dropped."""
    return {
        "classes": sp.classes,
        "seed": sp.seed,
        "strategy": sp.strategy,
        "test_from": sp.test_from,
        "splits": {name: split_stats(splits[name], sp.classes) for name in SPLITS},
        "dropped": dropped,
    }


def fetch_split_images(split: Split, jobs: list[ImageJob], data: DataParams, workers: int) -> None:
    """Copy or download a split's images, recording each image's mode on the split."""
    split.modes, how = place_images(
        jobs, workers=workers, retries=data.retries, timeout=data.timeout, desc=split.name
    )
    log.info("%s: %s", split.name, ", ".join(f"{n} {k}" for k, n in sorted(how.items())) or "none")
    odd = {i: m for i, m in split.modes.items() if m != "RGB"}
    if odd:
        log.warning(
            "%s: %d non-RGB images kept (training converts them): %s",
            split.name,
            len(odd),
            ", ".join(f"id {i} {m}" for i, m in sorted(odd.items())[:10]),
        )


def make_subset(
    data: DataParams, sp: SubsetParams, out: str | Path, *, with_images: bool = True
) -> dict[str, Any]:
    """Run the whole stage into `out`; return the stats written to out/stats.json.

    with_images=False does everything but the images (for benchmarks of the json side).
    """
    root, out = Path(data.coco_root), Path(out)
    splits, dropped, categories = select_subset(root, sp)
    jobs = {name: image_jobs(splits[name], root, out) for name in SPLITS}
    # Images of this selection (and their partial downloads) may stay: they are re-verified.
    dests = [job.dest for js in jobs.values() for job in js]
    keep = dests + [dest.with_name(dest.name + ".part") for dest in dests]
    removed = clear_stale(out, keep)
    if removed:
        log.info("removed %d stale files of a previous run under %s", removed, out)
    if with_images:
        for name in SPLITS:
            fetch_split_images(splits[name], jobs[name], data, sp.workers)
    for name in SPLITS:
        io.write_json(out / "annotations" / f"{name}.json", split_doc(splits[name], categories))
    stats = make_stats(splits, dropped, sp)
    io.write_json(out / "stats.json", stats)
    return stats
