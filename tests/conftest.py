"""Fixtures shared by the test rooms (runtime/, ros/, training/, bench/); the helpers they use are in support.py.

built_msgs builds the OpticalFlow message once per session; flow_model is the model the node
tests run (the shipped teacher, or a quick fit where none ships); ros gives each test module its
own ROS domain, environment and scratch folder, and applies its DDS settings to this process
while the module runs (for the module's NodeLink).
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mdflow_ros.ros import harness

pytest.register_assert_rewrite("support")

from support import ROOT, RosSetup, TestModel, domain_id, ros_environment, shipped_or_quick_model  # noqa: E402


@pytest.fixture(scope="session")
def built_msgs() -> None:
    """Build the OpticalFlow message into this venv (returns at once when it is up to date)."""
    proc = subprocess.run(["bash", str(ROOT / "tools" / "build_msgs.sh")], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable}, timeout=600)
    assert proc.returncode == 0, f"tools/build_msgs.sh failed:\n{proc.stdout}\n{proc.stderr}"


@pytest.fixture(scope="session")
def flow_model(tmp_path_factory: pytest.TempPathFactory) -> TestModel:
    """A model for the node: the shipped one, or a quick fit cached for this session."""
    return shipped_or_quick_model(tmp_path_factory.mktemp("node_model"))


@pytest.fixture(scope="session")
def mdflow_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MDFLOW_CACHE of the node processes (ONNX exports), shared by the session."""
    return tmp_path_factory.mktemp("mdflow_cache")


@pytest.fixture(scope="module")
def ros(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, mdflow_cache: Path,
        built_msgs: None) -> RosSetup:
    """The module's domain and environment, also applied to this process (for its receiver) while the module runs."""
    domain = domain_id(request.module.__name__)
    env = ros_environment(domain, mdflow_cache)
    with pytest.MonkeyPatch.context() as patch:
        for key in harness.DDS_KEYS:
            if key in env:
                patch.setenv(key, env[key])
            else:
                patch.delenv(key, raising=False)
        yield RosSetup(domain, env, tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1]))

