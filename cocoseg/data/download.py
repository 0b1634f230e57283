"""HTTP downloads with resume, retry and progress, and COCO's annotation archives.

`download_file` streams one URL to `<dest>.part`, resumes it with a Range request, retries
transient failures with exponential backoff, verifies it and only then renames it to
`dest`, so `dest` is either absent or complete. A host that does not resolve or refuses
the connection fails at once (HostUnreachable): backoff cannot fix those. `ensure_annotations`
uses it to fetch COCO's zip archives and extracts only the annotation files the pipeline reads.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import re
import shutil
import socket
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import requests
from tqdm import tqdm

from cocoseg.core.coco import ANNOTATION_FILES, ARCHIVES, LABELLED_SOURCES
from cocoseg.core.errors import DataError, DownloadError, OutputError, Terminated, os_fault_message
from cocoseg.core.io import atomic_write, part_path, safe_join
from cocoseg.core.signals import stop_requested

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # file reads
NET_CHUNK = 1 << 16  # network reads: small, as a dropped connection loses the chunk in flight
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MAX_DELAY = 60.0
TRANSIENT_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,  # the connection dropped mid-body
)
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)")


class _Transient(Exception):
    """One attempt failed in a way worth retrying (network hiccup, 5xx, short body)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class HostUnreachable(DownloadError):
    """The host does not resolve or refuses connections: retrying cannot help, so none is made."""


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _retry_after(resp: requests.Response) -> float | None:
    """The server's Retry-After in seconds, when it gives a plain number."""
    value = resp.headers.get("Retry-After", "")
    return float(value) if value.strip().isdigit() else None


def _content_range(resp: requests.Response) -> tuple[int | None, int | None]:
    """(first byte, total size) from a Content-Range header; None where absent or '*'."""
    match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
    if not match:
        return None, None
    start = int(match.group(1)) if match.group(1) is not None else None
    total = int(match.group(3)) if match.group(3) != "*" else None
    return start, total


def _expected_size(resp: requests.Response, offset: int) -> int | None:
    """The size the finished file must have, when the server says (and does not compress)."""
    if resp.headers.get("Content-Encoding", "identity") != "identity":
        return None
    _, total = _content_range(resp)
    if total is not None:
        return total
    length = resp.headers.get("Content-Length")
    return offset + int(length) if length and length.isdigit() else None


def _open_part(resp: requests.Response, url: str, part: Path, have: int) -> int:
    """Decide from the status where this response's body goes; return the resume offset.

    206 appends at `have`; 200 (no Range sent, or a server that ignores Range) restarts.
    """
    code = resp.status_code
    if code in TRANSIENT_STATUS:
        raise _Transient(f"HTTP {code} {resp.reason}", _retry_after(resp))
    if code == 206:
        start, _ = _content_range(resp)
        if start != have:
            part.unlink(missing_ok=True)
            raise _Transient(f"asked to resume at byte {have}, server sent from byte {start}")
        return have
    if code == 200:
        if have:
            log.info("%s: server ignored the Range request; restarting from byte 0", url)
        return 0
    raise DownloadError(f"{url}: HTTP {code} {resp.reason} (not retried)")


def _attempt(session: requests.Session, url: str, part: Path, timeout: float, bar: tqdm) -> None:
    """One GET of `url` into `part`, resuming what is there; raise _Transient to retry."""
    have = _size(part)
    headers = {"Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    with session.get(url, headers=headers, stream=True, timeout=timeout) as resp:
        if resp.status_code == 416 and have:
            _, total = _content_range(resp)
            if total == have:
                return  # the .part already holds the whole file
            part.unlink()
            raise _Transient(
                f"stale partial file of {have} bytes (server size {total}); restarting"
            )
        offset = _open_part(resp, url, part, have)
        expected = _expected_size(resp, offset)
        bar.reset(total=expected)
        bar.update(offset)
        with open(part, "ab" if offset else "wb") as f:
            for chunk in resp.iter_content(NET_CHUNK):
                if stop_requested.is_set():  # SIGTERM: a download thread stops between chunks
                    raise Terminated()
                f.write(chunk)
                bar.update(len(chunk))
    got = _size(part)
    if expected is not None and got != expected:
        raise _Transient(f"body ended early: have {got} of {expected} bytes")


def _causes(err: BaseException) -> Iterator[BaseException]:
    """`err` and every exception behind it: chained ones, urllib3's `reason`, exceptions in args."""
    seen: set[int] = set()
    stack: list[object] = [err]
    while stack:
        exc = stack.pop()
        if not isinstance(exc, BaseException) or id(exc) in seen:
            continue
        seen.add(id(exc))
        yield exc
        stack += [exc.__cause__, exc.__context__, getattr(exc, "reason", None), *exc.args]


def _unreachable(url: str, err: BaseException) -> str | None:
    """Why `url`'s host cannot be reached at all (name does not resolve, port refused), or None.

    requests wraps both in a ConnectionError (urllib3's NameResolutionError over a
    socket.gaierror; NewConnectionError over ConnectionRefusedError). Neither heals within a
    backoff, unlike timeouts, resets and 5xx, which stay retried.
    """
    parts = urlsplit(url)
    for cause in _causes(err):
        if isinstance(cause, socket.gaierror):
            return f"host name {parts.hostname} does not resolve ({cause.strerror})"
        if isinstance(cause, ConnectionRefusedError):  # any OSError with ECONNREFUSED
            return f"{parts.netloc} refused the connection"
    return None


def _delay(failures: int, backoff: float, retry_after: float | None) -> float:
    """Exponential backoff with jitter (threads do not retry in lockstep), capped."""
    delay = backoff * 2 ** (failures - 1) * random.uniform(0.5, 1.0)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, MAX_DELAY)


