"""Shared pieces of the node tests: the built message, a model file, and isolated ROS 2 processes.

Test modules load the fixtures with ``pytest_plugins = ["node_fixtures"]`` and import the helpers.
Every ROS process gets the Fast DDS large-data transport, discovery limited to this host,
and a ROS_DOMAIN_ID of its test module's own, so parallel runs do not hear each other.
"""
from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from mdflow_ros.ros_env import large_data_environment
from mdflow_ros.synthetic import KnownMotionPair, camera_motion_pair, photo_library

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_MODEL = ROOT / "mdflow_ros" / "weights" / "teacher_fastflownet.pt"
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
    save_model_file(path, net, meta={"purpose": "node tests only: FastFlowNet fitted to tests/node_fixtures.py's "
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


@pytest.fixture(scope="session")
def built_msgs() -> None:
    """Build the OpticalFlow message into this venv (returns at once when it is up to date)."""
    proc = subprocess.run(["bash", str(ROOT / "tools" / "build_msgs.sh")], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable}, timeout=600)
    assert proc.returncode == 0, f"tools/build_msgs.sh failed:\n{proc.stdout}\n{proc.stderr}"


@pytest.fixture(scope="session")
def flow_model(tmp_path_factory: pytest.TempPathFactory) -> TestModel:
    """A model for the node: the shipped one, or a quick fit cached for this session."""
    return shipped_or_quick_model(tmp_path_factory.mktemp("node_model"))


def domain_id(module_name: str) -> int:
    """A ROS_DOMAIN_ID in [1, 100] from the pid and the module, so concurrent runs do not collide."""
    return 1 + (os.getpid() * 31 + zlib.crc32(module_name.encode())) % 100


def ros_environment(domain: int, cache_dir: Path | None = None) -> dict[str, str]:
    """Environment of every ROS process of a test: own domain, localhost discovery, large-data transport."""
    env = large_data_environment({k: v for k, v in os.environ.items()
                                  if k not in ("FASTDDS_BUILTIN_TRANSPORTS", "FASTDDS_DEFAULT_PROFILES_FILE")})
    env.update(ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", PYTHONUNBUFFERED="1",
               RCUTILS_LOGGING_BUFFERED_STREAM="0", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                                                              env.get("PYTHONPATH")])))
    env.pop("ROS_LOCALHOST_ONLY", None)
    if cache_dir is not None:
        env["MDFLOW_CACHE"] = str(cache_dir)
    return env


class RosProcess:
    """A child process (python -m ...) with its output in a log file; stopped with SIGINT, then killed."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen([sys.executable, *args], env=env, cwd=ROOT, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        """Everything the process printed so far."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit by itself; returns its exit code (TimeoutExpired otherwise)."""
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGINT, wait, then SIGKILL; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        self._log.close()
        return self.proc.returncode


def wait_until(condition: Callable[[], bool], timeout: float, what: str, period: float = 0.05) -> None:
    """Poll ``condition`` until it holds; fail the test with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(period)


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def write_params(path: Path, test_model: TestModel, **overrides: object) -> Path:
    """config/flow.yaml with the test's model, network size and overrides (dotted names), written to ``path``."""
    import yaml

    config = yaml.safe_load((ROOT / "config" / "flow.yaml").read_text())
    params = config["/**"]["ros__parameters"]
    params.update(model=str(test_model.path), input_height=test_model.net_size[0], input_width=test_model.net_size[1],
                  threads=1)
    for key, value in overrides.items():
        node = params
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    path.write_text(yaml.safe_dump(config))
    return path


