"""Shipping a model: lineage folded into the file, ONNX beside it validated, and a model card."""
from pathlib import Path

import pytest
import torch

from mdflow_ros.files import file_sha256
from mdflow_ros.inference.onnx_export import export_onnx
from mdflow_ros.inference.onnx_files import META_GRAPH, META_SOURCE, onnx_for, onnx_metadata
from mdflow_ros.models import FastFlowNet
from mdflow_ros.models.model_file import DIGEST_KEY, load_model, load_model_file, save_model_file
from training.reference import ReferenceInputs, load_reference
from training.ship_model import check_parity, lineage, ship

SMALL = ReferenceInputs(set_pairs=1, set_size=(128, 192), shifts=((3, -2),), occluder_side=32,
                        occluder_corner=(40, 60), occluder_shift=(6, 3))
"""Reference inputs small enough for untrained test weights to be measured in seconds."""


def _chain(tmp_path: Path) -> Path:
    """pretrain -> stage1 model files, the second naming the first as its init."""
    torch.manual_seed(0)
    first = tmp_path / "run_a" / "teacher_fastflownet.pt"
    first.parent.mkdir()
    save_model_file(first, FastFlowNet(), {"stage": "pretrain", "step": 30, "data": [], "init": None,
                                           "config": {"stage": "pretrain"}})
    second = tmp_path / "run_b" / "teacher_fastflownet.pt"
    second.parent.mkdir()
    save_model_file(second, FastFlowNet(), {
        "stage": "stage1", "step": 20, "data": ["/home/me/bags/run1.mcap"], "config": {"stage": "stage1"},
        "init": {"path": str(first), "sha256": file_sha256(first)}})
    return second


def test_lineage_follows_init_and_keeps_only_file_names(tmp_path):
    stages = lineage(_chain(tmp_path))
    assert [(s["stage"], s["steps"]) for s in stages] == [("pretrain", 30), ("stage1", 20)]
    assert stages[1]["data"] == ["run1.mcap"]


def test_lineage_stops_at_an_init_file_that_changed(tmp_path):
    model = _chain(tmp_path)
    torch.manual_seed(5)
    save_model_file(tmp_path / "run_a" / "teacher_fastflownet.pt", FastFlowNet(), {"stage": "pretrain"})
    assert lineage(model)[0]["stage"].startswith("unknown")


def test_ship_writes_weights_validated_onnx_and_card(tmp_path, monkeypatch):
    monkeypatch.setenv("MDFLOW_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "weights"
    written = ship(_chain(tmp_path), "## Known weaknesses\n\nUntrained test weights.\n", [], out, synthetic=1,
                   reference_inputs=SMALL)
    pt, onnx, card = out / "teacher_fastflownet.pt", out / "teacher_fastflownet.onnx", out / "teacher_fastflownet.md"
    assert written == [pt, onnx, card, out / "teacher_fastflownet.reference.json"]
    meta = load_model_file(pt).meta
    assert [s["stage"] for s in meta["lineage"]] == ["pretrain", "stage1"] and "init" not in meta
    assert onnx_metadata(onnx)[META_SOURCE] == file_sha256(pt)
    assert DIGEST_KEY in torch.load(pt, weights_only=True) and META_GRAPH in onnx_metadata(onnx), "digests recorded"
    assert onnx_for(pt, True) == onnx
    text = card.read_text()
    assert file_sha256(pt) in text and "| synthetic-1 | 1 |" in text and "Untrained test weights." in text
    assert [s["stage"] for s in lineage(pt)] == ["pretrain", "stage1"], "a shipped file carries its lineage"
    ref = load_reference(pt)
    assert ref["files_sha256"] == {pt.name: file_sha256(pt), onnx.name: file_sha256(onnx)}
    assert ReferenceInputs.from_record(ref["inputs"]) == SMALL and set(ref["backends"]) == {"pytorch", "onnxruntime"}
    torch_ref, ort_ref = ref["backends"]["pytorch"], ref["backends"]["onnxruntime"]
    assert abs(torch_ref["epe"] - ort_ref["epe"]) < 0.01, "the .onnx and the .pt give users the same flow"
    assert ort_ref["file"] == onnx.name and len(ort_ref["epe_per_pair"]) == 1 and "occluder" in ort_ref


def test_parity_check_refuses_an_onnx_of_other_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("MDFLOW_CACHE", str(tmp_path / "cache"))
    model = _chain(tmp_path)
    torch.manual_seed(9)
    other = export_onnx(FastFlowNet(), tmp_path / "other.onnx", True)
    with pytest.raises(ValueError, match="differs from PyTorch"):
        check_parity(model, other)


def test_half_ships_float16_weights_that_load_as_float32_with_the_same_flow(tmp_path, monkeypatch):
    monkeypatch.setenv("MDFLOW_CACHE", str(tmp_path / "cache"))
    model = _chain(tmp_path)
    full, half = tmp_path / "full", tmp_path / "half"
    ship(model, "", [], full, synthetic=0, reference_inputs=SMALL)
    ship(model, "", [], half, synthetic=0, half=True, reference_inputs=SMALL)
    pt_full, pt_half = full / "teacher_fastflownet.pt", half / "teacher_fastflownet.pt"
    assert {t.dtype for t in load_model_file(pt_half).state_dict.values() if t.is_floating_point()} == {torch.float16}
    assert pt_half.stat().st_size < 0.6 * pt_full.stat().st_size
    net_full, net_half = load_model(pt_full), load_model(pt_half)
    assert all(p.dtype == torch.float32 for p in net_half.parameters())
    torch.manual_seed(1)
    img1, img2 = torch.rand(2, 1, 3, 128, 192).unbind(0)
    with torch.no_grad():
        diff = (net_full(img1, img2)[0] - net_half(img1, img2)[0]).abs().max().item()
    assert 0 < diff < 1e-2, "rounded weights: a tiny, nonzero change"
    assert "stored as float16" in (half / "teacher_fastflownet.md").read_text()
    assert onnx_metadata(half / "teacher_fastflownet.onnx")[META_SOURCE] == file_sha256(pt_half)
