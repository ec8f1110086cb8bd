"""What a user gets from the shipped models through FlowEstimator, against what was measured when they shipped.

training/ship_model.py records ``<name>.reference.json`` beside each shipped model (training/reference.py:
EPE on real photos under known motion, the median flow of exact translations, the confidence on a
scene with a known occluder, per backend). These tests measure the same live, with the default
backend ("auto") and with every backend the files ship for, and compare within tight margins; they
also check direction, axes and the meaning of confidence on their own terms, and tie the shipped
.onnx and .int8.onnx to the shipped .pt. Re-shipping a model re-records its reference; for files
already shipped: ``python training/ship_model.py --record-reference mdflow_ros/weights/*.pt``.
"""
from pathlib import Path

import numpy as np
import pytest
import torch

from mdflow_ros.conventions import RELIABLE_TAU
from mdflow_ros.files import file_sha256
from mdflow_ros.inference import FlowEstimator
from mdflow_ros.inference.estimator import shipped_model
from mdflow_ros.inference.onnx_files import META_SOURCE, onnx_metadata
from mdflow_ros.models.deploy import DeployedFlow
from mdflow_ros.models.model_file import load_model
from training.reference import (THREADS, ReferenceInputs, int8_path, load_reference, measure, occluder_scene,
                                reference_path)
from training.selection import reliable_masks

TEACHER, STUDENT = shipped_model("teacher"), shipped_model("student")
EPE_MARGIN = {"fp32": (0.01, 0.01), "int8": (0.01, 0.03)}
"""Allowed |live - recorded| EPE: (pixels, share of the recorded EPE). fp32 backends reproduce the record
to about 1e-4 px across CPUs; int8 kernels differ more between CPUs (VNNI or not)."""
SHIFT_MARGIN_PX = {"fp32": 0.05, "int8": 0.15}
SHARE_MARGIN = 0.02
"""Allowed change of the share of reliable pixels on the occluder scene."""

pytestmark = pytest.mark.skipif(not TEACHER.is_file(), reason="no shipped teacher in this installation")


def _reference(model: Path) -> dict:
    ref = load_reference(model)
    for name, sha in ref["files_sha256"].items():
        assert (model.parent / name).is_file(), f"{name} was shipped when {reference_path(model).name} was recorded"
        assert file_sha256(model.parent / name) == sha, (
            f"{name} changed since its reference was recorded; re-record it: {ref['command']}")
    return ref


@pytest.fixture(scope="module")
def teacher_ref() -> dict:
    return _reference(TEACHER)


@pytest.fixture(scope="module")
def inputs(teacher_ref) -> ReferenceInputs:
    return ReferenceInputs.from_record(teacher_ref["inputs"])


@pytest.fixture(scope="module")
def default_estimator() -> FlowEstimator:
    """What ``FlowEstimator()`` gives a user: the shipped teacher on the "auto" backend, confidence on."""
    return FlowEstimator(threads=THREADS)


@pytest.fixture(scope="module")
def torch_estimator() -> FlowEstimator:
    return FlowEstimator(backend="pytorch", model="teacher", threads=THREADS)


@pytest.fixture(scope="module")
def default_measured(default_estimator, inputs) -> dict:
    return measure(default_estimator, inputs)


def _close_to_record(live: dict, recorded: dict, precision: str) -> None:
    pixels, share = EPE_MARGIN[precision]
    assert abs(live["epe"] - recorded["epe"]) <= pixels + share * recorded["epe"], (
        f"EPE {live['epe']:.4f} px, recorded {recorded['epe']:.4f} px ({recorded['description']}); "
        f"per pair {np.round(live['epe_per_pair'], 3)} vs {np.round(recorded['epe_per_pair'], 3)}")
    np.testing.assert_allclose(live["shift_median_flow"], recorded["shift_median_flow"],
                               atol=SHIFT_MARGIN_PX[precision], err_msg="median flow (u, v) of the translations")
    if "occluder" in recorded:
        for key, value in recorded["occluder"].items():
            assert abs(live["occluder"][key] - value) <= SHARE_MARGIN, f"{key}: {live['occluder'][key]:.3f} vs {value:.3f}"


def test_the_reference_was_recorded_for_the_files_shipped(teacher_ref):
    shipped = {p.name for p in (TEACHER, TEACHER.with_suffix(".onnx"), int8_path(TEACHER)) if p.is_file()}
    assert set(teacher_ref["files_sha256"]) == shipped
    assert set(teacher_ref["backends"]) >= {"pytorch", "onnxruntime"}


def test_the_shipped_onnx_graphs_were_exported_from_the_shipped_weights():
    for onnx in (TEACHER.with_suffix(".onnx"), int8_path(TEACHER)):
        if onnx.is_file():
            assert onnx_metadata(onnx)[META_SOURCE] == file_sha256(TEACHER), (
                f"{onnx.name} was made from other weights than {TEACHER.name}: re-export or re-quantize it")


