"""HTTP downloads with resume, retry and progress: `download_file` streams to `<dest>.part`,
resumes with Range requests, retries transient failures with backoff, verifies, then renames."""

from __future__ import annotations

import logging
import os
import random
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import requests
from tqdm import tqdm

from cocoseg.common.cli import Terminated, stop_requested
from cocoseg.common.errors import DataError, DownloadError, OutputError, os_fault_message
from cocoseg.common.io import part_path

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
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-\d+|\*)/(?:(\d+)|\*)")


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


def _content_range(resp: requests.Response) -> tuple[int | None, int | None]:
    """(first byte, total size) from a Content-Range header; None where absent or '*'."""
    match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
    start, total = match.groups() if match else (None, None)
    return (None if start is None else int(start)), (None if total is None else int(total))


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
    """The resume offset of this response's body: `have` for a 206, 0 for a 200."""
    code = resp.status_code
    if code in TRANSIENT_STATUS:
        retry_after = resp.headers.get("Retry-After", "")  # used when a plain number of seconds
        wait = float(retry_after) if retry_after.strip().isdigit() else None
        raise _Transient(f"HTTP {code} {resp.reason}", wait)
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


def _unreachable(url: str, err: BaseException) -> str | None:
    """Why `url`'s host cannot be reached at all (no such name, port refused), or None: neither
    heals within a backoff, unlike timeouts, resets and 5xx (requests wraps all alike)."""
    parts = urlsplit(url)
    seen: set[int] = set()
    stack: list[object] = [err]
    while stack:  # err and every exception behind it: chained, urllib3's `reason`, in args
        cause = stack.pop()
        if not isinstance(cause, BaseException) or id(cause) in seen:
            continue
        seen.add(id(cause))
        if isinstance(cause, socket.gaierror):
            return f"host name {parts.hostname} does not resolve ({cause.strerror})"
        if isinstance(cause, ConnectionRefusedError):  # any OSError with ECONNREFUSED
            return f"{parts.netloc} refused the connection"
        stack += [cause.__cause__, cause.__context__, getattr(cause, "reason", None), *cause.args]
    return None


def _kept(part: Path) -> str:
    """What a failed download leaves to resume from, as the tail of its message."""
    return f"; {part} keeps {_size(part)} bytes to resume from" if _size(part) else ""


def download_file(
    url: str,
    dest: Path,
    *,
    retries: int = 5,
    timeout: float = 60.0,
    progress: bool = True,
    verify: Callable[[Path], None] | None = None,
    backoff: float = 1.0,
) -> Path:
    """Download `url` to `dest` via `<dest>.part`, resuming and retrying transient failures
    (backoff from `backoff` s); `verify(part)` may raise DataError/DownloadError to reject it.
    Thread-safe for different dests (image placing downloads in parallel)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    # disable=None: a bar on a terminal only, never into logs.
    disable = None if progress else True
    with (
        requests.Session() as session,
        tqdm(desc=dest.name, unit="B", unit_scale=True, leave=False, disable=disable) as bar,
    ):
        failures = 0  # in a row without progress: attempts that gained bytes do not count
        while True:
            before = _size(part)
            try:
                _attempt(session, url, part, timeout, bar)
                break
            except requests.exceptions.SSLError as err:  # a bad certificate will not heal
                raise DownloadError(f"{url}: {err}") from None
            except (_Transient, *TRANSIENT_ERRORS) as err:
                if (why := _unreachable(url, err)) is not None:
                    raise HostUnreachable(f"{url}: {why}; not retried{_kept(part)}") from None
                failures = 0 if _size(part) > before else failures + 1
                if failures > retries:
                    raise DownloadError(
                        f"{url}: giving up after {retries + 1} attempts without progress; "
                        f"last error: {err}{_kept(part)}"
                    ) from None
                # Backoff, with jitter (threads do not retry in lockstep), at least Retry-After.
                wait = backoff * 2 ** (max(failures, 1) - 1) * random.uniform(0.5, 1.0)
                wait = min(max(wait, getattr(err, "retry_after", None) or 0.0), MAX_DELAY)
                log.warning("%s: %s; retrying in %.1fs", url, err, wait)
                time.sleep(wait)
            except requests.RequestException as err:
                raise DownloadError(f"{url}: {err}") from None
            except OSError as err:  # writing the .part failed (disk full, permissions)
                raise OutputError(os_fault_message(err, part, f"downloading {url}")) from None
    try:
        if verify is not None:
            verify(part)
    except (DataError, DownloadError) as err:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"{url}: downloaded content is bad and was deleted (re-run to fetch it again): {err}"
        ) from None
    os.replace(part, dest)
    return dest
