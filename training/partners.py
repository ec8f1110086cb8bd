"""Frozen partners of MDFlow's distillation stages: who gives the labels, and how.

A partner gives bidirectional flow for a training batch. Three kinds share that interface:

- ``NetworkPartner``: a frozen network (the teacher in stage 2, the student in stage 3), run
  as deployed on the batch in the training process;
- ``ClassicalPartner``: an OpenCV estimator (DIS presets, DeepFlow, RLOF, Farneback), run per
  pair on the raw frames before cropping and augmentation, inside the data-loader workers
  (``PairLabeler``), so it never blocks the training threads; its flows and reliable masks
  reach the recipe in the batch;
- the same with a ``FlowCache``: flows stored on disk, keyed by the frames' content and the
  method's parameters, written atomically, and recomputed when an entry is damaged or stale.

Flows are (H, W, 2) float32 numpy arrays in pixels on the loader side and (B, 2, H, W)
tensors in the batch; masks are (H, W) / (B, 1, H, W) in {0, 1}.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn as nn

from mdflow_ros.files import atomic_write
from mdflow_ros.flow import reliable_mask, visible_mask
from mdflow_ros.models.deploy import DeployedFlow

log = logging.getLogger(__name__)

DIS_PRESETS: dict[str, int] = {"dis-ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
                               "dis-fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
                               "dis-medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}
"""OpenCV DIS presets by name."""

FARNEBACK_DEFAULTS: dict[str, Any] = dict(pyr_scale=0.5, levels=5, winsize=15, iterations=3, poly_n=5,
                                          poly_sigma=1.2, flags=0)
"""Farneback: OpenCV's sample parameters, with 5 pyramid levels for motions of tens of pixels."""

RLOF_PARAMS: tuple[str, ...] = ("forwardBackwardThreshold", "gridStep", "interp_type", "epicK", "epicSigma",
                                "epicLambda", "ricSPSize", "ricSLICType", "use_post_proc", "fgsLambda", "fgsSigma",
                                "use_variational_refinement")
"""Keyword parameters of cv2.optflow.calcOpticalFlowDenseRLOF a config may set."""

CLASSICAL_METHODS: tuple[str, ...] = tuple(DIS_PRESETS) + ("deepflow", "rlof", "farneback")
"""Classical estimators a partner (or a benchmark row) can be, by name."""

MIN_PARTNER_SIDE: int = 32
"""Smallest frame side a classical partner is run on (DIS's coarsest pyramid level needs room)."""

LABEL_MASKS: tuple[str, ...] = ("reliable", "occlusion", "none")
"""``partner.mask``: the classical partner's labels kept where they are reliable matches
(census <= tau and forward-backward visible), visible only, or everywhere (ablation)."""

CACHE_VERSION: str = "mdflow_ros/partner-flow/1"
"""Part of every cache key; change it when the meaning of a cached entry changes."""


class PartnerError(ValueError):
    """A classical partner cannot be built (unknown method, parameters OpenCV rejects) or run on a pair."""


def _dis_setter(name: str) -> str:
    return "set" + "".join(part.capitalize() for part in name.split("_"))


def _build(method: str, params: Mapping[str, Any]) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """The flow function (RGB uint8 img1, img2 (H, W, 3)) -> (H, W, 2) float32 of one method."""
    if method in DIS_PRESETS:
        dis = cv2.DISOpticalFlow_create(DIS_PRESETS[method])
        for key, value in params.items():
            setter = getattr(dis, _dis_setter(key), None)
            if setter is None:
                known = sorted(m[3:] for m in dir(dis) if m.startswith("set"))
                raise PartnerError(f"{method} has no parameter {key!r} (DIS setters: {', '.join(known)}; "
                                   "write them in snake_case, e.g. finest_scale)")
            try:
                setter(value)
            except (cv2.error, TypeError) as err:
                raise PartnerError(f"{method}: OpenCV rejects {key}={value!r}: {str(err).strip()}") from None
        return lambda a, b: dis.calc(_gray(a), _gray(b), None)
    if method == "deepflow":
        if params:
            raise PartnerError(f"deepflow takes no parameters in OpenCV's Python binding, got {dict(params)}")
        deep = cv2.optflow.createOptFlow_DeepFlow()
        return lambda a, b: deep.calc(_gray(a), _gray(b), None)
    if method == "farneback":
        unknown = set(params) - set(FARNEBACK_DEFAULTS)
        if unknown:
            raise PartnerError(f"farneback has no parameter {sorted(unknown)} (known: {', '.join(FARNEBACK_DEFAULTS)})")
        kwargs = {**FARNEBACK_DEFAULTS, **params}
        return lambda a, b: cv2.calcOpticalFlowFarneback(_gray(a), _gray(b), None, **kwargs)
    if method == "rlof":
        unknown = set(params) - set(RLOF_PARAMS)
        if unknown:
            raise PartnerError(f"rlof has no parameter {sorted(unknown)} (known: {', '.join(RLOF_PARAMS)})")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
        return lambda a, b: cv2.optflow.calcOpticalFlowDenseRLOF(cv2.cvtColor(a, cv2.COLOR_RGB2BGR),
                                                                  cv2.cvtColor(b, cv2.COLOR_RGB2BGR), None, **kwargs)
    raise PartnerError(f"unknown classical method {method!r} (known: {', '.join(CLASSICAL_METHODS)})")


