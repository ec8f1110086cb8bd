"""The demo (python -m mdflow_ros.ros.demo, what `bash run.sh demo` runs): closed-loop, so with inferences
slower than its bursts (640x480 at the automatic network size on one thread, over a second each here,
against 0.7 s between bursts) it still gets the flow of every pair; and with its defaults it reports the
shipped teacher's true accuracy on its pairs."""
import json
import subprocess
import sys

import pytest

pytest.importorskip("rclpy")

from mdflow_ros.metrics import epe  # noqa: E402
from mdflow_ros.ros.demo import demo_pairs  # noqa: E402
from support import ROOT, SHIPPED_MODEL, deployed_estimator_as  # noqa: E402


def test_the_demo_waits_for_every_pair_when_inference_is_slower_than_its_bursts(ros, flow_model):
    out = ros.tmp / "demo"
    proc = subprocess.run([sys.executable, "-m", "mdflow_ros.ros.demo", "--model", str(flow_model.path), "--pairs", "3",
                           "--threads", "1", "--out", str(out), "--domain", str(ros.domain)],
                          env=ros.env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr + (out / "node.log").read_text()
    assert "over 3/3 pairs" in proc.stdout and "no flow received" not in proc.stdout
    assert len(list(out.glob("pair_*.png"))) == 3


@pytest.mark.skipif(not SHIPPED_MODEL.is_file(), reason="no shipped teacher: the demo's default needs one")
def test_the_demo_with_its_defaults_reports_what_the_estimator_gives(ros, monkeypatch):
    """`bash run.sh demo` with no model or backend given: the shipped teacher on "auto"; the EPE it reports for
    each pair is that of FlowEstimator()'s flow on the same frames, so what it prints is what users get. The
    estimator here runs the backend the demo reports ("auto" picked ONNX Runtime or OpenVINO, whichever
    measured faster on this machine) and reads the demo's cache."""
    out = ros.tmp / "demo_defaults"
    size = (192, 256)
    proc = subprocess.run([sys.executable, "-m", "mdflow_ros.ros.demo", "--pairs", "2", "--size", *map(str, size),
                           "--out", str(out), "--domain", str(ros.domain)],
                          env=ros.env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["received"] == 2
    monkeypatch.setenv("MDFLOW_CACHE", ros.env["MDFLOW_CACHE"])
    estimator = deployed_estimator_as(summary["pairs"][0]["backend"])
    for row, pair in zip(summary["pairs"], demo_pairs(2, size)):
        assert row["model"].startswith(f"{SHIPPED_MODEL.name}@") and row["backend"] == estimator.backend.description
        expected = epe(estimator.estimate(pair.img1, pair.img2).flow, pair.flow, pair.valid)
        assert row["epe_px"] == pytest.approx(expected, abs=1e-3)
    assert f"mean EPE {summary['epe_px']:.2f} px" in proc.stdout
