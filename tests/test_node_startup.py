"""Starting the flow node: clear failures (no model, bad parameters, a backend that cannot load),
backend fallback, a namespace, and CompressedImage input, each with the node in its own process."""
import importlib.util

import numpy as np
import pytest

pytest.importorskip("rclpy")
pytest.register_assert_rewrite("node_fixtures")

from mdflow_ros.io.ros_image import image_to_array  # noqa: E402
from mdflow_ros.metrics import epe  # noqa: E402
from mdflow_ros.ros.frame_player import Plan  # noqa: E402
from mdflow_ros.ros.harness import NodeLink  # noqa: E402
from mdflow_ros.ros.pairing import stamp_ns  # noqa: E402
from node_fixtures import (SHIPPED_MODEL, known_motion_pairs, play, start_node, wait_until,  # noqa: E402
                           write_params)

pytest_plugins = ["node_fixtures"]

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def run_to_exit(ros, params, name, timeout=120.0) -> tuple[int, str]:
    proc = start_node(ros, params, name)
    try:
        code = proc.wait(timeout)
    finally:
        proc.stop()
    return code, proc.output()


@pytest.mark.skipif(SHIPPED_MODEL.is_file(), reason="a default model ships now")
def test_without_a_model_the_node_exits_saying_what_to_do(ros, flow_model):
    code, out = run_to_exit(ros, write_params(ros.tmp / "no_model.yaml", flow_model, model=""), "no_model")
    assert code == 1
    assert "cannot start: no trained default model is shipped" in out and "Pass model=PATH" in out


def test_inconsistent_parameters_stop_the_node(ros, flow_model):
    code, out = run_to_exit(ros, write_params(ros.tmp / "bad.yaml", flow_model, input_width=0), "bad_params")
    assert code == 1 and "input_height and input_width must both be 0" in out


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here, so it would load")
def test_a_backend_that_cannot_load_without_fallback_exits_non_zero(ros, flow_model):
    params = write_params(ros.tmp / "trt.yaml", flow_model, backend="tensorrt", fallback_backend="none")
    code, out = run_to_exit(ros, params, "no_fallback")
    assert code == 1
    assert "backend 'tensorrt' failed to load" in out and "fallback_backend is 'none'" in out


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here, so it would load")
def test_fallback_backend_namespace_and_compressed_input(ros, flow_model):
    params = write_params(ros.tmp / "fallback.yaml", flow_model, backend="tensorrt", fallback_backend="onnxruntime",
                          input_transport="compressed")
    node = start_node(ros, params, "fallback", "-r", "__ns:=/robot1",
                      "-r", "image/compressed:=/robot1/camera/image_raw/compressed")
    try:
        wait_until(lambda: "subscribed to" in node.output() or not node.alive(), 120, "the node to start")
        out = node.output()
        assert "backend 'tensorrt' failed to load" in out and "falling back to 'onnxruntime'" in out
        assert "subscribed to /robot1/camera/image_raw/compressed; publishing /robot1/optical_flow" in out
        rx = NodeLink(ros.domain, namespace="/robot1")
        try:
            wait_until(lambda: rx.flow_sub.get_publisher_count() > 0, 30, "the receiver to match the node")
            pair = known_motion_pairs()[6]
            sent = play(Plan([pair.img1, pair.img2], [{"frame": 0}, {"frame": 1}]), ros.tmp, ros.env,
                        "/robot1/camera/image_raw", extra=("--compressed", "png"))
            wait_until(lambda: len(rx.flows) >= 1, 20, "a flow from compressed frames")
            msg = rx.flows[0][1]
        finally:
            rx.close()
        assert stamp_ns(msg.header.stamp) == sent[1]["stamp_ns"] and stamp_ns(msg.previous_stamp) == sent[0]["stamp_ns"]
        assert "ONNX Runtime" in msg.backend and (msg.flow.height, msg.flow.width) == pair.img1.shape[:2]
        zero = epe(np.zeros_like(pair.flow), pair.flow, pair.valid)
        assert epe(image_to_array(msg.flow), pair.flow, pair.valid) < 0.5 * zero
    finally:
        assert node.stop() == 0
