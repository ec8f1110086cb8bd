"""The flow node in its own process, driven from this one: as the demo, bench/node_latency.py and the tests run it.

- ``session_environment``: the environment of the node and of every process that talks to it
  (Fast DDS large-data transport, a private ROS domain, discovery on this host only, unbuffered
  logs, this source tree importable); ``DDS_KEYS`` of it must hold in this process too before
  rclpy starts here (``use_session_environment``).
- ``write_params`` and ``start_node``: ``python -m mdflow_ros.node`` with a parameter file, as a
  ``NodeProcess`` whose output goes to a log file and that stops with SIGINT (then SIGKILL).
- ``NodeLink``: an rclpy node in this process, with its own context and spinning thread, that
  records what the flow node publishes and publishes frames to it (``FramePlayer``).
- ``play_plan``: a Plan played by the frame player in a process of its own.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import mdflow_ros
from mdflow_ros.ros.dds_env import large_data_environment
from mdflow_ros.ros.frame_player import FramePlayer, Plan
from mdflow_ros.ros.pairing import stamp_ns

NODE_MODULE = "mdflow_ros.node"
SOURCE_ROOT = Path(mdflow_ros.__file__).resolve().parents[1]
"""The folder holding the mdflow_ros this process runs: the child processes import the same one."""
DDS_KEYS = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTDDS_BUILTIN_TRANSPORTS", "ROS_AUTOMATIC_DISCOVERY_RANGE",
            "ROS_LOCALHOST_ONLY", "ROS_DOMAIN_ID")
"""The variables of a session environment that decide which DDS participants meet, and how."""


def private_domain(salt: str = "") -> int:
    """A ROS_DOMAIN_ID in [1, 100] from this process's id (and ``salt``), so concurrent sessions do not meet."""
    return 1 + (os.getpid() * 31 + zlib.crc32(salt.encode())) % 100


def session_environment(domain: int, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``base`` (default os.environ) for the processes of one session on ROS domain ``domain``.

    The large-data Fast DDS transport unless ``base`` already chooses one, discovery on this host
    only, unbuffered Python and ROS logs, and SOURCE_ROOT first on PYTHONPATH.
    """
    env = large_data_environment(base)
    env.update(ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", PYTHONUNBUFFERED="1",
               RCUTILS_LOGGING_BUFFERED_STREAM="0",
               PYTHONPATH=os.pathsep.join(filter(None, [str(SOURCE_ROOT), env.get("PYTHONPATH")])))
    env.pop("ROS_LOCALHOST_ONLY", None)
    return env


def use_session_environment(env: Mapping[str, str]) -> None:
    """Give this process the DDS_KEYS of ``env`` (set or unset), before rclpy starts a participant here."""
    for key in DDS_KEYS:
        if key in env:
            os.environ[key] = env[key]
        else:
            os.environ.pop(key, None)


def write_params(path: Path, **values: Any) -> Path:
    """A parameter file for the node with ``values`` (plain values); the others keep their declared defaults."""
    lines = ["/**:", "  ros__parameters:"] + [f"    {name}: {json.dumps(value)}" for name, value in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def wait_until(condition: Callable[[], bool], timeout: float, period: float = 0.05) -> bool:
    """Poll ``condition`` until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(period)
    return True


class NodeProcess:
    """A child ``python ARGS`` in its own session, its output in a log file; stopped with SIGINT, then killed."""

    def __init__(self, args: list[str], env: Mapping[str, str], log_path: Path):
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, *args], env=dict(env), stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        """Everything the process printed so far."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit by itself; its exit code (subprocess.TimeoutExpired otherwise)."""
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGINT, wait up to ``timeout`` s, then SIGKILL; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        self._log.close()
        return self.proc.returncode


def start_node(params: Path, env: Mapping[str, str], log_path: Path, *ros_args: str) -> NodeProcess:
    """``python -m mdflow_ros.node --ros-args --params-file PARAMS ROS_ARGS...`` in its own process."""
    return NodeProcess(["-m", NODE_MODULE, "--ros-args", "--params-file", str(params), *ros_args], env, log_path)


