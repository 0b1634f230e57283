"""Stage predict: run models/model.pt on images and draw what it finds.

DVC mode (no --images): the test images of data/subset -> reports/predictions/test.json.
Folder mode: `python stages/predict.py --images DIR --out DIR` -> DIR/predictions.json, each
photo as a viewer shows it (EXIF orientation applied); a file that does not decode is skipped by
name and the run ends with `N predicted, K skipped: ...`, exit status 0 when at least one image
was predicted, 2 when none decodes.
Both write images.json (ids -> file names), overlays/<stem>.png and contact_sheet.png;
see cocoseg/predict/outputs.py for the layout. Settings come from params.yaml's predict section.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cocoseg.common.cli import log, run_stage, stage_parser
from cocoseg.common.errors import DataError
from cocoseg.common.params import Params, override

DVC_OUT = "reports/predictions"


def parser() -> argparse.ArgumentParser:
    """The shared stage options plus model, inputs and output folder."""
    p = stage_parser(__doc__, subset=True, model=True)
    p.add_argument("--images", type=Path, help="folder mode: predict on the images in this folder")
    p.add_argument("--out", type=Path, help=f"output folder (DVC mode default: {DVC_OUT})")
    p.add_argument(
        "--score-threshold",
        type=float,
        help="override predict.score_threshold (0..1) for this run",
    )
    return p


def main(args: argparse.Namespace, params: Params) -> None:
    """Pick the inputs for the mode, predict, and say where the outputs are."""
    from cocoseg.coco.inputs import folder_images, listed, subset_images
    from cocoseg.predict.outputs import output_folder, predict  # torch: once arguments are parsed

    settings = params.predict
    if args.score_threshold is not None:
        settings = override(settings, "predict", score_threshold=args.score_threshold)
    if args.images is None:
        with output_folder(args.out or Path(DVC_OUT)) as out:
            images, classes = subset_images(args.subset, "test")
            results = predict(args.model, images, out, settings, name="test",
                              expect_classes=classes)  # fmt: skip
        name, skipped = "test", []
    else:
        if args.out is None:
            raise DataError("--images needs --out: the folder to write predictions into")
        with output_folder(args.out, inputs=args.images) as out:
            images, skipped = folder_images(args.images)
            results = predict(args.model, images, out, settings, name="predictions")
        name = "predictions"
    log.info(
        "predict: %d detections on %d images -> %s/%s.json, overlays/, contact_sheet.png",
        len(results),
        len(images),
        out,
        name,
    )
    if args.images is not None:  # the last line: what a user's folder came to
        log.info(
            "predict: %d predicted, %d skipped%s", len(images), len(skipped),
            f": {listed(skipped)}" if skipped else "",
        )  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(run_stage(main, parser(), outputs=lambda args: [args.out or DVC_OUT]))
