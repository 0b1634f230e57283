"""train.sampler: repeat factors by hand, each epoch's draw, ranks' shares, the LR schedule over
epochs of unequal length, and the stage's sampling.json against what its loader yielded."""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import synthcoco
import torch
from msgspec.structs import replace
from torch.utils.data import DistributedSampler

from cocoseg.common.params import TrainParams
from cocoseg.train import engine
from cocoseg.train.dataset import coco_dataset
from cocoseg.train.engine import lr_factor, make_optimizer, train
from cocoseg.train.sampler import (
    RepeatFactorSampler,
    UniformSampler,
    epoch_iterations,
    epoch_sampler,
    write_sampling,
)
from cocoseg.train.transforms import build_transforms

CLASSES = ["a", "b", "c"]
# image id -> (category id, iscrowd) of its annotations
TINY = {1: [(1, 0), (2, 0)], 2: [(1, 0)], 3: [(1, 0), (3, 1)], 4: [], 5: [(3, 0)]}
# By hand, t = 0.45: f(a) = 3/5 (images 1-3), f(b) = 1/5 (image 1), f(c) = 1/5 (image 5: the
# crowd on image 3 does not count); r(a) = max(1, sqrt(0.45 / 0.6)) = 1, r(b) = r(c) =
# sqrt(0.45 / 0.2) = 1.5; images: 1 -> max(1, 1.5), 2 -> 1, 3 -> 1, 4 (none) -> 1, 5 -> 1.5.
TINY_FRACTIONS = {"a": 0.6, "b": 0.2, "c": 0.2}
TINY_CLASS_FACTORS = {"a": 1.0, "b": 1.5, "c": 1.5}
TINY_IMAGE_FACTORS = [1.5, 1.0, 1.0, 1.0, 1.5]


def tiny_subset(root: Path) -> Path:
    """A train.json of TINY (10 px images, never opened)."""
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 10, "height": 10} for i in TINY]
    anns = [
        {"id": 10 * i + k, "image_id": i, "category_id": c, "iscrowd": crowd,
         "bbox": [1, 1, 4, 4], "area": 16.0, "segmentation": [[1, 1, 5, 1, 5, 5, 1, 5]]}
        for i, held in TINY.items() for k, (c, crowd) in enumerate(held)
    ]  # fmt: skip
    categories = [{"id": k, "name": n} for k, n in enumerate(CLASSES, 1)]
    (root / "annotations").mkdir(parents=True)
    (root / "images" / "train").mkdir(parents=True)
    doc = {"images": images, "annotations": anns, "categories": categories}
    (root / "annotations" / "train.json").write_text(json.dumps(doc))
    return root


def test_repeat_factors_equal_the_hand_computation(tmp_path):
    dataset = coco_dataset(tiny_subset(tmp_path / "subset"), "train", build_transforms("none"))
    recipe = TrainParams(sampler="repeat_factor", repeat_threshold=0.45, epochs=3)
    sampler = epoch_sampler(dataset, recipe, rank=0, world_size=1)
    assert sampler.factors.tolist() == pytest.approx(TINY_IMAGE_FACTORS)
    write_sampling(tmp_path, sampler, dataset, CLASSES, recipe)
    report = json.loads((tmp_path / "sampling.json").read_text())
    assert report["sampler"] == "repeat_factor" and report["repeat_threshold"] == 0.45
    assert {n: c["image_fraction"] for n, c in report["classes"].items()} == TINY_FRACTIONS
    factors = {n: c["repeat_factor"] for n, c in report["classes"].items()}
    assert factors == pytest.approx(TINY_CLASS_FACTORS)
    for row in report["epochs"]:  # images 1 and 5 drawn once or twice, the others once
        draw = Counter(sampler.epoch_draw(row["epoch"]))
        assert row["images"] == draw.total() and 5 <= draw.total() <= 7
        held = {k: {c for c, crowd in TINY[i] if not crowd} for k, i in enumerate(TINY)}
        expected = {n: sum(m for k, m in draw.items() if c in held[k]) for c, n in enumerate(
            CLASSES, 1)}  # fmt: skip
        assert row["class_images"] == expected