def _gray(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)


class ClassicalFlow:
    """One classical method with its parameters, as a picklable flow function.

    The OpenCV object is built on first use in each process (data-loader workers get their
    own), on ``threads`` OpenCV threads. ``check()`` builds it and runs it once on a small
    textured pair, so parameters OpenCV rejects fail when a config is loaded.
    """

    def __init__(self, method: str, params: Mapping[str, Any] | None = None, threads: int = 1):
        self.method, self.params, self.threads = method, dict(params or {}), int(threads)
        self._fn: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"method": self.method, "params": self.params, "threads": self.threads, "_fn": None}

    def record(self) -> dict[str, Any]:
        """The method and its parameters, as stored in a checkpoint's meta and in cache keys."""
        return {"method": self.method, "params": self.params}

    def __call__(self, img1: np.ndarray, img2: np.ndarray) -> np.ndarray:
        """Flow (H, W, 2) float32 pixels from img1 to img2, both (H, W, 3) uint8 RGB of one size."""
        if self._fn is None:
            cv2.setNumThreads(self.threads)
            self._fn = _build(self.method, self.params)
        if img1.shape != img2.shape or img1.ndim != 3 or img1.shape[2] != 3:
            raise PartnerError(f"{self.method} needs two RGB frames of one size, got {img1.shape} and {img2.shape}")
        if min(img1.shape[:2]) < MIN_PARTNER_SIDE:
            raise PartnerError(f"{self.method} needs frames of at least {MIN_PARTNER_SIDE} px a side, got "
                               f"{img1.shape[1]}x{img1.shape[0]}")
        try:
            flow = self._fn(np.ascontiguousarray(img1), np.ascontiguousarray(img2))
        except cv2.error as err:
            raise PartnerError(f"{self.method} failed on a {img1.shape[1]}x{img1.shape[0]} pair: "
                               f"{str(err).strip()}") from None
        return np.ascontiguousarray(flow, dtype=np.float32)

    def check(self) -> None:
        """Build the estimator and run it on a small textured pair; PartnerError when that fails."""
        rng = np.random.default_rng(0)
        img = cv2.GaussianBlur(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8), (0, 0), 1.5)
        flow = ClassicalFlow(self.method, self.params)(img, np.roll(img, 2, axis=1))
        if flow.shape != (96, 128, 2) or not np.isfinite(flow).all():
            raise PartnerError(f"{self.method} with {self.params} gave no finite flow on a test pair")


def frame_digest(img1: np.ndarray, img2: np.ndarray) -> str:
    """SHA-256 hex of two frames' shapes and bytes (the content part of a cache key)."""
    h = hashlib.sha256()
    for img in (img1, img2):
        h.update(repr(img.shape).encode())
        h.update(np.ascontiguousarray(img).tobytes())
    return h.hexdigest()


@dataclass
class CacheStats:
    """Per-process counts of a FlowCache: entries read, computed, and refused (damaged or stale)."""

    hits: int = 0
    misses: int = 0
    refused: int = 0


