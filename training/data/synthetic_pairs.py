"""Training and validation pairs from mdflow_ros.synthetic: real photos under known motion.

Each item is a pure function of its (index, seed), so the stream is the same after a resume.
Items are tensors: img1, img2 (3, H, W) RGB in [0, 1]; with labels "flow" also flow
(2, H, W) in pixels (frame 1 -> 2) and valid (1, H, W); with labels "ground_truth" the
distillation keys of a classical stage (flow_fw, mask_fw from the exact flow; flow_bw zero
with an empty mask_bw, since the generator gives no backward flow); with a LabelFn
those keys from a classical partner run on the generated frames.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from mdflow_ros.synthetic import KnownMotionPair, camera_motion_pair, layered_pair, photo_library
from mdflow_ros.io.file_sources import image_files
from mdflow_ros.io.frames import DataError
from training.data.pairs import LabelFn, flow_tensor, mask_tensor, to_tensor

MAX_PHOTO_SIDE: int = 1600
"""Photos from folders are shrunk to at most this many pixels a side when loaded."""

LABEL_KINDS: tuple[str, ...] = ("none", "flow", "ground_truth")
"""What a synthetic item carries besides its frames (see the module docstring)."""


def pair_to_tensors(pair: KnownMotionPair, with_flow: bool) -> dict[str, torch.Tensor]:
    """A KnownMotionPair as training tensors (see the module docstring)."""
    item = {"img1": to_tensor(pair.img1), "img2": to_tensor(pair.img2)}
    if with_flow:
        item["flow"] = flow_tensor(pair.flow)
        item["valid"] = mask_tensor(pair.valid)
    return item


def photos_from_folders(folders: Sequence[str | Path]) -> list[np.ndarray]:
    """Every image in ``folders`` (not recursive) as (h, w, 3) uint8 RGB, at most MAX_PHOTO_SIDE a side.

    Raises DataError for a folder that does not exist or holds no image, or an unreadable image.
    """
    photos = []
    for folder in folders:
        files = image_files(Path(folder)) if Path(folder).is_dir() else []
        if not files:
            raise DataError(f"data.synthetic_photos: {folder} is not a folder of images")
        for path in files:
            img = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if img is None:
                raise DataError(f"data.synthetic_photos: cannot read {path}")
            scale = MAX_PHOTO_SIDE / max(img.shape[:2])
            if scale < 1:
                img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            photos.append(np.ascontiguousarray(img[:, :, ::-1]))
    return photos


class SyntheticPairs(Dataset):
    """``length`` random known-motion pairs of ``size`` (H, W): half camera motion, half layered.

    Motions are larger than the held-out evaluation set's (up to about 24 px of camera
    shift and 32 px of layer motion), to cover the displacements of real recordings. The
    photos are scikit-image's plus ``extra_photos``. ``labels`` is one of LABEL_KINDS or a
    LabelFn (see the module docstring).
    """

    def __init__(self, length: int, size: tuple[int, int], labels: str | LabelFn = "none",
                 extra_photos: Sequence[np.ndarray] = ()):
        if isinstance(labels, str) and labels not in LABEL_KINDS:
            raise ValueError(f"labels must be one of {LABEL_KINDS} or a LabelFn (e.g. a partner's PairLabeler), got {labels!r}")
        self.length, self.size, self.labels = length, tuple(size), labels
        self.photos = photo_library() + list(extra_photos)

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
        if not isinstance(self.labels, str):
            labels = self.labels(pair.img1, pair.img2)
            item = pair_to_tensors(pair, with_flow=False)
            item.update(flow_fw=flow_tensor(labels["flow_fw"]), flow_bw=flow_tensor(labels["flow_bw"]),
                        mask_fw=mask_tensor(labels["mask_fw"]), mask_bw=mask_tensor(labels["mask_bw"]))
            return item
        if self.labels == "ground_truth":
            item = pair_to_tensors(pair, with_flow=False)
            zeros = np.zeros_like(pair.flow)
            item.update(flow_fw=flow_tensor(pair.flow), flow_bw=flow_tensor(zeros), mask_fw=mask_tensor(pair.valid),
                        mask_bw=mask_tensor(np.zeros(pair.valid.shape, np.float32)))
            return item
        return pair_to_tensors(pair, with_flow=self.labels == "flow")
