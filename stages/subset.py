"""Stage subset: COCO-2017 -> data/subset/{annotations,images}/{train,val,test} + stats.json."""

from __future__ import annotations

import argparse
import sys

from cocoseg.common.cli import log, run_stage, stage_parser
from cocoseg.common.params import Params
from cocoseg.subset.make import make_subset


def main(args: argparse.Namespace, params: Params) -> None:
    """Build the subset from params.data and params.subset, then say what was written."""
    stats = make_subset(params.data, params.subset, args.out)
    for name, split in stats["splits"].items():
        extra = f", {split['annotations']} annotations" if "annotations" in split else ""
        log.info("%s: %d images%s (from %s)", name, split["images"], extra, split["source"])
    log.info("wrote %s/annotations/{train,val,test}.json, images/ and stats.json", args.out)


def parser() -> argparse.ArgumentParser:
    """The stage's arguments: the shared ones plus --out."""
    p = stage_parser(__doc__)
    p.add_argument("--out", default="data/subset", help="output folder (default: %(default)s)")
    return p


if __name__ == "__main__":
    sys.exit(run_stage(main, parser(), outputs=lambda args: [args.out]))
