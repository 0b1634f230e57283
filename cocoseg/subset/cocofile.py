"""Read and check one COCO instances file: wrong types, duplicate ids and unknown categories stop;
unusable annotations are dropped and counted. Records stay `Raw` bytes until checked or written."""

from __future__ import annotations

import contextlib
import re
from collections import Counter, defaultdict
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from msgspec import Raw, Struct

from cocoseg.common import io
from cocoseg.common.errors import DataError
from cocoseg.common.validation import location

DROP_REASONS = (
    "orphan_annotations",  # image_id not among the file's images: cannot be used
    "degenerate_boxes",  # bbox missing, or zero/negative width or height
    "short_polygons",  # polygons of < 3 points (or odd length), removed from their annotation
    "empty_segmentations",  # annotations with no usable polygon left
    "invalid_rle",  # RLE whose size or run lengths disagree with the image
)
NULL = Raw(b"null")


class Image(Struct):
    """What the stage uses of an image record (the record itself is written as read)."""

    id: int
    file_name: str
    width: int
    height: int


class Annotation(Struct):
    """What checking and selection use of an annotation; the segmentation stays raw."""

    id: int
    image_id: int
    category_id: int
    bbox: list[float] | None = None
    iscrowd: int | bool | None = 0
    segmentation: Raw = NULL


class Category(Struct):
    """One entry of the file's categories."""

    id: int
    name: str
    supercategory: str = ""


class Layout(Struct):
    """The top level of a COCO file; records stay raw until looked at."""

    images: list[Raw]
    categories: list[Category]
    annotations: list[Raw] | None = None
    info: Raw = NULL
    licenses: Raw = NULL


IMAGE = msgspec.json.Decoder(Image)
ANNOTATION = msgspec.json.Decoder(Annotation)
ID_FIELDS = {  # the fields that name a record, and what to say when one is unusable
    "images": ({"id"}, "has no usable 'id'"),
    "annotations": ({"id", "image_id", "category_id"}, "lacks a usable 'id', 'image_id' or"
                    " 'category_id'"),
    "categories": ({"id", "name"}, "lacks 'id' or 'name'"),
}  # fmt: skip


@dataclass(slots=True)
class Kept:
    """What selection needs of a usable annotation of a wanted category (not the annotation)."""

    index: int  # position in the file's annotations array
    category: int  # the file's category id
    crowd: bool


@dataclass
class CocoFile:
    """A checked COCO file: typed images and categories by id, raw records for writing."""

    path: Path
    images: dict[int, Image]
    image_records: dict[int, Raw]
    categories: list[Category]
    annotations: list[Raw] | None
    info: Any
    licenses: Any

    def record(self, image_id: int) -> dict[str, Any]:
        """The image's record as in the file."""
        return msgspec.json.decode(self.image_records[image_id])

    def clean_annotation(self, index: int) -> dict[str, Any]:
        """A kept annotation's record as in the file, short polygons removed."""
        assert self.annotations is not None
        record = msgspec.json.decode(self.annotations[index])
        seg = usable_segmentation(record["segmentation"], self.images[record["image_id"]])
        return record if seg is record["segmentation"] else {**record, "segmentation": seg}


def invalid(
    path: Path, err: msgspec.ValidationError, at: str = "$", record: Raw | None = None
) -> DataError:
    """A one-line error from msgspec's detail and path (`$.annotations[12].bbox`) under `at`."""
    detail, within = location(err)
    at += within.removeprefix("$")
    m = re.match(r"\$\.(\w+)(?:\[(\d+)\]\.?(\w*))?", at)
    if not m:
        return DataError(f"{path}: expected a JSON object with 'images' and 'categories'")
    section, index, field = m.groups()
    if index is None:  # only the typed top-level lists can be wrong
        return DataError(f"{path}: '{section}' is missing or not a list; is this a COCO file?")
    where = f"{section}[{index}]"
    id_fields, phrase = ID_FIELDS[section]
    if field in id_fields:
        return DataError(f"{path}: {where} {phrase} ({detail})")
    with contextlib.suppress(TypeError):  # no record: a category, typed at the top level
        fields = msgspec.json.decode(record)
        if isinstance(fields, dict) and fields.get("id") is not None:
            where = f"{section[:-1]} id {fields['id']} ({where})"
    return DataError(f"{path}: {where}: {detail}" + (f" in '{field}'" if field else ""))


