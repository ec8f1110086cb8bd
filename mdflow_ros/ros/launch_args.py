"""What launch/flow.launch.py starts, as plain data: testable, and reproducible without ROS launch.

The launch file declares LAUNCH_ARGUMENTS and turns their values into a FlowNodeLaunch (the
node's namespace, parameter files and overrides, topic remappings and environment); the
same object gives the equivalent ``python -m mdflow_ros.node --ros-args ...`` command line.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mdflow_ros.inference.backend import BACKENDS, PRECISIONS
from mdflow_ros.ros.dds_env import PROFILE_NAME, PROFILE_VARIABLE

LAUNCH_ARGUMENTS: tuple[tuple[str, str, str], ...] = (
    ("image_topic", "/camera/image_raw",
     "Camera topic (sensor_msgs/Image; its /compressed sibling with input_transport compressed)."),
    ("params_file", "", "Parameter file of the node; empty: the installed config/flow.yaml."),
    ("backend", "", f"Inference backend ({', '.join(BACKENDS)}); empty: as in params_file."),
    ("precision", "", f"OpenVINO precision ({', '.join(PRECISIONS)}); empty: as in params_file."),
    ("namespace", "", "Namespace of the node and of its optical_flow topics."),
    ("fastdds_profile", "",
     f"Fast DDS XML profile for large images, set as {PROFILE_VARIABLE}; empty: the installed "
     f"config/{PROFILE_NAME}; 'none': leave the environment as it is."),
)
"""(name, default, description) of every launch argument."""

EXECUTABLE = "flow_node"
NODE_NAME = "flow_node"


@dataclass
class FlowNodeLaunch:
    """The node process the launch file starts."""

    namespace: str
    parameter_files: list[str]
    parameter_overrides: dict[str, str] = field(default_factory=dict)
    remappings: list[tuple[str, str]] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)

    def ros_args(self) -> list[str]:
        """The equivalent ``--ros-args`` of ``python -m mdflow_ros.node``."""
        args = ["--ros-args", "-r", f"__node:={NODE_NAME}"]
        if self.namespace:
            args += ["-r", f"__ns:={self.namespace}"]
        for path in self.parameter_files:
            args += ["--params-file", path]
        for name, value in self.parameter_overrides.items():
            args += ["-p", f"{name}:={value}"]
        for source, target in self.remappings:
            args += ["-r", f"{source}:={target}"]
        return args


def flow_node_launch(share_dir: str | Path, image_topic: str, params_file: str = "", backend: str = "",
                     namespace: str = "", fastdds_profile: str = "", precision: str = "") -> FlowNodeLaunch:
    """The node for these launch-argument values; share_dir is the package's installed share/mdflow_ros."""
    share_dir = Path(share_dir)
    namespace = namespace.strip("/")
    launch = FlowNodeLaunch(
        namespace=f"/{namespace}" if namespace else "",
        parameter_files=[params_file or str(share_dir / "config" / "flow.yaml")],
        remappings=[("image", image_topic), ("image/compressed", image_topic.rstrip("/") + "/compressed")],
    )
    if backend:
        launch.parameter_overrides["backend"] = backend
    if precision:
        launch.parameter_overrides["precision"] = precision
    if fastdds_profile != "none":
        launch.environment[PROFILE_VARIABLE] = fastdds_profile or str(share_dir / "config" / PROFILE_NAME)
    return launch
