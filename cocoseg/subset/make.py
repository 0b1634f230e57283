"""The subset stage: pick images by seed, keep the chosen classes as ids 1..K, write COCO json.
Sources are checked by cocoseg.subset.cocofile; only the chosen images' annotations are decoded."""

from __future__ import annotations

import difflib
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from cocoseg.coco.names import ANNOTATION_FILES, SPLITS
from cocoseg.common import io
from cocoseg.common.errors import DataError, ParamError
from cocoseg.common.params import DataParams, SubsetParams
from cocoseg.subset.cocofile import Category, CocoFile, Kept, check_annotations, read_coco
from cocoseg.subset.placing import ImageJob, place_images

log = logging.getLogger(__name__)


@dataclass
class Split:
    """One output split: the chosen image records and, for train/val, their annotations."""

    name: str
    source: str
    images: list[dict[str, Any]]
    annotations: list[dict[str, Any]] | None
    info: Any
    licenses: Any
    modes: dict[int, str] = field(default_factory=dict)


@dataclass
class Source:
    """A labelled source file after checking, with its usable annotations of the classes."""

    name: str
    file: CocoFile
    remap: dict[int, int]  # the file's category id -> 1..K
    by_image: dict[int, list[Kept]]
    dropped: Counter[str]


def category_remap(categories: list[Category], classes: list[str], path: Path) -> dict[int, int]:
    """Map the file's category ids of `classes` to 1..K in classes order; unknown names stop."""
    by_name = {cat.name: cat.id for cat in categories}
    for name in classes:
        if name not in by_name:
            close = difflib.get_close_matches(name, list(by_name), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ParamError(
                f"subset.classes = {classes!r}: '{name}' is not a category of {path.name}{hint}; "
                f"valid names: {', '.join(by_name)}",
                keys=("subset.classes",),
            )
    return {by_name[name]: new_id for new_id, name in enumerate(classes, start=1)}


def load_labelled(root: Path, name: str, classes: list[str]) -> Source:
    """Load, check and filter one labelled source file (train2017 or val2017)."""
    path = root / "annotations" / ANNOTATION_FILES[name]
    file = read_coco(path, labelled=True)
    remap = category_remap(file.categories, classes, path)
    by_image, dropped = check_annotations(file, remap)
    for reason, count in dropped.items():
        if count:
            log.warning("%s: dropped %d (%s)", path.name, count, reason.replace("_", " "))
    return Source(name, file, remap, by_image, dropped)


def split_rng(seed: int, split: str) -> random.Random:
    """A generator per split, so changing one split's count leaves the others' picks alone."""
    return random.Random(f"cocoseg-subset/{seed}/{split}")


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
    by_class: dict[int, list[int]] = {new_id: [] for new_id in source.remap.values()}
    for image_id in sorted(source.by_image):  # each class's images with a non-crowd instance
        for cat in {source.remap[k.category] for k in source.by_image[image_id] if not k.crowd}:
            by_class[cat].append(image_id)
    pool = sorted({i for ids in by_class.values() for i in ids})
    if n > len(pool):
        raise ParamError(
            f"subset.n_{split} = {n} but {source.name} has only {len(pool)} images with a "
            f"non-crowd instance of [{', '.join(sp.classes)}]",
            keys=(f"subset.n_{split}",),
        )
    rng = split_rng(sp.seed, split)
    if sp.strategy == "random":
        return sorted(rng.sample(pool, n))
    minimum = sp.min_images_per_class
    targets = {cat: min(minimum, len(ids)) for cat, ids in by_class.items()}  # images to guarantee
    for cat, ids in by_class.items():
        if len(ids) < minimum:
            log.warning(
                "%s has only %d images with a non-crowd '%s' (< min_images_per_class = %d): "
                "taking all of them", source.name, len(ids), sp.classes[cat - 1], minimum,
            )  # fmt: skip
    needed = sum(targets.values())
    if needed > n:
        detail = ", ".join(f"{sp.classes[c - 1]} {t}" for c, t in targets.items())
        raise ParamError(
            f"subset.min_images_per_class = {sp.min_images_per_class} with strategy balanced "
            f"may need {needed} {split} images ({detail}) but subset.n_{split} = {n}; lower "
            f"min_images_per_class, raise n_{split}, or use strategy random",
            keys=("subset.min_images_per_class", f"subset.n_{split}", "subset.strategy"),
        )
    return select_balanced(pool, by_class, targets, n, rng)


def labelled_split(source: Source, split: str, ids: list[int]) -> Split:
    """The output split of the chosen images: their annotations cleaned, renumbered 1..K, iscrowd
    as 0/1, sorted by id; all else as in COCO."""
    file, anns = source.file, []
    for image_id in ids:
        for kept in source.by_image.get(image_id, []):
            ann = file.clean_annotation(kept.index)
            category_id, iscrowd = source.remap[ann["category_id"]], 1 if ann.get("iscrowd") else 0
            anns.append({**ann, "category_id": category_id, "iscrowd": iscrowd})
    anns.sort(key=lambda a: a["id"])
    return Split(split, source.name, [file.record(i) for i in ids], anns, file.info, file.licenses)


def select_subset(root: Path, sp: SubsetParams) -> tuple[dict[str, Split], dict, list[dict]]:
    """Select all three splits (no writing); return splits, drop counts and categories."""
    train_src = load_labelled(root, "train2017", sp.classes)
    by_id = {cat.id: cat for cat in train_src.file.categories}
    categories = [  # ids 1..K in classes order
        {"id": new_id, "name": by_id[old_id].name, "supercategory": by_id[old_id].supercategory}
        for old_id, new_id in train_src.remap.items()
    ]
    train = labelled_split(train_src, "train", select_labelled(train_src, "train", sp))
    dropped = {"train2017": dict(train_src.dropped)}
    del train_src  # frees the train file before the val file is read

    val_src = load_labelled(root, "val2017", sp.classes)
    val = labelled_split(val_src, "val", select_labelled(val_src, "val", sp))
    dropped["val2017"] = dict(val_src.dropped)
    if sp.test_from == "val2017":  # the val images outside the val subset
        used = {image["id"] for image in val.images}
        file, what = val_src.file, "val2017 (outside the val subset)"
        pool = sorted(i for i in file.images if i not in used)
    else:  # image_info_test2017.json: images only
        path = root / "annotations" / ANNOTATION_FILES["test2017"]
        file, what = read_coco(path, labelled=False), f"test2017 ({path.name})"
        pool = sorted(file.images)
    if sp.n_test > len(pool):
        raise ParamError(
            f"subset.n_test = {sp.n_test} but {what} has only {len(pool)} images",
            keys=("subset.n_test",),
        )
    images = [file.record(i) for i in sorted(split_rng(sp.seed, "test").sample(pool, sp.n_test))]
    test = Split("test", sp.test_from, images, None, file.info, file.licenses)
    return {"train": train, "val": val, "test": test}, dropped, categories


def basename(file_name: str) -> str:
    """The last part of a COCO file_name: how the image is named under images/<split>/."""
    return PurePosixPath(file_name.replace("\\", "/")).name


def image_jobs(split: Split, root: Path, out: Path) -> list[ImageJob]:
    """Where each image of a split comes from and goes; hostile or clashing names stop."""
    jobs, names = [], {}
    for image in split.images:
        image_id, file_name = image["id"], image["file_name"]  # a str: checked on reading
        try:
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
        url, width, height = image.get("coco_url"), image["width"], image["height"]
        jobs.append(ImageJob(image_id, out / "images" / split.name / name, src, url, width, height))
    return jobs


def clear_stale(out: Path, keep: set[Path]) -> int:
    """Remove a previous run's stats.json and its files under annotations/ and images/ not in
    keep; nothing else in out is touched, so a wrong --out wipes nothing."""
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
        per_class = {}
        for category_id, name in enumerate(classes, start=1):
            mine = [a for a in split.annotations if a["category_id"] == category_id]
            objects = [a["image_id"] for a in mine if not a["iscrowd"]]
            per_class[name] = {
                "instances": len(objects),
                "images": len(set(objects)),
                "crowd": len(mine) - len(objects),
            }
        stats["annotations"] = len(split.annotations)
        stats["crowd_annotations"] = sum(c["crowd"] for c in per_class.values())
        stats["classes"] = per_class
    if split.modes:
        modes = Counter(split.modes.values())
        stats["image_modes"] = dict(sorted(modes.items()))
        stats["non_rgb_images"] = sum(c for m, c in modes.items() if m != "RGB")
    return stats


def fetch_split_images(split: Split, jobs: list[ImageJob], data: DataParams, workers: int) -> None:
    """Copy or download a split's images, recording each image's mode on the split."""
    split.modes, how = place_images(
        jobs, workers=workers, retries=data.retries, timeout=data.timeout, desc=split.name
    )
    log.info("%s: %s", split.name, ", ".join(f"{n} {k}" for k, n in sorted(how.items())) or "none")
    if odd := {i: m for i, m in split.modes.items() if m != "RGB"}:
        shown = ", ".join(f"id {i} {m}" for i, m in sorted(odd.items())[:10])
        log.warning(
            "%s: %d non-RGB images kept (training converts them): %s", split.name, len(odd), shown
        )


def make_subset(
    data: DataParams, sp: SubsetParams, out: str | Path, *, with_images: bool = True
) -> dict[str, Any]:
    """Run the whole stage into `out`; return the stats written to out/stats.json.
    with_images=False does all but the images (benchmarks of the json side)."""
    root, out = Path(data.coco_root), Path(out)
    splits, dropped, categories = select_subset(root, sp)
    jobs = {name: image_jobs(splits[name], root, out) for name in SPLITS}
    # Images of this selection (and their partial downloads) may stay: they are re-verified.
    dests = [job.dest for js in jobs.values() for job in js]
    keep = {*dests, *(io.part_path(dest) for dest in dests)}
    if removed := clear_stale(out, keep):
        log.info("removed %d stale files of a previous run under %s", removed, out)
    if with_images:
        for name in SPLITS:
            fetch_split_images(splits[name], jobs[name], data, sp.workers)
    for name in SPLITS:
        io.write_json(out / "annotations" / f"{name}.json", split_doc(splits[name], categories))
    stats = {  # the params that shaped the subset, per-split counts and what was dropped
        "classes": sp.classes,
        "seed": sp.seed,
        "strategy": sp.strategy,
        "test_from": sp.test_from,
        "splits": {name: split_stats(splits[name], sp.classes) for name in SPLITS},
        "dropped": dropped,
    }
    io.write_json(out / "stats.json", stats)
    return stats
