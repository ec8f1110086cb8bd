"""bench/accuracy.py, bench/methods.py and bench/latency.py's round-robin timing on real photos (no shared data, no weights)."""
import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bench import accuracy
from bench.latency import peak_rss_mb
from bench.methods import make_method
from mdflow_ros.metrics import epe
from mdflow_ros.models import FastFlowNet
from mdflow_ros.models.model_file import save_model_file
from mdflow_ros.synthetic import held_out_pairs


@pytest.fixture(scope="module")
def pair():
    return held_out_pairs(1, (192, 256), 7)[0]


@pytest.mark.parametrize("name", ["dis-ultrafast", "dis-fast", "dis-medium", "farneback", "deepflow", "rlof"])
def test_every_peer_gives_pixel_flow_at_input_size_and_beats_zero_flow(pair, name):
    flow = make_method(name, {}, threads=1)(pair.img1, pair.img2)
    assert flow.shape == pair.img1.shape[:2] + (2,) and flow.dtype == np.float32
    zero = epe(np.zeros_like(pair.flow), pair.flow, pair.valid)
    assert epe(flow, pair.flow, pair.valid) < 0.7 * zero, name


def test_a_model_row_without_its_file_is_a_clear_error():
    with pytest.raises(ValueError, match="no student model file"):
        make_method("student/pytorch", {}, threads=1)


def test_measured_rows_make_a_table_with_ratios_to_dis_medium(pair, tmp_path):
    results = {name: accuracy.measure(name, {}, threads=1, runs=1, synthetic=1, folders=[], max_pairs=None)
               for name in ("dis-medium", "zero")}
    (img1, img2, gt, valid), = accuracy.ground_truth_sets(1, [], None)[0].pairs
    magnitude = float(np.linalg.norm(gt, axis=2)[valid].mean())
    assert results["zero"]["accuracy"]["synthetic-1"]["epe"] == pytest.approx(magnitude, rel=1e-5)
    assert results["dis-medium"]["accuracy"]["synthetic-1"]["epe"] < 0.5 * magnitude
    args = argparse.Namespace(threads=1, argv=["--quick"])
    text = accuracy.markdown(results, args, {})
    speed_row = [line.split("|") for line in text.splitlines() if line.startswith("| dis-medium |")][-1]
    assert speed_row[3].strip() == "1.00" and speed_row[5].strip() == "1.00", "DIS-medium is 1.00x itself"
    assert "| zero | " in text and "synthetic-1 (1 pairs)" in text
    accuracy.pareto_plot(results, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_peak_memory_of_a_child_is_its_own_not_its_parents():
    ballast = np.ones(400 * 2**20 // 8)
    child = subprocess.run([sys.executable, "-c", "from bench.latency import peak_rss_mb; print(peak_rss_mb())"],
                           capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[2])
    assert float(child.stdout) < 0.5 * peak_rss_mb() and ballast.sum() > 0


def test_latency_times_methods_round_robin_and_tables_them(tmp_path):
    from bench import latency

    calls = []

    def sleeper(name, seconds):
        def run(a, b):
            calls.append(name)
            time.sleep(seconds)
        return run

    a, b = latency.frames(64, 96)
    ms = latency.round_robin({"slow": sleeper("slow", 0.03), "fast": sleeper("fast", 0.01)}, a, b, runs=4)
    assert 25 < ms["slow"] < 60 and 8 < ms["fast"] < 0.8 * ms["slow"]
    assert calls[4:] == ["slow", "fast", "fast", "slow", "slow", "fast", "fast", "slow"], "interleaved, order rotating"
    model = tmp_path / "teacher_fastflownet.pt"
    save_model_file(model, FastFlowNet(), {"stage": "stage1"})
    run = latency.make_runner("onnxruntime fp32:flow", str(model), 1, 128, 192)
    assert run(a, b).shape == (64, 96, 2) and "ONNX Runtime" in run.description
    data = {"cpu": "test CPU", "python": "3", "runs": 4, "timing": {
        "fp32_peak_gflops": 100.0, "memory_mb": {"dis-medium": {"96x64": 50.0}},
        "sizes": {"96x64": {"gflop": 1.0, "ms": {"dis-medium": 10.0, "auto:flow": 40.0},
                            "descriptions": {"dis-medium": "", "auto:flow": "OpenVINO 1, CPU bf16, 1 threads, x.onnx"}}}}}
    rows = {line.split("|")[1].strip(): line.split("|") for line in latency.markdown(data, 1).splitlines()
            if line.startswith("| ") and "---" not in line}
    assert rows["dis-medium"][5].strip() == "1.00" and rows["auto:flow"][5].strip() == "4.00"
    assert rows["auto:flow"][6].strip() == "25" and rows["auto:flow"][7].strip() == "-", "bf16 has no measured peak"


def test_the_benchmarks_name_the_cpu_and_measure_its_peak():
    import platform

    from bench.latency import SGEMM_N, cpu_description, make_runner

    assert platform.machine() in cpu_description()
    product = make_runner("sgemm", None, 1, SGEMM_N, SGEMM_N)()
    assert product.shape == (SGEMM_N, SGEMM_N)


def test_a_users_model_file_is_one_more_row_beside_the_shipped_ones(pair, tmp_path):
    path = tmp_path / "mine.pt"
    save_model_file(path, FastFlowNet())
    files = {"teacher": tmp_path / "other.pt"}
    assert accuracy.extra_models([f"mine={path}"], files) == {"mine": path}
    flow = make_method("mine/onnxruntime", {"mine": path}, threads=1)(pair.img1, pair.img2)
    assert flow.shape == pair.img1.shape[:2] + (2,)
    for bad, message in ((f"mine{path}", "NAME=FILE"), (f"teacher={path}", "is taken"), ("x=/no/such.pt", "no such file"),
                         (f"dis-medium={path}", "is taken")):
        with pytest.raises(SystemExit, match=message):
            accuracy.extra_models([bad], files)
