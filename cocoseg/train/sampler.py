"""Training batches: aspect-ratio grouping (torchvision's detection recipe) and the DataLoader.

Images of similar shape share a batch, so the model pads less. Each rank draws its share of a
seeded per-epoch shuffle (DistributedSampler; one rank without torchrun).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from cocoseg.core.config import TrainParams
from cocoseg.core.signals import worker_init
from cocoseg.train.dataset import aspect_ratios, collate


def aspect_groups(ratios: np.ndarray, k: int = 3) -> list[int]:
    """Bin aspect ratios into 2k groups on a log scale (torchvision's detection recipe)."""
    bins = 2 ** np.linspace(-1, 1, 2 * k + 1)
    return np.digitize(ratios, bins).tolist()


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches of images from one aspect-ratio group; leftovers close the epoch mixed.

    Every index of `sampler` comes out exactly once, in ceil(n / batch_size) batches.
    """

    def __init__(self, sampler: Sampler[int], group_ids: list[int], batch_size: int) -> None:
        self.sampler, self.group_ids, self.batch_size = sampler, group_ids, batch_size

    def __iter__(self) -> Iterator[list[int]]:
        buffers: dict[int, list[int]] = defaultdict(list)
        for index in self.sampler:
            group = buffers[self.group_ids[index]]
            group.append(index)
            if len(group) == self.batch_size:
                yield list(group)
                group.clear()
        leftovers = [i for g in sorted(buffers) for i in buffers[g]]
        for start in range(0, len(leftovers), self.batch_size):
            yield leftovers[start : start + self.batch_size]

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)  # type: ignore[arg-type]


def train_loader(
    dataset: Any, p: TrainParams, rank: int = 0, world_size: int = 1, *, pin_memory: bool = False
) -> DataLoader:
    """Shuffled per epoch (seeded; call `set_epoch` on it), this rank's share, grouped batches.

    Workers are not persistent: each epoch starts fresh ones seeded from the main process's
    RNG, which the loop reseeds per epoch, so a resumed run augments exactly as an
    uninterrupted one (persistent workers would carry their RNG over from the epoch before).
    """
    sampler = DistributedSampler(
        dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=p.seed
    )
    batches = GroupedBatchSampler(sampler, aspect_groups(aspect_ratios(dataset)), p.batch_size)
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=p.num_workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        worker_init_fn=worker_init,
    )


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Reshuffle `train_loader`'s sampler for this epoch (the same order on every rank)."""
    loader.batch_sampler.sampler.set_epoch(epoch)  # type: ignore[union-attr]
