"""setup.py's extras, read from the metadata pip resolves: exactly one ONNX Runtime per install that asks for one.

onnxruntime and onnxruntime-gpu both install the ``onnxruntime`` module; with both in one
environment the last one installed wins, and the CUDA provider silently disappears when that is
the CPU build. So the runtime holds neither, "cpu" brings the CPU build and "gpu" the GPU build
(x86-64 only: PyPI has no aarch64 onnxruntime-gpu), and no other extra brings either. The
metadata is built here with setuptools' PEP 517 hook, as pip builds it; markers are evaluated for
x86-64 and aarch64 Linux. (Dependencies of dependencies are PyPI's: a ``pip install --dry-run
--report`` of the gpu and training requirements on x86-64 resolved to onnxruntime-gpu alone.)
"""
import itertools
import subprocess
import sys

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from support import ROOT

ORT = {"onnxruntime", "onnxruntime-gpu"}
MACHINES = ("x86_64", "aarch64")
RUNTIME_CHOICES = ("cpu", "gpu")


@pytest.fixture(scope="module")
def metadata(tmp_path_factory) -> tuple[list[Requirement], set[str]]:
    """(Requires-Dist requirements, Provides-Extra names) of setup.py's wheel metadata."""
    out = tmp_path_factory.mktemp("metadata")
    code = ("import sys; from setuptools import build_meta; "
            "print(build_meta.prepare_metadata_for_build_wheel(sys.argv[1]))")
    result = subprocess.run([sys.executable, "-c", code, str(out)], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    lines = (out / result.stdout.strip().splitlines()[-1] / "METADATA").read_text().splitlines()
    requirements = [Requirement(line.split(":", 1)[1].strip()) for line in lines if line.startswith("Requires-Dist:")]
    extras = {line.split(":", 1)[1].strip() for line in lines if line.startswith("Provides-Extra:")}
    return requirements, extras


def installed(requirements: list[Requirement], extras: tuple[str, ...], machine: str) -> set[str]:
    """The distributions ``pip install 'mdflow_ros[extras]'`` asks for directly on Linux ``machine``, Python 3.11."""
    env = {"platform_machine": machine, "sys_platform": "linux", "platform_system": "Linux", "python_version": "3.11"}
    return {canonicalize_name(r.name) for r in requirements
            if r.marker is None or any(r.marker.evaluate({**env, "extra": e}) for e in extras)}


def other_extra_sets(extras: set[str]):
    """Every combination of the extras that are not an ONNX Runtime choice (the empty one included)."""
    others = sorted(extras - set(RUNTIME_CHOICES))
    return [combo for k in range(len(others) + 1) for combo in itertools.combinations(others, k)]


def test_the_extras_are_the_documented_ones(metadata):
    assert metadata[1] == {"cpu", "gpu", "torch", "offline", "train", "ros", "demo", "autocast", "openvino", "dev"}


@pytest.mark.parametrize("machine", MACHINES)
def test_only_the_cpu_and_gpu_extras_bring_onnx_runtime_one_each(metadata, machine):
    requirements, extras = metadata
    for combo in other_extra_sets(extras):
        assert installed(requirements, combo, machine) & ORT == set(), combo
        assert installed(requirements, (*combo, "cpu"), machine) & ORT == {"onnxruntime"}, combo
        gpu = {"onnxruntime-gpu"} if machine == "x86_64" else set()
        assert installed(requirements, (*combo, "gpu"), machine) & ORT == gpu, combo


def test_the_gpu_extra_brings_tensorrt_on_x86_64_and_pycuda_everywhere(metadata):
    requirements, _ = metadata
    x86, arm = (installed(requirements, ("gpu",), m) for m in MACHINES)
    assert {"tensorrt", "pycuda", "onnx"} <= x86
    assert "pycuda" in arm and not {"tensorrt", "onnxruntime-gpu"} & arm, "Jetsons take both from JetPack"


def test_the_plain_install_is_the_runtime_without_pytorch(metadata):
    requirements, _ = metadata
    assert installed(requirements, (), "x86_64") == {"numpy", "opencv-contrib-python-headless"}


def test_offline_flow_needs_no_pytorch_and_training_reads_recordings_with_the_same_libraries(metadata):
    requirements, _ = metadata
    offline = installed(requirements, ("offline",), "x86_64")
    assert {"rosbags", "mcap", "tqdm", "pillow"} <= offline and "torch" not in offline
    assert offline <= installed(requirements, ("train",), "x86_64")
