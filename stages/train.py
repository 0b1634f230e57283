"""Stage train: fine-tune Mask R-CNN on data/subset (resumable; `torchrun` for several GPUs)."""

from __future__ import annotations

import argparse
import sys

from cocoseg.common.cli import log, run_stage, stage_parser
from cocoseg.common.params import Params


def main(args: argparse.Namespace, params: Params) -> None:
    """Train with params.train and say where the outputs went."""
    from cocoseg.train.engine import train  # torch: imported once arguments are parsed

    model_path = train(params.train, args.subset, args.out, args.reports)
    log.info("model: %s, checkpoints: %s/checkpoints, logs: %s", model_path, args.out, args.reports)


def parser() -> argparse.ArgumentParser:
    """The stage's arguments: where the subset is and where outputs go."""
    p = stage_parser(__doc__ or "train", subset=True)
    p.add_argument("--out", default="models", help="model folder (default: %(default)s)")
    p.add_argument("--reports", default="reports/train", help="log folder (default: %(default)s)")
    return p


if __name__ == "__main__":
    sys.exit(run_stage(main, parser(), outputs=lambda args: [args.out, args.reports]))
