"""Inference: FlowEstimator and its backends (TensorRT, ONNX Runtime, OpenVINO, PyTorch)."""
from mdflow_ros.inference.backend import BackendUnavailable
from mdflow_ros.inference.estimator import FlowEstimator, FlowResult, InputError, ModelNotShippedError

__all__ = ["BackendUnavailable", "FlowEstimator", "FlowResult", "InputError", "ModelNotShippedError"]
