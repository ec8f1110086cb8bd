"""Training and validation pairs from mdflow_ros.synthetic: real photos under known motion.

Each item is a pure function of its (index, seed), so the stream is the same after a resume.
Items are tensors: img1, img2 (3, H, W) RGB in [0, 1]; with ``with_flow`` also flow
(2, H, W) in pixels (frame 1 -> 2) and valid (1, H, W).
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from mdflow_ros.synthetic import KnownMotionPair, camera_motion_pair, layered_pair, photo_library


def pair_to_tensors(pair: KnownMotionPair, with_flow: bool) -> dict[str, torch.Tensor]:
    """A KnownMotionPair as training tensors (see the module docstring)."""
    item = {"img1": torch.from_numpy(pair.img1).permute(2, 0, 1).float() / 255.0,
            "img2": torch.from_numpy(pair.img2).permute(2, 0, 1).float() / 255.0}
    if with_flow:
        item["flow"] = torch.from_numpy(np.ascontiguousarray(pair.flow.transpose(2, 0, 1))).float()
        item["valid"] = torch.from_numpy(pair.valid[None].astype(np.float32))
    return item


class SyntheticPairs(Dataset):
    """``length`` random known-motion pairs of ``size`` (H, W): half camera motion, half layered.

    Motions are larger than the held-out evaluation set's (up to about 24 px of camera
    shift and 32 px of layer motion), to cover the displacements of real recordings.
    """

    def __init__(self, length: int, size: tuple[int, int], with_flow: bool = False):
        self.length, self.size, self.with_flow = length, tuple(size), with_flow
        self.photos = photo_library()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, seed = key
        rng = np.random.default_rng(seed)
        if index % 2 == 0:
            pair = camera_motion_pair(self.photos[rng.integers(len(self.photos))], self.size, rng,
                                      max_shift=24.0, max_rot=4.0, max_zoom=0.08)
        else:
            pair = layered_pair(self.photos, self.size, rng, max_shift=16.0, max_layer_shift=32.0, max_layer_rot=10.0)
        return pair_to_tensors(pair, self.with_flow)
