"""Shared plumbing for the thin `stages/*.py` entry points: arguments, params, one-line endings.

A failure a user can act on ends in one line on stderr: our errors and OS faults (also wrapped by
torch, PIL or a DataLoader worker) exit 2, Ctrl-C 130, SIGTERM 143; a bug keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from cocoseg.core import signals
from cocoseg.core.config import PARAMS_FILE, Params, load_params
from cocoseg.core.errors import CocosegError, os_fault, os_fault_message, worker_error_line
from cocoseg.core.io import remove_stale_temps

# Loggers are named by module (`logging.getLogger(__name__)`), all under "cocoseg"; stages
# log through this one. Rank muting under torchrun sets this parent's level.
log = logging.getLogger("cocoseg")

EXIT_ERROR, EXIT_INTERRUPTED, EXIT_TERMINATED = 2, 130, 143


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
    if signals.terminated():
        return "terminated (SIGTERM): " + _RESUMABLE, EXIT_TERMINATED
    if isinstance(err, KeyboardInterrupt):
        return "interrupted: " + _RESUMABLE, EXIT_INTERRUPTED
    inner = worker_error_line(err)
    if inner is not None:
        return f"error: {inner}", EXIT_ERROR
    if isinstance(err, CocosegError):
        return f"error: {' '.join(str(err).split())}", EXIT_ERROR
    fault = os_fault(err)
    if fault is not None:
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
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"
    )
    args = parser.parse_args(argv)
    with signals.sigterm_as_interrupt():
        try:
            params = load_params(args.params)
            for path in outputs(args):
                if removed := remove_stale_temps(path):
                    log.info("removed %d temp file(s) a killed run left in %s", removed, path)
            main(args, params)
            signals.stop_raising()
        except BaseException as err:
            signals.stop_raising()
            ending = failure_line(err)
            if ending is None:
                raise
            print(ending[0], file=sys.stderr)
            return ending[1]
    return 0