def test_uniform_draws_each_image_once_as_distributed_sampler_does(tmp_path):
    dataset = coco_dataset(tiny_subset(tmp_path / "subset"), "train", build_transforms("none"))
    recipe = TrainParams(epochs=2, seed=5)
    sampler = epoch_sampler(dataset, recipe, rank=0, world_size=1)
    assert isinstance(sampler, UniformSampler)
    reference = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=5)
    for epoch in (1, 2):
        sampler.set_epoch(epoch)
        reference.set_epoch(epoch)
        assert list(sampler) == list(reference) == sampler.epoch_draw(epoch)
        assert sorted(sampler) == list(range(5))
    write_sampling(tmp_path, sampler, dataset, CLASSES, recipe)
    report = json.loads((tmp_path / "sampling.json").read_text())
    assert report["repeat_threshold"] is None
    assert all(c["repeat_factor"] == 1.0 for c in report["classes"].values())
    assert [r["images"] for r in report["epochs"]] == [5, 5]
    assert report["epochs"][0]["class_images"] == {"a": 3, "b": 1, "c": 1}


FACTORS = [1.0, 1.5, 2.25, 3.0, 1.2, 4.9]


def test_each_epoch_draws_floor_or_ceil_and_the_mean_approaches_the_factor():
    sampler = RepeatFactorSampler(FACTORS, num_replicas=1, rank=0, seed=3)
    totals = np.zeros(len(FACTORS))
    epochs = 2000
    for epoch in range(1, epochs + 1):
        counts = np.bincount(sampler.epoch_draw(epoch), minlength=len(FACTORS))
        assert (np.floor(FACTORS) <= counts).all() and (counts <= np.ceil(FACTORS)).all()
        totals += counts
    assert totals / epochs == pytest.approx(FACTORS, abs=0.05)
    draws = [sampler.epoch_draw(e) for e in (1, 2)]
    assert draws[0] != sorted(draws[0]) and draws[0] != draws[1]  # shuffled, per epoch


