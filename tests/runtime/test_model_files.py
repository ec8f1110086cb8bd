"""Damaged, garbage and stale model files, .pt and .onnx, through every runtime loader: each is refused
with a ModelFileError naming the file (never loaded with other weights, never another exception type),
files without a digest load with a warning, and an .onnx beside a .pt is used only when it is intact
and was exported from exactly that file."""
import logging
import random
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from mdflow_ros.files import ModelFileError, file_sha256
from mdflow_ros.inference import BackendUnavailable, FlowEstimator
from mdflow_ros.inference.estimator import shipped_model
from mdflow_ros.inference.onnx_export import export_onnx
from mdflow_ros.inference.onnx_files import META_GRAPH, META_SOURCE, onnx_for, onnx_metadata
from mdflow_ros.models.fastflownet import FastFlowNet
from mdflow_ros.models.model_file import DIGEST_KEY, load_model, load_model_file, read_torch_file, save_model_file
from support import ROOT, no_torch_environment

FRAME = np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> tuple:
    """A real FastFlowNet model file (5.5 MB) and its weights."""
    torch.manual_seed(5)
    net = FastFlowNet()
    path = tmp_path_factory.mktemp("model") / "net.pt"
    save_model_file(path, net, {"note": "test weights"})
    return path, {k: v.clone() for k, v in net.state_dict().items()}


def damaged_copies(source, folder):
    """(name, path) of damaged versions of ``source``: truncations, single bit flips across the file, garbage."""
    data = source.read_bytes()
    rng = random.Random(11)
    cases = {f"truncated to {n} bytes": data[:n] for n in (0, 1, 30, 1000, len(data) // 2, len(data) - 300,
                                                            len(data) - 22, len(data) - 1)}
    for k in range(60):
        flipped = bytearray(data)
        position = rng.randrange(len(data))
        flipped[position] ^= 1 << rng.randrange(8)
        cases[f"bit {k} flipped at byte {position}"] = bytes(flipped)
    cases["a text file renamed .pt"] = b"hello, this is not a model\n" * 20
    cases["random bytes"] = bytes(rng.randrange(256) for _ in range(4000))
    cases["JSON"] = b'{"arch": "fastflownet", "state_dict": {}}'
    paths = []
    for i, (name, content) in enumerate(cases.items()):
        path = folder / f"damaged_{i}.pt"
        path.write_bytes(content)
        paths.append((name, path))
    return paths


def test_no_damaged_model_file_loads_other_weights_and_each_is_refused_naming_it(model_file, tmp_path):
    source, weights = model_file
    refused = 0
    for name, path in damaged_copies(source, tmp_path):
        try:
            net = load_model(path)
        except ModelFileError as err:
            assert str(path) in str(err), name
            refused += 1
            continue
        state = net.state_dict()
        assert all(torch.equal(state[k], weights[k]) for k in weights), f"{name}: loaded with other weights"
    print(f"{refused} of the damaged files refused; the others differ only where nothing is read (zip padding)")
    assert refused >= 60


def structure_cases(weights):
    """Files torch reads fine that are not model files: (name, data, message)."""
    return [
        ("a tensor", torch.zeros(3), "holds a Tensor, not a dict"),
        ("no weights", {"weights": torch.zeros(3)}, "expected keys 'arch' and 'state_dict'"),
        ("arch is a list", {"arch": ["fastflownet"], "state_dict": weights}, "holds architecture"),
        ("weights are not tensors", {"arch": "fastflownet", "state_dict": {"conv.weight": [1.0, 2.0]}},
         "'state_dict' is not a dict of named tensors"),
        ("meta is a string", {"arch": "fastflownet", "state_dict": weights, "meta": "x"}, "'meta' is a str"),
        ("wrong shapes", {"arch": "fastflownet", "state_dict": {k: v[..., :1] for k, v in weights.items()}},
         "weights do not fit fastflownet"),
    ]


def test_files_with_the_wrong_structure_are_refused_naming_what_is_wrong(model_file, tmp_path):
    _, weights = model_file
    for name, data, message in structure_cases(weights):
        path = tmp_path / "structure.pt"
        torch.save(data, path)
        with pytest.raises(ModelFileError, match=message):
            load_model(path)


def test_every_estimator_backend_refuses_a_garbage_model_file_with_a_model_file_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MDFLOW_CACHE", str(tmp_path / "cache"))
    text = tmp_path / "notes.pt"
    text.write_text("hello\n" * 50)
    for backend in ("pytorch", "onnxruntime", "auto"):
        with pytest.raises(ModelFileError, match=f"{text} is not a readable PyTorch file"):
            FlowEstimator(backend=backend, model=text)


