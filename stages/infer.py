"""Stage infer: run models/model.pt over the val subset and save every detection it keeps.

Writes reports/eval/predictions.json (COCO results, RLE masks) for the evaluate stage to
score, and beside it predictions.classes.json (the class names of ids 1..K), so that
evaluate refuses predictions made for another class list. Settings: evaluate.mask_threshold,
batch_size, num_workers, device, and sliced inference and TTA (slice_size, slice_overlap, tta,
tta_scales). Scoring params (score_threshold, n_samples) are not read here, so changing them
reruns scoring alone.
"""

from __future__ import annotations

import argparse

from cocoseg.coco.results import classes_path
from cocoseg.common.cli import run_stage, stage_parser
from cocoseg.common.params import Params

DEFAULT_OUT = "reports/eval/predictions.json"


def parser() -> argparse.ArgumentParser:
    """The shared stage options plus model, subset and output file."""
    p = stage_parser(__doc__, subset=True, model=True)
    p.add_argument("--out", default=DEFAULT_OUT, help="predictions file (default: %(default)s)")
    return p


def main(args: argparse.Namespace, params: Params) -> None:
    """Predict every val image (in id order) and write the results."""
    from cocoseg.modeling.infer import infer_val  # torch: once arguments are parsed

    infer_val(args.model, args.subset, args.out, params.evaluate)


if __name__ == "__main__":
    raise SystemExit(
        run_stage(main, parser(), outputs=lambda args: [args.out, classes_path(args.out)])
    )
