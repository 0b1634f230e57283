"""Which images an epoch trains on (train.sampler), each rank's share, and sampling.json.
`uniform` is torch's DistributedSampler; `repeat_factor` is LVIS's repeat-factor sampling (Gupta
et al. 2019, appendix B.2; detectron2's RepeatFactorTrainingSampler): class c, held by a fraction
f(c) of the train images, gets r(c) = max(1, sqrt(t / f(c))) with t = train.repeat_threshold, and
an image the largest r of its classes (1 with none). Each draw is a pure function of (train.seed,
epoch), so every epoch's length is known up front (the LR schedule needs it) and a resumed run
draws the same."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DistributedSampler, Sampler

from cocoseg.common.errors import DataError
from cocoseg.common.io import write_json
from cocoseg.common.params import TrainParams

SAMPLING_FILE = "sampling.json"


def image_classes(dataset: Any) -> list[set[int]]:
    """The classes of each image of the dataset, in its order (non-crowd annotations)."""
    coco = dataset.coco  # the v2 wrapper forwards `coco` and `ids`
    return [
        {a["category_id"] for a in coco.imgToAnns[i] if not a.get("iscrowd")} for i in dataset.ids
    ]


def class_table(
    held: Sequence[set[int]], n_classes: int, recipe: TrainParams
) -> tuple[dict[int, float], dict[int, float]]:
    """f(c) of classes 1..n_classes and the factor r(c) the sampler applies to class c: 1 under
    uniform and for a class no image holds."""
    fractions = {c: sum(c in h for h in held) / len(held) for c in range(1, n_classes + 1)}
    if recipe.sampler == "uniform":
        return fractions, dict.fromkeys(fractions, 1.0)
    t = recipe.repeat_threshold  # r(c) = max(1, sqrt(t / f(c))), as the module docstring says
    return fractions, {c: max(1.0, math.sqrt(t / f)) if f else 1.0 for c, f in fractions.items()}


class RepeatFactorSampler(Sampler[int]):
    """Each image floor(r) times plus once with probability r - floor(r), shuffled, seeded by
    (seed, epoch); rank k of R takes every R-th index from k, of the draw cut to a multiple of R
    (no index is padded in twice). Call set_epoch before each epoch, as for DistributedSampler."""

    def __init__(self, factors: Sequence[float], num_replicas: int, rank: int, seed: int) -> None:
        if len(factors) < num_replicas:
            raise DataError(
                f"{len(factors)} training images cannot be shared by {num_replicas} processes"
            )
        self.factors = np.asarray(factors, dtype=np.float64)
        self.num_replicas, self.rank, self.seed, self.epoch = num_replicas, rank, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_draw(self, epoch: int) -> list[int]:
        """Every rank's indices of `epoch`, rank k's at positions k, k + R, ..."""
        rng = np.random.default_rng([self.seed % 2**64, epoch])
        whole = np.floor(self.factors)
        counts = whole + (rng.random(len(self.factors)) < self.factors - whole)
        draw = rng.permutation(np.repeat(np.arange(len(self.factors)), counts.astype(np.int64)))
        return draw[: len(draw) - len(draw) % self.num_replicas].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_draw(self.epoch)[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        return len(self.epoch_draw(self.epoch)) // self.num_replicas


class UniformSampler(DistributedSampler):
    """torch's DistributedSampler unchanged (each image once, shuffled by seed + epoch, padded to
    equal shares), able to say what all ranks draw in an epoch."""

    def epoch_draw(self, epoch: int) -> list[int]:
        """Every rank's indices of `epoch`, rank by rank."""
        draw = []
        for rank in range(self.num_replicas):
            share = DistributedSampler(
                self.dataset, self.num_replicas, rank, shuffle=self.shuffle, seed=self.seed
            )
            share.set_epoch(epoch)
            draw.extend(share)
        return draw


def epoch_sampler(
    dataset: Any, recipe: TrainParams, rank: int, world_size: int
) -> UniformSampler | RepeatFactorSampler:
    """This rank's sampler of the train images, as train.sampler says."""
    if recipe.sampler == "uniform":
        return UniformSampler(dataset, world_size, rank, shuffle=True, seed=recipe.seed)
    held = image_classes(dataset)
    _, factors = class_table(held, len(dataset.coco.cats), recipe)
    largest = [max((factors[c] for c in h), default=1.0) for h in held]  # 1 for an image with none
    return RepeatFactorSampler(largest, world_size, rank, recipe.seed)


def epoch_iterations(sampler: Any, batch_size: int, epochs: int) -> list[int]:
    """Optimiser steps of each epoch 1..epochs: batches of one rank's share (equal on all)."""
    return [
        math.ceil(len(sampler.epoch_draw(e)) / sampler.num_replicas / batch_size)
        for e in range(1, epochs + 1)
    ]


def write_sampling(
    reports: Path, sampler: Any, dataset: Any, classes: list[str], recipe: TrainParams
) -> None:
    """sampling.json: the sampler, each class's image fraction and repeat factor, and what every
    epoch 1..train.epochs draws over all ranks (images, and drawn images holding each class)."""
    held = image_classes(dataset)
    fractions, factors = class_table(held, len(classes), recipe)
    epochs = []
    for epoch in range(1, recipe.epochs + 1):
        draw = sampler.epoch_draw(epoch)
        counts = np.bincount([c for i in draw for c in held[i]], minlength=len(classes) + 1)
        epochs.append(
            {
                "epoch": epoch,
                "images": len(draw),
                "class_images": {name: int(counts[k]) for k, name in enumerate(classes, 1)},
            }
        )
    report = {
        "sampler": recipe.sampler,
        "repeat_threshold": recipe.repeat_threshold if recipe.sampler != "uniform" else None,
        "world_size": sampler.num_replicas,
        "train_images": len(held),
        "classes": {
            name: {"image_fraction": fractions[k], "repeat_factor": factors[k]}
            for k, name in enumerate(classes, 1)
        },
        "epochs": epochs,
    }
    write_json(reports / SAMPLING_FILE, report)
