"""SIGTERM (`timeout`, `docker stop`, Slurm, `dvc queue kill`) handled like Ctrl-C, not by ending
at once: while a stage runs it raises `Terminated` in the main thread, so `finally` blocks and
temp-file cleanup run. DataLoader workers (`worker_init`) exit quietly: the main process, signalled
too, reports for all (torch's own handler would make it raise a second error). `stop_requested`
tells worker threads (downloads) to stop between chunks."""

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
