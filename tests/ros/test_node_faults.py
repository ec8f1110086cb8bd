"""The flow node under faults, each in its own real node process: a stop signal at every moment of its
life, invalid parameters and parameter files, an unreadable model, and compressed frames that are
decompression bombs or not colour images.

A stop (SIGINT or SIGTERM) must end the node with status 0 within STOP_LIMIT_S, without a traceback or
an abort, whether it is importing, exporting its model, idle or inside a long inference. A bad
parameter must end it with one ``cannot start:`` line naming the parameter, the value and what is
allowed, and status 1. The bad-parameter nodes start together, to keep the suite short.
"""
import signal
import struct
import time
import zlib

import numpy as np
import pytest

pytest.importorskip("rclpy")

from bench.latency import peak_rss_mb  # noqa: E402
from mdflow_ros.ros import harness  # noqa: E402
from mdflow_ros.ros.frame_player import Plan  # noqa: E402
from mdflow_ros.ros.harness import NodeLink  # noqa: E402
from support import known_motion_pairs, play, start_node, wait_until, write_params  # noqa: E402

STOP_LIMIT_S = 2.0
FAULT_TOPIC = "/faults_cam/image_raw"
SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM}


def has_loaded(pid: int, library: str) -> bool:
    """True once the process has mapped a shared library whose path contains ``library``."""
    try:
        return library in open(f"/proc/{pid}/maps").read()
    except OSError:
        return False


def stop_and_check(node: harness.NodeProcess, number: int) -> None:
    """Send ``number``; the node must exit 0 within STOP_LIMIT_S, without traceback or abort."""
    assert node.alive(), node.output()
    start = time.monotonic()
    node.proc.send_signal(number)
    try:
        code = node.wait(30)
    finally:
        node.stop()
    elapsed = time.monotonic() - start
    out = node.output()
    assert code == 0, f"exit status {code} after {signal.Signals(number).name}:\n{out[-3000:]}"
    assert elapsed < STOP_LIMIT_S, f"took {elapsed:.2f} s to stop:\n{out[-3000:]}"
    for sign in ("Traceback", "terminate called", "KeyboardInterrupt", "RCLError"):
        assert sign not in out, f"{sign!r} in the node's output:\n{out[-3000:]}"
    print(f"{signal.Signals(number).name}: exit 0 after {elapsed:.2f} s")


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_a_stop_signal_while_the_node_imports_exits_cleanly(ros, flow_model, name):
    node = start_node(ros, write_params(ros.tmp / "import.yaml", flow_model), f"import_{name}")
    wait_until(lambda: has_loaded(node.pid, "_rclpy_pybind11") or not node.alive(), 60, "rclpy to be importing")
    assert "flow_node" not in node.output(), "the node is already past its imports"
    stop_and_check(node, SIGNALS[name])


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_a_stop_signal_while_the_model_is_exported_exits_cleanly(ros, flow_model, name):
    """A .pt with no .onnx beside it and an empty cache: the node exports the ONNX graph while it loads."""
    model = ros.tmp / f"export_{name}" / "model.pt"
    model.parent.mkdir()
    model.write_bytes(flow_model.path.read_bytes())
    params = write_params(ros.tmp / f"export_{name}.yaml", flow_model, model=str(model), backend="onnxruntime")
    env = {**ros.env, "MDFLOW_CACHE": str(model.parent / "cache")}
    node = start_node(ros, params, f"export_{name}", env=env)
    wait_until(lambda: has_loaded(node.pid, "libtorch_cpu") or not node.alive(), 90, "the export to start")
    time.sleep(0.3)
    assert "loading the model" in node.output() and "subscribed to" not in node.output()
    stop_and_check(node, SIGNALS[name])


