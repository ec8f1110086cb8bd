"""bench/node_latency.py: its summary arithmetic, and one real run of the node over DDS at 640x480."""
from __future__ import annotations

import argparse
import os
from types import SimpleNamespace

import pytest

pytest.importorskip("rclpy")

from bench.node_latency import parse_variant, run_node, summarise  # noqa: E402
from support import domain_id  # noqa: E402


def test_summarise_latency_rate_and_drops():
    sent = [{"stamp_ns": 100 + i, "sent_monotonic": 10.0 + 0.1 * i} for i in range(6)]
    msg = SimpleNamespace(inference_time=0.05, processing_time=0.07)
    # flows for frames 1, 3 and 5 arrive 0.2, 0.3 and 0.4 s after their newer frame was sent
    received = {101: (10.3, msg), 103: (10.6, msg), 105: (10.9, msg), 999: (11.0, msg)}
    result = summarise(sent, received, duration_s=1.5)
    assert result["received"] == 3 and result["sent"] == 6
    assert result["dropped"] == 2  # frame 0 starts the pair; frames 2 and 4 were skipped
    assert result["p50_ms"] == pytest.approx(300.0)
    assert result["p90_ms"] == pytest.approx(380.0)
    assert result["inference_ms"] == pytest.approx(50.0) and result["processing_ms"] == pytest.approx(70.0)
    assert result["output_hz"] == pytest.approx(2.0)
    assert result["overhead_ms"] == pytest.approx(250.0)  # latency minus the node's inference time


def test_variants_parse():
    assert parse_variant("256x320") == ((256, 320), True)
    assert parse_variant("frame-noconf") == ((0, 0), False)
    with pytest.raises(argparse.ArgumentTypeError, match="expected HxW"):
        parse_variant("256x320-fast")


def test_summarise_refuses_a_run_without_flows():
    with pytest.raises(RuntimeError, match="no flow"):
        summarise([{"stamp_ns": 1, "sent_monotonic": 0.0}], {}, 1.0)


def test_run_node_measures_the_real_node_at_640x480(built_msgs, flow_model):
    """640x480 rgb8 frames are 921 kB: over Fast DDS's default limit, so this also checks the
    large-data set-up of both the node and this (publishing and receiving) process."""
    domain = domain_id(__name__)
    saved = dict(os.environ)
    try:
        result = run_node(flow_model.path, "onnxruntime", 2, (480, 640), rate=10.0, duration_s=3.0, domain=domain)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert result["received"] >= 1 and result["sent"] == 30
    assert 0 <= result["dropped"] <= result["sent"] - result["received"]
    assert result["inference_ms"] > 0 and result["processing_ms"] >= result["inference_ms"]
    assert result["p50_ms"] >= result["processing_ms"] and result["p50_ms"] <= result["p99_ms"]
    assert 0 < result["overhead_ms"] < result["p99_ms"]
    assert result["node_peak_mb"] > 100
