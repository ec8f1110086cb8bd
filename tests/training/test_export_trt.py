"""training/export_trt.py: the ONNX and its parity report are written here; without TensorRT the exit says so.

The engine part runs against the fake TensorRT of tests/runtime/test_tensorrt_backend.py with
a fake device probe, and the engine's parity stands in for loading it on a GPU: reusing --out
on another GPU, or with a timing cache TensorRT cannot use, must give the documented exits.
"""
import contextlib
import importlib.util
import io
import json
import sys

import numpy as np
import onnx
import pytest
import torch

from fake_tensorrt import fake_tensorrt
from mdflow_ros.inference.engine_manifest import MANIFEST_FILE, DeviceInfo, read_manifest, timing_cache_path
from mdflow_ros.inference.onnx_files import META_CONFIDENCE, onnx_metadata
from mdflow_ros.models import FastFlowNet
from mdflow_ros.models.model_file import save_model_file
from training import export_trt
from training.parity import compare

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "teacher.pt"
    save_model_file(path, FastFlowNet(), {"note": "fixed-seed untrained test model"})
    return path


@pytest.fixture(scope="module")
def export(checkpoint, tmp_path_factory):
    """One plugin-route export at 64 x 64 (the plugin route writes every CPU-side file)."""
    out = tmp_path_factory.mktemp("export")
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = export_trt.main([str(checkpoint), "--out", str(out), "--height", "64", "--width", "64",
                                "--correlation", "plugin_aot"])
    return out, code, stderr.getvalue()


def test_onnx_and_parity_report_are_written_and_parity_holds(export):
    out, _, _ = export
    assert onnx_metadata(out / "model.onnx")[META_CONFIDENCE] == "1"
    report = json.loads((out / "parity.json").read_text())
    ort = report["onnxruntime"]
    assert report["size"] == [64, 64] and ort["precision"] == "fp32"
    assert ort["limits"] == {"max_flow_px": 0.01, "max_confidence": 0.01}
    assert ort["passed"] and ort["max_flow_px"] < 1e-3 and ort["mean_flow_px"] <= ort["max_flow_px"] * 2 ** 0.5
    assert ort["max_confidence"] < 1e-3 and report["max_abs_flow_px"] > 0


def test_plugin_route_writes_the_custom_op_onnx(export):
    out, _, _ = export
    model = onnx.load(str(out / "model.plugin.onnx"))
    nodes = [n for n in model.graph.node if n.op_type == "Correlation53"]
    assert len(nodes) == 5 and all(n.domain == "mdflow" for n in nodes)
    products = [sum(n.op_type == "MatMul" for n in m.graph.node) for m in (onnx.load(str(out / "model.onnx")), model)]
    assert products == [5, 0], "each correlation's matrix product is gone"


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here: the build would be attempted")
def test_without_tensorrt_the_exit_is_non_zero_with_a_one_line_reason(export):
    out, code, stderr = export
    assert code == export_trt.EXIT_NO_ENGINE
    assert stderr.count("\n") == 1 and stderr.startswith("export_trt: no engine built: TensorRT is not installed")
    assert "model.onnx and parity.json are in" in stderr
    assert not (out / "model.engine").exists() and not (out / "manifest.json").exists()
    assert not list(out.glob(".*.tmp")), "no half-written files are left"


def test_parity_check_fails_for_an_onnx_of_other_weights(export):
    out, _, _ = export
    torch.manual_seed(1)
    report = export_trt.onnx_parity(FastFlowNet().eval(), out / "model.onnx", True, (64, 64))
    assert not report["onnxruntime"]["passed"] and report["onnxruntime"]["max_flow_px"] > 0.01


