"""Optical-flow accuracy metrics: end-point error (EPE) and KITTI's Fl-all outlier rate.

Flows are numpy arrays (H, W, 2) holding (u, v) in pixels, frame 1 -> 2. A pixel counts
when it is in the optional validity mask and its ground truth is finite and known (below
Middlebury's 1e9 "unknown" mark), so raw .flo data can be passed as read.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from mdflow_ros.io.flow_files import as_flow_array, as_valid_mask, known_flow_mask

OUTLIER_EPE_PX: float = 3.0
OUTLIER_RELATIVE: float = 0.05
"""KITTI: a pixel is an outlier when EPE > 3 px and EPE > 5 % of the ground-truth magnitude."""


def _prepare(flow: object, gt: object, valid: object | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checked (flow, gt) as float64 (H, W, 2) and the (H, W) bool mask of pixels to count."""
    flow = as_flow_array(flow, "flow")
    gt = as_flow_array(gt, "gt")
    if flow.shape != gt.shape:
        raise ValueError(f"flow and gt must have the same shape (H, W, 2), got {flow.shape} and {gt.shape}")
    mask = known_flow_mask(gt)
    if valid is not None:
        mask &= as_valid_mask(valid, gt.shape[:2])
    if not mask.any():
        raise ValueError("no pixel to evaluate: the valid mask and the known ground truth do not overlap")
    bad = ~np.isfinite(flow[mask]).all(axis=1)
    if bad.any():
        raise ValueError(f"flow has {int(bad.sum())} non-finite vectors at pixels being evaluated")
    return flow.astype(np.float64), gt.astype(np.float64), mask


def epe_map(flow: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per-pixel end-point error |flow - gt| (H, W) float32 in pixels; inputs (H, W, 2).

    Non-finite inputs give non-finite errors at those pixels.
    """
    flow = as_flow_array(flow, "flow")
    gt = as_flow_array(gt, "gt")
    if flow.shape != gt.shape:
        raise ValueError(f"flow and gt must have the same shape (H, W, 2), got {flow.shape} and {gt.shape}")
    diff = flow.astype(np.float64) - gt.astype(np.float64)
    return np.hypot(diff[:, :, 0], diff[:, :, 1]).astype(np.float32)


def _errors(flow: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """EPE and ground-truth magnitude (N,) float64 at the N counted pixels."""
    diff = flow[mask] - gt[mask]
    return np.hypot(diff[:, 0], diff[:, 1]), np.hypot(gt[mask][:, 0], gt[mask][:, 1])


def _outlier_percent(err: np.ndarray, gt_mag: np.ndarray) -> float:
    outliers = (err > OUTLIER_EPE_PX) & (err > OUTLIER_RELATIVE * gt_mag)
    return 100.0 * float(outliers.mean())


def epe(flow: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Mean end-point error in pixels over the counted pixels.

    flow, gt: (H, W, 2) in pixels; valid: optional (H, W) bool.
    """
    err, _ = _errors(*_prepare(flow, gt, valid))
    return float(err.mean())


def fl_all(flow: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None) -> float:
    """KITTI Fl-all: percentage (0-100) of counted pixels that are outliers.

    An outlier has EPE > 3 px and EPE > 5 % of |gt|. flow, gt: (H, W, 2) in pixels;
    valid: optional (H, W) bool.
    """
    return _outlier_percent(*_errors(*_prepare(flow, gt, valid)))


@dataclass(frozen=True)
class FlowMetrics:
    """Accuracy of one flow field: mean EPE (pixels), Fl-all (percent), pixels counted."""

    epe: float
    fl_all: float
    n_valid: int

    @classmethod
    def compute(cls, flow: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None) -> FlowMetrics:
        """Metrics of flow against gt, both (H, W, 2) in pixels; valid: optional (H, W) bool."""
        flow, gt, mask = _prepare(flow, gt, valid)
        err, gt_mag = _errors(flow, gt, mask)
        return cls(epe=float(err.mean()), fl_all=_outlier_percent(err, gt_mag), n_valid=int(mask.sum()))

    def as_dict(self) -> dict[str, float | int]:
        """{"epe": ..., "fl_all": ..., "n_valid": ...}."""
        return asdict(self)


def evaluate_flow(flow: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None) -> dict[str, float | int]:
    """{"epe": mean EPE in px, "fl_all": outlier percent, "n_valid": pixels counted}.

    flow, gt: (H, W, 2) in pixels, frame 1 -> 2; valid: optional (H, W) bool.
    """
    return FlowMetrics.compute(flow, gt, valid).as_dict()
