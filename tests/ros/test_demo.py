"""The demo (python -m mdflow_ros.ros.demo, what `bash run.sh demo` runs) is closed-loop: with inferences
slower than its bursts (640x480 at the automatic network size on one thread, over a second each here,
against 0.7 s between bursts) it still gets the flow of every pair."""
import subprocess
import sys

import pytest

pytest.importorskip("rclpy")

from support import ROOT  # noqa: E402


def test_the_demo_waits_for_every_pair_when_inference_is_slower_than_its_bursts(ros, flow_model):
    out = ros.tmp / "demo"
    proc = subprocess.run([sys.executable, "-m", "mdflow_ros.ros.demo", "--model", str(flow_model.path), "--pairs", "3",
                           "--threads", "1", "--out", str(out), "--domain", str(ros.domain)],
                          env=ros.env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr + (out / "node.log").read_text()
    assert "over 3/3 pairs" in proc.stdout and "no flow received" not in proc.stdout
    assert len(list(out.glob("pair_*.png"))) == 3
