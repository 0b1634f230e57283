"""Training data: crowds, negatives, grayscale, degenerate boxes, presets, batching, LR curve."""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from torch.utils.data import DistributedSampler

from cocoseg.common.errors import DataError
from cocoseg.common.params import TrainParams
from cocoseg.train.dataset import GroupedBatchSampler, aspect_groups, class_names, coco_dataset
from cocoseg.train.engine import lr_factor
from cocoseg.train.transforms import PRESETS, build_transforms


def annotations(subset: Path, split: str = "train") -> dict:
    return json.loads((subset / "annotations" / f"{split}.json").read_text())


def by_id(dataset) -> dict[int, tuple]:
    return {target["image_id"]: (image, target) for image, target in dataset}


def test_targets_leave_out_crowds_keep_negatives_and_come_out_rgb(synthetic_subset):
    coco = annotations(synthetic_subset)
    samples = by_id(coco_dataset(synthetic_subset, "train", build_transforms("none")))
    assert set(samples) == {im["id"] for im in coco["images"]}  # no image dropped
    crowds = [a for a in coco["annotations"] if a["iscrowd"]]
    assert crowds, "the synthetic data should carry a crowd region"
    for info in coco["images"]:
        image, target = samples[info["id"]]
        anns = [a for a in coco["annotations"] if a["image_id"] == info["id"] and not a["iscrowd"]]
        n = len(anns)
        assert image.shape == (3, info["height"], info["width"]) and image.dtype == torch.float32
        assert image.min() >= 0.0 and image.max() <= 1.0
        assert target["boxes"].shape == (n, 4) and target["boxes"].dtype == torch.float32
        assert target["masks"].shape == (n, info["height"], info["width"])
        assert target["labels"].dtype == torch.int64
        assert sorted(target["labels"].tolist()) == sorted(a["category_id"] for a in anns)
        crowd = np.zeros((info["height"], info["width"]), dtype=np.uint8)  # ignored pixels
        for a in crowds:
            if a["image_id"] == info["id"]:
                crowd |= mask_utils.decode(mask_utils.frPyObjects(a["segmentation"], *crowd.shape))
        assert target["crowd"].dtype == torch.uint8 and (target["crowd"].numpy() == crowd).all()
    negatives = [t for _, t in samples.values() if len(t["labels"]) == 0]
    assert negatives and all(t["masks"].shape[0] == 0 for t in negatives)


def test_grayscale_image_becomes_three_identical_channels(synthetic_subset):
    dataset = coco_dataset(synthetic_subset, "train", build_transforms("none"))
    image, _ = dataset[1]  # synthcoco saves the second image of a split as grayscale
    assert image.shape[0] == 3
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def test_degenerate_boxes_are_dropped_with_their_masks(synthetic_subset, tmp_path):
    subset = tmp_path / "subset"
    shutil.copytree(synthetic_subset, subset)
    coco = annotations(subset)
    image = coco["images"][0]
    before = sum(a["image_id"] == image["id"] and not a["iscrowd"] for a in coco["annotations"])
    for k, bbox in enumerate(([10, 10, 0, 5], [10, 10, 5, 0.2])):
        coco["annotations"].append(
            {
                "id": 99_000 + k,
                "image_id": image["id"],
                "category_id": 2,
                "bbox": bbox,
                "area": 0.0,
                "iscrowd": 0,
                "segmentation": [[10, 10, 10, 15, 10.5, 12]],
            }
        )
    (subset / "annotations" / "train.json").write_text(json.dumps(coco))
    _, target = by_id(coco_dataset(subset, "train", build_transforms("none")))[image["id"]]
    assert len(target["boxes"]) == len(target["masks"]) == len(target["labels"]) == before
    widths = target["boxes"][:, 2:] - target["boxes"][:, :2]
    assert (widths >= 1).all()


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_gives_valid_targets(synthetic_subset, preset):
    torch.manual_seed(0)
    dataset = coco_dataset(synthetic_subset, "train", build_transforms(preset, 96, 128))
    for image, target in dataset:
        h, w = image.shape[-2:]
        assert type(image) is torch.Tensor and image.dtype == torch.float32
        boxes = target["boxes"]
        assert len(boxes) == len(target["masks"]) == len(target["labels"])
        assert target["masks"].shape[-2:] == (h, w)
        if len(boxes):
            assert (boxes[:, 2:] - boxes[:, :2] >= 1).all()
            assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all()
            assert (boxes[:, 3] <= h).all()
        if preset == "scale_jitter":
            assert (h, w) == (96, 96)


