"""The flow node's ROS parameters: one table of names, defaults, descriptions and ranges.

config/flow.yaml holds the same names and defaults (a test keeps the two equal). Read-only
parameters are fixed when the node starts (they decide the model, the backend or the
topics); the others can be changed at run time with ``ros2 param set``. QoS is not here: rclpy
declares ROS 2's standard ``qos_overrides.<topic>.*`` parameters for every topic (ros/node.py),
and ``qos_check`` refuses the values rclpy lets through (a depth of 0).

Every value the node cannot start with is a ParameterError whose text names the parameter, the
value and what is allowed, for the node's one ``cannot start:`` line; so is a parameter file
that is missing or not YAML (``check_parameter_files``, before rcl reads it).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType,
                                SetParametersResult)
from rclpy.exceptions import ParameterException
from rclpy.qos import HistoryPolicy, QoSProfile

from mdflow_ros.inference.backend import BACKENDS, PRECISIONS
from mdflow_ros.ros.pairing import MAX_FRAME_GAP_S

DEFAULT_MAX_INPUT_PIXELS = 3840 * 2160
"""Largest frame the node takes by default: 4K UHD (README: its peak memory)."""


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

    def allowed(self) -> str:
        """What values the parameter takes, in words (for error messages)."""
        if self.choices:
            return f"one of {', '.join(self.choices)}"
        if isinstance(self.default, bool):
            return "true or false"
        if isinstance(self.default, int):
            low, high, step = self.int_range or (None, None, 1)
            span = f" from {low} to {high}" if low is not None else ""
            return f"an integer{span}" + (f", a multiple of {step}" if step > 1 else "")
        if isinstance(self.default, float):
            span = f" from {self.float_range[0]:g} to {self.float_range[1]:g}" if self.float_range else ""
            return f"a number{span}, written with a decimal point (1.0, not 1)"
        return "a string"

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
              "Inference backend; auto takes the first that loads of TensorRT, ONNX Runtime GPU, OpenVINO "
              "(where installed and measured faster than ONNX Runtime CPU on this CPU), ONNX Runtime CPU and "
              "PyTorch.", choices=BACKENDS),
    ParamSpec("fallback_backend", "auto",
              "Backend to load when `backend` fails to load; none: exit with an error instead.",
              choices=("none", *BACKENDS)),
    ParamSpec("model", "",
              "Model file (.pt, or .onnx for onnxruntime), or 'teacher' / 'student' for a shipped model. "
              "Empty: the shipped teacher."),
    ParamSpec("precision", "auto",
              "OpenVINO precision; auto: the fastest this CPU supports whose flow change against fp32 was checked "
              "and is under 0.1 px; bf16 and int8 run on the openvino backend only.", choices=PRECISIONS),
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
    ParamSpec("max_input_pixels", DEFAULT_MAX_INPUT_PIXELS,
              "Largest frame, in pixels (width x height), the node processes; larger frames are dropped, logged and "
              "counted before they are decoded (compressed ones by their header). The default, 3840x2160, bounds "
              "the node's memory (see the README).", int_range=(64 * 64, 16384 * 16384, 1)),
    ParamSpec("diagnostics_period", 1.0, "Seconds between two /diagnostics messages.", float_range=(0.1, 60.0)),
)
"""Every parameter the flow node declares, in declaration order."""


class ParameterError(ValueError):
    """A parameter value the node cannot start with (the text names the parameter)."""


def refusal(name: str, value: Any, allowed: str) -> ParameterError:
    """The ParameterError for parameter ``name`` set to ``value``."""
    return ParameterError(f"parameter {name} is {value!r}; allowed: {allowed}")


def declare_parameters(node: Any) -> dict[str, Any]:
    """Declare PARAMETERS on an rclpy node and return their values by name.

    ParameterError (naming the parameter, its value and what is allowed) for a value of the
    wrong type, out of range, off its step or not one of its choices, and for input_height /
    input_width set one without the other.
    """
    values = {}
    for spec in PARAMETERS:
        try:
            values[spec.name] = node.declare_parameter(spec.name, spec.default, spec.descriptor()).value
        except ParameterException:  # rclpy refused the value: declare it untyped, only to name it
            given = node.declare_parameter(spec.name, spec.default, ParameterDescriptor(dynamic_typing=True)).value
            raise refusal(spec.name, given, spec.allowed()) from None
        if spec.choices and values[spec.name] not in spec.choices:
            raise refusal(spec.name, values[spec.name], spec.allowed())
    if (values["input_height"] == 0) != (values["input_width"] == 0):
        raise ParameterError(f"input_height and input_width must both be 0 (automatic) or both be set; they are "
                             f"{values['input_height']} and {values['input_width']}")
    return values


def qos_check(prefix: str) -> Callable[[QoSProfile], SetParametersResult]:
    """A QoSOverridingOptions callback for the entity whose override parameters start with ``prefix``
    (``qos_overrides.<topic>.<publisher|subscription>``): ParameterError for a depth below 1 with
    history keep_last (rclpy only warns, then uses the system default)."""
    def check(qos: QoSProfile) -> SetParametersResult:
        if qos.depth < 0 or (qos.depth < 1 and qos.history == HistoryPolicy.KEEP_LAST):
            raise refusal(f"{prefix}.depth", qos.depth, "an integer of at least 1 (with history keep_last)")
        return SetParametersResult(successful=True)

    return check


def parameter_files(args: Sequence[str]) -> list[Path]:
    """The files named by ``--params-file`` in a command line."""
    return [Path(args[i + 1]) for i, arg in enumerate(args[:-1]) if arg == "--params-file"]


def check_parameter_files(args: Sequence[str]) -> None:
    """ParameterError for a ``--params-file`` that is missing, unreadable, not YAML or not a mapping
    (before rcl reads it, whose own failure is a multi-line error)."""
    for path in parameter_files(args):
        try:
            content = yaml.safe_load(path.read_text())
        except OSError as err:
            raise ParameterError(f"parameter file {path} cannot be read: {err.strerror or err}") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ParameterError(f"parameter file {path} is not valid YAML{where}: {problem}") from None
        if not isinstance(content, dict):
            raise ParameterError(f"parameter file {path} holds no '<node name>: ros__parameters:' mapping")
