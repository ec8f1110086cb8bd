"""Helpers shared by the test rooms (tests/conftest.py holds the fixtures built on them).

The node tests' frames and model, and their ROS 2 processes, started and driven through
mdflow_ros.ros.harness as the demo and the benchmark do: every ROS process gets the Fast DDS
large-data transport, discovery limited to this host, and a ROS_DOMAIN_ID of its test module's
own, so parallel runs do not hear each other. ``no_torch_environment`` makes ``import torch``
fail in a child process, for the tests of the runtime without PyTorch. ``read_mcap`` and
``image_array`` read MCAP files back with the mcap library's ROS 2 decoder (offline flow's tests);
``write_video`` writes test videos.
"""
from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from mdflow_ros.inference.estimator import shipped_model
from mdflow_ros.ros import harness
from mdflow_ros.ros.dds_env import PROFILE_VARIABLE, TRANSPORT_VARIABLE
from mdflow_ros.ros.frame_player import Plan
from mdflow_ros.synthetic import KnownMotionPair, camera_motion_pair, photo_library

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_MODEL = shipped_model("teacher")
DEPLOYED_RUNTIMES = ("ONNX Runtime", "OpenVINO")
"""What backend "auto" may run on a CPU without PyTorch: OpenVINO where it measured faster, else ONNX Runtime."""


def runs_deployed(backend_description: str) -> bool:
    """Whether a backend description is one of the deployed CPU runtimes (no PyTorch)."""
    return backend_description.startswith(DEPLOYED_RUNTIMES)


def deployed_estimator_as(printed: str, **kwargs):
    """A FlowEstimator on the deployed runtime (and OpenVINO precision) whose backend description appears in
    ``printed`` (what a node, the demo or the CLI reports it ran): "auto" may choose differently in two
    processes when its one-off timing was not cached (a busy machine)."""
    from mdflow_ros.inference import FlowEstimator

    openvino = re.search(r"OpenVINO [0-9.]+, CPU (\w+),", printed)
    if openvino:
        return FlowEstimator(backend="openvino", precision=openvino.group(1), **kwargs)
    assert "ONNX Runtime" in printed, f"no deployed runtime named in {printed!r}"
    return FlowEstimator(backend="onnxruntime", **kwargs)
FRAME_SIZE = (480, 640)
"""Camera frames of the flow tests: 640 x 480, as the issue asks."""
N_PAIRS = 8
MAX_SHIFT = 24.0
"""The flow tests' motions: pure camera translations of up to MAX_SHIFT pixels at FRAME_SIZE."""


@dataclass(frozen=True)
class TestModel:
    """A model file and the fixed network input size (height, width) the node tests run it at."""

    path: Path
    net_size: tuple[int, int]


@functools.lru_cache(maxsize=1)
def known_motion_pairs() -> tuple[KnownMotionPair, ...]:
    """The flow tests' frame pairs: real photos under a known, uniform camera translation."""
    photos = photo_library()
    return tuple(camera_motion_pair(photos[k % len(photos)], FRAME_SIZE, np.random.default_rng(k),
                                    max_shift=MAX_SHIFT, max_rot=0.0, max_zoom=0.0, max_perspective=0.0)
                 for k in range(N_PAIRS))


