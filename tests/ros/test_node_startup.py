"""Starting the flow node: clear failures (no model, bad parameters, a backend that cannot load),
backend fallback, a namespace, CompressedImage input, and a node without PyTorch, each with the
node in its own process."""
import importlib.util
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("rclpy")

from mdflow_ros.inference import FlowEstimator  # noqa: E402
from mdflow_ros.inference.estimator import WEIGHTS_VARIABLE  # noqa: E402
from mdflow_ros.io.ros_image import image_to_array  # noqa: E402
from mdflow_ros.metrics import epe  # noqa: E402
from mdflow_ros.ros import harness  # noqa: E402
from mdflow_ros.ros.pairing import stamp_ns  # noqa: E402
from support import (SHIPPED_MODEL, deployed_estimator_as, flow_for_one_pair, known_motion_pairs,  # noqa: E402
                     no_torch_environment, runs_deployed, start_node, wait_until, write_params)


HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def run_to_exit(ros, params, name, timeout=120.0, env=None) -> tuple[int, str]:
    proc = start_node(ros, params, name, env=env)
    try:
        code = proc.wait(timeout)
    finally:
        proc.stop()
    return code, proc.output()


def test_without_a_model_the_node_exits_saying_what_to_do(ros, flow_model):
    """An installation whose weights folder holds no model (MDFLOW_WEIGHTS points at an empty one)."""
    empty = ros.tmp / "no_weights"
    empty.mkdir()
    code, out = run_to_exit(ros, write_params(ros.tmp / "no_model.yaml", flow_model, model=""), "no_model",
                            env={**ros.env, WEIGHTS_VARIABLE: str(empty)})
    assert code == 1
    assert "cannot start: no trained teacher model is shipped" in out and "Pass model=PATH" in out


@pytest.mark.skipif(not SHIPPED_MODEL.with_suffix(".onnx").is_file(), reason="no shipped .onnx")
def test_without_pytorch_the_node_runs_the_shipped_model_on_onnx_runtime(ros):
    """import torch fails in the node's process: it must run the shipped teacher's .onnx through ONNX Runtime."""
    torch_log = ros.tmp / "node_torch_imports.log"
    env = no_torch_environment(ros.env, torch_log)
    check = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert check.returncode != 0 and "blocked" in check.stderr, "the blocker must work, or this test proves nothing"
    torch_log.unlink()
    params = harness.write_params(ros.tmp / "no_torch.yaml", model="", backend="auto", input_height=192,
                                  input_width=256, threads=1)
    node = start_node(ros, params, "no_torch", "-r", "image:=/no_torch_cam/image_raw", env=env)
    try:
        wait_until(lambda: "subscribed to" in node.output() or not node.alive(), 120, "the node to start")
        assert node.alive(), node.output()
        pair = known_motion_pairs()[2]
        sent, msg = flow_for_one_pair(ros, pair, "/no_torch_cam/image_raw", "a flow from the node without PyTorch")
        assert stamp_ns(msg.header.stamp) == sent[1]["stamp_ns"]
        assert runs_deployed(msg.backend) and msg.model.startswith(f"{SHIPPED_MODEL.name}@")
        expected = deployed_estimator_as(msg.backend, input_size=(192, 256), threads=1).estimate(pair.img1, pair.img2)
        np.testing.assert_allclose(image_to_array(msg.flow), expected.flow, atol=1e-3)
        zero = epe(np.zeros_like(pair.flow), pair.flow, pair.valid)
        assert epe(image_to_array(msg.flow), pair.flow, pair.valid) < 0.3 * zero
    finally:
        assert node.stop() == 0, node.output()
    assert not torch_log.exists(), f"the node tried to import {torch_log.read_text().split()}"


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
        pair = known_motion_pairs()[6]
        sent, msg = flow_for_one_pair(ros, pair, "/robot1/camera/image_raw", "a flow from compressed frames",
                                      namespace="/robot1", extra=("--compressed", "png"))
        assert stamp_ns(msg.header.stamp) == sent[1]["stamp_ns"] and stamp_ns(msg.previous_stamp) == sent[0]["stamp_ns"]
        assert "ONNX Runtime" in msg.backend and (msg.flow.height, msg.flow.width) == pair.img1.shape[:2]
        expected = FlowEstimator(backend="onnxruntime", model=flow_model.path, input_size=flow_model.net_size)
        np.testing.assert_allclose(image_to_array(msg.flow), expected.estimate(pair.img1, pair.img2).flow, atol=1e-3)
    finally:
        assert node.stop() == 0