@pytest.mark.parametrize("backend, name", [("onnxruntime", "SIGINT"), ("pytorch", "SIGTERM")])
def test_a_stop_signal_during_a_long_inference_exits_cleanly(ros, flow_model, backend, name):
    """1280x720 frames at the automatic network size on one thread: seconds per inference, longer than
    the node waits for its worker (ONNX Runtime's run is cancelled, PyTorch's abandoned)."""
    topic = f"/long_{backend}/image_raw"
    params = write_params(ros.tmp / f"long_{backend}.yaml", flow_model, backend=backend, input_height=0,
                          input_width=0)
    node = start_node(ros, params, f"long_{backend}", "-r", f"image:={topic}")
    link = NodeLink(ros.domain, name=f"long_{backend}_link")
    try:
        wait_until(lambda: "subscribed to" in node.output() or not node.alive(), 120, "the node to start")
        player = link.player(topic)
        assert player.wait_for_subscriber(30)
        frame = np.random.default_rng(0).integers(0, 255, (720, 1280, 3), dtype=np.uint8)
        player.play(Plan([frame, np.roll(frame, 4, axis=1)], [{"frame": 0}, {"frame": 1}]), 30.0)
        time.sleep(0.7)
        assert not link.flows, "the inference ended before the signal; this test needs a longer one"
        stop_and_check(node, SIGNALS[name])
    finally:
        link.close()
        node.stop()


def bad_parameter_cases(ros, flow_model) -> dict[str, tuple[list[str], str]]:
    """name -> (extra ros args, text the one 'cannot start:' line must hold)."""
    garbage = ros.tmp / "notes.pt"
    garbage.write_text("not a model\n" * 10)
    values = {
        "input_height": ({"input_height": -64, "input_width": 64},
                         "parameter input_height is -64; allowed: an integer from 0 to 4096, a multiple of 64"),
        "input_width": ({"input_height": 64, "input_width": 100},
                        "parameter input_width is 100; allowed: an integer from 0 to 4096, a multiple of 64"),
        "threads": ({"threads": -1}, "parameter threads is -1; allowed: an integer from 0 to 256"),
        "threads_text": ({"threads": "four"}, "parameter threads is 'four'; allowed: an integer from 0 to 256"),
        "max_frame_gap": ({"max_frame_gap": 1}, "parameter max_frame_gap is 1; allowed: a number from 0 to 3600, "
                                                "written with a decimal point"),
        "max_input_pixels": ({"max_input_pixels": 0}, "parameter max_input_pixels is 0; allowed: an integer from 4096"),
        "qos_depth": ({"qos_overrides": {FAULT_TOPIC: {"subscription": {"depth": 0}}}},
                      f"parameter qos_overrides.{FAULT_TOPIC}.subscription.depth is 0; allowed: an integer of at least 1"),
        "model": ({"model": str(garbage)}, f"{garbage} is not a readable PyTorch file"),
    }
    cases = {}
    for name, (overrides, expected) in values.items():
        params = harness.write_params(ros.tmp / f"bad_{name}.yaml", **{
            "model": str(flow_model.path), "input_height": flow_model.net_size[0],
            "input_width": flow_model.net_size[1], "threads": 1, "backend": "onnxruntime", **overrides})
        cases[name] = (["--params-file", str(params)], expected)
    malformed = ros.tmp / "malformed.yaml"
    malformed.write_text("/**:\n  ros__parameters:\n    threads: [1, 2\n")
    cases["params_missing"] = (["--params-file", str(ros.tmp / "nowhere.yaml")],
                               f"parameter file {ros.tmp / 'nowhere.yaml'} cannot be read: No such file or directory")
    cases["params_malformed"] = (["--params-file", str(malformed)], f"parameter file {malformed} is not valid YAML")
    return cases


@pytest.fixture(scope="module")
def bad_starts(ros, flow_model):
    """Every bad-parameter node, started at once; name -> (exit status, output, expected text)."""
    cases = bad_parameter_cases(ros, flow_model)
    nodes = {name: harness.NodeProcess(["-m", harness.NODE_MODULE, "--ros-args", *args, "-r", f"image:={FAULT_TOPIC}"],
                                       ros.env, ros.tmp / f"bad_{name}.log") for name, (args, _) in cases.items()}
    results = {}
    try:
        for name, node in nodes.items():
            results[name] = (node.wait(180), node.output(), cases[name][1])
    finally:
        for node in nodes.values():
            node.stop()
    return results


@pytest.mark.parametrize("name", ["input_height", "input_width", "threads", "threads_text", "max_frame_gap",
                                  "max_input_pixels", "qos_depth", "model", "params_missing", "params_malformed"])
def test_a_bad_parameter_stops_the_node_with_one_line_naming_it(bad_starts, name):
    code, out, expected = bad_starts[name]
    lines = [line for line in out.splitlines() if "cannot start:" in line]
    assert code == 1 and len(lines) == 1, out
    assert expected in lines[0], lines[0]
    assert "Traceback" not in out and "[ERROR]" not in out, out


