"""The one home of mdflow_ros's constants; plain Python, no PyTorch, so the deployed runtime can use them.

Every network, loss, exporter, backend and node takes these from here: the teacher's flow
scale (``DIV_FLOW``), the warp convention, the network and frame sizes, the 53-offset
correlation pattern, the forward-backward and census thresholds, the luma weights and the
frame encodings. The torch maths that uses them is in ``mdflow_ros.flow``.

Conventions used throughout the project:
- images are float tensors ``(B, 3, H, W)`` (or arrays ``(H, W, 3)``) holding RGB in [0, 1];
- a flow ``(B, 2, H, W)`` (or ``(H, W, 2)``) holds (u, v) in pixels of the image it is defined
  on, from frame 1 to frame 2: pixel ``(x, y)`` of frame 1 moves to ``(x + u, y + v)`` in frame 2.
"""
from __future__ import annotations

DIV_FLOW: float = 20.0
"""The teacher stores flow as (pixels at the input resolution) / DIV_FLOW."""

ALIGN_CORNERS: bool = True
"""grid_sample convention for every warp (MDFlow / FastFlowNet v2)."""

SIZE_MULTIPLE: int = 64
"""Network input sides must be multiples of this (FastFlowNet's coarsest level is 1/64)."""

MIN_FRAME_SIDE: int = 64
"""Smallest frame side FlowEstimator accepts (frames are resized to the network size)."""

MAX_DISPLACEMENT: int = 4
"""Correlation search radius in pixels of the feature level (9 x 9 candidate offsets)."""

CDDC_CHANNELS: tuple[int, ...] = (
    0, 2, 4, 6, 8,
    10, 12, 14, 16,
    18, 20, 21, 22, 23, 24, 26,
    28, 29, 30, 31, 32, 33, 34,
    36, 38, 39, 40, 41, 42, 44,
    46, 47, 48, 49, 50, 51, 52,
    54, 56, 57, 58, 59, 60, 62,
    64, 66, 68, 70,
    72, 74, 76, 78, 80,
)
"""FastFlowNet's "center dense dilated" subset of the 81 offsets, channel k = (dy+4)*9 + (dx+4)."""

CDDC_OFFSETS: tuple[tuple[int, int], ...] = tuple(
    (k // 9 - MAX_DISPLACEMENT, k % 9 - MAX_DISPLACEMENT) for k in CDDC_CHANNELS
)
"""The same 53 offsets as (dy, dx) pairs, in channel order (dy-major)."""

OCC_SCALE: float = 0.01
OCC_BIAS: float = 0.5
"""Forward-backward check: visible when |F_f + W(F_b)|^2 < OCC_SCALE (|F_f|^2 + |W(F_b)|^2) + OCC_BIAS."""

CENSUS_RADIUS: int = 1
"""Census patch radius (3 x 3 patch), ARFlow's soft Hamming."""

RELIABLE_TAU: float = 0.3
"""Default census-distance threshold of a reliable match (training configs override it)."""

GRAY_WEIGHTS: tuple[float, float, float] = (0.2989, 0.5870, 0.1140)
"""Luma weights of R, G and B (the census transform's grey image)."""

FRAME_ENCODINGS: tuple[str, ...] = ("rgb8", "bgr8", "mono8")
"""Frame encodings FlowEstimator.estimate takes (a ROS camera's others are converted to these first)."""
