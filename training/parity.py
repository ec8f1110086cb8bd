"""Parity of an exported graph with PyTorch: the limits per precision, and the comparison (numpy only).

export_trt judges its ONNX file and its TensorRT engine by these limits, and bench/gpu_smoke.py
its engines, in a process that must not import PyTorch next to TensorRT. The reference is
always the deployed graph in PyTorch, fp32, on the CPU.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class ParityLimits:
    """The largest differences from PyTorch (fp32 on the CPU) an export may show; None: not limited.

    Flow in pixels at the network size: the largest |du| or |dv|, and the mean endpoint
    distance; confidence (in [0, 1]): the largest and the mean absolute difference.
    """

    max_flow_px: float | None = None
    mean_flow_px: float | None = None
    max_confidence: float | None = None
    mean_confidence: float | None = None


PARITY_LIMITS = {
    "fp32": ParityLimits(max_flow_px=0.01, max_confidence=0.01),
    "fp16": ParityLimits(mean_flow_px=0.1, mean_confidence=0.02),
}
"""Per precision. fp32 (ONNX Runtime, and TensorRT with TF32 off) differs from PyTorch only by
summation order: ONNX Runtime's largest flow difference is about 1e-5 px (CPU, the 64x64 export
of tests/training/test_export_trt.py). fp16 rounds every
activation to an 11-bit significand, and FastFlowNet's warps and cost volumes amplify that into
scattered larger differences, so fp16 is held to the means: bounds chosen, not yet measured on a
GPU (bench/gpu_smoke.py reports the values)."""


def compare(reference: list[np.ndarray], outputs: list[np.ndarray], precision: str = "fp32") -> dict:
    """Flow (and confidence) differences of ``outputs`` from ``reference``, judged by PARITY_LIMITS[precision].

    reference, outputs: [flow (1, 2, H, W) px] or [flow, confidence (1, H, W)]. Returns the
    four differences of ParityLimits (max_flow_px, mean_flow_px, max_confidence,
    mean_confidence; the last two only with confidence), the precision, its limits and "passed".
    """
    limits = PARITY_LIMITS[precision]
    flow = outputs[0] - reference[0]
    report: dict = {"max_flow_px": float(np.abs(flow).max()),
                    "mean_flow_px": float(np.sqrt((flow ** 2).sum(axis=1)).mean())}
    if len(reference) > 1:
        confidence = np.abs(outputs[1] - reference[1])
        report.update(max_confidence=float(confidence.max()), mean_confidence=float(confidence.mean()))
    bounds = {k: v for k, v in asdict(limits).items() if v is not None}
    report.update(precision=precision, limits=bounds,
                  passed=all(report[k] <= v for k, v in bounds.items() if k in report))
    return report


def describe_parity(name: str, result: dict) -> str:
    """One line: ``name``'s differences from PyTorch and the limits they were judged by."""
    values = ", ".join(f"{key} {result[key]:.2e}" for key in asdict(ParityLimits()) if key in result)
    limits = ", ".join(f"{key} <= {value}" for key, value in result["limits"].items())
    return f"{name} vs PyTorch: {values} ({result['precision']} limits: {limits})"
