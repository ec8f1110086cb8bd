"""Flow visualisation with the Middlebury colour wheel (Baker et al., IJCV 2011).

Hue encodes the direction of a flow vector and saturation its magnitude: zero flow is
white, a vector of length ``max_flow`` is the fully saturated wheel colour, longer vectors
are darkened. Pure +u (rightwards) motion is red. ``flow_picture`` puts a frame, its flow and the
confidence side by side (the CLI's pictures and videos).
"""
from __future__ import annotations

import cv2
import numpy as np

from mdflow_ros.io.flow_files import as_flow_array, as_valid_mask, known_flow_mask

WHEEL_SEGMENTS: tuple[tuple[str, int], ...] = (("RY", 15), ("YG", 6), ("GC", 4), ("CB", 11), ("BM", 13), ("MR", 6))
"""Hue transitions around the wheel and their number of colour steps (55 in all)."""

MIN_MAX_FLOW: float = 1e-6
"""Lower bound of the default normalisation, so an all-zero flow stays white."""

OVERFLOW_DIM: float = 0.75
"""Brightness factor of vectors longer than max_flow."""


def _ramp(n: int) -> np.ndarray:
    return np.floor(255.0 * np.arange(n) / n)


def _positive(max_flow: object) -> float:
    try:
        value = float(max_flow)
    except (TypeError, ValueError):
        value = float("nan")
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"max_flow must be a finite number > 0 (pixels), got {max_flow!r}")
    return value


def make_colorwheel() -> np.ndarray:
    """The Middlebury colour wheel, (55, 3) float64 RGB in [0, 255], starting at pure red.

    Each segment moves one channel linearly (in steps floored to integers) from one
    primary/secondary colour to the next: red, yellow, green, cyan, blue, magenta, red.
    """
    (_, ry), (_, yg), (_, gc), (_, cb), (_, bm), (_, mr) = WHEEL_SEGMENTS
    full = 255.0
    segments = (
        (np.full(ry, full), _ramp(ry), np.zeros(ry)),
        (full - _ramp(yg), np.full(yg, full), np.zeros(yg)),
        (np.zeros(gc), np.full(gc, full), _ramp(gc)),
        (np.zeros(cb), full - _ramp(cb), np.full(cb, full)),
        (_ramp(bm), np.zeros(bm), np.full(bm, full)),
        (np.full(mr, full), np.zeros(mr), full - _ramp(mr)),
    )
    parts = [np.stack(rgb, axis=1) for rgb in segments]
    return np.concatenate(parts, axis=0)


def flow_to_color(flow: np.ndarray, max_flow: float | None = None, valid: np.ndarray | None = None) -> np.ndarray:
    """Colour-code flow (H, W, 2) in pixels -> image (H, W, 3) uint8 RGB.

    max_flow: magnitude (pixels) shown fully saturated; default the largest magnitude among
    valid pixels, at least 1e-6. valid: optional (H, W) bool. Pixels that are invalid,
    non-finite or unknown (a component >= 1e9) are black.
    """
    flow = as_flow_array(flow)
    ok = known_flow_mask(flow)
    if valid is not None:
        ok &= as_valid_mask(valid, flow.shape[:2])
    u = np.where(ok, flow[:, :, 0], 0.0).astype(np.float64)
    v = np.where(ok, flow[:, :, 1], 0.0).astype(np.float64) + 0.0  # -0.0 + 0.0 is +0.0
    magnitude = np.hypot(u, v)
    if max_flow is None:
        scale = max(float(magnitude.max()), MIN_MAX_FLOW)
    else:
        scale = _positive(max_flow)
    radius = magnitude / scale

    wheel = make_colorwheel() / 255.0
    n_colors = wheel.shape[0]
    # Middlebury's angle convention: atan2(-v, -u) in [-pi, pi] spread over steps 0 .. n-1,
    # so +u (v made +0.0 above) lands exactly on step 0, pure red.
    position = (np.arctan2(-v, -u) / np.pi + 1.0) / 2.0 * (n_colors - 1)
    k0 = np.floor(position).astype(np.int64)
    k1 = (k0 + 1) % n_colors
    frac = (position - k0)[:, :, None]
    color = (1.0 - frac) * wheel[k0] + frac * wheel[k1]

    inside = (radius <= 1.0)[:, :, None]
    color = np.where(inside, 1.0 - radius[:, :, None] * (1.0 - color), color * OVERFLOW_DIM)
    image = np.floor(255.0 * color).astype(np.uint8)
    image[~ok] = 0
    return image


def flow_picture(flow: np.ndarray, confidence: np.ndarray | None = None, frame: np.ndarray | None = None,
                 max_flow: float | None = None) -> np.ndarray:
    """Panels side by side, (h, k * w, 3) uint8 RGB for flow (h, w, 2) in pixels: the frame (H, W, 3) uint8
    RGB resized to (h, w) when given, the colour-wheel flow (``max_flow`` as in flow_to_color), and the
    confidence (h, w) in [0, 1] in grey when given."""
    height, width = flow.shape[:2]
    panels = [] if frame is None else [cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
                                       if frame.shape[:2] != (height, width) else frame]
    panels.append(flow_to_color(flow, max_flow))
    if confidence is not None:
        panels.append(np.repeat((np.clip(confidence, 0, 1) * 255).astype(np.uint8)[:, :, None], 3, axis=2))
    return np.concatenate(panels, axis=1)