def decode_record(decoder: msgspec.json.Decoder, raw: Raw, path: Path, at: str) -> Any:
    """Decode one raw record with a typed decoder; a wrong type stops naming the record."""
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as err:
        raise invalid(path, err, at, raw) from None


def read_coco(path: Path, *, labelled: bool) -> CocoFile:
    """Decode and check a COCO file's top level, images and categories (labelled: annotations)."""
    data = io.read_file(path)
    try:
        layout = msgspec.json.decode(data, type=Layout)
    except msgspec.ValidationError as err:  # a subclass of DecodeError: first
        raise invalid(path, err) from None
    except msgspec.DecodeError as err:
        raise DataError(
            f"{path}: not valid JSON (truncated or corrupt?; {len(data):,} bytes): {err}"
        ) from None
    if labelled and layout.annotations is None:
        raise DataError(f"{path}: 'annotations' is missing or not a list; is this a COCO file?")
    images: dict[int, Image] = {}
    records: dict[int, Raw] = {}
    for i, raw in enumerate(layout.images):
        image = decode_record(IMAGE, raw, path, f"$.images[{i}]")
        if image.id in images:
            raise DataError(f"{path}: duplicate image id {image.id}")
        images[image.id], records[image.id] = image, raw
    if dupes := [i for i, n in Counter(c.id for c in layout.categories).items() if n > 1]:
        raise DataError(f"{path}: duplicate category id {dupes[0]}")
    info, licenses = msgspec.json.decode(layout.info), msgspec.json.decode(layout.licenses)
    return CocoFile(path, images, records, layout.categories, layout.annotations, info, licenses)


def box_ok(bbox: list[float] | None) -> bool:
    """True for an [x, y, w, h] box with positive width and height."""
    return bbox is not None and len(bbox) == 4 and bbox[2] > 0 and bbox[3] > 0


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


def rle_ok(rle: dict[str, Any], image: Image) -> bool:
    """True when an RLE (list or string counts) has the image's size and covers it exactly."""
    if rle.get("size") != [image.height, image.width]:
        return False
    counts, total = rle.get("counts"), None
    if isinstance(counts, str):
        total = rle_string_total(counts)
    elif isinstance(counts, list) and counts:
        # sum and min run in C: crowd RLE lists hold thousands of runs
        with contextlib.suppress(TypeError):
            total = sum(counts) if min(counts) >= 0 else None
    return isinstance(total, int) and total == image.height * image.width


def usable_segmentation(seg: Any, image: Image, dropped: Counter[str] | None = None) -> Any:
    """The segmentation fit to keep (short polygons removed), or None; count what went."""
    dropped = Counter() if dropped is None else dropped
    if isinstance(seg, dict):
        if rle_ok(seg, image):
            return seg
        dropped["invalid_rle"] += 1
        return None
    polygons = seg if isinstance(seg, list) else []
    good = [p for p in polygons if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]
    dropped["short_polygons"] += len(polygons) - len(good)
    if not good:
        dropped["empty_segmentations"] += 1
        return None
    return seg if len(good) == len(polygons) else good


def check_annotations(
    file: CocoFile, wanted: Collection[int]
) -> tuple[dict[int, list[Kept]], Counter[str]]:
    """One pass over all annotations: check ids, note the wanted categories' usable ones by image.
    Orphans are dropped, not refused: they touch no output; hand-trimmed files often leave them."""
    path, known = file.path, {c.id for c in file.categories}
    seen: set[int] = set()
    by_image: dict[int, list[Kept]] = defaultdict(list)
    dropped: Counter[str] = Counter({reason: 0 for reason in DROP_REASONS})
    for i, raw in enumerate(file.annotations or []):
        ann = decode_record(ANNOTATION, raw, path, f"$.annotations[{i}]")
        if ann.id in seen:
            raise DataError(f"{path}: duplicate annotation id {ann.id}")
        seen.add(ann.id)
        if ann.category_id not in known:
            raise DataError(
                f"{path}: annotation id {ann.id} has category_id {ann.category_id!r}, "
                "which is not in the file's categories"
            )
        image = file.images.get(ann.image_id)
        if image is None:
            dropped["orphan_annotations"] += 1
        elif ann.category_id not in wanted:
            continue
        elif not box_ok(ann.bbox):
            dropped["degenerate_boxes"] += 1
        elif usable_segmentation(msgspec.json.decode(ann.segmentation), image, dropped) is not None:
            by_image[ann.image_id].append(Kept(i, ann.category_id, bool(ann.iscrowd)))
    return dict(by_image), dropped
