"""bench/node_memory.py: one real measurement of the node's peak memory, which must grow with the frames."""
from __future__ import annotations

import os

import pytest

pytest.importorskip("rclpy")

from bench.node_memory import measure  # noqa: E402
from support import domain_id  # noqa: E402


def test_measure_reads_the_node_peak_before_and_after_a_pair(built_msgs, flow_model):
    saved = dict(os.environ)
    try:
        result = measure(flow_model.path, 1, (480, 640), (0, 0), domain_id(__name__))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert 100 < result["idle_mb"] < result["peak_mb"] < 4000
