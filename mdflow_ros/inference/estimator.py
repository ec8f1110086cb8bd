"""FlowEstimator: two camera frames in, dense flow and confidence out, on any backend.

Used by the node, the CLI, training's evaluation and the benchmarks. It validates and
converts the frames, resizes them to the network size (multiples of 64), runs a backend
(TensorRT, ONNX Runtime, OpenVINO or PyTorch, all running the same deployed graph) and maps the flow
back to the input resolution with per-axis scaling. It needs no PyTorch: each backend module
is imported only when that backend is asked for (or tried by "auto").
"""
from __future__ import annotations

import importlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from mdflow_ros.conventions import FRAME_ENCODINGS, MIN_FRAME_SIDE, SIZE_MULTIPLE
from mdflow_ros.files import ModelFileMissing
from mdflow_ros.inference.backend import BACKENDS, PRECISIONS, Backend, BackendUnavailable
from mdflow_ros.inference.cpu_choice import TIMING_SIZE, faster_backend

if TYPE_CHECKING:  # only for the annotation: the estimator runs without PyTorch
    from torch import nn

LOG = logging.getLogger("mdflow_ros.inference")

WEIGHTS_VARIABLE = "MDFLOW_WEIGHTS"
"""Environment variable naming the folder of the shipped models (default: the package's weights/)."""
OPENVINO_ONLY = ("bf16", "int8")
"""Precisions only the openvino backend runs."""
SHIPPED_FILES = {"teacher": "teacher_fastflownet.pt", "student": "student_raft.pt"}
"""The trained models shipped in the package, by the name a user may give instead of a path."""


class ModelNotShippedError(FileNotFoundError):
    """No model was given and this installation has no trained default model."""


class InputError(ValueError):
    """A frame given to FlowEstimator.estimate is not a valid image (the message says why)."""


@dataclass
class FlowResult:
    """flow (H, W, 2) float32 pixels frame 1 -> 2 at the input size; confidence (H, W) in [0, 1] or None."""

    flow: np.ndarray
    confidence: np.ndarray | None

    def __iter__(self):
        return iter((self.flow, self.confidence))


def weights_dir() -> Path:
    """The folder of the shipped models: $MDFLOW_WEIGHTS, or mdflow_ros/weights/."""
    return Path(os.environ.get(WEIGHTS_VARIABLE) or Path(__file__).resolve().parents[1] / "weights")


def shipped_model(name: str) -> Path:
    """Where the shipped model ``name`` ("teacher" or "student") is, whether or not it is there."""
    return weights_dir() / SHIPPED_FILES[name]


def default_model(name: str = "teacher") -> Path:
    """The shipped model ``name`` ("teacher" or "student"), or ModelNotShippedError saying what to do instead."""
    path = shipped_model(name)
    if not path.is_file():
        raise ModelNotShippedError(
            f"no trained {name} model is shipped in this installation (expected {path}). "
            "Pass model=PATH to a model file (.pt or .onnx) trained with training/train.py; "
            "mdflow_ros never falls back to untrained weights.")
    return path


def resolve_model(model: str | Path | None) -> Path:
    """The model file meant by ``model``: None or "" is the shipped teacher, "teacher" or "student"
    a shipped model, anything else a path that must exist."""
    if model is None or str(model) in ("", *SHIPPED_FILES):
        return default_model(str(model or "teacher"))
    path = Path(model)
    if not path.is_file():
        what = "is a directory, not a model file" if path.is_dir() else "does not exist"
        raise ModelFileMissing(f"model file {path} {what} (or give one of the shipped models: "
                               f"{', '.join(SHIPPED_FILES)})")
    return path


def network_size(height: int, width: int) -> tuple[int, int]:
    """The network input size for a frame: each side rounded to the nearest multiple of 64 (at least 64)."""
    return tuple(max(SIZE_MULTIPLE, int(round(s / SIZE_MULTIPLE)) * SIZE_MULTIPLE) for s in (height, width))


