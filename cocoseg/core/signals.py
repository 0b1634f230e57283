"""SIGTERM handled like Ctrl-C: the stage unwinds, cleans up and ends with one line.

Python's default SIGTERM ends the process at once: no `finally`, no temp-file cleanup. Yet
`timeout`, `docker stop`, Slurm, Kubernetes and `dvc queue kill` all send it first. While a
stage runs, SIGTERM raises `Terminated` (a KeyboardInterrupt) in the main thread instead.
DataLoader workers (`worker_init`) exit quietly with status 0: the main process, signalled
too, reports for all (torch's own worker handler kills a worker signalled by anyone but
its parent, and the main process then raises a second error about it).
`stop_requested` tells worker threads (downloads) to stop between chunks.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

from cocoseg.core.errors import Terminated

stop_requested = threading.Event()
_main_pid: int | None = None
_raising = False


def _on_sigterm(signum: int, frame: Any) -> None:
    """Raise Terminated in the stage's main thread; a forked child just exits."""
    if os.getpid() != _main_pid:
        _exit_quietly(signum, frame)
    stop_requested.set()
    if _raising:
        raise Terminated(signum)


def _exit_quietly(signum: int, frame: Any) -> None:
    os._exit(0)


def worker_init(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: on SIGTERM the worker exits quietly (see the docstring)."""
    signal.signal(signal.SIGTERM, _exit_quietly)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM raises Terminated (until `stop_raising`)."""
    global _main_pid, _raising
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    _main_pid, _raising = os.getpid(), True
    stop_requested.clear()
    try:
        yield
    finally:
        _raising = False
        signal.signal(signal.SIGTERM, previous)


def stop_raising() -> None:
    """From now on SIGTERM is only remembered: it must not interrupt the final report."""
    global _raising
    _raising = False


def terminated() -> bool:
    """Whether SIGTERM arrived during the stage."""
    return stop_requested.is_set()