def epe_against(flow: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> float:
    """Mean end-point error (px) of flow against gt over valid pixels."""
    from mdflow_ros.metrics import epe

    return epe(flow, gt, valid)


class Receiver:
    """An rclpy node in the test process (own context and domain) that records what the flow node publishes."""

    def __init__(self, domain: int, namespace: str = ""):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        from mdflow_ros.msg import OpticalFlow

        self._rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node("test_receiver", namespace=namespace or None, context=self.context)
        self.qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.flows: list[tuple[float, OpticalFlow]] = []
        self.diagnostics: list[DiagnosticArray] = []
        self.views: dict[str, list] = {}
        self.view_subscriptions: dict[str, object] = {}
        self.flow_sub = self.node.create_subscription(
            OpticalFlow, "optical_flow", lambda m: self.flows.append((time.monotonic(), m)), self.qos)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 10)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = __import__("threading").Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def subscribe_view(self, topic: str) -> list:
        """Record sensor_msgs/Image messages of ``topic`` (e.g. optical_flow/color)."""
        from sensor_msgs.msg import Image

        self.views[topic] = []
        self.view_subscriptions[topic] = self.node.create_subscription(Image, topic, self.views[topic].append, self.qos)
        return self.views[topic]

    def diagnostic_values(self) -> dict[str, str]:
        """Key/values of the newest /diagnostics status of the flow node."""
        for array in reversed(self.diagnostics):
            for status in array.status:
                if "optical flow" in status.name:
                    return {kv.key: kv.value for kv in status.values}
        return {}

    def parameter_client(self, node_name: str):
        from rclpy.parameter_client import AsyncParameterClient

        return AsyncParameterClient(self.node, node_name)

    def wait_future(self, future, timeout: float):
        """Result of an rclpy future completed by the spinning executor."""
        wait_until(future.done, timeout, "a service response")
        return future.result()

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        self.context.try_shutdown()
        self._thread.join(timeout=5.0)


def stamp_ns(stamp) -> int:
    """builtin_interfaces/Time -> integer nanoseconds."""
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def play(plan, tmp_path: Path, env: dict[str, str], topic: str, rate: float = 30.0, timeout: float = 60.0,
         extra: tuple[str, ...] = ()) -> list[dict]:
    """Play ``plan`` with the frame player in its own process; returns its log of sent messages."""
    import json

    name = f"plan_{time.monotonic_ns()}"
    plan.save(tmp_path / f"{name}.npz")
    log = tmp_path / f"{name}.jsonl"
    proc = subprocess.run([sys.executable, "-m", "mdflow_ros.frame_player", str(tmp_path / f"{name}.npz"),
                           "--topic", topic, "--rate", str(rate), "--log", str(log), *extra],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"frame player failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return [json.loads(line) for line in log.read_text().splitlines()]


@dataclass
class RosSetup:
    """One test module's ROS world: its domain, the environment of its processes, a scratch folder."""

    domain: int
    env: dict[str, str]
    tmp: Path


@pytest.fixture(scope="session")
def mdflow_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MDFLOW_CACHE of the node processes (ONNX exports), shared by the session."""
    return tmp_path_factory.mktemp("mdflow_cache")


@pytest.fixture(scope="module")
def ros(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, mdflow_cache: Path,
        built_msgs: None) -> RosSetup:
    """The module's domain and environment, also applied to this process (for its receiver) while the module runs."""
    domain = domain_id(request.module.__name__)
    env = ros_environment(domain, mdflow_cache)
    keys = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTDDS_BUILTIN_TRANSPORTS", "ROS_AUTOMATIC_DISCOVERY_RANGE",
            "ROS_LOCALHOST_ONLY", "ROS_DOMAIN_ID")
    with pytest.MonkeyPatch.context() as patch:
        for key in keys:
            if key in env:
                patch.setenv(key, env[key])
            else:
                patch.delenv(key, raising=False)
        yield RosSetup(domain, env, tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1]))


def start_node(ros: RosSetup, params: Path, name: str, *ros_args: str) -> RosProcess:
    """python -m mdflow_ros.node with a params file and extra --ros-args, logging to ros.tmp/name.log."""
    return RosProcess(["-m", "mdflow_ros.node", "--ros-args", "--params-file", str(params), *ros_args],
                      ros.env, ros.tmp / f"{name}.log")
