"""FlowEstimator: shapes and units, backends agreeing, the shipped-model rule, and bad input."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data

from mdflow_ros.files import ModelFileError, file_sha256
from mdflow_ros.inference import BackendUnavailable, FlowEstimator, InputError, ModelNotShippedError
from mdflow_ros.inference.estimator import (SHIPPED_FILES, WEIGHTS_VARIABLE, network_size, resize_flow, resize_map,
                                           resolve_model, shipped_model)
from mdflow_ros.inference.onnx_export import export_onnx
from mdflow_ros.inference.onnx_files import META_SOURCE, onnx_for, onnx_metadata
from mdflow_ros.models import FastFlowNet
from mdflow_ros.models.model_file import load_model_file, save_model_file


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A FastFlowNet model file with fixed (untrained) weights: enough for plumbing and parity."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "teacher.pt"
    save_model_file(path, FastFlowNet(), {"note": "fixed-seed weights for tests"})
    return path


@pytest.fixture(scope="module")
def photos() -> tuple[np.ndarray, np.ndarray]:
    """Two real frames: a crop of scikit-image's astronaut and the same crop moved by (3, 2) px."""
    img = data.astronaut()
    return img[40:280, 60:380].copy(), img[38:278, 57:377].copy()


@pytest.fixture(scope="module")
def estimator(model_file) -> FlowEstimator:
    return FlowEstimator(backend="pytorch", model=model_file, threads=2)


def test_no_model_means_the_shipped_teacher(monkeypatch):
    monkeypatch.delenv(WEIGHTS_VARIABLE, raising=False)
    if not shipped_model("teacher").is_file():
        pytest.skip("no shipped teacher in this installation")
    assert FlowEstimator(backend="pytorch").model_path == shipped_model("teacher")
    for name in SHIPPED_FILES:
        assert resolve_model(name) == shipped_model(name)


def test_without_shipped_models_a_missing_model_is_a_clear_error_never_random_weights(tmp_path, monkeypatch):
    """An installation whose weights folder is empty ($MDFLOW_WEIGHTS pointing at an empty folder)."""
    monkeypatch.setenv(WEIGHTS_VARIABLE, str(tmp_path))
    with pytest.raises(ModelNotShippedError, match="never falls back to untrained weights"):
        FlowEstimator()
    for name in sorted(SHIPPED_FILES):
        with pytest.raises(ModelNotShippedError, match=f"no trained {name} model is shipped in this installation .expected {tmp_path}"):
            resolve_model(name)


@pytest.mark.parametrize("name", sorted(SHIPPED_FILES))
def test_a_shipped_models_file_name_is_not_a_path(name):
    with pytest.raises(FileNotFoundError, match="does not exist .or give one of the shipped models: teacher, student"):
        resolve_model(f"{name}.pt")


def test_output_is_at_input_resolution_for_odd_sizes(estimator, photos):
    a, b = photos[0][:97, :131], photos[1][:97, :131]
    flow, conf = estimator.estimate(a, b)
    assert flow.shape == (97, 131, 2) and flow.dtype == np.float32
    assert conf.shape == (97, 131) and conf.dtype == np.float32
    assert 0.0 <= conf.min() and conf.max() <= 1.0


def test_forward_only_mode_has_no_confidence_and_the_same_flow(model_file, estimator, photos):
    fwd = FlowEstimator(backend="pytorch", model=model_file, confidence=False)
    flow, conf = fwd.estimate(*photos)
    assert conf is None
    np.testing.assert_allclose(flow, estimator.estimate(*photos).flow, atol=1e-4)


def test_bgr_and_mono_inputs_are_converted(estimator, photos):
    a, b = photos
    rgb = estimator.estimate(a, b).flow
    np.testing.assert_allclose(estimator.estimate(a[:, :, ::-1].copy(), b[:, :, ::-1].copy(), encoding="bgr8").flow, rgb,
                               atol=1e-4)
    gray = estimator.estimate(a[:, :, 1], b[:, :, 1], encoding="mono8")
    assert gray.flow.shape == rgb.shape


def test_flow_is_scaled_per_axis_when_mapped_back():
    net_flow = np.stack((np.full((64, 128), 2.0, np.float32), np.full((64, 128), 1.0, np.float32)), axis=2)
    out = resize_flow(net_flow, 128, 64)
    np.testing.assert_allclose(out[..., 0], 1.0)
    np.testing.assert_allclose(out[..., 1], 2.0)
    assert network_size(436, 1024) == (448, 1024) and network_size(70, 90) == (64, 64)


def test_shrinking_averages_and_scales_flow_values_with_the_image():
    flow = np.zeros((48, 64, 2), np.float32)
    flow[..., 0], flow[..., 1] = 8.0, -4.0
    conf = np.full((48, 64), 0.75, np.float32)
    small, small_conf = resize_flow(flow, 24, 32, area=True), resize_map(conf, 24, 32, area=True)
    assert small.shape == (24, 32, 2) and np.allclose(small[..., 0], 4.0) and np.allclose(small[..., 1], -2.0)
    assert np.allclose(small_conf, 0.75)