def _fetch(
    session: requests.Session,
    url: str,
    part: Path,
    *,
    retries: int,
    timeout: float,
    backoff: float,
    bar: tqdm,
) -> None:
    """Retry `_attempt` until `part` is complete; attempts that gained bytes do not count."""
    failures = 0
    while True:
        before = _size(part)
        try:
            _attempt(session, url, part, timeout, bar)
            return
        except requests.exceptions.SSLError as err:  # a bad certificate will not heal
            raise DownloadError(f"{url}: {err}") from None
        except (_Transient, *TRANSIENT_ERRORS) as err:
            if (why := _unreachable(url, err)) is not None:
                raise HostUnreachable(f"{url}: {why}; not retried{_kept(part)}") from None
            failures = 0 if _size(part) > before else failures + 1
            if failures > retries:
                raise _gave_up(url, part, retries, err) from None
            wait = _delay(max(failures, 1), backoff, getattr(err, "retry_after", None))
            log.warning("%s: %s; retrying in %.1fs", url, err, wait)
            time.sleep(wait)
        except requests.RequestException as err:
            raise DownloadError(f"{url}: {err}") from None
        except OSError as err:  # writing the .part failed (disk full, permissions)
            raise OutputError(os_fault_message(err, part, f"downloading {url}")) from None


def _kept(part: Path) -> str:
    """What a failed download leaves to resume from, as the tail of its message."""
    return f"; {part} keeps {_size(part)} bytes to resume from" if _size(part) else ""


def _gave_up(url: str, part: Path, retries: int, err: Exception) -> DownloadError:
    """The final error: URL, attempts, last status or error, and what is kept to resume."""
    return DownloadError(
        f"{url}: giving up after {retries + 1} attempts without progress; "
        f"last error: {err}{_kept(part)}"
    )


def _verified(url: str, part: Path, verify: Callable[[Path], None] | None) -> None:
    """Run `verify` on the finished .part; bad content is deleted and reported."""
    if verify is None:
        return
    try:
        verify(part)
    except (DataError, DownloadError) as err:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"{url}: downloaded content is bad and was deleted (re-run to fetch it again): {err}"
        ) from None