def test_two_ranks_take_disjoint_equal_shares_of_the_epochs_draw():
    whole = RepeatFactorSampler(FACTORS, num_replicas=1, rank=0, seed=3)
    ranks = [RepeatFactorSampler(FACTORS, num_replicas=2, rank=r, seed=3) for r in (0, 1)]
    odd = 0
    for epoch in range(1, 9):
        for rank in ranks:
            rank.set_epoch(epoch)
        shares = [list(rank) for rank in ranks]
        drawn = whole.epoch_draw(epoch)
        assert len(shares[0]) == len(shares[1]) == len(ranks[0]) == len(drawn) // 2
        assert Counter(shares[0]) + Counter(shares[1]) <= Counter(drawn)  # cut, never padded
        assert shares[0] + shares[1] != drawn[: 2 * len(shares[0])]  # interleaved, not halves
        odd += len(drawn) % 2
    assert odd, "no epoch had an odd draw to cut"
    first = list(ranks[0])  # epoch 8
    ranks[0].set_epoch(1)
    assert list(ranks[0]) != first
    again = RepeatFactorSampler(FACTORS, num_replicas=2, rank=0, seed=3)
    again.set_epoch(1)
    assert list(again) == list(ranks[0])
    other_seed = RepeatFactorSampler(FACTORS, num_replicas=2, rank=0, seed=4)
    other_seed.set_epoch(1)
    assert list(other_seed) != list(ranks[0])
    assert epoch_iterations(ranks[0], 2, 3) == [
        math.ceil(len(whole.epoch_draw(e)) // 2 / 2) for e in (1, 2, 3)
    ]


def test_the_lr_schedule_turns_on_the_real_epoch_boundaries():
    lengths = [3, 5, 2]  # epochs 1..3
    multi = TrainParams(schedule="multistep", lr_milestones=[1, 2], lr_gamma=0.1, warmup_iters=0)
    expected = [1.0] * 3 + [0.1] * 5 + [0.01] * 2
    assert [lr_factor(s, multi, lengths) for s in range(10)] == pytest.approx(expected)
    cos = TrainParams(schedule="cosine", epochs=3, warmup_iters=0)
    assert lr_factor(5, cos, lengths) == pytest.approx(0.5)  # half of the 10 steps
    assert lr_factor(10, cos, lengths) == pytest.approx(0.0)  # ends with epoch 3, not at 3 x 3
    assert lr_factor(9, cos, lengths) > 0
    # make_optimizer's scheduler steps through the same curve.
    optimizer, scheduler, _ = make_optimizer(
        torch.nn.Linear(1, 1), multi, lengths, torch.device("cpu")
    )
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([multi.lr * f for f in expected])


# --- the stage ----------------------------------------------------------------------------


def held_classes(subset: Path) -> dict[int, set[int]]:
    """Image id -> its classes (non-crowd annotations), from the train json."""
    doc = json.loads((subset / "annotations" / "train.json").read_text())
    held: dict[int, set[int]] = {image["id"]: set() for image in doc["images"]}
    for ann in doc["annotations"]:
        if not ann["iscrowd"]:
            held[ann["image_id"]].add(ann["category_id"])
    return held


@pytest.mark.slow
def test_the_stage_writes_what_its_loader_yielded_and_resumes_like_an_uninterrupted_run(
    tmp_path, monkeypatch, caplog
):
    subset = synthcoco.make_subset(tmp_path / "subset", n_train=3, size=(64, 64), seed=2)
    recipe = TrainParams(
        weights="none", epochs=2, batch_size=8, num_workers=0, min_size=64, max_size=64,
        augment="none", warmup_iters=1, schedule="multistep", lr_milestones=[1], lr_gamma=0.1,
        amp=False, device="cpu", deterministic=True, eval_every=0, rois_per_image=64,
        sampler="repeat_factor", repeat_threshold=1.0,
    )  # fmt: skip
    yielded: list[list[int]] = []  # image ids of each training step, in order
    real_step = engine.train_step

    def recording_step(model, images, targets, *args, **kwargs):
        yielded.append([t["image_id"] for t in targets])
        return real_step(model, images, targets, *args, **kwargs)

    monkeypatch.setattr(engine, "train_step", recording_step)
    whole = tmp_path / "whole"
    train(recipe, subset, whole / "models", whole / "reports")
    report = json.loads((whole / "reports" / "sampling.json").read_text())
    iterations = json.loads((whole / "reports/live/plots/custom/iterations.json").read_text())

    held = held_classes(subset)
    steps_per_epoch = Counter(row["epoch"] for row in iterations)
    seen = iter(yielded)
    for row in report["epochs"]:
        ids = [i for _ in range(steps_per_epoch[row["epoch"]]) for i in next(seen)]
        assert row["images"] == len(ids)
        assert row["class_images"] == {
            name: sum(k in held[i] for i in ids) for k, name in enumerate(synthcoco.TARGET_NAMES, 1)
        }
    assert next(seen, None) is None
    assert sum(r["images"] for r in report["epochs"]) > 2 * len(held)  # images were repeated
    # The milestone falls after epoch 1's real steps, whatever their number.

    lrs = [row["lr"] for row in iterations if row["epoch"] == 2]
    assert lrs == pytest.approx([0.1 * recipe.lr] * len(lrs))

    # One epoch, then resumed to two: the same draws, schedule and weights.
    parted = tmp_path / "parted"
    train(replace(recipe, epochs=1), subset, parted / "models", parted / "reports")
    with caplog.at_level(logging.INFO, logger="cocoseg"):
        train(recipe, subset, parted / "models", parted / "reports")
    assert "resuming after epoch 1 of 2" in caplog.text
    expected = torch.load(whole / "models" / "model.pt", weights_only=True)["model"]
    got = torch.load(parted / "models" / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(expected[k], got[k]) for k in expected), "weights differ"
    assert json.loads((parted / "reports" / "sampling.json").read_text()) == report
