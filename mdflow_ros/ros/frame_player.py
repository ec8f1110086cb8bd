"""Play frames to a ROS 2 image topic at a steady rate with fresh stamps, and log what was sent.

    python -m mdflow_ros.ros.frame_player PLAN.npz --topic /camera/image_raw --rate 30 --log sent.jsonl

A plan is a set of frames (numpy images) and a list of steps, each publishing one frame as a
sensor_msgs/Image stamped with the current ROS time (or, with --compressed png|jpeg, as a
sensor_msgs/CompressedImage on TOPIC/compressed). A step may override the message to make
it deliberately bad (another encoding, truncated data, zero size) or pause before it (a gap
in the stream). The log has one JSON line per message sent: step, frame, stamp (ns), encoding,
size and the sender's monotonic time (CLOCK_MONOTONIC is system-wide on Linux, so another
process can measure latency against it). The demo and the node tests use this player.
"""
from __future__ import annotations

import argparse
import array
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mdflow_ros.io.ros_image import array_to_image
from mdflow_ros.ros.pairing import stamp_ns

ZERO_SIZE = -1
"""Frame index of a step that sends a 0 x 0 image."""


def default_encoding(frame: np.ndarray) -> str:
    """rgb8, rgba8, mono8 or mono16 from an image's dtype and channels."""
    channels = 1 if frame.ndim == 2 else frame.shape[2]
    if frame.dtype == np.uint16 and channels == 1:
        return "mono16"
    if frame.dtype == np.uint8:
        return {1: "mono8", 3: "rgb8", 4: "rgba8"}.get(channels, "")
    raise ValueError(f"no default encoding for {frame.dtype} with {channels} channels; set the step's encoding")


@dataclass
class Plan:
    """Frames to play and the steps that play them.

    frames: (H, W[, C]) arrays, uint8 or uint16. steps: dicts with "frame" (index into frames,
    or ZERO_SIZE) and optionally "encoding" (label the data differently), "truncate" (bytes
    cut from the end of data), "pause" (extra seconds before sending) and "frame_id".
    """

    frames: list[np.ndarray]
    steps: list[dict[str, Any]] = field(default_factory=list)

    def save(self, path: str | Path) -> None:
        """Write the plan as .npz (frames as arrays, steps as JSON)."""
        arrays = {f"frame_{i}": frame for i, frame in enumerate(self.frames)}
        np.savez(path, steps=np.array(json.dumps(self.steps)), **arrays)

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        """Read a plan written by save()."""
        with np.load(path, allow_pickle=False) as data:
            frames = [data[f"frame_{i}"] for i in range(len(data.files) - 1)]
            return cls(frames, json.loads(str(data["steps"])))


def step_message(plan: Plan, step: dict[str, Any], compressed: str | None = None) -> Any:
    """The sensor_msgs/Image (or CompressedImage in format ``compressed``) of one step, stamp not set yet."""
    from sensor_msgs.msg import CompressedImage, Image

    if compressed:
        frame = plan.frames[step["frame"]]
        bgr = frame[:, :, 2::-1] if frame.ndim == 3 else frame
        msg = CompressedImage(format=compressed)
        msg.data = array.array("B", cv2.imencode(f".{compressed}", bgr)[1].tobytes())
    elif step["frame"] == ZERO_SIZE:
        msg = Image(height=0, width=0, encoding=step.get("encoding", "rgb8"), step=0)
    else:
        frame = plan.frames[step["frame"]]
        msg = array_to_image(frame, default_encoding(frame))
        msg.encoding = step.get("encoding", msg.encoding)
        if step.get("truncate"):
            msg.data = msg.data[:-int(step["truncate"])]
    msg.header.frame_id = step.get("frame_id", "camera")
    return msg


class FramePlayer:
    """Publishes a Plan on ``topic`` from an rclpy node."""

    def __init__(self, node: Any, topic: str, reliable: bool = False, compressed: str | None = None):
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CompressedImage, Image

        self.node = node
        self.compressed = compressed
        qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT)
        if compressed:
            self.publisher = node.create_publisher(CompressedImage, f"{topic}/compressed", qos)
        else:
            self.publisher = node.create_publisher(Image, topic, qos)

    def wait_for_subscriber(self, timeout_s: float, settle_s: float = 0.5) -> bool:
        """Wait until something subscribes to the topic (DDS matching); False after timeout_s.

        DDS discovery is not symmetric: the publisher can see the subscriber before the
        subscriber has matched the publisher, and a best-effort subscriber drops what arrives
        in that window. Waiting settle_s more after the match closes it in practice.
        """
        deadline = time.monotonic() + timeout_s
        while self.publisher.get_subscription_count() == 0:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        time.sleep(settle_s)
        return True

    def play(self, plan: Plan, rate_hz: float,
             on_sent: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        """Send every step, one per 1/rate_hz seconds (plus pauses); returns the log records."""
        cache: dict[int, Any] = {}
        records = []
        next_time = time.monotonic()
        for index, step in enumerate(plan.steps):
            plain = set(step) <= {"frame", "pause"}
            msg = cache.get(step["frame"]) if plain else None
            if msg is None:
                msg = step_message(plan, step, self.compressed)
                if plain:
                    cache[step["frame"]] = msg
            next_time += float(step.get("pause", 0.0))
            time.sleep(max(0.0, next_time - time.monotonic()))
            msg.header.stamp = self.node.get_clock().now().to_msg()
            sent = time.monotonic()
            self.publisher.publish(msg)
            record = {"step": index, "frame": step["frame"], "stamp_ns": stamp_ns(msg.header.stamp),
                      "encoding": getattr(msg, "encoding", self.compressed),
                      "height": getattr(msg, "height", None), "width": getattr(msg, "width", None),
                      "sent_monotonic": sent}
            records.append(record)
            if on_sent is not None:
                on_sent(record)
            next_time += 1.0 / rate_hz
        return records


def main(argv: list[str] | None = None) -> int:
    """CLI: play a plan file; exit 2 when nothing subscribes within --wait seconds."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("plan", type=Path, help=".npz written by Plan.save")
    parser.add_argument("--topic", default="/camera/image_raw")
    parser.add_argument("--rate", type=float, default=30.0, help="frames per second")
    parser.add_argument("--log", type=Path, help="write one JSON line per message sent")
    parser.add_argument("--wait", type=float, default=20.0, help="seconds to wait for a subscriber")
    parser.add_argument("--reliable", action="store_true", help="reliable QoS (default: best effort)")
    parser.add_argument("--compressed", choices=("png", "jpeg"), help="send CompressedImage on TOPIC/compressed")
    args, ros_args = parser.parse_known_args(argv)

    import rclpy

    from mdflow_ros.ros.dds_env import use_large_data_transport

    use_large_data_transport()
    rclpy.init(args=[sys.argv[0], *ros_args])
    node = rclpy.create_node("frame_player")
    try:
        player = FramePlayer(node, args.topic, args.reliable, args.compressed)
        if not player.wait_for_subscriber(args.wait):
            node.get_logger().error(f"nothing subscribed to {player.publisher.topic_name} within {args.wait} s")
            return 2
        log = open(args.log, "w") if args.log else None
        try:
            def write(record: dict[str, Any]) -> None:
                if log is not None:
                    log.write(json.dumps(record) + "\n")
                    log.flush()

            records = player.play(Plan.load(args.plan), args.rate, write)
        finally:
            if log is not None:
                log.close()
        node.get_logger().info(f"sent {len(records)} frames to {player.publisher.topic_name}")
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
