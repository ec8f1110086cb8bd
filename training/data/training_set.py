"""The training set of a run: pairs from the user's recordings mixed with synthetic pairs.

Items are dicts of tensors (img1, img2: (3, H, W) RGB in [0, 1], cropped to the config's
crop) and are indexed by (index, seed) as the ResumableSampler yields them. Under a
classical partner every item also carries the partner's labels (training/partners.py),
computed on the whole frames in the loader workers.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from training.data.synthetic_pairs import SyntheticPairs, photos_from_folders
from training.partners import ClassicalPartner, PairLabeler, mask_rule
from training.stages import STAGES


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


def build_training_set(config: dict[str, Any], paths: Sequence[str],
                       partner: ClassicalPartner | None = None) -> MixedPairs:
    """Real pairs from ``paths`` (repeated data.real_repeat times) plus data.synthetic_pairs synthetic pairs.

    The pre-training stages need ground truth: they train on the synthetic pairs only, with their flow.
    With a classical ``partner`` every pair carries its labels; synthetic pairs carry their exact
    flow instead when ``partner.synthetic_labels`` is "ground_truth".
    """
    d = config["data"]
    extra = photos_from_folders(d["synthetic_photos"])
    if STAGES[config["stage"]].data == "synthetic":
        if paths:
            raise ValueError(f"the {config['stage']} stage trains on synthetic pairs only (they carry ground truth); "
                             "give no --data paths")
        return MixedPairs([SyntheticPairs(d["synthetic_pairs"], tuple(d["crop"]), "flow", extra)])
    labeler = PairLabeler(partner, mask_rule(config)) if partner is not None else None
    parts: list[Dataset] = []
    if paths:
        from training.data.pairs import recording_pairs

        real = recording_pairs(paths, d, labeler)
        parts += [real] * d["real_repeat"]
    if d["synthetic_pairs"]:
        if labeler is None:
            synthetic_labels = "none"
        else:
            synthetic_labels = "ground_truth" if config["partner"]["synthetic_labels"] == "ground_truth" else labeler
        parts.append(SyntheticPairs(d["synthetic_pairs"], tuple(d["crop"]), synthetic_labels, extra))
    return MixedPairs(parts)
