"""Offline flow against the node: the same frames, played over DDS to the node and recorded in a bag for
mdflow-flow, give the same OpticalFlow fields (stamps, frame_id, pairing across a pause, image layouts,
flow and confidence values, output_scale, model, backend)."""
import subprocess
import sys

import cv2
import numpy as np
import pytest

pytest.importorskip("rclpy")

from mdflow_ros.io.ros_image import image_to_array  # noqa: E402
from mdflow_ros.ros.frame_player import Plan  # noqa: E402
from mdflow_ros.ros.harness import NodeLink  # noqa: E402
from mdflow_ros.ros.pairing import stamp_ns  # noqa: E402
from mdflow_ros.synthetic import photo_library  # noqa: E402
from support import ROOT, image_array, play, read_mcap, start_node, wait_until, write_params  # noqa: E402
from training.make_bag import write_sequence_bag  # noqa: E402

TOPIC = "/offline_cam/image_raw"
SIZE = (192, 256)
OUTPUT_SCALE = 0.5
PAUSE_S = 0.8
"""Longer than max_frame_gap (0.5 s): no pair spans it."""


def test_mdflow_flow_on_a_bag_writes_what_the_node_publishes_for_the_same_frames(ros, flow_model):
    photo = cv2.resize(photo_library()[1], (320, 240), interpolation=cv2.INTER_AREA)
    frames = [np.ascontiguousarray(photo[20:20 + SIZE[0], 4 * k:4 * k + SIZE[1]]) for k in range(5)]
    steps = [{"frame": 0}, {"frame": 1}, {"frame": 2}, {"frame": 3, "pause": PAUSE_S}, {"frame": 4}]
    params = write_params(ros.tmp / "params.yaml", flow_model, backend="onnxruntime", output_scale=OUTPUT_SCALE)
    node = start_node(ros, params, "flow_node", "-r", f"image:={TOPIC}")
    rx = None
    try:
        wait_until(lambda: "subscribed to" in node.output() or not node.alive(), 120, "the node to start")
        assert node.alive(), node.output()
        rx = NodeLink(ros.domain)
        wait_until(lambda: rx.flow_sub.get_publisher_count() > 0, 30, "the receiver to match the node")
        sent = play(Plan(frames, steps), ros.tmp, ros.env, TOPIC, rate=4.0)
        wait_until(lambda: len(rx.flows) >= 3, 30, "the node's three flows")
        published = {stamp_ns(msg.header.stamp): msg for _, msg in rx.flows}
    finally:
        if rx is not None:
            rx.close()
        code = node.stop()
        assert code == 0, node.output()

    stamps = [r["stamp_ns"] for r in sent]
    assert sorted(published) == [stamps[1], stamps[2], stamps[4]], "the node: no flow across the pause"
    bag = write_sequence_bag(ros.tmp / "played", frames, stamps_ns=stamps, frame_id="camera", storage="mcap")
    out = ros.tmp / "offline.mcap"
    net_h, net_w = flow_model.net_size
    proc = subprocess.run([sys.executable, "-m", "mdflow_ros.cli", str(bag), "--out", str(out), "--model",
                           str(flow_model.path), "--backend", "onnxruntime", "--input-size", str(net_h), str(net_w),
                           "--output-scale", str(OUTPUT_SCALE), "--threads", "1"],
                          env=ros.env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    _, messages = read_mcap(out)
    offline = {m.header.stamp.sec * 10**9 + m.header.stamp.nanosec: m for _, m in messages["/optical_flow"]}
    assert sorted(offline) == sorted(published), "the same pairs"
    for stamp, node_msg in published.items():
        msg = offline[stamp]
        assert msg.header.frame_id == node_msg.header.frame_id == "camera"
        assert (msg.previous_stamp.sec, msg.previous_stamp.nanosec) == (node_msg.previous_stamp.sec,
                                                                        node_msg.previous_stamp.nanosec)
        for name, channels in (("flow", 2), ("confidence", 1)):
            ours, theirs = getattr(msg, name), getattr(node_msg, name)
            assert (ours.encoding, ours.height, ours.width, ours.step, ours.is_bigendian) == (
                theirs.encoding, theirs.height, theirs.width, theirs.step, theirs.is_bigendian)
            assert ours.header.frame_id == theirs.header.frame_id
            np.testing.assert_allclose(image_array(ours, np.float32, channels).squeeze(),
                                       image_to_array(theirs), atol=1e-4)
        assert (msg.output_scale, msg.model, msg.backend) == (node_msg.output_scale, node_msg.model, node_msg.backend)
