"""The flow node's ROS parameters: one table of names, defaults, descriptions and ranges.

config/flow.yaml holds the same names and defaults (a test keeps the two equal). Read-only
parameters are fixed when the node starts (they decide the model, the backend or the
topics); the others can be changed at run time with ``ros2 param set``. QoS is not here: rclpy
declares ROS 2's standard ``qos_overrides.<topic>.*`` parameters for every topic (ros/node.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType

from mdflow_ros.inference.backend import BACKENDS
from mdflow_ros.ros.pairing import MAX_FRAME_GAP_S



@dataclass(frozen=True)
class ParamSpec:
    """One parameter: name, default (its Python type is the parameter type) and constraints."""

    name: str
    default: Any
    description: str
    read_only: bool = True
    int_range: tuple[int, int, int] | None = None
    float_range: tuple[float, float] | None = None
    choices: tuple[str, ...] = ()

    def descriptor(self) -> ParameterDescriptor:
        """The rcl ParameterDescriptor (type, description, range, read-only) of this parameter."""
        kinds = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
                 float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING}
        text = self.description + (f" One of: {', '.join(self.choices)}." if self.choices else "")
        desc = ParameterDescriptor(name=self.name, type=kinds[type(self.default)], description=text,
                                   read_only=self.read_only)
        if self.int_range:
            low, high, step = self.int_range
            desc.integer_range = [IntegerRange(from_value=low, to_value=high, step=step)]
        if self.float_range:
            low, high = self.float_range
            desc.floating_point_range = [FloatingPointRange(from_value=low, to_value=high, step=0.0)]
        return desc


PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("backend", "auto",
              "Inference backend; auto takes the first that loads of TensorRT, ONNX Runtime (GPU, then CPU) "
              "and PyTorch.", choices=BACKENDS),
    ParamSpec("fallback_backend", "auto",
              "Backend to load when `backend` fails to load; none: exit with an error instead.",
              choices=("none", *BACKENDS)),
    ParamSpec("model", "",
              "Model file (.pt, or .onnx for onnxruntime), or 'teacher' / 'student' for a shipped model. "
              "Empty: the shipped teacher."),
    ParamSpec("device", "cpu", "Torch device of the pytorch backend (cpu, cuda, cuda:1, ...)."),
    ParamSpec("threads", 0, "CPU threads for inference; 0: the library's default.", int_range=(0, 256, 1)),
    ParamSpec("input_height", 0,
              "Network input height in pixels (multiple of 64); 0 (with input_width 0): each side of the frame "
              "rounded to a multiple of 64.", int_range=(0, 4096, 64)),
    ParamSpec("input_width", 0, "Network input width in pixels (multiple of 64); 0: see input_height.",
              int_range=(0, 4096, 64)),
    ParamSpec("confidence", True, "Compute and publish the confidence map (about doubles the inference time)."),
    ParamSpec("input_transport", "raw",
              "raw: sensor_msgs/Image on `image`; compressed: sensor_msgs/CompressedImage on `image/compressed`.",
              choices=("raw", "compressed")),
    ParamSpec("max_frame_gap", MAX_FRAME_GAP_S,
              "Largest time in seconds between the stamps of two frames that still form a pair; a larger gap "
              "resets the pair. 0: no limit.", read_only=False, float_range=(0.0, 3600.0)),
    ParamSpec("output_scale", 1.0,
              "Size of the published flow and confidence relative to the input frames; flow values are in "
              "pixels of the published image.", read_only=False, float_range=(0.05, 1.0)),
    ParamSpec("color_max_flow", 0.0,
              "Flow length in pixels drawn fully saturated on optical_flow/color; 0: the longest vector of each "
              "frame.", read_only=False, float_range=(0.0, 10000.0)),
    ParamSpec("diagnostics_period", 1.0, "Seconds between two /diagnostics messages.", float_range=(0.1, 60.0)),
)
"""Every parameter the flow node declares, in declaration order."""


class ParameterError(ValueError):
    """A parameter value the node cannot start with (the text names the parameter)."""


def declare_parameters(node: Any) -> dict[str, Any]:
    """Declare PARAMETERS on an rclpy node and return their values by name, checked against their choices."""
    values = {}
    for spec in PARAMETERS:
        values[spec.name] = node.declare_parameter(spec.name, spec.default, spec.descriptor()).value
        if spec.choices and values[spec.name] not in spec.choices:
            raise ParameterError(f"parameter {spec.name} is {values[spec.name]!r}; expected one of {spec.choices}")
    if (values["input_height"] == 0) != (values["input_width"] == 0):
        raise ParameterError("input_height and input_width must both be 0 (automatic) or both be set")
    return values