def to_rgb_float(img: np.ndarray, encoding: str, name: str) -> np.ndarray:
    """Validate one frame and return it as (H, W, 3) float32 RGB in [0, 1].

    Accepts uint8 (H, W, 3) in ``encoding`` "rgb8" or "bgr8", uint8 (H, W) or (H, W, 1)
    "mono8" (replicated to three channels), or float32/float64 arrays of those shapes in
    [0, 1]. Anything else raises InputError.
    """
    if not isinstance(img, np.ndarray):
        raise InputError(f"{name} must be a numpy array, got {type(img).__name__}")
    if encoding not in FRAME_ENCODINGS:
        raise InputError(f"encoding must be one of {FRAME_ENCODINGS}, got {encoding!r}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.ndim != 3 or img.shape[2] != 3:
        raise InputError(f"{name} must be HxWx3 (RGB/BGR) or HxW (mono), got shape {img.shape}")
    if img.shape[0] < MIN_FRAME_SIDE or img.shape[1] < MIN_FRAME_SIDE:
        raise InputError(f"{name} is {img.shape[1]}x{img.shape[0]} px; both sides must be at least {MIN_FRAME_SIDE} px")
    if img.dtype == np.uint8:
        out = img.astype(np.float32) * (1.0 / 255.0)
    elif img.dtype in (np.float32, np.float64):
        if not np.isfinite(img).all():
            raise InputError(f"{name} contains NaN or Inf values")
        if img.min() < 0.0 or img.max() > 1.0:
            raise InputError(f"{name} is floating point with values in [{img.min():.3g}, {img.max():.3g}]; expected [0, 1]")
        out = img.astype(np.float32)
    else:
        raise InputError(f"{name} has dtype {img.dtype}; expected uint8 (or float32 in [0, 1])")
    return out[:, :, ::-1] if encoding == "bgr8" else out


class FlowEstimator:
    """Dense optical flow between two frames with a trained MDFlow network.

    backend: "auto" (TensorRT, then ONNX Runtime GPU, then OpenVINO where it is installed and
    measured faster than ONNX Runtime CPU on this CPU (a one-off timing, cached per machine),
    then ONNX Runtime CPU, then PyTorch; the choice and the reasons are logged), "tensorrt",
    "onnxruntime", "openvino" or "pytorch".
    model: a model file (.pt, or .onnx for ONNX Runtime), "teacher" or "student" (the shipped
    models), or a network instance for the pytorch backend (training's evaluation); None means
    the shipped teacher.
    input_size: fixed network (height, width), multiples of 64; None picks per frame size.
    confidence: compute the confidence map (one batched forward + backward pass); False runs
    the forward pass only, about twice as fast.
    threads: intra-op CPU threads (None: the library default).
    precision: OpenVINO's "auto" (the fastest the CPU supports whose flow change against fp32 was
    checked and is under 0.1 px), "fp32", "bf16" or "int8"; the other backends run fp32 (or their
    engine's precision), so "bf16" and "int8" take OpenVINO only.
    """

    def __init__(self, backend: str = "auto", model: str | Path | nn.Module | None = None,
                 input_size: tuple[int, int] | None = None, confidence: bool = True,
                 threads: int | None = None, device: str = "cpu", precision: str = "auto"):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if precision in OPENVINO_ONLY and backend not in ("openvino", "auto"):
            raise ValueError(f"precision {precision} runs on the openvino backend only (backend is {backend!r})")
        if input_size is not None:
            h, w = input_size
            if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE or h < SIZE_MULTIPLE or w < SIZE_MULTIPLE:
                raise ValueError(f"input_size must be positive multiples of {SIZE_MULTIPLE}, got {input_size}")
        if model is None or isinstance(model, (str, Path)):
            self.model_path = resolve_model(model)
            self.model = self.model_path
        else:
            if backend != "pytorch":
                raise ValueError("a network instance runs on the pytorch backend only; save it to a model file for others")
            self.model_path = Path(f"<{type(model).__name__} in memory>")
            self.model = model
        self.input_size = input_size
        self.with_confidence = confidence
        self.precision = precision
        self.backend: Backend = self._open_backend(backend, threads, device)
        self.last_inference_s = 0.0
        LOG.info("FlowEstimator: %s (model %s)", self.backend.description, self.model_path.name)

    def _open_backend(self, backend: str, threads: int | None, device: str) -> Backend:
        path, conf = self.model_path, self.with_confidence
        makers = {
            "tensorrt": lambda: _backend_class("tensorrt")(path, conf, self.input_size),
            "onnxruntime-gpu": lambda: _backend_class("onnxruntime")(path, conf, gpu=True, threads=threads),
            "openvino": lambda: _backend_class("openvino")(path, conf, precision=self.precision, threads=threads),
            "onnxruntime": lambda: _backend_class("onnxruntime")(path, conf, threads=threads),
            "pytorch": lambda: _backend_class("pytorch")(self.model, conf, device=device, threads=threads),
        }
        if backend != "auto":
            return makers[backend]()
        reasons, loaded = [], {}
        for name, make in makers.items():
            if self.precision in OPENVINO_ONLY and name != "openvino":
                reasons.append(f"{name}: precision {self.precision} runs on openvino only")
                continue
            try:
                chosen = loaded.pop(name, None) or make()
            except BackendUnavailable as err:
                reasons.append(f"{name}: {err}")
                continue
            if name == "openvino" and self.precision not in OPENVINO_ONLY:
                try:
                    loaded["onnxruntime"] = makers["onnxruntime"]()
                except BackendUnavailable as err:
                    reasons.append(f"onnxruntime: {err}")
                else:
                    chosen, why = faster_backend(chosen, loaded["onnxruntime"], self.input_size or TIMING_SIZE)
                    if chosen.name != "openvino":
                        reasons.append(f"openvino: not clearly faster than ONNX Runtime CPU here ({why})")
                        continue
                    reasons.append(f"onnxruntime: slower than OpenVINO here ({why})")
            LOG.info("backend 'auto' chose %s%s", name, "".join(f"; skipped {r}" for r in reasons))
            return chosen
        raise BackendUnavailable("no backend could run this model: " + "; ".join(reasons))

    def cancel(self) -> None:
        """From another thread: abandon an estimate in progress (it raises backend.Cancelled) where the
        backend can (ONNX Runtime), and every later one; the estimator is being shut down."""
        self.backend.cancel()

    def estimate(self, img1: np.ndarray, img2: np.ndarray, encoding: str = "rgb8",
                 output_scale: float = 1.0) -> FlowResult:
        """Flow from img1 to img2 (and its confidence), at the frames' resolution times ``output_scale``.

        img1, img2: (H, W, 3) uint8 RGB (or BGR with encoding="bgr8"), or (H, W) mono8;
        both the same size, each side at least 64 px. Returns a FlowResult (unpacks as
        ``flow, confidence``): flow (h, w, 2) float32 in pixels of that size, (u, v) = where
        each pixel of img1 moves to in img2; confidence (h, w) float32 in [0, 1] (> 0.5: a
        reliable match by MDFlow's forward-backward and census checks), None when disabled.
        (h, w) is (H, W) scaled by output_scale and rounded: the network's output is resized
        once, straight to it.
        """
        a = to_rgb_float(img1, encoding, "img1")
        b = to_rgb_float(img2, encoding, "img2")
        if a.shape != b.shape:
            raise InputError(f"frames differ in size: img1 is {a.shape[1]}x{a.shape[0]}, img2 is {b.shape[1]}x{b.shape[0]}")
        height, width = a.shape[:2]
        nh, nw = self.input_size or network_size(height, width)
        batch1, batch2 = (_to_batch(x, nh, nw) for x in (a, b))
        start = time.perf_counter()
        flow, conf = self.backend.run(batch1, batch2)
        self.last_inference_s = time.perf_counter() - start
        out_h, out_w = max(1, round(height * output_scale)), max(1, round(width * output_scale))
        area = output_scale < 1.0 and out_h < nh and out_w < nw
        return FlowResult(resize_flow(flow[0].transpose(1, 2, 0), out_h, out_w, area),
                          None if conf is None else resize_map(conf[0], out_h, out_w, area))


def _to_batch(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, 3) float32 -> (1, 3, height, width) float32 contiguous, bilinear resize."""
    if img.shape[:2] != (height, width):
        img = cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(img.transpose(2, 0, 1)[None])


def resize_map(values: np.ndarray, height: int, width: int, area: bool = False) -> np.ndarray:
    """A map (h, w) or (h, w, C) -> (height, width[, C]) float32: bilinear, or area averaging with ``area``.

    ``area`` is for shrinking (it averages the pixels each output pixel covers).
    """
    if values.shape[:2] != (height, width):
        interpolation = cv2.INTER_AREA if area else cv2.INTER_LINEAR
        values = cv2.resize(np.ascontiguousarray(values), (width, height), interpolation=interpolation)
    return np.ascontiguousarray(values, dtype=np.float32)


def resize_flow(flow: np.ndarray, height: int, width: int, area: bool = False) -> np.ndarray:
    """A flow (h, w, 2) in pixels -> (height, width, 2) in pixels of the new size.

    The one flow resize of the runtime: resize_map's interpolation, then u times width / w and
    v times height / h.
    """
    h, w = flow.shape[:2]
    return resize_map(flow, height, width, area) * np.array([width / w, height / h], np.float32)


_BACKEND_CLASSES = {
    "tensorrt": ("tensorrt_backend", "TensorRTBackend", "TensorRT, PyCUDA and onnx"),
    "onnxruntime": ("onnxruntime_backend", "OnnxRuntimeBackend", "ONNX Runtime"),
    "openvino": ("openvino_backend", "OpenVinoBackend", "OpenVINO: pip install 'mdflow_ros[openvino]'"),
    "pytorch": ("torch_backend", "TorchBackend", "PyTorch"),
}
"""Backend name -> (module in mdflow_ros.inference, class, what it needs)."""


def _backend_class(name: str) -> type:
    """The class of backend ``name``, its module imported only now (so only its own library loads).

    BackendUnavailable when that module cannot be imported (its library is not installed).
    """
    module, cls, needs = _BACKEND_CLASSES[name]
    try:
        return getattr(importlib.import_module(f"mdflow_ros.inference.{module}"), cls)
    except ImportError as err:
        raise BackendUnavailable(f"the {name} backend cannot be imported here ({err}); it needs {needs}") from None
