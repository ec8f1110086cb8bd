"""The one small interface every inference backend implements, the backend names, and their error."""
from __future__ import annotations

from typing import Protocol

import numpy as np

BACKENDS: tuple[str, ...] = ("auto", "tensorrt", "onnxruntime", "openvino", "pytorch")
"""The backend names a user chooses from (estimator, node parameter, CLI, demo); "auto" takes the first that loads."""
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "int8")
"""The OpenVINO precisions a user chooses from; "auto" takes the fastest one the CPU supports whose
flow change was checked (the other backends run fp32, or their engine's own precision)."""


class BackendUnavailable(RuntimeError):
    """A backend cannot run here (library missing, no GPU, wrong model kind); the message says why."""


class Cancelled(RuntimeError):
    """``run`` was abandoned because ``cancel`` was called (the estimator is being shut down)."""


class Backend(Protocol):
    """Runs the deployed graph (models/deploy.py) on one pair at network resolution.

    ``run`` takes img1, img2 as (1, 3, H, W) float32 RGB in [0, 1] (H, W multiples of 64) and
    returns flow (1, 2, H, W) float32 in pixels, frame 1 -> 2, and confidence (1, H, W) in
    [0, 1], or None when the backend was built without confidence. ``cancel``, called from
    another thread, makes a ``run`` in progress and every later one raise Cancelled where the
    library allows it (ONNX Runtime); elsewhere it returns at once and the run finishes.
    """

    name: str
    description: str
    with_confidence: bool

    def run(self, img1: np.ndarray, img2: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        ...

    def cancel(self) -> None:
        ...
