"""Errors a user can meet, each naming the file, key or id at fault. OS faults (disk full,
read-only, permissions, I/O) come wrapped (`torch.save` in a RuntimeError, DataLoader workers in
their traceback's text): `os_fault` finds the OSError, `os_fault_message` words it in one line."""

from __future__ import annotations

import errno
import re

# What to do about each OS fault, appended to its one-line message.
OS_HINTS = {
    errno.ENOSPC: "free some space or point the output at a bigger disk",
    errno.EDQUOT: "the disk quota is used up: free some space or raise the quota",
    errno.EROFS: "the file system is read-only: remount it writable or write elsewhere",
    errno.EACCES: "check the owner and permissions of the file and its folder",
    errno.EPERM: "check the owner and permissions of the file and its folder",
    errno.EIO: "the device reported an I/O error: check the disk or network mount (dmesg)",
}
# DataLoader re-raises a worker's error with this text and the worker's traceback.
_WORKER_TRACEBACK = re.compile(r"Caught \w+ in DataLoader worker process \d+\.\nOriginal ")
_ERRNO_LINE = re.compile(r"\[Errno (?P<errno>\d+)\] (?P<cause>[^:]+)(?:: '(?P<path>.*)')?$")


class CocosegError(Exception):
    """Base class: the stage entry points print these without a traceback and exit 2."""


class ParamError(CocosegError):
    """A key or value in params.yaml is unknown, mistyped or out of range; `keys` names the
    dotted keys at fault (`train.lr`) where the raiser knows them."""

    def __init__(self, message: str = "", *, keys: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.keys = keys


class DataError(CocosegError):
    """An input file (annotations, image, checkpoint) is missing, malformed or unsafe."""


class DownloadError(CocosegError):
    """A download failed for good (after retries) or its content did not verify."""


class OutputError(CocosegError):
    """An output could not be written (disk full, read-only, permissions); nothing was replaced."""


def os_fault(err: BaseException | None) -> OSError | None:
    """The OSError with an errno behind `err` (itself, its cause or its context), if any; a
    context suppressed by `raise ... from None` is not followed: that error was handled."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno is not None:
            return err
        err = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
    return None


def os_fault_message(fault: OSError, path: object = None, detail: str = "") -> str:
    """'<path>: <cause> (<detail>); <hint>' for an OS fault; `path` defaults to the error's."""
    where = path if path is not None else fault.filename
    text = (fault.strerror or str(fault)) + (f" ({detail})" if detail else "")
    if hint := OS_HINTS.get(fault.errno):
        text += f"; {hint}"
    return f"{where}: {text}" if where is not None else text


def worker_error_line(err: BaseException) -> str | None:
    """The original error line inside a DataLoader worker's re-raised exception, if it is one; an
    OS fault there ('[Errno 13] Permission denied: path') is worded as `os_fault_message` would."""
    text = str(err)
    if not _WORKER_TRACEBACK.search(text):
        return None
    last = text.strip().splitlines()[-1]
    message = last.split(": ", 1)[1] if ": " in last else last
    if found := _ERRNO_LINE.search(message):
        return os_fault_message(OSError(int(found["errno"]), found["cause"], found["path"]))
    return message
