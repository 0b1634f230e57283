"""Hand-built mask cases for the scoring tests: rectangles, RLEs, ground truth, predictions."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from cocoseg.coco import cocoeval


def box(x0: int, y0: int, x1: int, y1: int, size: tuple[int, int]) -> np.ndarray:
    """A (height, width) uint8 mask with the rectangle [x0, x1) x [y0, y1) set."""
    m = np.zeros(size, dtype=np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def rle(mask: np.ndarray) -> dict:
    """Compressed RLE with str counts, as COCO results files hold it."""
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": r["size"], "counts": r["counts"].decode("ascii")}


def gt_coco(
    objects: Mapping[int, list[tuple]], cats: Mapping[int, str], size: tuple[int, int]
) -> COCO:
    """Ground truth from {image_id: [(category_id, mask[, iscrowd]), ...]}; ann ids from 1."""
    anns = []
    for image_id, objs in objects.items():
        for cat, mask, *crowd in objs:
            r = rle(mask)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": cat,
                    "segmentation": r,
                    "area": float(mask.sum()),
                    "bbox": mask_utils.toBbox(r).tolist(),
                    "iscrowd": int(bool(crowd and crowd[0])),
                }
            )
    height, width = size
    images = [{"id": i, "height": height, "width": width, "file_name": f"{i}.jpg"} for i in objects]
    categories = [{"id": c, "name": n} for c, n in cats.items()]
    return cocoeval.coco_from_dataset(
        {"images": images, "annotations": anns, "categories": categories}
    )


def pred(image_id: int, cat: int, mask: np.ndarray, score: float = 0.9) -> dict:
    """A COCO results dict for a mask."""
    r = rle(mask)
    return {
        "image_id": image_id,
        "category_id": cat,
        "bbox": mask_utils.toBbox(r).tolist(),
        "score": score,
        "segmentation": r,
    }


def encode_masks(masks: np.ndarray) -> list[dict]:
    """Binary masks (N, H, W) as COCO RLEs with `counts` as str, straight from pycocotools."""
    rles = mask_utils.encode(np.asfortranarray(masks.astype(np.uint8).transpose(1, 2, 0)))
    return [{**rle, "counts": rle["counts"].decode("ascii")} for rle in rles]