def test_seed_preset_boxes_hug_the_rotated_masks(synthetic_subset):
    torch.manual_seed(3)
    dataset = coco_dataset(synthetic_subset, "train", build_transforms("flip_rotate_color"))
    for _, target in dataset:
        for box, mask in zip(target["boxes"], target["masks"], strict=True):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_unknown_preset_and_bad_category_ids_are_refused(synthetic_subset, tmp_path):
    with pytest.raises(ValueError, match="choose one of"):
        build_transforms("mosaic")
    assert class_names(synthetic_subset / "annotations" / "train.json") == [
        "person",
        "cat",
        "sports ball",
        "book",
    ]
    bad = tmp_path / "train.json"
    bad.write_text(json.dumps({"categories": [{"id": 1, "name": "a"}, {"id": 3, "name": "b"}]}))
    with pytest.raises(DataError, match=r"1\.\.K"):
        class_names(bad)
    with pytest.raises(DataError, match="not found"):
        coco_dataset(tmp_path, "train", build_transforms("none"))


def test_hostile_file_name_is_refused(synthetic_subset, tmp_path):
    subset = tmp_path / "subset"
    shutil.copytree(synthetic_subset, subset)
    coco = annotations(subset)
    coco["images"][0]["file_name"] = "../../../etc/passwd"
    (subset / "annotations" / "train.json").write_text(json.dumps(coco))
    with pytest.raises(DataError, match="unsafe path"):
        coco_dataset(subset, "train", build_transforms("none"))


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_grouped_batches_use_every_image_once_and_group_by_shape(batch_size):
    ratios = np.array([0.5, 2.0, 0.6, 1.9, 0.55, 2.1, 1.0, 0.52, 1.95, 1.0, 0.7])
    groups = aspect_groups(ratios)
    sampler = DistributedSampler(range(len(ratios)), num_replicas=1, rank=0, seed=1)
    batches = list(GroupedBatchSampler(sampler, groups, batch_size))
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(ratios)))
    assert len(batches) == len(GroupedBatchSampler(sampler, groups, batch_size))
    assert len(batches) == math.ceil(len(ratios) / batch_size)
    mixed = [b for b in batches if len({groups[i] for i in b}) > 1]
    n_groups = len(Counter(groups))
    assert len(mixed) <= n_groups  # only the closing leftovers may mix groups
    assert groups[0] != groups[1]  # portrait and landscape land in different groups


def test_lr_warms_up_linearly_then_follows_the_schedule():
    p = TrainParams(warmup_iters=10, warmup_factor=0.1, epochs=6, lr_milestones=[4, 5])
    even = [100] * 6
    assert lr_factor(0, p, even) == pytest.approx(0.1)
    assert lr_factor(5, p, even) == pytest.approx(0.55)
    assert lr_factor(10, p, even) == 1.0 and lr_factor(599, p, even) == 1.0
    multi = TrainParams(schedule="multistep", lr_milestones=[4, 5], lr_gamma=0.1, warmup_iters=0)
    assert [lr_factor(e * 100, multi, even) for e in range(6)] == pytest.approx(
        [1, 1, 1, 1, 0.1, 0.01]
    )
    cos = TrainParams(schedule="cosine", epochs=2, warmup_iters=0)
    assert lr_factor(0, cos, [50, 50]) == 1.0
    assert lr_factor(50, cos, [50, 50]) == pytest.approx(0.5)
    assert lr_factor(100, cos, [50, 50]) == pytest.approx(0.0)