def test_the_command_line_refuses_a_garbage_model_in_one_line(tmp_path):
    import cv2

    frames = [tmp_path / "a.png", tmp_path / "b.png"]
    for path in frames:
        cv2.imwrite(str(path), FRAME)
    text = tmp_path / "notes.pt"
    text.write_text("hello\n" * 50)
    proc = subprocess.run([sys.executable, "-m", "mdflow_ros.cli", *map(str, frames), "--model", str(text)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"mdflow-flow: {text} is not a readable PyTorch file")


def test_a_file_without_a_digest_loads_with_a_warning_and_add_digest_gives_it_one(model_file, tmp_path, caplog):
    source, weights = model_file
    old = tmp_path / "old.pt"
    data = torch.load(source, weights_only=True)
    del data[DIGEST_KEY]
    torch.save(data, old)
    with caplog.at_level(logging.WARNING, logger="mdflow_ros.models"):
        loaded = load_model(old).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in weights.items())
    assert f"{old} records no content digest" in caplog.text
    proc = subprocess.run([sys.executable, "-m", "mdflow_ros.models.model_file", "add-digest", str(old)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and "digest added" in proc.stdout, proc.stderr
    assert DIGEST_KEY in torch.load(old, weights_only=True)
    assert load_model_file(old).meta == {"note": "test weights"}
    resaved = load_model(old).state_dict()
    assert all(torch.equal(resaved[k], v) for k, v in weights.items())


def test_shipped_models_carry_digests_and_their_onnx_files_match_them():
    teacher = shipped_model("teacher")
    if not teacher.is_file():
        pytest.skip("no shipped models")
    for name in ("teacher", "student"):
        path = shipped_model(name)
        assert DIGEST_KEY in torch.load(path, weights_only=True), f"{path.name} has no digest"
        read_torch_file(path)
    for onnx_path, confidence in ((teacher.with_suffix(".onnx"), "1"), (teacher.with_suffix(".int8.onnx"), "0")):
        meta = onnx_metadata(onnx_path)
        assert META_GRAPH in meta and meta[META_SOURCE] == file_sha256(teacher), onnx_path.name
        assert meta["mdflow.with_confidence"] == confidence
    assert onnx_for(teacher, True) == teacher.with_suffix(".onnx")


@pytest.fixture(scope="module")
def small_export(model_file, tmp_path_factory):
    """A .pt with an intact .onnx beside it (exported from it)."""
    source, _ = model_file
    folder = tmp_path_factory.mktemp("pair")
    pt = folder / "model.pt"
    pt.write_bytes(source.read_bytes())
    export_onnx(load_model(pt), pt.with_suffix(".onnx"), True, (64, 64), source_sha256=file_sha256(pt))
    return pt


def test_damaged_onnx_files_are_refused_naming_the_file(small_export, tmp_path):
    good = small_export.with_suffix(".onnx").read_bytes()
    middle = len(good) // 2
    flipped = bytearray(good)
    flipped[middle] ^= 0x10
    cases = {"empty": (b"", "is empty"), "truncated": (good[:middle], "ONNX"),
             "a flipped bit in the weights": (bytes(flipped), "is damaged: its graph does not match"),
             "text": (b"not an onnx file at all\n", "ONNX")}
    for name, (content, message) in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.onnx"
        path.write_bytes(content)
        with pytest.raises(ModelFileError, match=message) as err:
            FlowEstimator(backend="onnxruntime", model=path)
        assert str(path) in str(err.value), name
        assert "exported without confidence" not in str(err.value)


def test_a_damaged_or_stale_onnx_beside_a_pt_is_rebuilt_from_the_pt(small_export, tmp_path, monkeypatch, caplog):
    """An empty .onnx, a truncated one, one whose source digest is not this .pt's: each time the graph is
    exported from the .pt (once, then cached) and gives the .pt's flow."""
    monkeypatch.setenv("MDFLOW_CACHE", str(tmp_path / "cache"))
    beside = small_export.with_suffix(".onnx")
    intact = beside.read_bytes()
    reference = FlowEstimator(backend="pytorch", model=small_export).estimate(FRAME, FRAME).flow
    try:
        for damage in (b"", intact[: len(intact) // 3], intact.replace(b"mdflow.source_sha256", b"mdflow.source_sha25x")):
            beside.write_bytes(damage)
            with caplog.at_level(logging.WARNING, logger="mdflow_ros.inference"):
                estimator = FlowEstimator(backend="onnxruntime", model=small_export)
            assert estimator.backend.onnx_path.parent == tmp_path / "cache" / "onnx"
            assert np.abs(estimator.estimate(FRAME, FRAME).flow - reference).max() < 0.01
        assert f"ignoring {beside} beside {small_export}" in caplog.text
    finally:
        beside.write_bytes(intact)
    assert onnx_for(small_export, True) == beside


def test_without_pytorch_a_damaged_onnx_beside_a_pt_is_refused_naming_it(small_export, tmp_path):
    folder = tmp_path / "ship"
    folder.mkdir()
    pt = folder / "model.pt"
    pt.write_bytes(small_export.read_bytes())
    pt.with_suffix(".onnx").write_bytes(small_export.with_suffix(".onnx").read_bytes()[:5000])
    env = no_torch_environment({"PYTHONPATH": str(ROOT), "MDFLOW_CACHE": str(tmp_path / "cache"),
                                "PATH": "/usr/bin:/bin"}, tmp_path / "torch.log")
    script = ("import sys\nfrom mdflow_ros.inference import FlowEstimator\nfrom mdflow_ros.files import ModelFileError\n"
              "from mdflow_ros.inference.backend import BackendUnavailable\n"
              f"try:\n    FlowEstimator(backend='onnxruntime', model={str(pt)!r})\n"
              "except (ModelFileError, BackendUnavailable) as err:\n    print('refused:', err)\n    sys.exit(3)\n")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert f"{pt.with_suffix('.onnx')} beside it is unusable" in proc.stdout and "needs PyTorch" in proc.stdout


def test_a_torch_file_that_is_not_a_zip_of_weights_is_refused(tmp_path):
    path = tmp_path / "archive.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    with pytest.raises(ModelFileError, match="archive.pt"):
        load_model_file(path)
    with pytest.raises((ModelFileError, BackendUnavailable)):
        FlowEstimator(backend="pytorch", model=path)