def download_file(
    url: str,
    dest: Path,
    *,
    retries: int = 5,
    timeout: float = 60.0,
    progress: bool = True,
    verify: Callable[[Path], None] | None = None,
    session: requests.Session | None = None,
    backoff: float = 1.0,
) -> Path:
    """Download `url` to `dest` via `<dest>.part`, resuming, retrying and verifying; return dest.

    Always fetches (callers skip files they already have). Transient failures (connection
    errors, timeouts, 408/429/5xx, a body cut short) are retried `retries` times with
    exponential backoff starting at `backoff` seconds; other HTTP errors fail at once, and
    so does a host that does not resolve or refuses the connection (HostUnreachable).
    `verify(part)` may raise DataError/DownloadError to reject the content. Safe to call
    from several threads for different `dest`s (share a session or not).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    own_session = session is None
    session = session or requests.Session()
    # disable=None: a bar on a terminal only, never into logs.
    bar = tqdm(
        desc=dest.name, unit="B", unit_scale=True, leave=False, disable=None if progress else True
    )
    try:
        _fetch(session, url, part, retries=retries, timeout=timeout, backoff=backoff, bar=bar)
    finally:
        bar.close()
        if own_session:
            session.close()
    _verified(url, part, verify)
    os.replace(part, dest)
    return dest


# --- COCO annotation archives -------------------------------------------------------------

TEST_INFO = ANNOTATION_FILES["test2017"]
CACHE_DIR = ".downloads"


def needed_files(need_test_info: bool) -> list[str]:
    """The annotation files (under annotations/) the pipeline reads."""
    sources = [*LABELLED_SOURCES, "test2017"] if need_test_info else LABELLED_SOURCES
    return [ANNOTATION_FILES[source] for source in sources]


def check_archive(archive: Path, members: list[str]) -> None:
    """Refuse a file that is no zip, holds a member whose path leaves its folder, or lacks one.

    Every member name is checked, not only the wanted ones: an archive carrying a path
    traversal is hostile (or broken) as a whole.
    """
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
    missing = [m for m in members if m not in names]
    if missing:
        raise DataError(f"{archive}: lacks member(s) {missing}; not COCO's archive?")


def extract_members(archive: Path, members: list[str], target: Path) -> list[Path]:
    """Stream the named members of `archive` to their paths under `target`; return them.

    Each member goes through a temp file renamed only after its CRC matched, so a corrupt
    archive leaves nothing behind; it raises DataError naming the archive and member.
    """
    check_archive(archive, members)
    written = []
    with zipfile.ZipFile(archive) as zf:
        for member in members:
            dest = safe_join(target, member)
            try:
                with zf.open(member) as src, atomic_write(dest, "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
            except (zipfile.BadZipFile, zlib.error, EOFError) as err:
                raise DataError(f"{archive}: member {member} is corrupt: {err}") from None
            written.append(dest)
    return written


def inspect_json(path: Path) -> dict[str, Any]:
    """Size and md5 of a JSON file, refusing one that is truncated; one chunked read.

    Cheap completeness test in the same pass as the md5: the text starts with '{', ends
    with '}' and its braces and brackets balance (a truncated object never balances). Only
    when that fails is the file fully parsed, so odd-but-valid JSON is not refused.
    """
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
    looks_whole = first == b"{" and last == b"}" and depth == [0, 0]
    if not looks_whole:
        try:
            orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError as err:
            raise DataError(
                f"{path}: truncated or corrupt ({size} bytes, {err}); delete it to fetch it again"
            ) from None
    return {"size": size, "md5": md5.hexdigest()}


def _missing_by_archive(ann_dir: Path, names: list[str]) -> dict[str, list[str]]:
    """The needed files not yet in ann_dir, grouped by the archive that holds them."""
    grouped: dict[str, list[str]] = {}
    for name in names:
        if not (ann_dir / name).exists():
            grouped.setdefault(ARCHIVES[name], []).append(name)
    return grouped


def _listed(names: list[str]) -> str:
    """Annotation file names as a user finds them under data.coco_root."""
    return ", ".join(f"annotations/{name}" for name in names)


def check_coco_root(coco_root: Path, names: list[str], base_url: str) -> None:
    """Refuse a data.coco_root that is a COCO copy (train2017/ or val2017/) with no annotations.

    Such a folder is a wrong or half-copied root, not a download target: say so before any
    request. A folder that does not exist yet (the default data/coco), or one that already
    holds some of the files or an earlier run's partial download, is filled by downloading.
    """
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
    """Extract members, then delete the archive; a corrupt one is deleted too (refetched)."""
    try:
        paths = extract_members(archive, members, coco_root)
    except DataError as err:
        archive.unlink(missing_ok=True)
        raise DownloadError(f"{url}: {err}; deleted it, re-run to download again") from None
    for path in paths:
        log.info("extracted %s from %s", path, url)
    archive.unlink()


def ensure_annotations(
    coco_root: Path,
    base_url: str,
    *,
    need_test_info: bool,
    retries: int = 5,
    timeout: float = 60.0,
    progress: bool = True,
    backoff: float = 1.0,
) -> dict[str, Any]:
    """Make coco_root/annotations hold the needed COCO-2017 files; return their manifest.

    Present files are checked (not truncated) and reused without any request, so a local
    copy works offline. Missing ones are extracted from COCO's zips, fetched into
    coco_root/.downloads and deleted once extracted. A COCO copy with none of the files
    fails before any request (check_coco_root); an unreachable base_url fails at once with
    the offline way out (offline_hint). Messages name the params keys data.coco_root etc.
    """
    coco_root = Path(coco_root)
    ann_dir = coco_root / "annotations"
    names = needed_files(need_test_info)
    check_coco_root(coco_root, names, base_url)
    # Check present copies first: a truncated one fails before anything is fetched.
    files = {n: inspect_json(ann_dir / n) for n in names if (ann_dir / n).exists()}
    http = {"retries": retries, "timeout": timeout, "progress": progress, "backoff": backoff}
    try:
        for zip_name, wanted in _missing_by_archive(ann_dir, names).items():
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
        "files": {name: files[name] for name in names},
    }