def test_output_scale_returns_smaller_maps_in_their_own_pixels(estimator, photos):
    full = estimator.estimate(*photos)
    half = estimator.estimate(*photos, output_scale=0.5)
    assert half.flow.shape == (120, 160, 2) and half.confidence.shape == (120, 160)
    np.testing.assert_allclose(half.flow, resize_flow(full.flow, 120, 160, area=True), atol=0.05)


def test_onnx_runtime_matches_pytorch_on_real_images(model_file, photos, tmp_path, monkeypatch):
    monkeypatch.setenv("MDFLOW_CACHE", str(tmp_path))
    torch_est = FlowEstimator(backend="pytorch", model=model_file)
    ort_est = FlowEstimator(backend="onnxruntime", model=model_file)
    a, b = photos
    ft, ct = torch_est.estimate(a, b)
    fo, co = ort_est.estimate(a, b)
    diff = float(np.abs(ft - fo).max())
    print(f"max |flow_onnxruntime - flow_pytorch| = {diff:.2e} px, confidence {np.abs(ct - co).max():.2e}")
    assert diff < 0.01
    assert np.abs(ct - co).max() < 0.01


def test_an_onnx_file_beside_the_weights_runs_only_if_it_came_from_them(model_file, tmp_path, monkeypatch):
    monkeypatch.setenv("MDFLOW_CACHE", str(tmp_path / "cache"))
    shipped = tmp_path / "ship" / "teacher.pt"
    shipped.parent.mkdir()
    shipped.write_bytes(model_file.read_bytes())
    export_onnx(FastFlowNet(), shipped.with_suffix(".onnx"), True, (64, 64), source_sha256=file_sha256(shipped))
    assert onnx_for(shipped, True) == shipped.with_suffix(".onnx")
    assert onnx_for(shipped, False).parent == tmp_path / "cache" / "onnx", "the flow-only graph is another export"
    torch.manual_seed(1)
    save_model_file(shipped, FastFlowNet(), {"note": "retrained: the .onnx beside it is stale"})
    assert onnx_for(shipped, True).parent == tmp_path / "cache" / "onnx"


def test_onnx_metadata_is_read_without_the_onnx_package_and_agrees_with_it(tmp_path):
    import onnx

    path = export_onnx(FastFlowNet(), tmp_path / "m.onnx", True, (64, 64), source_sha256="ab" * 32)
    expected = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert onnx_metadata(path) == expected and expected[META_SOURCE] == "ab" * 32
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(ModelFileError, match="not a readable ONNX file"):
        onnx_metadata(garbage)


@pytest.mark.parametrize("img1, img2, message", [
    (np.zeros((100, 100, 3), np.int32), np.zeros((100, 100, 3), np.int32), "dtype int32"),
    (np.zeros((100, 100, 4), np.uint8), np.zeros((100, 100, 4), np.uint8), "HxWx3"),
    (np.zeros((100, 100, 3), np.uint8), np.zeros((100, 120, 3), np.uint8), "differ in size"),
    (np.zeros((40, 100, 3), np.uint8), np.zeros((40, 100, 3), np.uint8), "at least 64"),
    (np.full((100, 100, 3), np.nan, np.float32), np.zeros((100, 100, 3), np.float32), "NaN or Inf"),
    (np.full((100, 100, 3), 3.0, np.float32), np.zeros((100, 100, 3), np.float32), r"expected \[0, 1\]"),
    ([[0]], np.zeros((100, 100, 3), np.uint8), "numpy array"),
])
def test_bad_frames_get_a_clear_error(estimator, img1, img2, message):
    with pytest.raises(InputError, match=message):
        estimator.estimate(img1, img2)


def test_missing_and_corrupt_model_files_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FlowEstimator(backend="pytorch", model=tmp_path / "nothing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    with pytest.raises(ModelFileError, match="corrupt, truncated"):
        FlowEstimator(backend="pytorch", model=corrupt)
    wrong = tmp_path / "wrong.pt"
    torch.save({"weights": torch.zeros(3)}, wrong)
    with pytest.raises(ModelFileError, match="expected keys 'arch' and 'state_dict'"):
        FlowEstimator(backend="pytorch", model=wrong)


class RunsCodeOnLoad:
    """An object whose unpickling would create a marker file (a stand-in for arbitrary code)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_crafted_to_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"arch": "fastflownet", "state_dict": {}, "meta": RunsCodeOnLoad(str(marker))}, evil)
    with pytest.raises(ModelFileError, match="refused"):
        load_model_file(evil)
    assert not marker.exists()
