"""training/parity.py: the limits depend on the precision, and every difference is measured as documented."""
import numpy as np
import pytest

from mdflow_ros.inference.engine_manifest import PRECISIONS
from training.parity import PARITY_LIMITS, compare, describe_parity


@pytest.mark.parametrize("precision, flow_error, passed", [
    ("fp32", 0.005, True), ("fp32", 0.02, False),  # fp32: the largest difference, 0.01 px
    ("fp16", 0.05, True), ("fp16", 0.2, False),    # fp16: the mean endpoint difference, 0.1 px
])
def test_parity_limits_depend_on_the_precision(precision, flow_error, passed):
    flow = np.zeros((1, 2, 8, 8), np.float32)
    conf = np.full((1, 8, 8), 0.5, np.float32)
    report = compare([flow, conf], [flow + np.float32(flow_error), conf], precision)
    assert report["passed"] == passed and report["precision"] == precision
    assert report["mean_flow_px"] == pytest.approx(flow_error * 2 ** 0.5, rel=1e-5)


def test_without_confidence_only_the_flow_is_judged():
    flow = np.zeros((1, 2, 4, 4), np.float32)
    report = compare([flow], [flow + np.float32(0.001)])
    assert report["passed"] and "max_confidence" not in report
    assert report["limits"] == {"max_flow_px": 0.01, "max_confidence": 0.01}
    assert "fp32 limits: max_flow_px <= 0.01" in describe_parity("ONNX Runtime", report)


def test_every_precision_has_limits():
    assert set(PARITY_LIMITS) == set(PRECISIONS)
