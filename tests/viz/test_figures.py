"""Drawing API: fixed class colours, overlays for every COCO mask encoding, PNG writers."""

from __future__ import annotations

import numpy as np
import pytest
import synthcoco
from PIL import Image
from pycocotools import mask as mask_utils

from cocoseg.viz.figures import comparison_grid, contact_sheet
from cocoseg.viz.overlays import (
    FIXED_COLORS,
    ann_mask,
    class_colors,
    label_spots,
    layout_labels,
    overlay,
    place_labels,
)

CATEGORIES = {1: "person", 2: "cat", 3: "sports ball", 4: "book"}
H, W = 120, 160
BACKGROUND = 100


def square(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """A bool HxW mask with rows y0:y1 and columns x0:x1 set."""
    mask = np.zeros((H, W), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def encoded(mask: np.ndarray, kind: str) -> object:
    """`mask` as a polygon list, an uncompressed (list) RLE or a compressed (str) RLE."""
    if kind == "polygon":
        ys, xs = np.nonzero(mask)
        x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        return [[float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)]]
    if kind == "list_rle":
        return synthcoco.uncompressed_rle(mask)
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def test_class_colors_fixed_by_name_and_distinct():
    a = class_colors(["person", "cat", "sports ball", "book"])
    b = class_colors(["book", "zebra", "person", "kite", "cat"])
    assert a["person"] == b["person"] == FIXED_COLORS["person"]
    assert a["book"] == b["book"]
    assert len(set(b.values())) == len(b)
    many = class_colors([f"class {i}" for i in range(40)])
    assert many == class_colors([f"class {i}" for i in range(40)])
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in many.values())


@pytest.mark.parametrize("kind", ["polygon", "list_rle", "str_rle"])
def test_ann_mask_decodes_every_encoding(kind):
    mask = square(40, 30, 90, 80)
    decoded = ann_mask(encoded(mask, kind), H, W)
    assert decoded.shape == (H, W)
    # Polygons rasterise their edge pixels slightly differently; the inside must agree.
    assert decoded[35:75, 45:85].all()
    assert not decoded[:20].any() and not decoded[:, 100:].any()


def test_ann_mask_size_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="160x120"):
        ann_mask(encoded(square(0, 0, 10, 10), "str_rle"), 60, 80)


@pytest.mark.parametrize("kind", ["polygon", "list_rle", "str_rle"])
def test_overlay_colours_mask_and_leaves_far_pixels(kind):
    image = np.full((H, W, 3), BACKGROUND, dtype=np.uint8)
    mask = square(40, 40, 80, 90)
    ann = {
        "id": 1,
        "image_id": 1,
        "category_id": 2,
        "segmentation": encoded(mask, kind),
        "bbox": [40, 40, 40, 50],
        "area": float(mask.sum()),
        "iscrowd": 0,
    }
    out = overlay(image, [ann], CATEGORIES)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert not np.shares_memory(out, image) and (image == BACKGROUND).all()
    cat = np.array(class_colors(list(CATEGORIES.values()))["cat"], dtype=float)
    inside = out[50:80, 50:70].reshape(-1, 3).astype(float)
    # Blended towards the class colour: closer to it than the background was.
    assert (np.abs(inside - cat).sum(1) < np.abs(BACKGROUND - cat).sum()).all()
    assert (inside != BACKGROUND).any(axis=1).all()
    # The box outline is drawn in the class colour.
    assert (out[70, 40] == cat).all()
    # Far from mask, box and label: untouched.
    assert (out[:, 120:] == BACKGROUND).all()
    assert (out[105:] == BACKGROUND).all()


def test_overlay_labels_prediction_scores_and_dims_crowds():
    image = np.full((H, W, 3), BACKGROUND, dtype=np.uint8)
    crowd_mask, obj_mask = square(0, 60, 60, 120), square(90, 60, 150, 120)
    anns = [
        {
            "category_id": 1,
            "segmentation": synthcoco.uncompressed_rle(crowd_mask),
            "bbox": [0, 60, 60, 60],
            "iscrowd": 1,
        },
        {
            "category_id": 1,
            "segmentation": encoded(obj_mask, "str_rle"),
            "bbox": [90, 60, 60, 60],
            "score": 0.875,
        },
    ]
    out = overlay(image, anns, CATEGORIES).astype(int)
    crowd_change = np.abs(out[75:110, 10:50] - BACKGROUND).sum(2)
    obj_change = np.abs(out[75:110, 100:140] - BACKGROUND).sum(2)
    assert (crowd_change == 0).any(), "crowd regions are hatched: some pixels left as they were"
    assert crowd_change.mean() < obj_change.mean()
    assert (obj_change > 0).all()


def test_overlay_unknown_category_and_no_annotations():
    image = np.full((H, W, 3), BACKGROUND, dtype=np.uint8)
    assert (overlay(image, [], CATEGORIES) == image).all()
    ann = {"category_id": 9, "segmentation": encoded(square(10, 10, 30, 30), "str_rle")}
    out = overlay(image, [ann], CATEGORIES)
    assert (out[15:25, 15:25] != BACKGROUND).any()


