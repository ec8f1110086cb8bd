"""The OpenVINO backend in real OpenVINO sessions: parity with ONNX Runtime, precisions, the IR cache, auto.

Each test uses its own cache ($MDFLOW_CACHE), so an IR or a timing record is built by the test
that reads it. bf16 runs only on CPUs that support it (AVX-512 BF16 or AMX); elsewhere its
test is skipped and the unsupported-precision error is tested instead.
"""
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from mdflow_ros.inference import BackendUnavailable, FlowEstimator, cpu_choice
from mdflow_ros.synthetic import fixed_demo_pair
from support import ROOT, SHIPPED_MODEL

ov = pytest.importorskip("openvino")
from mdflow_ros.inference import openvino_backend  # noqa: E402  (needs openvino)
from mdflow_ros.inference.openvino_backend import (  # noqa: E402
    FLOW_CHANGE_LIMIT_PX,
    OpenVinoBackend,
    PrecisionUnsupported,
    cpu_precisions,
    ir_folder,
    shared_core,
)

SIZE = (192, 256)
SUPPORTED = cpu_precisions(shared_core())


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache of this test's own (what it builds, it reads)."""
    monkeypatch.setenv("MDFLOW_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """A cache shared by the tests that do not test caching (the IR is converted once)."""
    with pytest.MonkeyPatch.context() as patch:
        folder = tmp_path_factory.mktemp("openvino_cache")
        patch.setenv("MDFLOW_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="module")
def pair():
    return fixed_demo_pair(SIZE)


@pytest.fixture(scope="module")
def ort_result(pair):
    return FlowEstimator("onnxruntime", threads=2).estimate(pair.img1, pair.img2)


def test_fp32_equals_onnx_runtime_on_the_shipped_model(shared_cache, pair, ort_result):
    est = FlowEstimator("openvino", threads=2, precision="fp32")
    assert est.backend.precision == "fp32" and "OpenVINO" in est.backend.description
    assert est.backend.onnx_path == SHIPPED_MODEL.with_suffix(".onnx")
    flow, conf = est.estimate(pair.img1, pair.img2)
    print(f"max |flow_openvino - flow_onnxruntime| = {np.abs(flow - ort_result.flow).max():.2e} px, "
          f"confidence {np.abs(conf - ort_result.confidence).max():.2e}")
    assert np.abs(flow - ort_result.flow).max() < 0.01
    assert np.abs(conf - ort_result.confidence).max() < 0.01
    zero = np.linalg.norm(pair.flow, axis=2)[pair.valid].mean()
    assert np.linalg.norm(flow - pair.flow, axis=2)[pair.valid].mean() < 0.5 * zero


def test_compiled_models_are_kept_per_network_size(shared_cache, pair):
    est = FlowEstimator("openvino", threads=2, precision="fp32", confidence=True)
    small = est.estimate(pair.img1, pair.img2).flow
    est.input_size = (128, 192)
    other = est.estimate(pair.img1, pair.img2).flow
    est.input_size = None
    again = est.estimate(pair.img1, pair.img2).flow
    assert set(est.backend._requests) == {SIZE, (128, 192)}
    assert other.shape == small.shape and np.abs(other - small).max() > 1e-3, "another size must really run"
    np.testing.assert_array_equal(again, small)


@pytest.mark.skipif("bf16" not in SUPPORTED, reason=f"this CPU runs OpenVINO at {', '.join(SUPPORTED)} only")
def test_bf16_moves_the_flow_within_its_budget(shared_cache, pair, ort_result):
    flow, conf = FlowEstimator("openvino", threads=2, precision="bf16").estimate(pair.img1, pair.img2)
    change = float(np.linalg.norm(flow - ort_result.flow, axis=2).mean())
    print(f"bf16: mean flow change against ONNX Runtime fp32 {change:.4f} px")
    assert change < FLOW_CHANGE_LIMIT_PX


def test_an_unsupported_precision_is_refused_naming_what_the_cpu_runs(shared_cache):
    missing = [p for p in ("bf16", "int8") if p not in SUPPORTED]
    if not missing:
        pytest.skip("this CPU supports every precision")
    with pytest.raises(PrecisionUnsupported, match=f"precision {missing[0]} is not supported by this CPU") as err:
        FlowEstimator("openvino", precision=missing[0])
    assert ", ".join(SUPPORTED) in str(err.value)
    with pytest.raises(BackendUnavailable, match=f"openvino: precision {missing[0]} is not supported"):
        FlowEstimator("auto", precision=missing[0])


def test_precision_is_checked_by_name_and_backend():
    with pytest.raises(ValueError, match="precision must be one of .*'fp16'"):
        FlowEstimator("openvino", precision="fp16")
    with pytest.raises(ValueError, match="precision int8 runs on the openvino backend only"):
        FlowEstimator("onnxruntime", precision="int8")


def test_the_ir_is_cached_reused_and_rebuilt_when_damaged(cache, pair, ort_result, caplog):
    first = OpenVinoBackend(SHIPPED_MODEL, True, "fp32", threads=2)
    xml = ir_folder(first.onnx_path) / "fp32.xml"
    manifest = json.loads(xml.with_suffix(".json").read_text())
    assert manifest["onnx_sha256"] and manifest["openvino"] == ov.__version__
    stamp = xml.with_suffix(".bin").stat().st_mtime_ns
    with caplog.at_level(logging.WARNING, "mdflow_ros.inference"):
        OpenVinoBackend(SHIPPED_MODEL, True, "fp32", threads=2)
    assert xml.with_suffix(".bin").stat().st_mtime_ns == stamp and not caplog.records, "an intact IR is reused"

    for damage in ("bin", "xml"):
        path = xml.with_suffix(f".{damage}")
        data = bytearray(path.read_bytes())
        data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
        path.write_bytes(bytes(data) if damage == "bin" else bytes(data[:len(data) // 3]))
        caplog.clear()
        with caplog.at_level(logging.WARNING, "mdflow_ros.inference"):
            backend = OpenVinoBackend(SHIPPED_MODEL, True, "fp32", threads=2)
        assert any("does not match its manifest" in r.getMessage() for r in caplog.records), damage
        assert json.loads(xml.with_suffix(".json").read_text())["bin_sha256"] == manifest["bin_sha256"]
        est = FlowEstimator("onnxruntime")
        est.backend = backend
        flow = est.estimate(pair.img1, pair.img2).flow
        assert np.abs(flow - ort_result.flow).max() < 0.01, f"a rebuilt IR after damaged {damage} must be the graph"


def test_cancel_stops_later_runs(shared_cache, pair):
    est = FlowEstimator("openvino", threads=2, precision="fp32", confidence=True)
    est.estimate(pair.img1, pair.img2)
    est.cancel()
    from mdflow_ros.inference.backend import Cancelled

    with pytest.raises(Cancelled):
        est.estimate(pair.img1, pair.img2)


def test_a_backend_released_on_another_thread_leaves_signal_handling_intact(tmp_path):
    """OpenVINO's CPU plugin moves the loading thread's alternate signal stack into its own memory; were the
    plugin unloaded from another thread, the next Python signal handler (here SIGCHLD's, as a DataLoader
    installs) would run on freed memory and the process die of SIGSEGV (shared_core keeps it loaded)."""
    code = """
import gc, signal, subprocess, threading, time
from mdflow_ros.inference import FlowEstimator
from mdflow_ros.synthetic import fixed_demo_pair
pair = fixed_demo_pair((64, 96))
box = [FlowEstimator("openvino", threads=1, precision="fp32")]
box[0].estimate(pair.img1, pair.img2)
def release():
    box.clear()
    gc.collect()
worker = threading.Thread(target=release)
worker.start()
worker.join()
signal.signal(signal.SIGCHLD, lambda *_: print("SIGCHLD handled", flush=True))
subprocess.run(["true"], check=True)
time.sleep(0.2)
print("alive", flush=True)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "MDFLOW_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    assert proc.stdout.splitlines()[-2:] == ["SIGCHLD handled", "alive"]


def test_without_openvino_the_backend_names_the_extra_and_auto_skips_it(tmp_path):
    code = """
import logging, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "openvino" or name.startswith("openvino."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)")
sys.meta_path.insert(0, Block())
logging.basicConfig(level=logging.INFO, format="LOG %(message)s")
from mdflow_ros.inference import BackendUnavailable, FlowEstimator, cpu_choice
try:
    FlowEstimator("openvino")
except BackendUnavailable as err:
    print("ERROR", err)
est = FlowEstimator("auto", threads=1)
print("CHOSE", est.backend.name)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "MDFLOW_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    error = next(line for line in proc.stdout.splitlines() if line.startswith("ERROR"))
    assert "pip install 'mdflow_ros[openvino]'" in error and "No module named 'openvino'" in error
    assert "CHOSE onnxruntime" in proc.stdout
    assert "skipped openvino: the openvino backend cannot be imported here" in proc.stderr


def test_auto_measures_once_per_machine_and_logs_why(cache, caplog, monkeypatch):
    monkeypatch.setattr(cpu_choice, "BUSY_SHARE", 1.0)  # cache whatever the host's load (tested below)
    with caplog.at_level(logging.INFO, "mdflow_ros.inference"):
        first = FlowEstimator("auto", threads=2, input_size=(128, 192), confidence=True)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "OpenVINO precision 'auto' chose" in text
    for precision in ("bf16", "int8"):
        if precision not in SUPPORTED:
            assert f"{precision}: not supported by this CPU" in text
    if "int8" in SUPPORTED:
        assert "int8: not built for this graph yet" in text, "auto never builds int8 by itself"
    chose = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("backend 'auto' chose"))
    assert f"backend 'auto' chose {first.backend.name};" in chose
    assert first.backend.name in ("openvino", "onnxruntime") and "(measured now" in chose
    records = list((cache / "timings").glob("cpu-backend-*.json"))
    assert len(records) == 1
    ms = json.loads(records[0].read_text())
    assert ms["challenger_ms"] > 0 and ms["incumbent_ms"] > 0
    wins = ms["challenger_ms"] <= 0.9 * ms["incumbent_ms"]
    assert first.backend.name == ("openvino" if wins else "onnxruntime")

    caplog.clear()
    with caplog.at_level(logging.INFO, "mdflow_ros.inference"):
        second = FlowEstimator("auto", threads=2, input_size=(128, 192), confidence=True)
    assert second.backend.name == first.backend.name
    assert any("measured once on this machine" in r.getMessage() for r in caplog.records)

    records[0].write_text("{not json")
    caplog.clear()
    with caplog.at_level(logging.INFO, "mdflow_ros.inference"):
        FlowEstimator("auto", threads=2, input_size=(128, 192), confidence=True)
    assert any("(measured now" in r.getMessage() for r in caplog.records), "a damaged record is measured again"


def burn_cpus(seconds: float) -> list[subprocess.Popen]:
    """One busy-looping process per CPU, for ``seconds``."""
    code = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(os.cpu_count() or 1)]


def test_a_timing_next_to_busy_processes_decides_this_run_only_and_is_not_cached(cache, caplog):
    burners = burn_cpus(120)
    try:
        record, share = cpu_choice.others_share(lambda: {"spin": sum(range(3_000_000))})
        assert share is not None and share > cpu_choice.BUSY_SHARE, f"other processes took {share} of the CPUs"
        with caplog.at_level(logging.INFO, "mdflow_ros.inference"):
            estimator = FlowEstimator("auto", threads=2, input_size=(128, 192), confidence=True)
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    chose = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("backend 'auto' chose"))
    assert estimator.backend.name in ("openvino", "onnxruntime") and "decides for this run only, not cached" in chose
    assert not list((cache / "timings").glob("cpu-backend-*.json")), "a timing on a busy machine is not cached"


@pytest.mark.skipif("int8" not in SUPPORTED, reason="this CPU has no int8 support in OpenVINO")
def test_int8_is_built_once_with_its_flow_change_recorded_and_auto_respects_it(cache, pair, caplog):
    fp32 = OpenVinoBackend(SHIPPED_MODEL, True, "fp32", threads=2)
    xml = ir_folder(fp32.onnx_path) / "int8.xml"
    record = fp32.build_int8(xml, calibration=2, check=1, size=SIZE)
    assert record["flow_change_px"] > 0 and record["calibration_pairs"] == 2 and record["check_size"] == list(SIZE)
    int8 = OpenVinoBackend(SHIPPED_MODEL, True, "int8", threads=2)
    assert int8.precision == "int8" and xml.with_suffix(".bin").stat().st_size < 0.5 * (
        xml.with_name("fp32.bin").stat().st_size), "int8 weights"
    a, b = (openvino_backend._network_input(x) for x in (pair.img1, pair.img2))
    f8, _ = int8.run(a, b)
    f32, _ = fp32.run(a, b)
    assert 0 < np.linalg.norm(f8 - f32, axis=1).mean() < 5.0

    with caplog.at_level(logging.INFO, "mdflow_ros.inference"):
        auto = OpenVinoBackend(SHIPPED_MODEL, True, "auto", threads=2)
    text = "\n".join(r.getMessage() for r in caplog.records)
    if record["flow_change_px"] >= FLOW_CHANGE_LIMIT_PX:
        assert auto.precision != "int8" and f"int8: moves the flow by {record['flow_change_px']:.2f} px" in text
    else:
        assert "OpenVINO int8 timed on this CPU" in text
