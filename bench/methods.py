"""The flow methods the benchmarks compare: our models through each backend, and the classical peers.

A method is a name and a function ``flow(img1, img2) -> (H, W, 2)`` float32 pixels, frame 1 -> 2,
on RGB uint8 frames of any size (each side at least 32 px). Names: ``zero``; OpenCV's ``dis-ultrafast``,
``dis-fast``, ``dis-medium``, ``farneback``, and from opencv-contrib ``deepflow`` and ``rlof``
(training/partners.py, the same estimators the classical round trains from); ours as
``MODEL/BACKEND`` with MODEL ``teacher`` or ``student`` and BACKEND ``pytorch``,
``onnxruntime`` or ``onnxruntime-int8`` (an int8 ONNX file of the teacher), forward flow only.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from training.partners import CLASSICAL_METHODS, ClassicalFlow

FlowFn = Callable[[np.ndarray, np.ndarray], np.ndarray]

PEERS = CLASSICAL_METHODS
"""The classical peers, defined once in training/partners.py (the classical round's partners)."""


def peer(name: str, threads: int) -> FlowFn:
    """A classical method on ``threads`` OpenCV threads."""
    cv2.setNumThreads(threads)
    if name == "zero":
        return lambda a, b: np.zeros(a.shape[:2] + (2,), np.float32)
    if name in CLASSICAL_METHODS:
        return ClassicalFlow(name, threads=threads)
    raise ValueError(f"unknown method {name!r} (peers: zero, {', '.join(PEERS)})")


def ours(model_file: Path, backend: str, threads: int) -> FlowFn:
    """One of our model files through a FlowEstimator backend (forward flow, no confidence)."""
    from mdflow_ros.inference import FlowEstimator

    est = FlowEstimator(backend="onnxruntime" if backend.startswith("onnxruntime") else backend,
                        model=model_file, confidence=False, threads=threads)
    return lambda a, b: est.estimate(a, b).flow


def make_method(name: str, files: dict[str, Path], threads: int) -> FlowFn:
    """The method ``name``; ``files`` maps "teacher", "student", "teacher-int8" to model files."""
    if "/" not in name:
        return peer(name, threads)
    model, backend = name.split("/", 1)
    key = f"{model}-int8" if backend == "onnxruntime-int8" else model
    if key not in files:
        raise ValueError(f"{name}: no {key} model file given")
    return ours(files[key], backend, threads)
