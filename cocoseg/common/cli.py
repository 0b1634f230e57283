"""The thin `stages/*.py` entry points' runner: arguments, params, one-line endings. A failure a
user can act on (our errors, OS faults even when torch, PIL or a DataLoader worker wraps them) ends
in one line on stderr and exit 2; Ctrl-C 130; SIGTERM (`timeout`, `docker stop`, Slurm, `dvc queue
kill`) 143, unwound like Ctrl-C so `finally` blocks and temp-file cleanup run; a bug keeps its
traceback."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cocoseg.common.errors import (
    CocosegError,
    ParamError,
    os_fault,
    os_fault_message,
    worker_error_line,
)
from cocoseg.common.io import remove_stale_temps
from cocoseg.common.params import PARAMS_FILE, Params, load_params, to_dict, with_committed_note

# Loggers are named by module (`logging.getLogger(__name__)`), all under "cocoseg"; stages
# log through this one. Rank muting under torchrun sets this parent's level.
log = logging.getLogger("cocoseg")

EXIT_ERROR, EXIT_INTERRUPTED, EXIT_TERMINATED = 2, 130, 143
stop_requested = threading.Event()  # SIGTERM arrived: worker threads (downloads) stop
_main_pid: int | None = None
_raising = False


def stage_parser(
    description: str, *, subset: bool = False, model: bool = False
) -> argparse.ArgumentParser:
    """An argument parser with the options every stage shares, and --subset / --model if asked."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default=PARAMS_FILE, help="params file (default: %(default)s)")
    if model:
        parser.add_argument(
            "--model", default="models/model.pt", help="model file (default: %(default)s)"
        )
    if subset:
        parser.add_argument(
            "--subset", default="data/subset", help="subset folder (default: %(default)s)"
        )
    return parser


def failure_line(err: BaseException) -> tuple[str, int] | None:
    """(one line to print, exit code) for an error a user can act on; None for a bug."""
    if stop_requested.is_set():
        return "terminated (SIGTERM): " + _RESUMABLE, EXIT_TERMINATED
    if isinstance(err, KeyboardInterrupt):
        return "interrupted: " + _RESUMABLE, EXIT_INTERRUPTED
    if (inner := worker_error_line(err)) is not None:
        return f"error: {inner}", EXIT_ERROR
    if isinstance(err, CocosegError):
        return f"error: {' '.join(str(err).split())}", EXIT_ERROR
    if (fault := os_fault(err)) is not None:
        return f"error: {os_fault_message(fault)}", EXIT_ERROR
    return None


_RESUMABLE = "outputs written so far are complete; re-run to continue"


def run_stage(
    main: Callable[[argparse.Namespace, Params], None],
    parser: argparse.ArgumentParser,
    argv: list[str] | None = None,
    *,
    outputs: Callable[[argparse.Namespace], Sequence[str | Path]] = lambda args: (),
) -> int:
    """Parse args, validate params, clear stale temp files from `outputs(args)`, run `main`;
    a known failure prints one line (see the module docstring) and returns its exit code."""
    global _main_pid, _raising
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"
    )
    args = parser.parse_args(argv)
    if "torch" not in sys.modules:  # PyTorch reads it once, when it starts (in `main`)
        # Tensors of 2 MB or more get transparent huge pages: a large fresh output (a 100-mask
        # paste) faults in ~4x faster. A user's own setting wins.
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    _main_pid, _raising = os.getpid(), True
    stop_requested.clear()
    params = None
    try:
        params = load_params(args.params)
        for path in outputs(args):
            if removed := remove_stale_temps(path):
                log.info("removed %d temp file(s) a killed run left in %s", removed, path)
        main(args, params)
        _raising = False  # from now on SIGTERM is only remembered: the report must not break
    except BaseException as err:
        _raising = False
        if isinstance(err, ParamError) and params is not None:  # a stage refused a value
            err = with_committed_note(err, args.params, to_dict(params))
        ending = failure_line(err)
        if ending is None:
            raise
        print(ending[0], file=sys.stderr)
        return ending[1]
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: unwound like Ctrl-C, so `finally` blocks and temp-file cleanup run."""


def _on_sigterm(signum: int, frame: Any) -> None:
    """While a stage runs, raise Terminated in its main thread; a forked child just exits."""
    if os.getpid() != _main_pid:
        _exit_quietly(signum, frame)
    stop_requested.set()
    if _raising:
        raise Terminated(signum)


def _exit_quietly(signum: int, frame: Any) -> None:
    os._exit(0)


def worker_init(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: SIGTERM ends the worker quietly; the main process, signalled
    too, reports for all (torch's own handler would raise a second error)."""
    signal.signal(signal.SIGTERM, _exit_quietly)
