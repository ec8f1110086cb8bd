"""training/export_trt.py: the ONNX and its parity report are written here; without TensorRT the exit says so."""
import contextlib
import importlib.util
import io
import json

import onnx
import pytest
import torch

from mdflow_ros.inference.onnx_files import META_CONFIDENCE, onnx_metadata
from mdflow_ros.models import FastFlowNet
from mdflow_ros.models.model_file import save_model_file
from training import export_trt

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
    assert report["size"] == [64, 64] and report["limit_px"] == 0.01
    assert report["onnxruntime"]["passed"] and report["onnxruntime"]["max_flow_diff_px"] < 1e-3
    assert "max_confidence_diff" in report["onnxruntime"] and report["max_abs_flow_px"] > 0


def test_plugin_route_writes_the_custom_op_onnx(export):
    out, _, _ = export
    model = onnx.load(str(out / "model.plugin.onnx"))
    nodes = [n for n in model.graph.node if n.op_type == "Correlation53"]
    assert len(nodes) == 5 and all(n.domain == "mdflow" for n in nodes)
    means = [sum(n.op_type == "ReduceMean" for n in m.graph.node) for m in (onnx.load(str(out / "model.onnx")), model)]
    assert means[0] - means[1] == 5 * 53, "each correlation's 53 channel means are gone"


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
    assert not report["onnxruntime"]["passed"] and report["onnxruntime"]["max_flow_diff_px"] > 0.01


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
