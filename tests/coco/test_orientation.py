"""EXIF orientation: a user's photo reads as a viewer shows it (all eight orientations); a subset
image reads in the frame its annotation record's size matches (stored first, then oriented), the
same in every reader: the subset stage's check, training's dataset and inference's loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from exifphotos import RED, photo, save_oriented, stored

from cocoseg.coco.images import decode_image, read_rgb
from cocoseg.coco.inputs import subset_images
from cocoseg.common.errors import DataError
from cocoseg.common.io import write_json
from cocoseg.modeling.inference import ImageFiles
from cocoseg.subset.placing import ImageJob
from cocoseg.train.dataset import coco_dataset
from cocoseg.train.transforms import build_transforms

SHOWN, MASK = photo()  # 48 wide, 80 high as shown


@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_photo_reads_as_a_viewer_shows_it_in_every_orientation(tmp_path: Path, orientation):
    path = save_oriented(tmp_path / f"o{orientation}.jpg", SHOWN, orientation)
    assert (read_rgb(path) == SHOWN).all()
    assert decode_image(path) == ("RGB", (48, 80))


def test_an_annotated_image_reads_in_the_frame_its_record_matches(tmp_path: Path):
    turned = save_oriented(tmp_path / "turned.jpg", SHOWN, 6)  # stored 80x48
    assert (read_rgb(turned, recorded=(80, 48)) == stored(SHOWN, 6)).all()  # as stored: kept
    assert decode_image(turned, recorded=(80, 48))[1] == (80, 48)
    assert (read_rgb(turned, recorded=(48, 80)) == SHOWN).all()  # as shown
    assert decode_image(turned, recorded=(48, 80))[1] == (48, 80)
    upside_down = save_oriented(tmp_path / "upside_down.jpg", SHOWN, 3)  # both frames 48x80
    assert (read_rgb(upside_down, recorded=(48, 80)) == stored(SHOWN, 3)).all()  # stored first
    message = (
        r"turned\.jpg: image is 80x48 \(48x80 as its EXIF orientation shows it\) but its "
        r"annotation record says 50x40; masks would not line up$"
    )
    with pytest.raises(DataError, match=message):
        read_rgb(turned, recorded=(50, 40))
    with pytest.raises(DataError, match=message):
        decode_image(turned, recorded=(50, 40))


def rectangle_annotation(image_id: int, mask: np.ndarray) -> dict:
    """The mask's rectangle as a COCO polygon annotation of class 1."""
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    return {
        "id": image_id, "image_id": image_id, "category_id": 1, "iscrowd": 0,
        "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]], "bbox": [x0, y0, x1 - x0, y1 - y0],
        "area": float((x1 - x0) * (y1 - y0)),
    }  # fmt: skip


def test_every_reader_of_a_subset_image_uses_its_records_frame(tmp_path: Path):
    """Two copies of one orientation-6 photo: one annotated as stored (80x48, as COCO's own
    images were), one as shown (48x80). The check, training and inference agree on each."""
    subset = tmp_path / "subset"
    folder = subset / "images" / "train"
    folder.mkdir(parents=True)
    frames = {1: ("as_stored.jpg", stored(SHOWN, 6), stored(MASK[..., None], 6)[..., 0]),
              2: ("as_shown.jpg", SHOWN, MASK)}  # fmt: skip
    images, anns = [], []
    for image_id, (name, _, mask) in frames.items():
        save_oriented(folder / name, SHOWN, 6)
        h, w = mask.shape
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
        anns.append(rectangle_annotation(image_id, mask))
        job = ImageJob(image_id, folder / name, None, None, w, h)
        assert job.verify(folder / name) == "RGB"  # the subset stage keeps it
    categories = [{"id": 1, "name": "person"}]
    write_json(subset / "annotations" / "train.json",
               {"images": images, "annotations": anns, "categories": categories})  # fmt: skip
    with pytest.raises(DataError, match=r"as_shown\.jpg: image id 3 is 80x48 .* says 40x40"):
        ImageJob(3, folder / "as_shown.jpg", None, None, 40, 40).verify(folder / "as_shown.jpg")

    dataset = coco_dataset(subset, "train", build_transforms("none"))
    inputs, _ = subset_images(subset, "train")
    loader = ImageFiles([image.item for image in inputs])
    for index, (image_id, (name, pixels, mask)) in enumerate(frames.items()):
        image, target = dataset[index]
        trained = torch.round(image * 255).to(torch.uint8).permute(1, 2, 0).numpy()
        assert (trained == pixels).all(), name
        drawn = target["masks"][0].numpy().astype(bool)  # the annotation, rasterised
        red = (trained == RED).all(axis=2)
        assert drawn.shape == red.shape and (drawn & red).sum() / (drawn | red).sum() > 0.9, name
        assert (drawn == mask).mean() > 0.98, name
        loaded_id, tensor = loader[index]
        assert loaded_id == image_id and (tensor.permute(1, 2, 0).numpy() == pixels).all(), name
