"""Which ONNX file runs a model file, and what an ONNX file says about itself; no PyTorch, no onnx package.

The backends that run ONNX (ONNX Runtime, TensorRT) find their graph here. A ``.onnx`` model
file is itself; a ``.pt`` file runs the ``.onnx`` shipped beside it when that one's metadata
says it was exported from exactly these weights, and otherwise an export made once and cached
(``onnx_export``, which needs PyTorch, is imported only then). The metadata is read straight
from the file's protobuf encoding, so the deployed runtime needs neither PyTorch nor ``onnx``.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from mdflow_ros.files import file_sha256
from mdflow_ros.inference.backend import BackendUnavailable

INPUT_NAMES = ("img1", "img2")
"""Input names of the deployed graph, in order."""
META_CONFIDENCE = "mdflow.with_confidence"
META_ARCH = "mdflow.arch"
META_SOURCE = "mdflow.source_sha256"
"""Metadata keys of an export: its network architecture, "1" when it computes confidence, the
SHA-256 of the model file it was exported from."""

_METADATA_FIELD = 14
"""Field number of ``metadata_props`` in onnx.proto's ModelProto (entries: key = 1, value = 2)."""


def cache_dir() -> Path:
    """Where exports of .pt model files (and TensorRT engines) are cached: $MDFLOW_CACHE or ~/.cache/mdflow_ros."""
    return Path(os.environ.get("MDFLOW_CACHE", Path.home() / ".cache" / "mdflow_ros"))


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    """The protobuf varint at ``pos`` and the position after it."""
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(data: memoryview) -> Iterator[tuple[int, memoryview | int]]:
    """(field number, value) of each field of one protobuf message: bytes for length-delimited fields."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = _varint(data, pos)
        elif wire_type == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos:pos + length], pos + length
        elif wire_type in (1, 5):
            size = 8 if wire_type == 1 else 4
            value, pos = data[pos:pos + size], pos + size
        else:
            raise ValueError(f"protobuf wire type {wire_type} at byte {pos}")
        if pos > len(data):
            raise ValueError("truncated protobuf message")
        yield number, value


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """The metadata_props of an ONNX file as a dict; the graph (and its weights) is skipped, not decoded.

    Raises BackendUnavailable when the file is not an ONNX model.
    """
    data = memoryview(Path(path).read_bytes())
    try:
        entries = [dict(_fields(entry)) for number, entry in _fields(data) if number == _METADATA_FIELD]
        return {bytes(entry.get(1, b"")).decode(): bytes(entry.get(2, b"")).decode() for entry in entries}
    except (ValueError, IndexError, TypeError, UnicodeDecodeError) as err:
        raise BackendUnavailable(f"{path} is not a readable ONNX file ({err})") from None


def onnx_for(model_path: str | Path, with_confidence: bool) -> Path:
    """The standard-op ONNX graph that runs a model file.

    A .onnx file is itself (BackendUnavailable if it was exported with the other confidence
    setting). A .pt file uses the .onnx shipped beside it (same stem) when that one's metadata
    says it came from exactly these weights with this confidence setting, and otherwise the
    cached export (BackendUnavailable when PyTorch, needed to export, is not installed).
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
    try:
        from mdflow_ros.inference.onnx_export import cached_export
    except ImportError as err:
        raise BackendUnavailable(
            f"{model_path} has no matching .onnx beside it, and exporting one needs PyTorch and onnx "
            f"(pip install 'mdflow_ros[torch]'; {err})") from None
    return cached_export(model_path, with_confidence)