def train_quick_model(path: Path, net_size: tuple[int, int], steps: int = 150, target_loss: float = 0.25) -> None:
    """Fit a fresh FastFlowNet to known_motion_pairs() at the node's network size, and save it.

    Supervised L1 on the deployed graph's pixel flow, Adam, all pairs in every step, until the
    loss (network pixels) falls below ``target_loss`` or after ``steps`` steps. With this few
    steps the network memorises the pairs rather than learning to match (from scratch it stays
    on the usual initial plateau for far longer than a test can wait), which is enough to make
    the node tests' accuracy check meaningful against zero flow, not a model to deploy.
    """
    import torch

    from mdflow_ros.inference.estimator import to_rgb_float
    from mdflow_ros.models.deploy import DeployedFlow
    from mdflow_ros.models.fastflownet import FastFlowNet
    from mdflow_ros.models.model_file import save_model_file

    height, width = net_size
    pairs = known_motion_pairs()

    def batch(images: list[np.ndarray]) -> torch.Tensor:
        resized = [cv2.resize(to_rgb_float(img, "rgb8", "frame"), (width, height), interpolation=cv2.INTER_LINEAR)
                   for img in images]
        return torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).contiguous()

    img1, img2 = batch([p.img1 for p in pairs]), batch([p.img2 for p in pairs])
    scale = np.array([width / FRAME_SIZE[1], height / FRAME_SIZE[0]], np.float32)
    target = torch.from_numpy(np.stack([p.flow[p.valid].mean(axis=0) * scale for p in pairs])).view(-1, 2, 1, 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # more threads thrash when the 2 cores are shared
    try:
        torch.manual_seed(0)
        net = FastFlowNet()
        graph = DeployedFlow(net, with_confidence=False)
        optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
        for _ in range(steps):
            loss = (graph.pixel_flow(img1, img2) - target).abs().mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if loss.item() < target_loss:
                break
    finally:
        torch.set_num_threads(threads)
    save_model_file(path, net, meta={"purpose": "node tests only: FastFlowNet fitted to tests/support.py's "
                                                "known_motion_pairs (memorised, not a flow model)",
                                     "final_l1_net_px": float(loss.item())})


def shipped_or_quick_model(cache_dir: Path) -> TestModel:
    """The shipped teacher when it exists, else a FastFlowNet quickly fitted to the test motions."""
    if SHIPPED_MODEL.is_file():
        return TestModel(SHIPPED_MODEL, (192, 256))
    model = TestModel(cache_dir / "quick_fastflownet.pt", (64, 128))
    if not model.path.is_file():
        train_quick_model(model.path, model.net_size)
    return model


def domain_id(module_name: str) -> int:
    """A ROS_DOMAIN_ID in [1, 100] from the pid and the module, so concurrent runs do not collide."""
    return harness.private_domain(module_name)


def ros_environment(domain: int, cache_dir: Path | None = None) -> dict[str, str]:
    """Environment of every ROS process of a test: own domain, localhost discovery, large-data transport."""
    env = harness.session_environment(domain, {k: v for k, v in os.environ.items()
                                               if k not in (TRANSPORT_VARIABLE, PROFILE_VARIABLE)})
    if cache_dir is not None:
        env["MDFLOW_CACHE"] = str(cache_dir)
    return env


def wait_until(condition: Callable[[], bool], timeout: float, what: str, period: float = 0.05) -> None:
    """Poll ``condition`` until it holds; fail the test with ``what`` after ``timeout`` seconds."""
    if not harness.wait_until(condition, timeout, period):
        pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def write_params(path: Path, test_model: TestModel, **overrides: object) -> Path:
    """A parameter file with the test's model, network size, one thread and ``overrides``, written to ``path``."""
    return harness.write_params(path, **{"model": str(test_model.path), "input_height": test_model.net_size[0],
                                         "input_width": test_model.net_size[1], "threads": 1, **overrides})


def play(plan, tmp_path: Path, env: dict[str, str], topic: str, rate: float = 30.0, timeout: float = 60.0,
         extra: tuple[str, ...] = ()) -> list[dict]:
    """Play ``plan`` with the frame player in its own process; returns its log of sent messages."""
    return harness.play_plan(plan, tmp_path, env, topic, rate, timeout, extra)


@dataclass
class RosSetup:
    """One test module's ROS world: its domain, the environment of its processes, a scratch folder."""

    domain: int
    env: dict[str, str]
    tmp: Path


def start_node(ros: RosSetup, params: Path, name: str, *ros_args: str,
               env: dict[str, str] | None = None) -> harness.NodeProcess:
    """python -m mdflow_ros.node with a params file and extra --ros-args, logging to ros.tmp/name.log.

    env: the process environment instead of ``ros.env`` (e.g. ros.env plus MDFLOW_WEIGHTS).
    """
    return harness.start_node(params, ros.env if env is None else env, ros.tmp / f"{name}.log", *ros_args)


def flow_for_one_pair(ros: RosSetup, pair: KnownMotionPair, topic: str, what: str, namespace: str = "",
                      extra: tuple[str, ...] = ()) -> tuple[list[dict], Any]:
    """Play ``pair`` as two frames on ``topic`` (frame player options ``extra``) and receive the one
    OpticalFlow the running node publishes on ``namespace``/optical_flow: the player's log and that message."""
    rx = harness.NodeLink(ros.domain, namespace=namespace)
    try:
        wait_until(lambda: rx.flow_sub.get_publisher_count() > 0, 30, "the receiver to match the node")
        sent = play(Plan([pair.img1, pair.img2], [{"frame": 0}, {"frame": 1}]), ros.tmp, ros.env, topic, extra=extra)
        wait_until(lambda: len(rx.flows) >= 1, 20, what)
        return sent, rx.flows[0][1]
    finally:
        rx.close()


def no_torch_environment(env: dict[str, str], log: Path) -> dict[str, str]:
    """A copy of ``env`` in which ``import torch`` fails in every Python process and each attempt is
    noted in ``log`` (tests/no_torch/sitecustomize.py first on PYTHONPATH, then ROOT)."""
    path = os.pathsep.join(filter(None, [str(ROOT / "tests" / "no_torch"), str(ROOT), env.get("PYTHONPATH")]))
    return {**env, "PYTHONPATH": path, "MDFLOW_TEST_TORCH_LOG": str(log)}


def read_mcap(path: Path) -> tuple[dict, dict[str, list]]:
    """({topic: (schema name, encoding, text)}, {topic: [(log time, decoded message)]}) of an MCAP file, read
    with the mcap library and its ROS 2 decoder (independent of rosbags, which offline flow writes with)."""
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    with open(path, "rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        assert reader.get_header().profile == "ros2"
        summary = reader.get_summary()
        schemas = {c.topic: (summary.schemas[c.schema_id].name, summary.schemas[c.schema_id].encoding,
                             summary.schemas[c.schema_id].data.decode()) for c in summary.channels.values()}
        messages: dict[str, list] = {}
        for _, channel, message, decoded in reader.iter_decoded_messages():
            messages.setdefault(channel.topic, []).append((message.log_time, decoded))
    return schemas, messages


def image_array(msg: Any, dtype: type, channels: int) -> np.ndarray:
    """A decoded sensor_msgs/Image's pixels (H, W, channels), checking its byte order and tight rows."""
    assert msg.is_bigendian == 0 and msg.step == msg.width * channels * np.dtype(dtype).itemsize
    return np.frombuffer(bytes(msg.data), dtype).reshape(msg.height, msg.width, channels)


def write_video(path: Path, frames: list[np.ndarray], fourcc: str = "mp4v", fps: float = 10.0) -> Path:
    """(H, W, 3) uint8 RGB frames as a video file at ``path`` (the test is skipped where OpenCV cannot write it)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (frames[0].shape[1], frames[0].shape[0]))
    if not writer.isOpened():
        pytest.skip(f"this OpenCV build cannot write {fourcc} into {path.suffix}")
    for frame in frames:
        writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
    writer.release()
    return path
