"""Shared plumbing for the thin `stages/*.py` entry points."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from cocoseg.config import PARAMS_FILE, Params, load_params
from cocoseg.errors import CocosegError

log = logging.getLogger("cocoseg")


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


def run_stage(
    main: Callable[[argparse.Namespace, Params], None],
    parser: argparse.ArgumentParser,
    argv: list[str] | None = None,
) -> int:
    """Parse args, validate params, run `main`; known errors print one line and exit 2."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"
    )
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        main(args, params)
    except CocosegError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted: outputs written so far are complete; re-run to continue", file=sys.stderr
        )
        return 130
    return 0
