"""Consecutive-frame pairs for unsupervised training (MDFlow stage 1), from any frame sources.

``open_sources`` turns paths (bags, videos, image folders) into frame sources;
``FramePairs`` pairs frame i with frame i + stride of the same source, never across a
source or bag boundary nor across a time gap, brings frames to one size, and returns random
crops as float tensors. ``recording_pairs`` builds it from the trainer's ``data`` config.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from mdflow_ros.conventions import SIZE_MULTIPLE
from mdflow_ros.io.file_sources import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    ImageFolderFrames,
    VideoFrames,
    natural_key,
)
from mdflow_ros.io.bags import BAG_SUFFIXES, RosbagFrames
from mdflow_ros.io.frames import DataError, FrameDecodeError, FrameSource
from mdflow_ros.io.recordings import recording_kind
from training.partners import PartnerError

log = logging.getLogger(__name__)

RESOLUTION_POLICIES: tuple[str, ...] = ("resize", "reject", "keep")
"""Frames of different sizes: all resized to one size, refused, or each source kept at its own size
(frames of a source brought to that source's first frame size)."""

LabelFn = Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]
"""Labels of a pair of raw frames (H, W, 3) uint8: flows "flow_fw", "flow_bw" (H, W, 2) float32 px and
masks "mask_fw", "mask_bw" (H, W) on frames 1 and 2 (training/partners.py PairLabeler is one)."""

MAX_PAIR_TRIES: int = 8
"""A pair with an undecodable frame is replaced by the next pair, at most this many times in a row."""


