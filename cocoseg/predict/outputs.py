"""Predict with the trained model on the subset's test images or on any folder of images.

Outputs under `out` (`<name>`: "test" for the DVC stage, "predictions" for a folder):
    <name>.json          COCO results with category_name and RLE masks, scores >= threshold
    images.json          COCO "images" and "categories": `COCO("images.json").loadRes(...)` works
    overlays/<stem>.png  each image with its kept detections drawn
    contact_sheet.png    the first MAX_SHEET overlays on one page
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cocoseg.coco.images import read_rgb
from cocoseg.coco.inputs import InputImage
from cocoseg.common.errors import DataError, OutputError, os_fault_message
from cocoseg.common.io import write_json
from cocoseg.common.params import PredictParams
from cocoseg.modeling.inference import add_category_names, run_trained_model

log = logging.getLogger(__name__)

MAX_SHEET = 48  # images on the contact sheet; a big folder would make an unreadable page
THUMB_WIDTH = 480  # contact-sheet thumbnails are downsized to keep memory flat


@contextlib.contextmanager
def output_folder(out: Path, *, inputs: Path | None = None) -> Iterator[Path]:
    """Make the output folder, or say in one line why it cannot be (a file, inside the inputs,
    not writable), before any model loads; the folders made are removed again when the block
    fails before writing into them, so a failed run leaves no empty --out behind."""
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out}: is an existing file; give a folder to write outputs into")
    if inputs is not None and out.resolve().is_relative_to(inputs.resolve()):
        raise DataError(
            f"--out {out} is inside --images {inputs}: outputs are images too; write elsewhere"
        )
    made = [p for p in (out, *out.parents) if not p.exists()]  # deepest first
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise OutputError(os_fault_message(err, out)) from None
    try:
        yield out
    except BaseException:
        for path in [out / "overlays", *made] if made else []:
            with contextlib.suppress(OSError):  # not empty (or gone): left as it is
                path.rmdir()
        raise


def keep_confident(results: Sequence[dict], threshold: float) -> list[dict]:
    """Detections with score >= threshold, in their original order."""
    return [r for r in results if r["score"] >= threshold]


def images_index(images: Sequence[InputImage], classes: Sequence[str]) -> dict[str, Any]:
    """images.json: a COCO image-info dict mapping ids to file names, with the categories."""
    return {
        "images": [
            {"id": i.id, "file_name": i.file_name, "width": i.width, "height": i.height}
            for i in images
        ],
        "categories": [{"id": k, "name": n} for k, n in enumerate(classes, start=1)],
    }


def overlay_names(images: Sequence[InputImage]) -> dict[int, str]:
    """Overlay file name per image id: <stem>.png, or <file name with _>.png if stems clash."""
    stems = Counter(Path(i.file_name).stem for i in images)
    names = {}
    for i in images:
        path = Path(i.file_name)
        names[i.id] = f"{path.stem if stems[path.stem] == 1 else path.name.replace('.', '_')}.png"
    return names


def _thumbnail(image: np.ndarray) -> np.ndarray:
    """A copy at most THUMB_WIDTH wide, for the contact sheet."""
    h, w = image.shape[:2]
    if w <= THUMB_WIDTH:
        return image
    small = Image.fromarray(image).resize((THUMB_WIDTH, max(1, round(h * THUMB_WIDTH / w))))
    return np.asarray(small)


def _clear_stale_overlays(folder: Path, keep: set[str]) -> None:
    """Remove PNGs a previous run left in our overlays folder that this run will not write."""
    stale = [p for p in folder.glob("*.png") if p.name not in keep] if folder.is_dir() else []
    for p in stale:
        p.unlink()
    if stale:
        log.info("%s: removed %d overlay(s) left from an earlier run", folder, len(stale))


def write_outputs(
    out: Path,
    name: str,
    images: Sequence[InputImage],
    results: Sequence[dict],
    classes: Sequence[str],
    threshold: float,
) -> None:
    """Write <name>.json, images.json, one overlay per image and the contact sheet."""
    # Drawing (matplotlib) is imported only now: the model starts before it loads.
    from cocoseg.viz.figures import contact_sheet
    from cocoseg.viz.overlays import class_colors, overlay, save_png

    write_json(out / f"{name}.json", list(results))
    write_json(out / "images.json", images_index(images, classes))
    categories = dict(enumerate(classes, start=1))
    colors = class_colors(list(classes))
    by_image: dict[int, list[dict]] = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(r)
    names = overlay_names(images)
    _clear_stale_overlays(out / "overlays", set(names.values()))
    thumbs, captions = [], []
    for img in images:
        dets = by_image.get(img.id, [])
        drawn = overlay(read_rgb(img.path, recorded=img.recorded), dets, categories, colors=colors)
        save_png(out / "overlays" / names[img.id], drawn)
        if len(thumbs) < MAX_SHEET:
            thumbs.append(_thumbnail(drawn))
            captions.append(f"{img.file_name}: {len(dets)} detection{'s' * (len(dets) != 1)}")
    shown = f"first {len(thumbs)} of {len(images)}" if len(thumbs) < len(images) else len(images)
    title = f"Predictions on {shown} images (score ≥ {threshold:g})"
    contact_sheet(thumbs, captions, out / "contact_sheet.png", title=title, colors=colors)


def predict(
    model_path: str | Path,
    images: Sequence[InputImage],
    out: str | Path,
    params: PredictParams,
    *,
    name: str,
    expect_classes: Sequence[str] = (),
    progress: bool = True,
) -> list[dict]:
    """Run the model on `images`, keep scores >= threshold, write all outputs; return results."""
    items, threshold = [i.item for i in images], params.score_threshold
    raw, classes = run_trained_model(
        model_path, items, params, expect_classes=expect_classes, progress=progress
    )
    results = add_category_names(keep_confident(raw, threshold), classes)
    log.info(
        "predict: kept %d of %d detections with score >= %g", len(results), len(raw), threshold
    )
    write_outputs(Path(out), name, images, results, classes, threshold)
    return results
