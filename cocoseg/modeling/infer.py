"""Stage infer: the trained model over the val split, every detection it keeps as COCO results
(RLE masks), with the class names they were made for recorded beside them."""

from __future__ import annotations

import logging
from pathlib import Path

from cocoseg.coco.inputs import subset_images
from cocoseg.coco.results import record_classes
from cocoseg.common.io import write_json
from cocoseg.common.params import EvaluateParams
from cocoseg.modeling.inference import run_trained_model

log = logging.getLogger(__name__)


def infer_val(
    model_path: str | Path, subset: str | Path, out: str | Path, settings: EvaluateParams
) -> list[dict]:
    """Predict every val image (in id order); write the results to `out`, classes beside it."""
    images, classes = subset_images(subset, "val")
    items = [image.item for image in sorted(images, key=lambda image: image.id)]
    results, _ = run_trained_model(model_path, items, settings, expect_classes=classes)
    record_classes(out, classes)
    write_json(out, results, indent=False)
    log.info("infer: %d detections on %d val images -> %s", len(results), len(items), out)
    return results