def open_sources(paths: str | Path | Sequence[str | Path], topic: str | None = None) -> list[FrameSource]:
    """Frame sources for ``paths``, in order.

    Each path is a bag (rosbag2 directory with metadata.yaml, .db3, .mcap, ROS 1 .bag), a video
    file (.mp4, .avi, .mkv, .mov) or a folder of images. A folder that is none of these is
    expanded one level: its entries that are bags, videos or image folders become sources (in
    natural order), e.g. a directory of recordings. All bags go into one RosbagFrames (one
    segment per bag) reading ``topic``, or each bag's only image topic when None.
    Raises FileNotFoundError for a missing path and DataError for anything else.
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        raise DataError("no data paths given")
    found: list[tuple[str, Path]] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(f"data path does not exist: {path}")
        kind = recording_kind(path)
        if kind is not None:
            found.append((kind, path))
            continue
        if path.is_dir():
            inner = [(k, p) for p in sorted(path.iterdir(), key=lambda p: natural_key(p.name))
                     if (k := recording_kind(p)) is not None]
            if inner:
                found += inner
                continue
        raise DataError(f"{path} is not a training source: expected a bag (rosbag2 directory with metadata.yaml, "
                        f"{', '.join(BAG_SUFFIXES)}), a video ({', '.join(VIDEO_SUFFIXES)}) or a folder of "
                        f"images ({', '.join(IMAGE_SUFFIXES)})")
    sources: list[FrameSource] = []
    bags = [p for kind, p in found if kind == "bag"]
    if bags:
        sources.append(RosbagFrames(bags, topic=topic))
    for kind, path in found:
        if kind == "video":
            sources.append(VideoFrames(path))
        elif kind == "images":
            sources.append(ImageFolderFrames(path))
    return sources


def pair_indices(source: FrameSource, stride: int, max_gap_s: float | None) -> tuple[np.ndarray, int]:
    """(first frames i (P,) int64 of the pairs (i, i + stride), number of pairs dropped for gaps).

    A pair is kept when both frames lie in the same segment and, when the source has
    timestamps and ``max_gap_s`` is set, no step between consecutive frames from i to
    i + stride is longer than ``max_gap_s`` seconds or goes back in time.
    """
    n = len(source)
    first = np.arange(max(0, n - stride), dtype=np.int64)
    segments = source.segments()
    breaks = np.concatenate([[0], np.cumsum(segments[1:] != segments[:-1])])
    keep = breaks[first + stride] == breaks[first]
    times = source.timestamps()
    dropped = 0
    if times is not None and max_gap_s is not None:
        steps = np.diff(times)
        bad = np.concatenate([[0], np.cumsum((steps > max_gap_s) | (steps < 0))])
        no_gap = bad[first + stride] == bad[first]
        dropped = int(np.count_nonzero(keep & ~no_gap))
        keep &= no_gap
    return first[keep], dropped


def _size_text(size: Sequence[int]) -> str:
    return f"{int(size[0])}x{int(size[1])} (HxW)"


def _check_crop(crop: Sequence[int] | None) -> tuple[int, int] | None:
    if crop is None:
        return None
    if len(crop) != 2 or any(int(c) != c or c <= 0 or c % SIZE_MULTIPLE for c in crop):
        raise DataError(f"crop must be (height, width), each a positive multiple of {SIZE_MULTIPLE}, got {crop}")
    return int(crop[0]), int(crop[1])


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


def mirror_flow(flow: np.ndarray) -> np.ndarray:
    """The flow (H, W, 2) px of horizontally mirrored frames: columns reversed, u negated."""
    out = flow[:, ::-1].copy()
    out[..., 0] *= -1
    return out


def flow_tensor(flow: np.ndarray) -> torch.Tensor:
    """(H, W, 2) float32 px -> (2, H, W) float32."""
    return torch.from_numpy(np.ascontiguousarray(flow.transpose(2, 0, 1), dtype=np.float32))


def mask_tensor(mask: np.ndarray) -> torch.Tensor:
    """(H, W) -> (1, H, W) float32."""
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None]


class FramePairs(Dataset):
    """Pairs (frame i, frame i + stride) of frame sources as ``{"img1", "img2"}`` float tensors.

    Each item holds two (3, h, w) float32 RGB tensors in [0, 1], h x w = ``crop`` (or the
    common frame size when crop is None). Sizes: frames are first brought to one size H x W,
    ``resize`` when given, else the first frame's size; under ``resolution_policy="reject"``
    every frame must already share one size (else DataError naming two sizes), under
    ``"resize"`` frames of another size are resized to H x W (aspect ratio not kept), under
    ``"keep"`` each source keeps the size of its first frame (``resize`` does not apply).
    ``labeler`` (a LabelFn, e.g. a partner's PairLabeler) labels the pair on the whole frames before the
    crop; its flows and masks are cropped, flipped and swapped with the frames and returned
    as flow_fw, flow_bw (2, h, w) and mask_fw, mask_bw (1, h, w).
    Augmentations: a random crop (the same window in both frames), a horizontal flip of both
    (``hflip``, probability 0.5) and swapping the frame order (``swap``, probability 0.5).

    Index with an int (randomness from torch's global generator) or with ``(index, seed)``
    as training.sampler.ResumableSampler yields, which makes the item a function of the seed.
    A pair whose frames cannot be decoded, or that the labeler cannot process, is replaced by
    the next pair and counted in ``skipped_pairs`` (per process) with a warning.
    """

    def __init__(self, sources: Sequence[FrameSource], stride: int = 1, max_gap_s: float | None = None,
                 crop: Sequence[int] | None = None, resolution_policy: str = "resize",
                 resize: Sequence[int] | None = None, hflip: bool = False, swap: bool = False,
                 labeler: LabelFn | None = None) -> None:
        if not sources:
            raise DataError("FramePairs needs at least one frame source")
        if int(stride) != stride or stride < 1:
            raise DataError(f"stride must be a positive integer, got {stride}")
        if max_gap_s is not None and not max_gap_s > 0:
            raise DataError(f"max_gap_s must be positive or None, got {max_gap_s}")
        if resolution_policy not in RESOLUTION_POLICIES:
            raise DataError(f"resolution_policy must be one of {', '.join(RESOLUTION_POLICIES)}, "
                            f"got {resolution_policy!r}")
        if resize is not None and (len(resize) != 2 or any(int(s) != s or s <= 0 for s in resize)):
            raise DataError(f"resize must be (height, width) in positive pixels, got {resize}")
        self.sources = list(sources)
        self.stride, self.max_gap_s = int(stride), max_gap_s
        self.crop = _check_crop(crop)
        self.hflip, self.swap = bool(hflip), bool(swap)
        self.labeler = labeler
        self.skipped_pairs = 0

        all_sizes = [s.frame_sizes() for s in self.sources]
        if resolution_policy == "keep":
            self.sizes = [tuple(int(v) for v in sizes[0]) for sizes in all_sizes]
        else:
            size = tuple(int(v) for v in (resize if resize is not None else all_sizes[0][0]))
            self.sizes = [size] * len(self.sources)
        if resolution_policy == "reject":
            self._reject_mixed(all_sizes)
        for source, size in zip(self.sources, self.sizes):
            if self.crop is not None and (self.crop[0] > size[0] or self.crop[1] > size[1]):
                raise DataError(f"crop {_size_text(self.crop)} is larger than the frames, {_size_text(size)}, "
                                f"of {source.name}; choose a smaller crop or set resize")

        rows, self.gap_skipped = [], 0
        for k, source in enumerate(self.sources):
            first, dropped = pair_indices(source, self.stride, max_gap_s)
            self.gap_skipped += dropped
            rows.append(np.stack([np.full_like(first, k), first], axis=1))
        self.pairs = np.concatenate(rows)
        if len(self.pairs) == 0:
            counts = ", ".join(f"{s.name}: {len(s)} frames" for s in self.sources)
            raise DataError(f"no frame pairs with stride {self.stride} and max_gap_s {max_gap_s} ({counts}; "
                            f"{self.gap_skipped} pairs dropped at time gaps)")
        if self.gap_skipped:
            log.info("dropped %d pairs that span a time gap over %s s", self.gap_skipped, max_gap_s)

    def _reject_mixed(self, all_sizes: list[np.ndarray]) -> None:
        reference = (all_sizes[0][0], self.sources[0].name)
        for source, sizes in zip(self.sources, all_sizes):
            other = np.flatnonzero(np.any(sizes != reference[0], axis=1))
            if other.size:
                counts = Counter(map(tuple, sizes.tolist()))
                raise DataError(f"mixed resolutions: {reference[1]} frame 0 is {_size_text(reference[0])} but "
                                f"{source.name} frame {other[0]} is {_size_text(sizes[other[0]])} "
                                f"(sizes in that source: {dict(counts)}); use resolution_policy='resize'")

    @property
    def size(self) -> tuple[int, int] | None:
        """The common frame size (H, W) of all sources, None when sources keep different sizes."""
        return self.sizes[0] if len(set(self.sizes)) == 1 else None

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        index, seed = (key if isinstance(key, tuple) else (key, None))
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"pair index {index} out of range for {len(self)} pairs")
        generator = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        for attempt in range(MAX_PAIR_TRIES):
            k, i = (int(v) for v in self.pairs[(index + attempt) % len(self)])
            source = self.sources[k]
            try:
                img1, img2 = source.frame(i), source.frame(i + self.stride)
                img1, img2 = self._fit(img1, self.sizes[k]), self._fit(img2, self.sizes[k])
                labels = self.labeler(img1, img2) if self.labeler is not None else {}
            except (FrameDecodeError, PartnerError) as err:
                self.skipped_pairs += 1
                log.warning("skipping pair (%d, %d) of %s: %s", i, i + self.stride, source.name, err)
                continue
            return self._prepare(img1, img2, labels, generator)
        raise DataError(f"{MAX_PAIR_TRIES} consecutive pairs from pair {index} could not be decoded or labelled")

    @staticmethod
    def _fit(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        height, width = size
        if image.shape[:2] == (height, width):
            return image
        shrink = height * width < image.shape[0] * image.shape[1]
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)

    def _prepare(self, img1: np.ndarray, img2: np.ndarray, labels: dict[str, np.ndarray],
                 generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        fw, bw = labels.get("flow_fw"), labels.get("flow_bw")
        m_fw, m_bw = labels.get("mask_fw"), labels.get("mask_bw")
        if self.crop is not None:
            ch, cw = self.crop
            y0 = int(torch.randint(0, img1.shape[0] - ch + 1, (1,), generator=generator))
            x0 = int(torch.randint(0, img1.shape[1] - cw + 1, (1,), generator=generator))
            window = (slice(y0, y0 + ch), slice(x0, x0 + cw))
            img1, img2 = img1[window], img2[window]
            if labels:
                fw, bw, m_fw, m_bw = fw[window], bw[window], m_fw[window], m_bw[window]
        if self.hflip and float(torch.rand((), generator=generator)) < 0.5:
            img1, img2 = img1[:, ::-1], img2[:, ::-1]
            if labels:
                fw, bw = mirror_flow(fw), mirror_flow(bw)
                m_fw, m_bw = m_fw[:, ::-1], m_bw[:, ::-1]
        if self.swap and float(torch.rand((), generator=generator)) < 0.5:
            img1, img2, fw, bw, m_fw, m_bw = img2, img1, bw, fw, m_bw, m_fw
        item = {"img1": to_tensor(img1), "img2": to_tensor(img2)}
        if labels:
            item.update(flow_fw=flow_tensor(fw), flow_bw=flow_tensor(bw), mask_fw=mask_tensor(m_fw),
                        mask_bw=mask_tensor(m_bw))
        return item


def recording_pairs(paths: Sequence[str | Path], data: Mapping[str, Any],
                    labeler: LabelFn | None = None) -> FramePairs:
    """FramePairs over ``paths`` configured by the trainer's ``data`` section, labelled by ``labeler``.

    Uses the keys crop, stride, max_gap_s, resolution_policy, resize, hflip, swap, and topic
    when present (default: each bag's only image topic).
    """
    return FramePairs(open_sources(paths, topic=data.get("topic")), stride=data["stride"],
                      max_gap_s=data["max_gap_s"], crop=data["crop"],
                      resolution_policy=data["resolution_policy"], resize=data["resize"],
                      hflip=data["hflip"], swap=data["swap"], labeler=labeler)
