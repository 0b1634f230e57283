"""Stage eda: class counts, object and image sizes, and sample overlays of data/subset.

Writes reports/eda/summary.json (the counts, plain JSON) and the PNGs in
reports/eda/figures/.
"""

from __future__ import annotations

import argparse

from cocoseg.common.cli import log, run_stage, stage_parser
from cocoseg.common.params import Params


def parser() -> argparse.ArgumentParser:
    """The shared stage options plus input and output folders (defaults: the DVC layout)."""
    p = stage_parser(__doc__, subset=True)
    p.add_argument("--out", default="reports/eda", help="report folder (default: %(default)s)")
    return p


def main(args: argparse.Namespace, params: Params) -> None:
    """Analyse the subset and report what was found and where it went."""
    from cocoseg.eda.analysis import run_eda  # matplotlib: imported once arguments are parsed

    summary = run_eda(args.subset, args.out, params.eda)
    for split, s in summary.items():
        extra = f", {s['instances']} instances, {s['crowd']} crowd" if "instances" in s else ""
        log.info("eda: %s: %d images%s", split, s["images"], extra)


if __name__ == "__main__":
    raise SystemExit(run_stage(main, parser(), outputs=lambda args: [args.out]))
