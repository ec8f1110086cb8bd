"""Minimal stand-ins of ROS launch's ``launch`` and ``launch_ros`` (not installable from PyPI), enough to run
launch/flow.launch.py's generate_launch_description() and see the node it would start.

``install(monkeypatch)`` puts them in sys.modules. They keep what the launch file hands them; ``Node.ros_args``
turns a Node's arguments into the ``--ros-args`` of the node process: node name, namespace, parameter files,
parameter values (``-p``; launch_ros passes them through a temporary parameter file, to the same effect)
and remappings; ``Node.environment`` is the extra environment the process gets.
"""
from __future__ import annotations

import sys
import types
from typing import Any, Callable


class LaunchContext:
    """The launch configurations (argument values) of one launch."""

    def __init__(self):
        self.launch_configurations: dict[str, str] = {}


class LaunchDescription:
    def __init__(self, entities: list[Any]):
        self.entities = list(entities)


class DeclareLaunchArgument:
    def __init__(self, name: str, default_value: str | None = None, description: str = ""):
        self.name, self.default_value, self.description = name, default_value, description


class OpaqueFunction:
    def __init__(self, function: Callable[[LaunchContext], list[Any]]):
        self.function = function

    def execute(self, context: LaunchContext) -> list[Any]:
        return self.function(context)


class LaunchConfiguration:
    def __init__(self, name: str):
        self.name = name

    def perform(self, context: LaunchContext) -> str:
        return context.launch_configurations[self.name]


class Node:
    def __init__(self, *, package: str, executable: str, name: str | None = None, namespace: str | None = None,
                 parameters: list[Any] | None = None, remappings: list[tuple[str, str]] | None = None,
                 additional_env: dict[str, str] | None = None, **options: Any):
        self.package, self.executable, self.name, self.namespace = package, executable, name, namespace
        self.parameters, self.remappings = list(parameters or []), list(remappings or [])
        self.environment, self.options = dict(additional_env or {}), options

    def ros_args(self) -> list[str]:
        args = ["--ros-args"]
        if self.name:
            args += ["-r", f"__node:={self.name}"]
        if self.namespace:
            args += ["-r", f"__ns:={self.namespace}"]
        for entry in self.parameters:
            if isinstance(entry, dict):
                args += [a for key, value in entry.items() for a in ("-p", f"{key}:={value}")]
            else:
                args += ["--params-file", str(entry)]
        for source, target in self.remappings:
            args += ["-r", f"{source}:={target}"]
        return args


def install(monkeypatch: Any) -> None:
    """Register launch, launch.actions, launch.substitutions, launch_ros and launch_ros.actions in sys.modules."""
    contents = {
        "launch": {"LaunchDescription": LaunchDescription, "LaunchContext": LaunchContext},
        "launch.actions": {"DeclareLaunchArgument": DeclareLaunchArgument, "OpaqueFunction": OpaqueFunction},
        "launch.substitutions": {"LaunchConfiguration": LaunchConfiguration},
        "launch_ros": {},
        "launch_ros.actions": {"Node": Node},
    }
    for name, attributes in contents.items():
        module = types.ModuleType(name, f"test stand-in of ROS {name}")
        module.__dict__.update(attributes)
        monkeypatch.setitem(sys.modules, name, module)
