"""Stage check_params: validate all of params.yaml before any other stage runs.

Every stage depends on this one, so a bad value or a misspelt section stops `dvc repro` /
`dvc exp run` here, before DVC removes any other stage's outputs. Its output never changes
(it says only that the file was valid), so a valid change reruns exactly the stages that
read the changed keys.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cocoseg.common.cli import log, run_stage, stage_parser
from cocoseg.common.io import write_bytes
from cocoseg.common.params import Params

DEFAULT_OUT = "data/params_checked.txt"
CHECKED = b"params.yaml: every section and key valid (see cocoseg/common/params.py)\n"


def parser() -> argparse.ArgumentParser:
    """The shared stage options plus where the mark goes."""
    p = stage_parser(__doc__)
    p.add_argument("--out", default=DEFAULT_OUT, help="the mark file (default: %(default)s)")
    return p


def main(args: argparse.Namespace, params: Params) -> None:
    """run_stage has validated the params already: write the mark."""
    write_bytes(Path(args.out), CHECKED)
    log.info("check_params: %s is valid -> %s", args.params, args.out)


if __name__ == "__main__":
    raise SystemExit(run_stage(main, parser(), outputs=lambda args: [args.out]))