def test_overlay_rejects_non_rgb():
    with pytest.raises(ValueError, match="HxWx3"):
        overlay(np.zeros((H, W), dtype=np.uint8), [], CATEGORIES)


def _disjoint(a, b) -> bool:
    """Whether two (left, top, right, bottom) rectangles share no area."""
    return a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def _inside(rect, width: int, height: int) -> bool:
    """Whether a (left, top, right, bottom) rectangle lies within a width x height image."""
    left, top, right, bottom = rect
    return min(left, top) >= 0 and right <= width and bottom <= height


def _crowd_boxes(n: int, seed: int = 0) -> list[list[int]]:
    """n heavily overlapping integer xywh boxes in the middle of a 320x240 image."""
    rng = np.random.default_rng(seed)
    boxes = []
    for _ in range(n):
        x, y = rng.integers(60, 200), rng.integers(40, 150)
        boxes.append([int(x), int(y), int(rng.integers(20, 90)), int(rng.integers(20, 80))])
    return boxes


def test_place_labels_never_overlap_stay_inside_and_touch_their_box():
    boxes = _crowd_boxes(30)
    sizes = [(70.0, 16.0)] * len(boxes)
    spots = place_labels(boxes, sizes, 320, 240)
    placed = [(box, r) for box, r in zip(boxes, spots, strict=True) if r is not None]
    assert spots[0] == label_spots(boxes[0], sizes[0])[0], "first label goes above its box"
    assert 3 <= len(placed) < len(boxes), "a crowd: several labelled, some left out"
    for i, (_, a) in enumerate(placed):
        assert _inside(a, 320, 240)
        assert all(_disjoint(a, b) for _, b in placed[i + 1 :])
    for (x, y, w, h), r in placed:
        assert r[1] in (y - 16, y, y + h), "above, inside the top of, or below its box"
        assert r[0] < x + w and x < r[2], "beside its box horizontally"


def test_place_labels_skips_a_label_wider_than_the_image():
    assert place_labels([[0, 10, 5, 5]], [(50.0, 8.0)], 40, 40) == [None]


def test_overlay_labels_in_a_crowd_do_not_pile_up():
    image = np.full((240, 320, 3), BACKGROUND, dtype=np.uint8)
    anns = [
        {"category_id": 1 + k % 4, "bbox": box, "score": round(0.3 + 0.02 * k, 2)}
        for k, box in enumerate(_crowd_boxes(30, seed=1))
    ]
    colors = class_colors(list(CATEGORIES.values()))
    labels = layout_labels(anns, CATEGORIES, colors, 320, 240)
    placed = [lab for lab in labels if lab.rect is not None]
    best = max(anns, key=lambda a: a["score"])
    assert labels[0].text == f"{CATEGORIES[best['category_id']]} {best['score']:.2f}"
    assert labels[0].rect is not None, "the most confident detection is always labelled"
    assert 3 <= len(placed) < len(anns)
    for i, a in enumerate(placed):
        assert _inside(a.rect, 320, 240)
        assert all(_disjoint(a.rect, b.rect) for b in placed[i + 1 :])
    out = overlay(image, anns, CATEGORIES, colors=colors)
    for lab in placed:  # each tab's top-left corner is drawn in its class colour
        assert tuple(out[int(lab.rect[1]), int(lab.rect[0])]) == lab.color, lab


def _rows(n: int) -> list[tuple[np.ndarray, list[dict], list[dict]]]:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        image = rng.integers(0, 255, size=(H + 10 * i, W, 3), dtype=np.uint8)
        gt = [
            {
                "category_id": 1 + i % 4,
                "segmentation": encoded(square(20, 20, 60, 60), "polygon"),
                "bbox": [20, 20, 40, 40],
            }
        ]
        pred = [dict(gt[0], score=0.5)]
        rows.append((image, gt, pred))
    return rows


def _png_size(path) -> tuple[int, int]:
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.load()
        return img.size


def test_comparison_grid_writes_png(tmp_path):
    path = tmp_path / "deep" / "grid.png"
    comparison_grid(_rows(3), CATEGORIES, path)
    w, h = _png_size(path)
    assert 400 < w < 2500 and h > w
    assert not list(path.parent.glob(".*.tmp")), "atomic write left a temp file"


def test_comparison_grid_needs_rows(tmp_path):
    with pytest.raises(ValueError, match="at least one row"):
        comparison_grid([], CATEGORIES, tmp_path / "grid.png")


def test_contact_sheet_writes_png(tmp_path):
    images = [row[0] for row in _rows(5)]
    contact_sheet(
        images,
        [f"img {i}" for i in range(5)],
        tmp_path / "sheet.png",
        columns=3,
        title="five",
        colors=class_colors(list(CATEGORIES.values())),
    )
    w, h = _png_size(tmp_path / "sheet.png")
    assert 400 < w < 2500 and 200 < h < 2500
    contact_sheet([], [], tmp_path / "empty.png")
    assert _png_size(tmp_path / "empty.png")[0] > 50
    with pytest.raises(ValueError, match="captions"):
        contact_sheet(images, ["one"], tmp_path / "bad.png")
