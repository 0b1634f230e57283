"""Stage infer: run models/model.pt over the val subset and save every detection it keeps.

Writes reports/eval/predictions.json (COCO results, RLE masks) for the evaluate stage to
score, and beside it predictions.classes.json (the class names of ids 1..K), so that
evaluate refuses predictions made for another class list. Settings: evaluate.mask_threshold,
batch_size, num_workers, device. Scoring params (score_threshold, n_samples) are not read
here, so changing them reruns scoring alone.
"""

from __future__ import annotations

import argparse

from cocoseg.core.cli import log, run_stage, stage_parser
from cocoseg.core.config import Params
from cocoseg.core.inputs import classes_path, record_classes
from cocoseg.core.io import write_json

DEFAULT_OUT = "reports/eval/predictions.json"


def parser() -> argparse.ArgumentParser:
    """The shared stage options plus model, subset and output file."""
    p = stage_parser(__doc__, subset=True, model=True)
    p.add_argument("--out", default=DEFAULT_OUT, help="predictions file (default: %(default)s)")
    return p


def main(args: argparse.Namespace, params: Params) -> None:
    """Predict every val image (in id order) and write the results."""
    from cocoseg.core.inference import run_trained_model  # torch: once arguments are parsed
    from cocoseg.core.inputs import subset_images

    images, classes = subset_images(args.subset, "val")
    items = sorted((image.id, image.path) for image in images)
    results, _ = run_trained_model(args.model, items, params.evaluate, expect_classes=classes)
    record_classes(args.out, classes)
    write_json(args.out, results, indent=False)
    log.info("infer: %d detections on %d val images -> %s", len(results), len(items), args.out)


if __name__ == "__main__":
    raise SystemExit(
        run_stage(main, parser(), outputs=lambda args: [args.out, classes_path(args.out)])
    )