class NodeLink:
    """This process's end: an rclpy node (own context on ``domain``, spun by a thread) that records
    every OpticalFlow on ``optical_flow`` (with its arrival time), /diagnostics and chosen image views
    of the flow node, and makes FramePlayers that publish frames to it."""

    def __init__(self, domain: int, namespace: str = "", name: str = "mdflow_link"):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        from mdflow_ros.msg import OpticalFlow

        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node(name, namespace=namespace or None, context=self.context)
        self.qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.flows: list[tuple[float, Any]] = []
        self.diagnostics: list[Any] = []
        self.views: dict[str, list] = {}
        self.view_subscriptions: dict[str, Any] = {}
        self.flow_sub = self.node.create_subscription(
            OpticalFlow, "optical_flow", lambda msg: self.flows.append((time.monotonic(), msg)), self.qos)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 10)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def player(self, topic: str, reliable: bool = False, compressed: str | None = None) -> FramePlayer:
        """A FramePlayer publishing on ``topic`` from this node."""
        return FramePlayer(self.node, topic, reliable, compressed)

    def wait_for_node(self, node: NodeProcess, timeout: float, player: FramePlayer | None = None) -> bool:
        """Wait until the flow node publishes to this link (and subscribes to ``player``); False if it
        exited or ``timeout`` seconds passed."""
        wait_until(lambda: not node.alive() or (self.flow_sub.get_publisher_count() > 0 and
                                               (player is None or player.publisher.get_subscription_count() > 0)),
                   timeout)
        return node.alive() and self.flow_sub.get_publisher_count() > 0

    def flows_since(self, start: int) -> dict[int, tuple[float, Any]]:
        """The flows received after the first ``start`` ones, by the stamp (ns) of their newer frame."""
        return {stamp_ns(msg.header.stamp): (arrived, msg) for arrived, msg in self.flows[start:]}

    def wait_for_flow(self, stamp: int, timeout: float) -> tuple[float, Any] | None:
        """(arrival time, OpticalFlow) of the flow whose newer frame has ``stamp`` (ns); None after ``timeout`` s."""
        found: list[tuple[float, Any]] = []

        def arrived() -> bool:
            found[:] = [(t, msg) for t, msg in self.flows if stamp_ns(msg.header.stamp) == stamp]
            return bool(found)

        return found[0] if wait_until(arrived, timeout, period=0.02) else None

    def subscribe_view(self, topic: str) -> list:
        """Record the sensor_msgs/Image messages of ``topic`` (e.g. optical_flow/color) in the returned list."""
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

    def parameter_client(self, node_name: str) -> Any:
        """An AsyncParameterClient of ``node_name`` (its futures complete on this link's thread)."""
        from rclpy.parameter_client import AsyncParameterClient

        return AsyncParameterClient(self.node, node_name)

    def wait_future(self, future: Any, timeout: float) -> Any:
        """The result of an rclpy future that the spinning thread completes; TimeoutError after ``timeout`` s."""
        if not wait_until(future.done, timeout):
            raise TimeoutError(f"no response within {timeout:g} s")
        return future.result()

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        self.context.try_shutdown()
        self._thread.join(timeout=5.0)


def play_plan(plan: Plan, folder: Path, env: Mapping[str, str], topic: str, rate: float = 30.0,
              timeout: float = 60.0, extra: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Play ``plan`` with ``python -m mdflow_ros.ros.frame_player`` in its own process; its log of sent messages.

    The plan and the log are written to ``folder``; RuntimeError with the player's output if it fails.
    """
    name = f"plan_{time.monotonic_ns()}"
    plan.save(folder / f"{name}.npz")
    log = folder / f"{name}.jsonl"
    proc = subprocess.run([sys.executable, "-m", "mdflow_ros.ros.frame_player", str(folder / f"{name}.npz"),
                           "--topic", topic, "--rate", str(rate), "--log", str(log), *extra],
                          env=dict(env), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"frame player failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return [json.loads(line) for line in log.read_text().splitlines()]
