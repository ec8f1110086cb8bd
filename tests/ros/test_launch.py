"""launch/flow.launch.py: its arguments and what it starts.

ROS launch (launch, launch_ros) is not on PyPI, so the launch file itself is only loaded where
it is importable; everywhere, its decisions (mdflow_ros/ros/launch_args.py) are checked, and the
node is started exactly as the launch file would start it and must work.
"""
import ast
import importlib.util

import pytest

pytest.importorskip("rclpy")

from mdflow_ros.ros.dds_env import PROFILE_VARIABLE  # noqa: E402
from mdflow_ros.ros.harness import NodeProcess  # noqa: E402
from mdflow_ros.ros.launch_args import EXECUTABLE, LAUNCH_ARGUMENTS, flow_node_launch  # noqa: E402
from mdflow_ros.ros.pairing import stamp_ns  # noqa: E402
import launch_stand_ins  # noqa: E402
from support import ROOT, flow_for_one_pair, known_motion_pairs, wait_until, write_params  # noqa: E402


LAUNCH_FILE = ROOT / "launch" / "flow.launch.py"
HAS_LAUNCH_ROS = importlib.util.find_spec("launch_ros") is not None


def test_launch_arguments_turn_into_namespace_parameters_remappings_and_environment():
    names = [name for name, _, _ in LAUNCH_ARGUMENTS]
    assert names == ["image_topic", "params_file", "backend", "precision", "namespace", "fastdds_profile"]
    default = flow_node_launch("/opt/share/mdflow_ros", "/camera/image_raw")
    assert default.namespace == "" and default.parameter_files == ["/opt/share/mdflow_ros/config/flow.yaml"]
    assert default.parameter_overrides == {}
    assert default.remappings == [("image", "/camera/image_raw"), ("image/compressed", "/camera/image_raw/compressed")]
    assert default.environment == {PROFILE_VARIABLE: "/opt/share/mdflow_ros/config/fastdds_large_data.xml"}
    custom = flow_node_launch("/s", "/cam/rgb/", "/p.yaml", "pytorch", "robot1/", "none")
    assert custom.namespace == "/robot1" and custom.parameter_files == ["/p.yaml"]
    assert custom.parameter_overrides == {"backend": "pytorch"} and custom.environment == {}
    assert custom.ros_args() == ["--ros-args", "-r", "__node:=flow_node", "-r", "__ns:=/robot1",
                                 "--params-file", "/p.yaml", "-p", "backend:=pytorch",
                                 "-r", "image:=/cam/rgb/", "-r", "image/compressed:=/cam/rgb/compressed"]
    bf16 = flow_node_launch("/s", "/cam", backend="openvino", precision="bf16")
    assert bf16.parameter_overrides == {"backend": "openvino", "precision": "bf16"}


def test_the_launch_file_builds_its_node_from_launch_args():
    tree = ast.parse(LAUNCH_FILE.read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert {"LAUNCH_ARGUMENTS", "flow_node_launch", "EXECUTABLE", "NODE_NAME", "Node"} <= imported
    functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert "generate_launch_description" in functions
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert "DESTINATION lib/${PROJECT_NAME}" in cmake and "install(DIRECTORY launch" in cmake
    for name in ("config/flow.yaml", "config/fastdds_large_data.xml"):
        assert name in cmake and (ROOT / name).is_file()


@pytest.mark.parametrize("values", [{}, {"image_topic": "/cam/rgb/", "params_file": "/p.yaml", "backend": "pytorch",
                                         "namespace": "robot1/", "fastdds_profile": "none"}])
def test_generate_launch_description_starts_the_node_the_tests_start(monkeypatch, values):
    """The launch file itself, run against stand-ins of launch and launch_ros: it declares every launch argument
    with its default and starts flow_node with exactly the arguments flow_node_launch gives the tests' nodes."""
    launch_stand_ins.install(monkeypatch)
    spec = importlib.util.spec_from_file_location("flow_launch_stand_in", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "get_package_share_directory", lambda package: f"/share/{package}")
    description = module.generate_launch_description()
    declared = [e for e in description.entities if isinstance(e, launch_stand_ins.DeclareLaunchArgument)]
    assert [(d.name, d.default_value, d.description) for d in declared] == list(LAUNCH_ARGUMENTS)
    context = launch_stand_ins.LaunchContext()
    context.launch_configurations.update({d.name: d.default_value for d in declared}, **values)
    (opaque,) = [e for e in description.entities if isinstance(e, launch_stand_ins.OpaqueFunction)]
    (node,) = opaque.execute(context)
    expected = flow_node_launch("/share/mdflow_ros", **{**{n: d for n, d, _ in LAUNCH_ARGUMENTS}, **values})
    assert (node.package, node.executable) == ("mdflow_ros", EXECUTABLE)
    assert node.ros_args() == expected.ros_args() and node.environment == expected.environment
    assert f"{EXECUTABLE} = mdflow_ros.node:main" in (ROOT / "setup.py").read_text()


@pytest.mark.skipif(not HAS_LAUNCH_ROS, reason="launch_ros is not installed (not on PyPI); the launch file runs "
                                               "against stand-ins in test_generate_launch_description_starts_...")
def test_the_launch_description_declares_the_arguments_and_starts_the_node(monkeypatch):
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    spec = importlib.util.spec_from_file_location("flow_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "get_package_share_directory", lambda package: str(ROOT))
    description = module.generate_launch_description()
    declared = [e.name for e in description.entities if isinstance(e, DeclareLaunchArgument)]
    assert declared == [name for name, _, _ in LAUNCH_ARGUMENTS]
    context = LaunchContext()
    context.launch_configurations.update({name: default for name, default, _ in LAUNCH_ARGUMENTS})
    context.launch_configurations.update(namespace="robot1", backend="onnxruntime")
    opaque = [e for e in description.entities if isinstance(e, OpaqueFunction)][0]
    (node,) = opaque.execute(context)
    assert (node.node_package, node.node_executable) == ("mdflow_ros", "flow_node")


def test_the_node_started_as_the_launch_file_starts_it_works(ros, flow_model):
    params = write_params(ros.tmp / "launch_params.yaml", flow_model)
    spec = flow_node_launch(ROOT, "/launch_cam/image_raw", str(params), "onnxruntime", "robot2")
    env = {**ros.env, **spec.environment}
    assert env[PROFILE_VARIABLE] == str(ROOT / "config" / "fastdds_large_data.xml")
    node = NodeProcess(["-m", "mdflow_ros.node", *spec.ros_args()], env, ros.tmp / "launched.log")
    try:
        wait_until(lambda: "subscribed to" in node.output() or not node.alive(), 120, "the node to start")
        assert "subscribed to /launch_cam/image_raw; publishing /robot2/optical_flow" in node.output()
        sent, msg = flow_for_one_pair(ros, known_motion_pairs()[7], "/launch_cam/image_raw",
                                      "a flow from the launched node", namespace="/robot2")
        assert stamp_ns(msg.header.stamp) == sent[1]["stamp_ns"]
    finally:
        assert node.stop() == 0
