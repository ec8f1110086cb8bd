"""The training set of a run: pairs from the user's recordings mixed with synthetic pairs.

Items are dicts of tensors (img1, img2: (3, H, W) RGB in [0, 1], cropped to the config's
crop) and are indexed by (index, seed) as the ResumableSampler yields them.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from training.data.synthetic_pairs import SyntheticPairs
from training.pretrain import PRETRAIN_STAGES


class MixedPairs(Dataset):
    """Concatenation of datasets that are indexed by (index, seed)."""

    def __init__(self, parts: Sequence[Dataset]):
        self.parts = [p for p in parts if len(p)]
        if not self.parts:
            raise ValueError("the training set is empty: give --data paths or set data.synthetic_pairs > 0")
        self.offsets = torch.cumsum(torch.tensor([0] + [len(p) for p in self.parts]), 0).tolist()

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, seed = key
        for part, start, end in zip(self.parts, self.offsets, self.offsets[1:]):
            if index < end:
                return part[(index - start, seed)]
        raise IndexError(f"index {index} out of range for {len(self)} pairs")


def build_training_set(config: dict[str, Any], paths: Sequence[str]) -> MixedPairs:
    """Real pairs from ``paths`` (repeated data.real_repeat times) plus data.synthetic_pairs synthetic pairs.

    The pre-training stages need ground truth: they train on the synthetic pairs only, with their flow.
    """
    d = config["data"]
    if config["stage"] in PRETRAIN_STAGES:
        if paths:
            raise ValueError(f"the {config['stage']} stage trains on synthetic pairs only (they carry ground truth); "
                             "give no --data paths")
        return MixedPairs([SyntheticPairs(d["synthetic_pairs"], tuple(d["crop"]), with_flow=True)])
    parts: list[Dataset] = []
    if paths:
        from training.data.pairs import recording_pairs

        real = recording_pairs(paths, d)
        parts += [real] * d["real_repeat"]
    if d["synthetic_pairs"]:
        parts.append(SyntheticPairs(d["synthetic_pairs"], tuple(d["crop"])))
    return MixedPairs(parts)