def png_bomb(width: int, height: int) -> bytes:
    """A valid, all-black RGB PNG of width x height, a few hundred kB however large (built row by row with zlib)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    squeeze = zlib.compressobj(9)
    row = bytes(1 + 3 * width)
    idat = b"".join(squeeze.compress(row) for _ in range(height)) + squeeze.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def compressed_node(ros, flow_model):
    """One node on CompressedImage input with the default max_input_pixels; it stops with SIGTERM, idle."""
    params = write_params(ros.tmp / "compressed.yaml", flow_model, backend="onnxruntime", input_transport="compressed")
    node = start_node(ros, params, "compressed", "-r", f"image/compressed:={FAULT_TOPIC}/compressed")
    try:
        wait_until(lambda: "subscribed to" in node.output() or not node.alive(), 120, "the node to start")
        assert node.alive(), node.output()
        yield node
    finally:
        if node.alive():
            stop_and_check(node, signal.SIGTERM)


@pytest.fixture(scope="module")
def compressed_link(ros, compressed_node):
    """This process's end, with a raw CompressedImage publisher to send crafted data."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CompressedImage

    link = NodeLink(ros.domain, name="faults_link")
    publisher = link.node.create_publisher(CompressedImage, f"{FAULT_TOPIC}/compressed",
                                           QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT))
    wait_until(lambda: publisher.get_subscription_count() > 0 and link.flow_sub.get_publisher_count() > 0, 30,
               "the node to match")
    time.sleep(0.5)
    try:
        yield link, publisher
    finally:
        link.close()


def send_compressed(link, publisher, fmt: str, data: bytes) -> None:
    from sensor_msgs.msg import CompressedImage

    msg = CompressedImage(format=fmt)
    msg.data = data
    msg.header.stamp = link.node.get_clock().now().to_msg()
    msg.header.frame_id = "camera"
    publisher.publish(msg)


def counter(link, name: str) -> int:
    return int(link.diagnostic_values().get(name, 0))


def test_a_png_bomb_is_dropped_by_its_header_without_growing_the_node(compressed_node, compressed_link):
    """0.3 MB of PNG that decodes to 10000x10000 (300 MB, and a 0.8 GB flow): refused before decoding."""
    link, publisher = compressed_link
    bomb = png_bomb(10000, 10000)
    assert len(bomb) < 1_000_000
    before, peak_before = counter(link, "oversized"), peak_rss_mb(compressed_node.pid)
    send_compressed(link, publisher, "png", bomb)
    wait_until(lambda: counter(link, "oversized") > before, 20, "the oversized frame to be counted")
    grown = peak_rss_mb(compressed_node.pid) - peak_before
    assert grown < 100, f"the node's peak memory grew by {grown:.0f} MiB"
    assert "dropping an oversized image" in compressed_node.output()
    assert "10000x10000 image has 100000000 pixels, more than max_input_pixels 8294400" in compressed_node.output()


def test_compressed_depth_and_other_non_images_are_refused_and_counted(ros, compressed_node, compressed_link):
    import cv2

    link, publisher = compressed_link
    depth = cv2.imencode(".png", np.full((120, 160), 1000, np.uint16))[1].tobytes()
    before = counter(link, "bad")
    start = len(link.flows)
    for fmt in ("16UC1; compressedDepth png", "16UC1; png compressed 16UC1"):
        for _ in range(2):  # two frames of each: a pair, if it were decoded
            send_compressed(link, publisher, fmt, depth)
            time.sleep(0.1)
    wait_until(lambda: counter(link, "bad") >= before + 4, 20, "the refused frames to be counted")
    assert len(link.flows) == start, "a flow was published from depth images"
    assert "is a depth image (compressedDepth)" in compressed_node.output(), "logged (once per 5 s for this kind)"
    pair = known_motion_pairs()[1]
    sent = play(Plan([pair.img1, pair.img2], [{"frame": 0, "pause": 0.7}, {"frame": 1}]), ros.tmp, ros.env,
                FAULT_TOPIC, extra=("--compressed", "png"))
    assert link.wait_for_flow(sent[1]["stamp_ns"], 20) is not None, "no flow from colour frames after the refusals"
