"""The one place files are written: each output goes to a temp file beside it (`.<name>.<pid>.
<random>.tmp`) renamed into place, so it is whole or absent (`remove_stale_temps` clears a killed
run's). Also JSON and CSV helpers and safe path joins."""

from __future__ import annotations

import contextlib
import csv
import errno
import glob
import io
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import IO, Any

import orjson

from cocoseg.common.errors import CocosegError, DataError, OutputError, os_fault, os_fault_message

TEMP_SUFFIX = ".tmp"
PART_SUFFIX = ".part"  # an unfinished download, kept to resume from (cocoseg.common.http)
_TEMP_NAME = re.compile(r"^\..+\.(?P<pid>\d+)\.[^.]+\.tmp$")
MB = 2**20
SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


def _read_umask() -> int:
    """The process umask; os.umask can only read it by setting it, so set it straight back."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates files 0600; outputs get the mode any new file gets (0644 under umask 022).
FILE_MODE = 0o666 & ~_read_umask()


def part_path(dest: Path) -> Path:
    """Where an unfinished download of `dest` is kept (and resumed from)."""
    return dest.with_name(dest.name + PART_SUFFIX)


def is_stale_temp(path: Path) -> bool:
    """A temp file of ours whose writing process is gone (killed before it could clean up)."""
    found = _TEMP_NAME.match(path.name)
    if found is None or int(found["pid"]) == os.getpid():
        return False
    try:
        os.kill(int(found["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    return False


def remove_stale_temps(path: str | Path) -> int:
    """Remove (and count) the temp files killed runs left for an output (a folder: all under it)."""
    path = Path(path)
    if path.is_dir():
        candidates = path.rglob(".*" + TEMP_SUFFIX)
    elif path.parent.is_dir():
        candidates = path.parent.glob(f".{glob.escape(path.name)}.*{TEMP_SUFFIX}")
    else:
        return 0
    stale = [p for p in candidates if p.is_file() and is_stale_temp(p)]
    for temp in stale:
        temp.unlink(missing_ok=True)
    return len(stale)


def _write_failure(path: Path, err: BaseException, tmp: str | None, needed: int | None) -> None:
    """Re-raise an OS fault met while writing `path` as one OutputError naming it."""
    fault = os_fault(err)
    if fault is None or isinstance(err, CocosegError):
        return
    where = fault.filename if fault.filename not in (None, tmp) else path
    detail = ""
    if fault.errno in SPACE_ERRNOS:
        free = shutil.disk_usage(path.parent).free if path.parent.is_dir() else None
        need = f"the file needs about {needed / MB:.1f} MB" if needed else "the file did not fit"
        detail = need + (f", {free / MB:.1f} MB free there" if free is not None else "")
    raise OutputError(os_fault_message(fault, where, detail)) from err


@contextlib.contextmanager
def atomic_write(
    path: str | Path, mode: str = "wb", *, size_hint: int | None = None
) -> Iterator[IO[Any]]:
    """Open a temp file beside `path`; rename it over `path` only if the block succeeds. An OS
    fault becomes OutputError naming `path` (a full disk: and the `size_hint` bytes needed)."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        prefix = f".{path.name}.{os.getpid()}."  # hidden, naming the writing process
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=TEMP_SUFFIX)
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        _write_failure(path, err, tmp, size_hint)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write bytes atomically."""
    with atomic_write(path, "wb", size_hint=len(data)) as f:
        f.write(data)


def write_json(path: str | Path, obj: Any, *, indent: bool = True) -> None:
    """Write JSON atomically; numpy scalars and arrays are serialised natively."""
    option = orjson.OPT_SERIALIZE_NUMPY | (orjson.OPT_INDENT_2 if indent else 0)
    write_bytes(path, orjson.dumps(obj, option=option) + b"\n")


def write_csv(
    path: str | Path, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None
) -> None:
    """Rows of dicts as CSV, written atomically; None is an empty cell. The header is `columns`
    (other keys are left out), else the first row's keys."""
    buf = io.StringIO()
    fieldnames = list(columns if columns is not None else rows[0] if rows else ())
    writer = csv.DictWriter(buf, fieldnames, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_bytes(path, buf.getvalue().encode())


def read_file(path: str | Path) -> bytes:
    """A file's bytes; a missing or unreadable file raises DataError naming it."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as err:
        raise DataError(os_fault_message(err, path)) from None


def read_json(path: str | Path) -> Any:
    """Read a JSON file; a missing, truncated or invalid file raises DataError naming it."""
    data = read_file(path)
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON (truncated or corrupt?): {err}") from None


def safe_join(root: str | Path, relative: str) -> Path:
    """Join a relative name taken from data (a file_name, an archive member) under root; names
    that are absolute or climb out ('..') are refused: hostile data reaches nothing else."""
    posix = PurePosixPath(relative.replace("\\", "/"))
    drive = len(relative) > 1 and relative[1] == ":"
    if not relative or posix.is_absolute() or ".." in posix.parts or drive:
        raise DataError(f"unsafe path {relative!r}: must be relative and stay inside {root}")
    return Path(root).joinpath(*posix.parts)
