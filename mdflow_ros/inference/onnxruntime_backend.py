"""The ONNX Runtime backend (CPU, or CUDA with onnxruntime-gpu)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mdflow_ros.files import ModelFileError
from mdflow_ros.inference.backend import BackendUnavailable, Cancelled
from mdflow_ros.inference.onnx_files import onnx_for


def session_options(threads: int | None):
    """ORT session options: all graph optimisations, ``threads`` intra-op threads (None: ORT's default)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return opts


class OnnxRuntimeBackend:
    """Deployed graph in an ONNX Runtime session; a .pt model runs its shipped .onnx or a cached export."""

    name = "onnxruntime"

    def __init__(self, model_path: str | Path, with_confidence: bool, gpu: bool = False, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise BackendUnavailable(f"onnxruntime is not installed ({err})") from None
        onnx_path = onnx_for(model_path, with_confidence)
        available = ort.get_available_providers()
        if gpu and "CUDAExecutionProvider" not in available:
            raise BackendUnavailable(f"ONNX Runtime has no CUDA provider here (providers: {available})")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if gpu else ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(onnx_path), session_options(threads), providers=providers)
        except Exception as err:  # ORT raises its own exception types for files it cannot load
            raise ModelFileError(f"ONNX Runtime cannot load {onnx_path}: {str(err).splitlines()[0]}") from None
        self._ort = ort
        self._runs: set = set()
        self._cancelled = False
        self.with_confidence = with_confidence
        self.onnx_path = onnx_path
        used = self.session.get_providers()[0]
        self.description = f"ONNX Runtime {ort.__version__}, {used}, {threads or 'default'} threads, {onnx_path.name}"

    def run(self, img1: np.ndarray, img2: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        options = self._ort.RunOptions()
        self._runs.add(options)
        options.terminate = self._cancelled
        try:
            out = self.session.run(None, {"img1": img1, "img2": img2}, options)
        except Exception:
            if options.terminate:
                raise Cancelled("the ONNX Runtime run was cancelled") from None
            raise
        finally:
            self._runs.discard(options)
        return out[0], (out[1] if self.with_confidence else None)

    def cancel(self) -> None:
        """Stop the run in progress (ONNX Runtime checks between operators) and every later one."""
        self._cancelled = True
        for options in list(self._runs):
            options.terminate = True
