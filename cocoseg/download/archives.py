"""COCO's annotation archives: make data.coco_root hold the annotation files the pipeline reads.
Present files are reused (a local copy works offline); missing ones come out of COCO's zips."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import zipfile
import zlib
from pathlib import Path
from typing import Any

import orjson

from cocoseg.coco.names import ANNOTATION_FILES, ARCHIVES, LABELLED_SOURCES
from cocoseg.common.errors import DataError, DownloadError, ParamError
from cocoseg.common.http import CHUNK, HostUnreachable, download_file
from cocoseg.common.io import atomic_write, safe_join
from cocoseg.common.params import DataParams

log = logging.getLogger(__name__)

TEST_INFO = ANNOTATION_FILES["test2017"]
CACHE_DIR = ".downloads"
DEFAULT_ROOT = DataParams().coco_root  # data/coco


def check_archive(archive: Path, members: list[str]) -> None:
    """Refuse a file that is no zip, lacks a member, or holds any member (wanted or not) whose
    path leaves its folder: such an archive is hostile or broken as a whole."""
    try:
        with zipfile.ZipFile(archive) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(f"{archive}: not a readable zip archive: {err}") from None
    for name in names:
        try:
            safe_join(archive.parent, name)
        except DataError:
            raise DataError(
                f"{archive}: refusing archive with member {name!r}, whose path leaves "
                "the extraction folder"
            ) from None
    if missing := [m for m in members if m not in names]:
        raise DataError(f"{archive}: lacks member(s) {missing}; not COCO's archive?")


def inspect_json(path: Path) -> dict[str, Any]:
    """Size and md5 of a JSON file, refusing a truncated one, in one chunked read: '{' ... '}'
    with balanced braces and brackets passes; only otherwise is the file parsed to decide."""
    md5, size, depth = hashlib.md5(), 0, [0, 0]
    first = last = b""
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            md5.update(chunk)
            size += len(chunk)
            first = first or chunk.lstrip()[:1]
            last = chunk.rstrip()[-1:] or last
            depth[0] += chunk.count(b"{") - chunk.count(b"}")
            depth[1] += chunk.count(b"[") - chunk.count(b"]")
    if not (first == b"{" and last == b"}" and depth == [0, 0]):
        try:
            orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError as err:
            raise DataError(
                f"{path}: truncated or corrupt ({size} bytes, {err}); delete it to fetch it again"
            ) from None
    return {"size": size, "md5": md5.hexdigest()}


def _listed(names: list[str]) -> str:
    """Annotation file names as a user finds them under data.coco_root."""
    return ", ".join(f"annotations/{name}" for name in names)


def is_default_root(coco_root: str | Path) -> bool:
    """Whether coco_root is data.coco_root's default location (from the working directory: the
    project root, where DVC runs stages), the one folder the download stage may create."""
    return Path(coco_root).resolve() == Path(DEFAULT_ROOT).resolve()


def check_coco_root(coco_root: Path, names: list[str], base_url: str, *, create: bool) -> None:
    """Refuse, before any request, a data.coco_root that is missing (unless `create`), a file, or
    a COCO copy (train2017/, val2017/) with none of the annotation files: a wrong or half copy."""
    if not coco_root.exists() and not create:
        where = "" if coco_root.is_absolute() else f" ({coco_root.resolve()})"
        raise ParamError(
            f"data.coco_root = {coco_root}{where} does not exist: set it to your COCO copy (the "
            "folder holding annotations/, train2017/, val2017/), or make the folder to download "
            f"the annotations into; only the default, {DEFAULT_ROOT}, is made for you",
            keys=("data.coco_root",),
        )
    if coco_root.exists() and not coco_root.is_dir():
        raise DataError(f"data.coco_root = {coco_root} is a file, not a folder")
    images = [f"{d}/" for d in LABELLED_SOURCES if (coco_root / d).is_dir()]
    if not images or any((coco_root / "annotations" / n).exists() for n in names):
        return
    zips = ", ".join(dict.fromkeys(ARCHIVES[n] for n in names))
    raise DataError(
        f"data.coco_root = {coco_root} exists (has {', '.join(images)}) but has no "
        f"{_listed(names)}: set data.coco_root to the COCO copy that holds them, or unzip "
        f"{zips} from {base_url.rstrip('/')}/annotations/ into it"
    )


def offline_hint(coco_root: Path, names: list[str]) -> str:
    """What to do when data.base_url cannot be reached: use a local copy, or get network."""
    test_note = " (the last as subset.test_from is test2017)" if TEST_INFO in names else ""
    return (
        f"To work offline, set data.coco_root (now {coco_root}) to an existing COCO copy with "
        f"{_listed(names)}{test_note}; images in its train2017/ and val2017/ are fetched from "
        "each image's coco_url only when missing. Or get network access to data.base_url"
    )


def _fetch_archive(url: str, archive: Path, members: list[str], **http: Any) -> None:
    """Download an archive (resuming a partial one) unless a sound copy is already cached."""
    if archive.exists():
        try:
            check_archive(archive, members)
            return
        except DataError as err:
            log.warning("discarding cached %s: %s", archive, err)
            archive.unlink()
    log.info("downloading %s to %s", url, archive)
    download_file(url, archive, verify=lambda p: check_archive(p, members), **http)


def _extract_and_discard(archive: Path, members: list[str], coco_root: Path, url: str) -> None:
    """Stream members under coco_root, each renamed into place once its CRC matched, then delete
    the archive; a bad one is deleted too, so that a re-run fetches it again."""
    try:  # the archive was checked as it was fetched (or found in the cache)
        with zipfile.ZipFile(archive) as zf:
            for member in members:
                try:
                    with zf.open(member) as src, atomic_write(coco_root / member, "wb") as out:
                        shutil.copyfileobj(src, out, CHUNK)
                except (zipfile.BadZipFile, zlib.error, EOFError) as err:
                    raise DataError(f"{archive}: member {member} is corrupt: {err}") from None
    except DataError as err:
        archive.unlink(missing_ok=True)
        raise DownloadError(f"{url}: {err}; deleted it, re-run to download again") from None
    for member in members:
        log.info("extracted %s from %s", coco_root / member, url)
    archive.unlink()


def ensure_annotations(
    coco_root: Path,
    base_url: str,
    *,
    need_test_info: bool,
    create: bool = False,
    retries: int = 5,
    timeout: float = 60.0,
    progress: bool = True,
    backoff: float = 1.0,
) -> dict[str, Any]:
    """Make coco_root/annotations hold the needed COCO-2017 files (a missing coco_root is made only
    with `create`); return their manifest. Missing files come out of COCO's zips, deleted after."""
    http = {"retries": retries, "timeout": timeout, "progress": progress, "backoff": backoff}
    coco_root = Path(coco_root)
    ann_dir = coco_root / "annotations"
    sources = [*LABELLED_SOURCES, "test2017"] if need_test_info else LABELLED_SOURCES
    names = [ANNOTATION_FILES[source] for source in sources]  # the files the pipeline reads
    check_coco_root(coco_root, names, base_url, create=create)
    # Check present copies first: a truncated one fails before anything is fetched.
    files = {n: inspect_json(ann_dir / n) for n in names if (ann_dir / n).exists()}
    missing: dict[str, list[str]] = {}  # by the archive that holds them
    for name in names:
        if name not in files:
            missing.setdefault(ARCHIVES[name], []).append(name)
    try:
        for zip_name, wanted in missing.items():
            url = f"{base_url.rstrip('/')}/annotations/{zip_name}"
            archive = coco_root / CACHE_DIR / zip_name
            members = [f"annotations/{name}" for name in wanted]
            _fetch_archive(url, archive, members, **http)
            _extract_and_discard(archive, members, coco_root, url)
            files.update({name: inspect_json(ann_dir / name) for name in wanted})
    except HostUnreachable as err:
        raise HostUnreachable(f"{err}. {offline_hint(coco_root, names)}") from None
    finally:
        with contextlib.suppress(OSError):
            (coco_root / CACHE_DIR).rmdir()  # only if empty: a .part stays to be resumed
    return {
        "coco_root": str(coco_root),
        "base_url": base_url,
        "files": {n: files[n] for n in names},
    }
