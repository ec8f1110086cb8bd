"""bench/gpu_smoke.py without a GPU: its arguments, its report of what is missing, its JSON lines, its step processes.

A machine without a GPU runs the environment and reference steps for real; every GPU step must
then be recorded as missing, naming what it lacks, and the run exits 3. The steps' processes
are also driven directly, to check that a step which cannot run, breaks or hangs is reported as
one record instead of taking the run down.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from bench import gpu_smoke
from mdflow_ros.inference.onnxruntime_backend import OnnxRuntimeBackend
from support import ROOT, SHIPPED_MODEL

HAS_GPU_STACK = any(importlib.util.find_spec(m) is not None for m in ("pycuda", "tensorrt"))
pytestmark = pytest.mark.skipif(not SHIPPED_MODEL.is_file(), reason="no shipped teacher")


def smoke(tmp_path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.gpu_smoke", "--work", str(tmp_path / "work"), *argv],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(HAS_GPU_STACK, reason="PyCUDA or TensorRT is installed here: GPU steps would run")
def test_without_a_gpu_every_gpu_step_is_missing_and_says_what_it_lacks(tmp_path):
    out = tmp_path / "smoke.jsonl"
    result = smoke(tmp_path, "--size", "64x64", "--runs", "2", "--out", str(out))
    assert result.returncode == 3, result.stderr
    lines = result.stdout.splitlines()
    assert out.read_text().splitlines() == lines, "the file holds exactly the lines printed"
    records = [json.loads(line) for line in lines]
    assert all(list(r)[:2] == ["check", "status"] and r["status"] in gpu_smoke.STATUSES for r in records)
    by_check: dict[str, list[dict]] = {}
    for r in records:
        by_check.setdefault(r["check"], []).append(r)
    environment, = by_check["environment"]
    assert environment["status"] == "ok" and environment["gpu"] is None
    assert {m["what"] for m in environment["missing"]} >= {"a GPU with its driver", "PyCUDA", "TensorRT"}
    assert by_check["reference"][0]["status"] == "ok" and (tmp_path / "work" / "reference.npz").is_file()
    for check in ("kernel", "onnxruntime-gpu", "pytorch-cuda"):
        assert by_check[check][0]["status"] == "missing" and by_check[check][0]["missing"]
    cases = {(r["route"], r["precision"]) for r in by_check["build"]}
    assert cases == {(route, p) for route in ("onnx_ops", "plugin_aot") for p in ("fp32", "fp16")}
    assert all("TensorRT" in r["missing"] for r in by_check["build"])
    assert len(by_check["engine"]) == 4 and all(r["status"] == "missing" for r in by_check["engine"])
    summary, = by_check["summary"]
    assert summary["status"] == "missing" and summary["counts"]["failed"] == 0
    assert summary["counts"]["ok"] == 2 and sum(summary["counts"].values()) == len(records) - 1
    assert "missing here:" in result.stderr and "TensorRT: blocks build, engine" in result.stderr


def test_only_runs_the_steps_it_names(tmp_path):
    result = smoke(tmp_path, "--only", "kernel")
    assert [json.loads(line)["check"] for line in result.stdout.splitlines()] == ["environment", "kernel", "summary"]


@pytest.mark.parametrize("argv, message", [
    (["--size", "100x100"], "multiples of 64"),
    (["--only", "kernel,warp-drive"], "unknown step(s) warp-drive"),
    (["--runs", "0"], "--runs must be at least 1"),
    (["--budget-s", "0"], "--budget-s must be positive"),
    (["--wheels", "/no/such/folder"], "is not a folder"),
])
def test_bad_arguments_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpu_smoke.parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_a_step_that_cannot_run_is_missing_and_one_that_breaks_is_failed(tmp_path):
    cmd = [sys.executable, "-m", "bench.gpu_smoke", "--work", str(tmp_path), "--size", "64x64", "--runs", "2",
           "--child"]
    if importlib.util.find_spec("torch") is not None:
        import torch

        if not torch.cuda.is_available():
            no_cuda, = gpu_smoke.run_step([*cmd, "pytorch-cuda"], gpu_smoke.child_environment(tmp_path), 300,
                                          "pytorch-cuda")
            assert no_cuda["status"] == "missing" and "no CUDA device" in no_cuda["missing"][0]
    broken, = gpu_smoke.run_step([*cmd, "engine", "--engine", str(tmp_path / "none.engine"), "--route", "onnx_ops",
                                  "--precision", "fp16"], gpu_smoke.child_environment(tmp_path), 300, "engine")
    assert broken["status"] in ("failed", "missing") and broken["route"] == "onnx_ops"
    assert broken["precision"] == "fp16"


def test_a_process_that_dies_or_hangs_becomes_one_failed_record(tmp_path):
    line = gpu_smoke.MARKER + json.dumps(gpu_smoke.record("build", "ok", route="onnx_ops"))
    died = gpu_smoke.run_step([sys.executable, "-c", f"print({line!r}); raise SystemExit(7)"], {}, 60, "build",
                              route="onnx_ops")
    assert [r["status"] for r in died] == ["ok", "failed"] and "exited with 7" in died[1]["reason"]
    silent = gpu_smoke.run_step([sys.executable, "-c", "print('library chatter')"], {}, 60, "kernel")
    assert silent[0]["status"] == "failed" and "library chatter" in silent[0]["output_tail"]
    hung = gpu_smoke.run_step([sys.executable, "-c", "import time; time.sleep(30)"], {}, 1, "kernel")
    assert hung[0]["status"] == "failed" and "timed out" in hung[0]["reason"]


def test_records_and_timing_have_the_documented_form():
    with pytest.raises(ValueError, match="status must be one of"):
        gpu_smoke.record("kernel", "fine")
    calls = []
    timing = gpu_smoke.time_calls(lambda: calls.append(1), runs=20, warmup=3)
    assert len(calls) == 23 and timing["runs"] == 20
    assert 0 <= timing["p10_ms"] <= timing["median_ms"] <= timing["p90_ms"]
    assert gpu_smoke.parse_records("chatter\n" + gpu_smoke.MARKER + '{"check": "kernel", "status": "ok"}\n') == \
        [{"check": "kernel", "status": "ok"}]


class Shifted:
    """A backend whose flow is ONNX Runtime's moved by 0.05 px: outside the fp32 limits, inside fp16's."""

    def __init__(self, inner):
        self.inner, self.description = inner, "ONNX Runtime + 0.05 px"

    def run(self, img1, img2):
        flow, conf = self.inner.run(img1, img2)
        return flow + 0.05, conf


def test_a_backend_check_judges_parity_by_precision_and_times_the_calls(tmp_path, capsys):
    args = gpu_smoke.parse_args(["--work", str(tmp_path), "--size", "64x64", "--runs", "3"])
    gpu_smoke.step_reference(args)
    cpu = OnnxRuntimeBackend(SHIPPED_MODEL, True)
    gpu_smoke.check_backend("engine", lambda: cpu, "fp32", args, True, route="onnx_ops")
    gpu_smoke.check_backend("engine", lambda: Shifted(cpu), "fp32", args, True, route="onnx_ops")
    gpu_smoke.check_backend("engine", lambda: Shifted(cpu), "fp16", args, True, route="onnx_ops")
    gpu_smoke.check_backend("pytorch-cuda", lambda: Shifted(cpu), "fp32", args, False)
    reference, *checks = gpu_smoke.parse_records(capsys.readouterr().out)
    assert reference["check"] == "reference" and reference["size"] == [64, 64]
    assert [r["status"] for r in checks] == ["ok", "failed", "ok", "ok"], "the baselines' parity is not judged"
    exact, shifted, _, baseline = checks
    assert exact["parity"]["passed"] and exact["parity"]["max_flow_px"] < 1e-3 and exact["precision"] == "fp32"
    assert shifted["parity"]["max_flow_px"] == pytest.approx(0.05, rel=1e-2) and not baseline["parity"]["passed"]
    assert all(r["runs"] == 3 and r["median_ms"] > 0 and r["route"] == "onnx_ops" for r in checks[:3])
    assert json.loads(json.dumps(checks)) == checks, "every field is plain JSON"


def test_a_reference_of_another_size_is_not_used(tmp_path, capsys):
    args = gpu_smoke.parse_args(["--work", str(tmp_path), "--size", "64x64", "--runs", "2"])
    gpu_smoke.step_reference(args)
    assert gpu_smoke.load_reference(tmp_path, (64, 64)) is not None
    assert gpu_smoke.load_reference(tmp_path, (128, 64)) is None
