"""Export a network's deployed graph (see models/deploy.py) to ONNX, and cache the exports of model files.

The graph uses standard operators only (opset 17: the 53-offset correlation as
one blocked MatMul per pyramid level, the warp as GridSample), with dynamic height and width
(any multiple of 64) and batch 1. The file's metadata records the architecture, whether the
graph computes confidence, the SHA-256 of the weights it came from and that of its own
serialized graph (checked when it is read, see ``onnx_files.onnx_metadata``). This module needs
PyTorch and onnx; the runtime imports it only when a .pt model has no matching .onnx
(``onnx_files.onnx_for``).
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from pathlib import Path

import onnx
import torch
import torch.nn as nn

from mdflow_ros.files import ModelFileError, atomic_write_bytes, file_sha256
from mdflow_ros.inference.onnx_files import (INPUT_NAMES, META_ARCH, META_CONFIDENCE, META_GRAPH, META_SOURCE,
                                             cache_dir, graph_sha256, onnx_metadata)
from mdflow_ros.models.deploy import DeployedFlow
from mdflow_ros.models.model_file import arch_name, build_model, load_model_file

OPSET = 17

LOG = logging.getLogger("mdflow_ros.inference")


def sealed_bytes(model: onnx.ModelProto) -> bytes:
    """``model`` serialized with ``mdflow.graph_sha256`` (set, or replaced) = the SHA-256 of its serialized graph."""
    for prop in [p for p in model.metadata_props if p.key == META_GRAPH]:
        model.metadata_props.remove(prop)
    digest = graph_sha256(model.SerializeToString())
    model.metadata_props.add(key=META_GRAPH, value=digest)
    data = model.SerializeToString()
    if graph_sha256(data) != digest:
        raise RuntimeError("protobuf serialized the same graph differently twice; cannot record its digest")
    return data


def seal_onnx_file(path: str | Path) -> Path:
    """Record (or renew) the graph digest of an ONNX file in place, e.g. after ONNX Runtime's quantizer wrote it."""
    atomic_write_bytes(path, sealed_bytes(onnx.load(str(path))))
    return Path(path)


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
        atomic_write_bytes(out, sealed_bytes(model))
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out


def graph_source_sha256() -> str:
    """SHA-256 of the sources that define the exported graph (constants, flow maths, models, this exporter)."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in [root / "conventions.py", root / "flow.py", Path(__file__).resolve(),
                 *sorted((root / "models").glob("*.py"))]:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def cached_export(model_path: str | Path, with_confidence: bool) -> Path:
    """The ONNX export of a .pt model file, made once and reused while the weights and the graph code are unchanged.

    A cached export that is damaged is made again. ModelFileError when the .pt cannot be used.
    """
    sha = file_sha256(model_path)
    key = hashlib.sha256((sha + graph_source_sha256()).encode()).hexdigest()[:20]
    out = cache_dir() / "onnx" / f"{key}-{'conf' if with_confidence else 'flow'}.onnx"
    if out.is_file():
        try:
            onnx_metadata(out)
            return out
        except ModelFileError as err:
            LOG.warning("exporting %s again: the cached export is unusable (%s)", model_path, err)
    net = build_model(load_model_file(model_path), model_path)
    export_onnx(net, out, with_confidence, source_sha256=sha)
    return out
