"""A resumable, shardable sampler: the same index stream after a restart, one shard per rank.

Each epoch is a permutation seeded by (seed, epoch); rank r of w takes every w-th index.
The stream yields ``(index, item_seed)`` so that a dataset's per-item randomness (crops,
flips) is also a pure function of the position in the stream, whatever the worker count.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler):
    """Infinite stream of (index, item_seed) for one rank, starting ``start`` items in."""

    def __init__(self, length: int, seed: int, start: int = 0, rank: int = 0, world: int = 1):
        if length < world:
            raise ValueError(f"dataset has {length} items, fewer than the {world} training processes")
        self.length, self.seed, self.start, self.rank, self.world = length, seed, start, rank, world
        self.per_rank = length // world

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, offset = divmod(self.start, self.per_rank)
        while True:
            gen = torch.Generator().manual_seed(self.seed * 100003 + epoch)
            mine = torch.randperm(self.length, generator=gen)[self.rank:self.per_rank * self.world:self.world]
            for pos in range(offset, self.per_rank):
                yield int(mine[pos]), (self.seed * 1000003 + epoch) * 1000003 + pos * self.world + self.rank
            offset = 0
            epoch += 1