@dataclass
class FlowCache:
    """Bidirectional flows of a classical method on disk, one ``.npz`` per pair.

    Key: SHA-256 of CACHE_VERSION, the method's record and the frames (``frame_digest``). An
    entry stores its key; an entry that cannot be read, has another key, or holds flows of
    the wrong shape or non-finite values is refused (counted, logged) and recomputed.
    Entries are written atomically, so a killed worker never leaves half an entry.
    """

    directory: Path
    stats: CacheStats = field(default_factory=CacheStats)

    def key(self, record: Mapping[str, Any], img1: np.ndarray, img2: np.ndarray) -> str:
        """The cache key of a pair under a method record."""
        text = json.dumps({"version": CACHE_VERSION, **record}, sort_keys=True)
        return hashlib.sha256((text + frame_digest(img1, img2)).encode()).hexdigest()

    def path(self, key: str) -> Path:
        """Where the entry of ``key`` lives."""
        return Path(self.directory) / key[:2] / f"{key}.npz"

    def load(self, key: str, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
        """(forward, backward) flows (H, W, 2) of ``key`` for frames of ``shape`` (H, W), or None."""
        path = self.path(key)
        if not path.is_file():
            self.stats.misses += 1
            return None
        try:
            with np.load(path, allow_pickle=False) as entry:
                stored_key = str(entry["key"])
                fw, bw = entry["forward"], entry["backward"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            return self._refuse(path, f"unreadable ({err})")
        expected = tuple(shape) + (2,)
        if stored_key != key:
            return self._refuse(path, "stale: it holds another pair or method")
        if fw.shape != expected or bw.shape != expected or fw.dtype != np.float32 or bw.dtype != np.float32:
            return self._refuse(path, f"flows of shape {fw.shape} / {bw.shape}, expected {expected} float32")
        if not (np.isfinite(fw).all() and np.isfinite(bw).all()):
            return self._refuse(path, "non-finite flow values")
        self.stats.hits += 1
        return fw, bw

    def _refuse(self, path: Path, why: str) -> None:
        self.stats.refused += 1
        log.warning("partner cache entry %s refused (%s); recomputing it", path, why)
        return None

    def store(self, key: str, fw: np.ndarray, bw: np.ndarray) -> None:
        """Write the entry of ``key`` atomically."""
        buffer = io.BytesIO()
        np.savez(buffer, key=np.array(key), forward=fw, backward=bw)
        atomic_write(self.path(key), lambda f: f.write(buffer.getvalue()))


class ClassicalPartner:
    """A classical estimator as MDFlow's frozen partner, run in the data-loader workers.

    ``pair_flows`` gives the forward and backward flows of one pair of raw frames (through
    the cache when there is one); the recipe reads them, with their masks, from the batch
    (``flows``), where ``PairLabeler`` put them.
    """

    kind = "classical"

    def __init__(self, flow: ClassicalFlow, cache: FlowCache | None = None):
        self.flow, self.cache = flow, cache

    def record(self) -> dict[str, Any]:
        """{kind, method, params, cache} as stored in a checkpoint's meta."""
        return {"kind": self.kind, **self.flow.record(),
                "cache": None if self.cache is None else str(self.cache.directory)}

    def pair_flows(self, img1: np.ndarray, img2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(forward, backward) flows (H, W, 2) float32 px of a pair of (H, W, 3) uint8 RGB frames."""
        if self.cache is None:
            return self.flow(img1, img2), self.flow(img2, img1)
        key = self.cache.key(self.flow.record(), img1, img2)
        found = self.cache.load(key, img1.shape[:2])
        if found is not None:
            return found
        fw, bw = self.flow(img1, img2), self.flow(img2, img1)
        self.cache.store(key, fw, bw)
        return fw, bw

    def flows(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's partner flows (B, 2, H, W), computed in the loader workers."""
        return batch["flow_fw"], batch["flow_bw"]

    def to(self, device: torch.device) -> "ClassicalPartner":
        """Nothing to move: the partner runs on the CPU in the loader workers."""
        return self


class NetworkPartner:
    """A frozen network as MDFlow's partner (stage 2's teacher, stage 3's student).

    It runs as deployed (the teacher upsampled to pixels, RAFT at its test iterations) on
    (I1, I2) and (I2, I1) of the batch in one call, without gradient.
    """

    kind = "network"

    def __init__(self, net: nn.Module):
        self.net = net

    def record(self) -> dict[str, Any]:
        """{kind}; the network's file is recorded as the run's ``frozen`` entry."""
        return {"kind": self.kind}

    def flows(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and backward flows (B, 2, H, W) in pixels of batch img1, img2 (B, 3, H, W) in [0, 1]."""
        img1, img2 = batch["img1"], batch["img2"]
        b = img1.shape[0]
        with torch.no_grad():
            both = DeployedFlow(self.net, with_confidence=False).pixel_flow(torch.cat((img1, img2), 0),
                                                                            torch.cat((img2, img1), 0))
        return both[:b], both[b:]

    def to(self, device: torch.device) -> "NetworkPartner":
        """Move the network to ``device``, in eval mode, without gradients."""
        self.net.to(device).eval().requires_grad_(False)
        return self


@dataclass(frozen=True)
class MaskRule:
    """How a classical partner's labels are masked: ``kind`` (LABEL_MASKS) and the check's constants."""

    kind: str
    tau: float
    census_radius: int
    occ_scale: float
    occ_bias: float


class PairLabeler:
    """Partner labels of one pair of raw frames, for the data-loader workers.

    Called with img1, img2 (H, W, 3) uint8 RGB (the frames as the network will see them,
    before any crop); returns {"flow_fw", "flow_bw": (H, W, 2) float32 px, "mask_fw",
    "mask_bw": (H, W) float32 in {0, 1}}, the masks on frame 1 and frame 2 by ``rule``
    (MDFlow's reliable matches from the partner's own forward-backward check).
    Raises PartnerError for a pair the partner cannot process.
    """

    def __init__(self, partner: ClassicalPartner, rule: MaskRule):
        self.partner, self.rule = partner, rule

    def __call__(self, img1: np.ndarray, img2: np.ndarray) -> dict[str, np.ndarray]:
        fw, bw = self.partner.pair_flows(img1, img2)
        mask_fw, mask_bw = label_masks(img1, img2, fw, bw, self.rule)
        return {"flow_fw": fw, "flow_bw": bw, "mask_fw": mask_fw, "mask_bw": mask_bw}


def label_masks(img1: np.ndarray, img2: np.ndarray, fw: np.ndarray, bw: np.ndarray, rule: MaskRule
                ) -> tuple[np.ndarray, np.ndarray]:
    """Masks (H, W) float32 of the forward labels on frame 1 and the backward labels on frame 2."""
    if rule.kind == "none":
        ones = np.ones(img1.shape[:2], np.float32)
        return ones, ones.copy()
    t1, t2 = (torch.from_numpy(np.ascontiguousarray(i)).permute(2, 0, 1)[None].float() / 255.0 for i in (img1, img2))
    f, b = (torch.from_numpy(x).permute(2, 0, 1)[None] for x in (fw, bw))
    with torch.no_grad():
        if rule.kind == "reliable":
            m_fw = reliable_mask(t1, t2, f, b, rule.tau, rule.occ_scale, rule.occ_bias, rule.census_radius)
            m_bw = reliable_mask(t2, t1, b, f, rule.tau, rule.occ_scale, rule.occ_bias, rule.census_radius)
        elif rule.kind == "occlusion":
            m_fw, m_bw = visible_mask(f, b, rule.occ_scale, rule.occ_bias), visible_mask(b, f, rule.occ_scale, rule.occ_bias)
        else:
            raise PartnerError(f"partner.mask must be one of {LABEL_MASKS}, got {rule.kind!r}")
    return m_fw[0, 0].numpy(), m_bw[0, 0].numpy()


def classical_partner(partner_cfg: Mapping[str, Any]) -> ClassicalPartner:
    """The ClassicalPartner of a config's ``partner`` section (checked: PartnerError when it cannot run)."""
    flow = ClassicalFlow(partner_cfg["method"], partner_cfg["params"] or {}, partner_cfg["threads"])
    flow.check()
    cache = FlowCache(Path(partner_cfg["cache_dir"])) if partner_cfg["cache_dir"] else None
    return ClassicalPartner(flow, cache)


def mask_rule(config: Mapping[str, Any]) -> MaskRule:
    """The MaskRule of a config: ``partner.mask`` with the loss section's tau, census radius and fb constants."""
    loss = config["loss"]
    return MaskRule(config["partner"]["mask"], loss["reliable_tau"], loss["census_radius"], loss["occ_scale"],
                    loss["occ_bias"])
