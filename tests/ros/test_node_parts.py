"""The node's ROS-free parts: parameters vs config/flow.yaml, frame pairing, the mailbox, stats, message assembly."""
import threading
import time

import numpy as np
import pytest
import yaml

pytest.importorskip("rclpy")

from mdflow_ros.ros.dds_env import PROFILE_VARIABLE, TRANSPORT_VARIABLE, large_data_environment  # noqa: E402
from mdflow_ros.ros.mailbox import LatestOnly  # noqa: E402
from mdflow_ros.ros.pairing import FrameInfo, PairTracker, pair_break  # noqa: E402
from mdflow_ros.ros.params import PARAMETERS, ParameterError, declare_parameters  # noqa: E402
from mdflow_ros.ros.stats import FlowStats  # noqa: E402
from support import ROOT, domain_id, wait_until  # noqa: E402


S = 1_000_000_000


def flat_yaml() -> dict:
    """config/flow.yaml's parameters, nested keys joined with dots."""
    config = yaml.safe_load((ROOT / "config" / "flow.yaml").read_text())
    assert list(config) == ["/**"] and list(config["/**"]) == ["ros__parameters"]

    def flatten(tree: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in tree.items():
            if isinstance(value, dict):
                out.update(flatten(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    return flatten(config["/**"]["ros__parameters"])


def test_yaml_holds_exactly_the_declared_parameters_with_their_defaults_and_types():
    declared = {spec.name: spec.default for spec in PARAMETERS}
    in_yaml = flat_yaml()
    assert list(in_yaml) == list(declared)
    for name, default in declared.items():
        assert type(in_yaml[name]) is type(default), name
        assert in_yaml[name] == default, name


@pytest.fixture
def make_node():
    """Bare rclpy nodes (own context and domain) to declare the parameters on."""
    import rclpy

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id(__name__))
    nodes = []

    def make(**overrides):
        from rclpy.parameter import Parameter

        nodes.append(rclpy.create_node("flow_node_params", context=context, start_parameter_services=False,
                                       enable_rosout=False,
                                       parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()]))
        return nodes[-1]

    yield make
    for node in nodes:
        node.destroy_node()
    context.try_shutdown()


def test_declared_parameters_have_descriptors_and_refuse_read_only_changes(make_node):
    from rclpy.parameter import Parameter

    bare_node = make_node()
    values = declare_parameters(bare_node)
    assert values == {spec.name: spec.default for spec in PARAMETERS}
    for spec in PARAMETERS:
        descriptor = bare_node.describe_parameter(spec.name)
        assert descriptor.description and descriptor.read_only == spec.read_only
    assert bare_node.describe_parameter("input_height").integer_range[0].step == 64
    refused = bare_node.set_parameters([Parameter("backend", value="pytorch")])[0]
    assert not refused.successful
    assert bare_node.set_parameters([Parameter("output_scale", value=0.5)])[0].successful
    assert not bare_node.set_parameters([Parameter("output_scale", value=2.0)])[0].successful


def test_bad_choices_stop_the_node_with_the_parameter_named(make_node):
    with pytest.raises(ParameterError, match="parameter backend is 'cuda'"):
        declare_parameters(make_node(backend="cuda"))
    with pytest.raises(ParameterError, match="input_height and input_width"):
        declare_parameters(make_node(input_height=128))


def info(t_s: float, size=(480, 640), encoding="rgb8", frame_id="camera") -> FrameInfo:
    return FrameInfo(round(t_s * S), size[0], size[1], encoding, frame_id)


def test_pair_breaks_on_camera_size_encoding_time_jumps_and_gaps():
    assert pair_break(info(1.0), info(1.1), 0.5) is None
    assert pair_break(info(1.0), info(1.1, frame_id="left"), 0.5)[0] == "frame_id"
    assert pair_break(info(1.0), info(1.1, (240, 320)), 0.5)[0] == "size"
    assert pair_break(info(1.0), info(1.1, encoding="bgr8"), 0.5)[0] == "encoding"
    assert pair_break(info(5.0), info(1.0), 0.5)[0] == "backwards"
    assert pair_break(info(1.0), info(1.0), 0.5)[0] == "still"
    assert pair_break(info(1.0), info(1.6), 0.5)[0] == "gap"
    assert pair_break(info(1.0), info(100.0), 0.0) is None


def test_tracker_pairs_with_the_previous_processed_frame_and_reports_each_run_of_resets_once():
    tracker = PairTracker()
    steps = [tracker.advance(info(t), name, 0.5) for t, name in
             ((1.0, "a"), (1.1, "b"), (3.0, "c"), (5.0, "d"), (7.0, "e"), (7.1, "f"), (0.5, "g"))]
    assert [s.previous for s in steps] == [None, "a", None, None, None, "e", None]
    assert [s.log for s in steps] == [False, False, True, False, False, False, True]
    assert "gap of 1.900 s" in steps[2].reset and "time jumped back" in steps[6].reset
    assert tracker.resets == 4
    tracker.forget()
    assert tracker.advance(info(0.6), "h", 0.5).previous is None


def test_mailbox_keeps_only_the_newest_and_counts_replacements():
    box = LatestOnly()
    assert box.put(1) is False
    assert box.put(2) is True
    assert box.take(0.1) == 2
    assert box.take(0.01) is None
    got = []
    worker = threading.Thread(target=lambda: got.append(box.take()))
    worker.start()
    time.sleep(0.05)
    box.put(3)
    worker.join(2.0)
    assert got == [3]
    box.close()
    assert box.take() is None


def test_stats_report_rate_percentiles_and_counters():
    stats = FlowStats()
    stats.count("received", 10)
    stats.count("dropped", 4)
    for i in range(11):
        stats.record_publish(100.0 + i * 0.1, 0.010 + i * 0.001, 0.005)
    snap = stats.snapshot(101.0)
    assert snap["received"] == 10 and snap["dropped"] == 4 and snap["published"] == 11
    assert snap["publish_rate_hz"] == pytest.approx(10.0)
    assert snap["latency_p50_ms"] == pytest.approx(15.0)
    assert snap["latency_max_ms"] == pytest.approx(20.0)
    assert stats.snapshot(200.0)["publish_rate_hz"] == 0.0


def test_large_data_environment_respects_existing_transport_choices():
    env = large_data_environment({"PATH": "/bin"})
    assert env[PROFILE_VARIABLE].endswith("config/fastdds_large_data.xml")
    mine = {TRANSPORT_VARIABLE: "UDPv4"}
    assert large_data_environment(mine) == mine


def test_flow_message_carries_the_flow_and_the_header_of_the_newer_frame(built_msgs):
    from std_msgs.msg import Header

    from mdflow_ros.io.ros_image import image_to_array
    from mdflow_ros.ros.message import flow_message

    small = np.zeros((24, 32, 2), np.float32)
    small[..., 0], small[..., 1] = 4.0, -2.0
    header = Header(frame_id="cam")
    header.stamp.sec = 7
    msg = flow_message(header, header.stamp, small, None, 0.5, "m.pt@00", "test backend", 0.01)
    assert msg.flow.encoding == "32FC2" and msg.flow.header.frame_id == "cam"
    assert np.array_equal(image_to_array(msg.flow), small)
    assert (msg.confidence.encoding, msg.confidence.height, len(msg.confidence.data)) == ("32FC1", 0, 0)
    assert msg.output_scale == 0.5 and msg.model == "m.pt@00"


def test_the_worker_pairs_previous_then_current_and_never_across_a_reset(make_node, flow_model, built_msgs):
    """In-process FlowNode: what reaches FlowEstimator.estimate, in which order (a swap would not show in EPE)."""
    from rclpy.parameter import Parameter

    from mdflow_ros.io.ros_image import array_to_image
    from mdflow_ros.ros.node import FlowNode

    probe = make_node()
    node = FlowNode(context=probe.context, enable_rosout=False, parameter_overrides=[
        Parameter("model", value=str(flow_model.path)), Parameter("backend", value="pytorch"),
        Parameter("input_height", value=64), Parameter("input_width", value=128)])
    calls = []
    estimate = node.estimator.estimate

    def recording(img1, img2, encoding, **options):
        calls.append((int(img1[0, 0, 0]), int(img2[0, 0, 0]), encoding))
        return estimate(img1, img2, encoding, **options)

    node.estimator.estimate = recording

    def send(value: int, t_s: float) -> None:
        msg = array_to_image(np.full((64, 96, 3), value, np.uint8), "bgr8")
        msg.header.stamp.sec, msg.header.stamp.nanosec = int(t_s), round(t_s % 1 * S)
        node._on_image(msg)

    def counter(name: str):
        return lambda: node.stats.snapshot(time.monotonic())[name]

    try:
        send(10, 1.0)
        time.sleep(0.3)
        send(20, 1.1)
        wait_until(lambda: counter("published")() == 1, 30, "the first flow")
        send(30, 9.0)
        wait_until(lambda: counter("resets")() == 1, 10, "the reset")
        send(40, 9.1)
        wait_until(lambda: counter("published")() == 2, 30, "the second flow")
    finally:
        node.close()
        node.destroy_node()
    assert calls == [(10, 20, "bgr8"), (30, 40, "bgr8")]


def test_qos_follows_the_standard_overrides_and_a_bad_one_stops_the_node(make_node, flow_model, built_msgs):
    """REP-2003 defaults, changed per topic through ROS 2's qos_overrides.<topic>.* parameters (read-only)."""
    from rclpy.parameter import Parameter
    from rclpy.qos import ReliabilityPolicy

    from mdflow_ros.ros.node import FlowNode, StartupError

    probe = make_node()
    base = [Parameter("model", value=str(flow_model.path)), Parameter("backend", value="pytorch"),
            Parameter("input_height", value=64), Parameter("input_width", value=128)]
    overrides = {"qos_overrides./image.subscription.reliability": "reliable",
                 "qos_overrides./image.subscription.depth": 3,
                 "qos_overrides./optical_flow.publisher.reliability": "best_effort"}
    node = FlowNode(context=probe.context, enable_rosout=False,
                    parameter_overrides=base + [Parameter(k, value=v) for k, v in overrides.items()])
    try:
        assert (node._sub.qos_profile.reliability, node._sub.qos_profile.depth) == (ReliabilityPolicy.RELIABLE, 3)
        assert node._pub.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
        assert node._pub_flow.qos_profile.reliability == ReliabilityPolicy.RELIABLE, "the other topics keep theirs"
        assert node.describe_parameter("qos_overrides./image.subscription.depth").read_only
        refused = node.set_parameters([Parameter("qos_overrides./image.subscription.depth", value=5)])[0]
        assert not refused.successful
    finally:
        node.close()
        node.destroy_node()
    defaults = FlowNode(context=probe.context, enable_rosout=False, parameter_overrides=base)
    try:
        assert (defaults._sub.qos_profile.reliability, defaults._sub.qos_profile.depth) == (
            ReliabilityPolicy.BEST_EFFORT, 1)
        assert (defaults._pub.qos_profile.reliability, defaults._pub.qos_profile.depth) == (
            ReliabilityPolicy.RELIABLE, 1)
    finally:
        defaults.close()
        defaults.destroy_node()
    bad = [Parameter("qos_overrides./optical_flow.publisher.reliability", value="sometimes")]
    with pytest.raises(StartupError, match=r"qos_overrides\./optical_flow\.publisher.*sometimes.*allowed: history"):
        FlowNode(context=probe.context, enable_rosout=False, parameter_overrides=base + bad)
