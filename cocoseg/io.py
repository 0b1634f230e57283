"""The one place files are written: atomic writes, JSON and CSV helpers, safe path joins."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import IO, Any

import orjson

from cocoseg.errors import DataError


def _read_umask() -> int:
    """The process umask; os.umask can only read it by setting it, so set it straight back."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates files 0600; outputs get the mode any new file gets (0644 under umask 022).
FILE_MODE = 0o666 & ~_read_umask()


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temp file beside `path`; rename it over `path` only if the block succeeds.

    A crash or exception leaves either the old file or none, never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write bytes atomically."""
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_json(path: str | Path, obj: Any, *, indent: bool = True) -> None:
    """Write JSON atomically; numpy scalars and arrays are serialised natively."""
    option = orjson.OPT_SERIALIZE_NUMPY | (orjson.OPT_INDENT_2 if indent else 0)
    write_bytes(path, orjson.dumps(obj, option=option) + b"\n")


def write_csv(
    path: str | Path, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None
) -> None:
    """Rows of dicts as CSV, written atomically; None is an empty cell.

    The header is `columns` (keys outside them are left out), else the first row's keys.
    """
    buf = io.StringIO()
    fieldnames = list(columns if columns is not None else rows[0] if rows else ())
    writer = csv.DictWriter(buf, fieldnames, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_bytes(path, buf.getvalue().encode())


def read_file(path: str | Path) -> bytes:
    """A file's bytes; a missing file raises DataError naming it."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None


def read_json(path: str | Path) -> Any:
    """Read a JSON file; a missing, truncated or invalid file raises DataError naming it."""
    data = read_file(path)
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON (truncated or corrupt?): {err}") from None


def safe_join(root: str | Path, relative: str) -> Path:
    """Join a relative name taken from data (a file_name, an archive member) under root.

    Absolute names and names that climb out of root ('..') are refused, so hostile
    annotation files or archives cannot make us read or write elsewhere.
    """
    posix = PurePosixPath(relative.replace("\\", "/"))
    if (
        not relative
        or posix.is_absolute()
        or ".." in posix.parts
        or (len(relative) > 1 and relative[1] == ":")
    ):
        raise DataError(f"unsafe path {relative!r}: must be relative and stay inside {root}")
    return Path(root).joinpath(*posix.parts)