@pytest.mark.parametrize("argv, message", [
    (["--height", "64"], "--height and --width go together"),
    (["--height", "64", "--width", "64", "--profile", "64x64"], "either --height and --width or --profile"),
    (["--profile", "64x64:32x32:128x128"], "multiples of 64"),
    (["--profile", "128x128:64x64:256x256"], "min <= opt <= max"),
    (["--workspace", "0"], "--workspace must be positive"),
])
def test_bad_arguments_are_usage_errors(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        export_trt.main(["model.pt", "--out", str(tmp_path), *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_a_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert export_trt.main([str(tmp_path / "none.pt"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


GPUS = (DeviceInfo("10.9.0.34", "NVIDIA H100 80GB HBM3", (9, 0), (13, 0)),
        DeviceInfo("10.9.0.34", "NVIDIA A100-SXM4-40GB", (8, 0), (13, 0)))


@pytest.fixture
def fake_gpu(monkeypatch):
    """export_trt on a fake TensorRT and device; the engine's parity is ONNX Runtime's plus ``error`` px."""
    state = {"device": GPUS[0], "error": 0.0}

    def probe_device():
        sys.modules["tensorrt"].device = state["device"].gpu_name
        return state["device"]

    def engine_parity(net, engine_path, with_confidence, size, precision):
        img1, img2 = export_trt.parity_pair(*size)
        reference = export_trt.reference_outputs(net, with_confidence, img1, img2)
        return compare(reference, [reference[0] + np.float32(state["error"]), *reference[1:]], precision)

    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt())
    monkeypatch.setattr(export_trt, "probe_device", probe_device)
    monkeypatch.setattr(export_trt, "engine_parity", engine_parity)
    return state


def test_reusing_out_on_another_gpu_keeps_one_timing_cache_per_gpu(checkpoint, tmp_path, fake_gpu, capsys):
    out = tmp_path / "out"
    argv = [str(checkpoint), "--out", str(out), "--height", "64", "--width", "64"]
    for device in GPUS:
        fake_gpu["device"] = device
        assert export_trt.main(argv) == 0, capsys.readouterr().err
        assert read_manifest(out / MANIFEST_FILE).device == device
    caches = sorted(p.name for p in (out / "timing").iterdir())
    assert caches == sorted(timing_cache_path(out, d).name for d in GPUS) and len(caches) == 2
    assert not (out / "timing.cache").exists()


def test_a_timing_cache_tensorrt_cannot_use_is_replaced(checkpoint, tmp_path, fake_gpu, caplog):
    out = tmp_path / "out"
    cache = timing_cache_path(out, GPUS[0])
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"written by another TensorRT")
    assert export_trt.main([str(checkpoint), "--out", str(out), "--height", "64", "--width", "64"]) == 0
    assert "TensorRT cannot read it" in caplog.text and cache.read_bytes() != b"written by another TensorRT"


def test_an_engine_outside_its_precisions_parity_limits_exits_1_and_stays(checkpoint, tmp_path, fake_gpu, capsys):
    fake_gpu["error"] = 0.05
    out = tmp_path / "out"
    argv = [str(checkpoint), "--out", str(out), "--height", "64", "--width", "64"]
    assert export_trt.main(argv) == export_trt.EXIT_PARITY
    err = capsys.readouterr().err
    assert "engine parity failed: TensorRT fp32 vs PyTorch" in err and "max_flow_px <= 0.01" in err
    assert (out / MANIFEST_FILE).is_file() and not json.loads((out / "parity.json").read_text())["tensorrt"]["passed"]
    assert export_trt.main([*argv, "--fp16"]) == 0, "0.05 px is within fp16's mean limit"


def test_auto_route_on_jetpack_6_builds_the_standard_op_engine(checkpoint, tmp_path, fake_gpu):
    fake_gpu["device"] = DeviceInfo("10.3.0", "Orin (nvgpu)", (8, 7), (12, 6))
    sys.modules["tensorrt"].__version__ = "10.3.0"
    out = tmp_path / "out"
    assert export_trt.main([str(checkpoint), "--out", str(out), "--height", "64", "--width", "64",
                            "--correlation", "auto"]) == 0
    assert read_manifest(out / MANIFEST_FILE).spec.correlation_route == "onnx_ops"
    assert not (out / "model.plugin.onnx").exists()
