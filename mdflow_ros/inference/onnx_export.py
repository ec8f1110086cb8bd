"""Export a network's deployed graph (see models/deploy.py) to ONNX, and find cached exports.

The graph uses standard operators only (opset 17: the 53-offset correlation as
Pad/Slice/Mul/ReduceMean/Concat, the warp as GridSample), with dynamic height and width
(any multiple of 64) and batch 1. The file's metadata records the architecture, whether the
graph computes confidence, and the SHA-256 of the weights it came from.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path

import onnx
import torch
import torch.nn as nn

from mdflow_ros.inference.backend import BackendUnavailable
from mdflow_ros.models.deploy import DeployedFlow
from mdflow_ros.models.model_file import arch_name, build_model, load_model_file

OPSET = 17
INPUT_NAMES = ("img1", "img2")
META_CONFIDENCE = "mdflow.with_confidence"
META_ARCH = "mdflow.arch"
META_SOURCE = "mdflow.source_sha256"


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_onnx(net: nn.Module, out: str | Path, with_confidence: bool, sample_size: tuple[int, int] = (384, 512),
                source_sha256: str = "") -> Path:
    """Write the deployed graph of ``net`` to ``out`` (atomically) and check it with onnx.checker."""
    out = Path(out)
    graph = DeployedFlow(net, with_confidence)
    h, w = sample_size
    sample = (torch.rand(1, 3, h, w), torch.rand(1, 3, h, w))
    outputs = ["flow", "confidence"] if with_confidence else ["flow"]
    axes = {name: {2: "height", 3: "width"} for name in INPUT_NAMES}
    axes["flow"] = {2: "height", 3: "width"}
    if with_confidence:
        axes["confidence"] = {1: "height", 2: "width"}
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, sample, tmp, opset_version=OPSET, input_names=list(INPUT_NAMES),
                              output_names=outputs, dynamic_axes=axes, dynamo=False)
        model = onnx.load(tmp)
        for key, value in ((META_ARCH, arch_name(net)), (META_CONFIDENCE, str(int(with_confidence))),
                           (META_SOURCE, source_sha256)):
            model.metadata_props.add(key=key, value=value)
        onnx.checker.check_model(model)
        onnx.save(model, tmp)
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out


def cache_dir() -> Path:
    """Where exports of .pt model files are cached: $MDFLOW_CACHE or ~/.cache/mdflow_ros."""
    return Path(os.environ.get("MDFLOW_CACHE", Path.home() / ".cache" / "mdflow_ros"))


def graph_source_sha256() -> str:
    """SHA-256 of the sources that define the exported graph (constants, flow maths, models, this exporter)."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    sources = [root / "conventions.py", root / "flow.py", Path(__file__).resolve(), *sorted((root / "models").glob("*.py"))]
    for path in sources:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def cached_export(model_path: str | Path, with_confidence: bool) -> Path:
    """The ONNX export of a .pt model file, made once and reused while the weights and the graph code are unchanged."""
    sha = file_sha256(model_path)
    key = hashlib.sha256((sha + graph_source_sha256()).encode()).hexdigest()[:20]
    out = cache_dir() / "onnx" / f"{key}-{'conf' if with_confidence else 'flow'}.onnx"
    if not out.is_file():
        net = build_model(load_model_file(model_path), model_path)
        export_onnx(net, out, with_confidence, source_sha256=sha)
    return out


def onnx_for(model_path: str | Path, with_confidence: bool) -> Path:
    """The standard-op ONNX graph that runs a model file.

    A .onnx file is itself (BackendUnavailable if it was exported with the other confidence
    setting). A .pt file uses the .onnx shipped beside it (same stem) when that one's metadata
    says it came from exactly these weights with this confidence setting, and otherwise the
    cached export.
    """
    model_path = Path(model_path)
    if model_path.suffix == ".onnx":
        has_conf = onnx_metadata(model_path).get(META_CONFIDENCE) == "1"
        if has_conf != with_confidence:
            raise BackendUnavailable(
                f"{model_path} was exported {'with' if has_conf else 'without'} confidence, but "
                f"confidence={with_confidence} was asked for; export the other variant or pass the .pt model file")
        return model_path
    beside = model_path.with_suffix(".onnx")
    if beside.is_file():
        meta = onnx_metadata(beside)
        if meta.get(META_SOURCE) == file_sha256(model_path) and meta.get(META_CONFIDENCE) == str(int(with_confidence)):
            return beside
    return cached_export(model_path, with_confidence)


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """The metadata_props of an ONNX file as a dict (without loading the weights)."""
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}