def test_the_default_estimator_gives_the_recorded_accuracy(default_estimator, default_measured, teacher_ref):
    assert default_estimator.backend.name in ("onnxruntime", "openvino", "tensorrt") or not TEACHER.with_suffix(".onnx").is_file()
    recorded = teacher_ref["backends"].get(default_estimator.backend.name, teacher_ref["backends"]["pytorch"])
    print(f"default backend: {default_estimator.backend.description}; EPE {default_measured['epe']:.4f} px "
          f"(recorded {recorded['epe']:.4f}), zero flow {default_measured['zero_flow_epe']:.3f}")
    _close_to_record(default_measured, recorded, "fp32")


def test_the_pytorch_backend_gives_the_recorded_accuracy(torch_estimator, inputs, teacher_ref):
    _close_to_record(measure(torch_estimator, inputs), teacher_ref["backends"]["pytorch"], "fp32")


@pytest.mark.skipif(not int8_path(TEACHER).is_file(), reason="no int8 graph shipped")
def test_the_int8_graph_gives_its_recorded_accuracy(inputs, teacher_ref):
    est = FlowEstimator(model=int8_path(TEACHER), confidence=False, threads=THREADS)
    _close_to_record(measure(est, inputs), teacher_ref["backends"]["onnxruntime-int8"], "int8")


def test_onnx_runtime_and_pytorch_agree_on_the_shipped_weights(default_estimator, torch_estimator, inputs):
    pair, _ = occluder_scene(inputs)
    ort = FlowEstimator(backend="onnxruntime", threads=THREADS).estimate(pair.img1, pair.img2)
    pt = torch_estimator.estimate(pair.img1, pair.img2)
    # confidence is a steep function of the forward-backward difference: a 0.002 px flow difference can
    # move a pixel near its knee by about 0.01, so its bound is on the mean with a looser maximum
    conf_diff = np.abs(ort.confidence - pt.confidence)
    assert np.abs(ort.flow - pt.flow).max() < 0.01 and conf_diff.mean() < 1e-3 and conf_diff.max() < 0.05


def test_flow_points_where_the_content_moves_on_each_axis(default_measured, inputs):
    """An exact integer translation (u, v) of a real photo: the median flow is (u, v), in that order and sign."""
    for (u, v), (mu, mv) in zip(inputs.shifts, default_measured["shift_median_flow"]):
        assert abs(mu - u) <= 0.1 * abs(u) + 0.3 and abs(mv - v) <= 0.1 * abs(v) + 0.3, (
            f"content moved by ({u}, {v}) px; median flow ({mu:.2f}, {mv:.2f})")


def test_confidence_is_low_where_the_occluder_hides_the_background(default_measured):
    shares = default_measured["occluder"]
    assert shares["reliable_occluded"] < 0.5 * shares["reliable_visible_background"], shares


def test_confidence_above_one_half_is_mdflows_reliable_mask(inputs):
    """The README's claim: confidence > 0.5 of the fp32 graph is exactly the reliable-match mask that training's
    stage 2 uses, computed here from the network's forward and backward flows (frames at the network size: no
    resize). A reduced precision (OpenVINO bf16, which ``auto`` may pick) moves pixels at the threshold."""
    pair, _ = occluder_scene(inputs)
    conf = FlowEstimator(backend="onnxruntime", threads=THREADS).estimate(pair.img1, pair.img2).confidence
    graph = DeployedFlow(load_model(TEACHER), with_confidence=False)
    img1, img2 = (torch.from_numpy(x).permute(2, 0, 1)[None].float() / 255.0 for x in (pair.img1, pair.img2))
    with torch.no_grad():
        flow_fw, flow_bw = graph.pixel_flow(img1, img2), graph.pixel_flow(img2, img1)
        mask_fw, _ = reliable_masks(img1, img2, flow_fw, flow_bw, tau=RELIABLE_TAU)
    agreement = float(((conf > 0.5) == mask_fw[0, 0].numpy().astype(bool)).mean())
    assert agreement > 0.995, f"confidence > 0.5 matches the reliable mask on {100 * agreement:.2f} % of pixels"


@pytest.mark.skipif(not STUDENT.is_file(), reason="no shipped student in this installation")
def test_the_shipped_student_gives_its_recorded_accuracy_and_beats_zero_flow():
    ref = _reference(STUDENT)
    est = FlowEstimator(backend="pytorch", model="student", confidence=False, threads=THREADS)
    live = measure(est, ReferenceInputs.from_record(ref["inputs"]))
    assert live["epe"] < 0.3 * live["zero_flow_epe"]
    _close_to_record(live, ref["backends"]["pytorch"], "fp32")
