"""mdflow-flow (mdflow_ros/cli.py) in its own process, with ``import torch`` made to fail: the shipped
teacher runs from its shipped .onnx through ONNX Runtime, and its flow matches a known motion."""
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from mdflow_ros.io import read_flow
from mdflow_ros.metrics import epe
from mdflow_ros.synthetic import fixed_demo_pair
from support import DEPLOYED_RUNTIMES, ROOT, SHIPPED_MODEL, no_torch_environment

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
    zero = epe(np.zeros_like(pair.flow), pair.flow, pair.valid)
    assert epe(flow, pair.flow, pair.valid) < 0.5 * zero
