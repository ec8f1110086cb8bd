"""mdflow-flow (mdflow_ros/cli.py) in its own process: with ``import torch`` made to fail, the shipped
teacher runs from its shipped .onnx through ONNX Runtime and its flow matches a known motion; the
installed console script with its defaults writes exactly FlowEstimator's flow in every format; an
output it cannot write fails before the model runs, in one line."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from mdflow_ros.io import read_flow
from mdflow_ros.metrics import epe
from mdflow_ros.synthetic import fixed_demo_pair
from support import DEPLOYED_RUNTIMES, ROOT, SHIPPED_MODEL, deployed_estimator_as, no_torch_environment

pytestmark = pytest.mark.skipif(not SHIPPED_MODEL.with_suffix(".onnx").is_file(), reason="no shipped .onnx")


def test_without_pytorch_the_cli_runs_the_shipped_model_on_onnx_runtime(tmp_path):
    torch_log = tmp_path / "torch_imports.log"
    env = no_torch_environment(dict(os.environ), torch_log)
    check = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert check.returncode != 0 and "blocked" in check.stderr, "the blocker must work, or this test proves nothing"
    torch_log.unlink()

    pair = fixed_demo_pair((192, 256))
    frames = [tmp_path / "frame1.png", tmp_path / "frame2.png"]
    for path, img in zip(frames, (pair.img1, pair.img2)):
        cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    out, viz = tmp_path / "flow.flo", tmp_path / "viz.png"
    proc = subprocess.run([sys.executable, "-m", "mdflow_ros.cli", *map(str, frames), "--out", str(out),
                           "--viz", str(viz), "--threads", "1"], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert any(r in proc.stdout for r in DEPLOYED_RUNTIMES) and SHIPPED_MODEL.with_suffix(".onnx").name in proc.stdout
    assert not torch_log.exists(), f"the CLI tried to import {torch_log.read_text().split()}"
    flow, known = read_flow(out)
    assert flow.shape == (192, 256, 2) and known.all() and cv2.imread(str(viz)).shape == (192, 512, 3)
    expected = deployed_estimator_as(proc.stdout, threads=1).estimate(pair.img1, pair.img2)
    np.testing.assert_allclose(flow, expected.flow, atol=1e-4)
    zero = epe(np.zeros_like(pair.flow), pair.flow, pair.valid)
    assert epe(flow, pair.flow, pair.valid) < 0.3 * zero


def _mdflow_flow() -> str:
    """The installed console script (what a user types), run with this checkout's package."""
    script = shutil.which("mdflow-flow", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the mdflow-flow console script is not installed here (pip install -e .)")
    return script


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([_mdflow_flow(), *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> tuple[list[str], tuple[np.ndarray, np.ndarray]]:
    """Two PNG frames of the demo pair, and the frames as read back (what the CLI gets)."""
    folder = tmp_path_factory.mktemp("cli_frames")
    pair = fixed_demo_pair((192, 256))
    paths = [str(folder / "frame1.png"), str(folder / "frame2.png")]
    for path, img in zip(paths, (pair.img1, pair.img2)):
        cv2.imwrite(path, cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return paths, tuple(cv2.cvtColor(cv2.imread(p), cv2.COLOR_BGR2RGB) for p in paths)


def test_mdflow_flow_writes_the_estimators_flow_in_every_format(frames, tmp_path):
    paths, (img1, img2) = frames
    outputs = {suffix: tmp_path / f"flow{suffix}" for suffix in (".flo", ".npy", ".png")}
    viz = tmp_path / "viz.jpg"
    proc = _run(*paths, "--out", str(outputs[".flo"]), "--viz", str(viz), "--threads", "2")
    assert proc.returncode == 0, proc.stderr
    expected = deployed_estimator_as(proc.stdout, threads=2).estimate(img1, img2)
    mag = np.linalg.norm(expected.flow, axis=2)
    assert f"|flow| mean {mag.mean():.2f} px, max {mag.max():.2f} px" in proc.stdout
    assert f"confidence > 0.5 on {100 * (expected.confidence > 0.5).mean():.0f} %" in proc.stdout
    assert cv2.imread(str(viz)).shape == (192, 512, 3)
    for suffix in (".npy", ".png"):
        proc = _run(*paths, "--out", str(outputs[suffix]), "--threads", "2")
        assert proc.returncode == 0, proc.stderr
    for suffix, atol in ((".flo", 1e-4), (".npy", 1e-4), (".png", 0.5 / 64 + 1e-4)):  # KITTI: 1/64 px steps
        flow, valid = read_flow(outputs[suffix])
        assert valid.all()
        np.testing.assert_allclose(flow, expected.flow, atol=atol, err_msg=f"{suffix} differs from FlowEstimator's")


@pytest.mark.parametrize("option, value, message", [
    ("--out", "flow.jpg", "unknown flow file suffix '.jpg', expected one of .flo, .png, .npy"),
    ("--viz", "viz.xyz", "OpenCV cannot write .xyz pictures"),
])
def test_an_output_it_cannot_write_fails_at_once_with_one_line(frames, tmp_path, option, value, message):
    proc = _run(*frames[0], option, str(tmp_path / value))
    assert proc.returncode == 2 and proc.stdout == "", "it must fail before running the model"
    assert proc.stderr.count("\n") == 1 and message in proc.stderr and "Traceback" not in proc.stderr
