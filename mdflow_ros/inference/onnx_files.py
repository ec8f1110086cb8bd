"""Which ONNX file runs a model file, and what an ONNX file says about itself; no PyTorch, no onnx package.

The backends that run ONNX (ONNX Runtime, TensorRT) find their graph here. A ``.onnx`` model
file is itself; a ``.pt`` file runs the ``.onnx`` shipped beside it when that one is intact and
its metadata says it was exported from exactly these weights, and otherwise an export made once
and cached (``onnx_export``, which needs PyTorch, is imported only then): a damaged or stale
``.onnx`` beside a ``.pt`` is never preferred to it. The metadata is read straight from the
file's protobuf encoding, so the deployed runtime needs neither PyTorch nor ``onnx``.

Exports record the SHA-256 of their serialized graph (``mdflow.graph_sha256``), and reading the
metadata checks it, so a damaged graph or its weights are refused (``ModelFileError`` naming the
file); an empty, truncated or foreign file is refused the same way.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from mdflow_ros.files import ModelFileError, file_sha256
from mdflow_ros.inference.backend import BackendUnavailable

LOG = logging.getLogger("mdflow_ros.inference")

INPUT_NAMES = ("img1", "img2")
"""Input names of the deployed graph, in order."""
META_CONFIDENCE = "mdflow.with_confidence"
META_ARCH = "mdflow.arch"
META_SOURCE = "mdflow.source_sha256"
META_GRAPH = "mdflow.graph_sha256"
"""Metadata keys of an export: its network architecture, "1" when it computes confidence, the
SHA-256 of the model file it was exported from, the SHA-256 of its serialized graph."""

_GRAPH_FIELD = 7
_METADATA_FIELD = 14
"""Field numbers of ``graph`` and ``metadata_props`` in onnx.proto's ModelProto (metadata
entries: key = 1, value = 2)."""


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


def graph_sha256(model_bytes: bytes | memoryview) -> str:
    """Hex SHA-256 of the serialized graph (ModelProto field 7) inside a serialized ONNX model."""
    graphs = [bytes(value) for number, value in _fields(memoryview(model_bytes)) if number == _GRAPH_FIELD]
    return hashlib.sha256(b"".join(graphs)).hexdigest()


@functools.lru_cache(maxsize=None)
def _warn_no_digest(path: str) -> None:
    """Warn once per file that an ONNX file records no graph digest."""
    LOG.warning("%s records no graph digest (exported before mdflow_ros recorded them): damage to its weights "
                "cannot be detected; export it again to add one", path)


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """The metadata_props of an mdflow_ros ONNX export, after checking the file is one and intact.

    The graph is hashed, not decoded. Raises ModelFileError naming the file when it is missing,
    empty, truncated or not an ONNX model, has no mdflow metadata (not exported by mdflow_ros),
    or when its graph does not match the digest recorded in it. A file without the digest (an
    export older than digests) passes with a warning.
    """
    path = Path(path)
    try:
        data = memoryview(path.read_bytes())
    except OSError as err:
        raise ModelFileError(f"ONNX file {path} cannot be read: {err.strerror or err}") from None
    if not data:
        raise ModelFileError(f"ONNX file {path} is empty")
    try:
        fields = list(_fields(data))
        entries = [dict(_fields(entry)) for number, entry in fields if number == _METADATA_FIELD]
        meta = {bytes(entry.get(1, b"")).decode(): bytes(entry.get(2, b"")).decode() for entry in entries}
    except (ValueError, IndexError, TypeError, UnicodeDecodeError) as err:
        raise ModelFileError(f"{path} is not a readable ONNX file (truncated or corrupt?): {err}") from None
    if not any(number == _GRAPH_FIELD for number, _ in fields):
        raise ModelFileError(f"{path} is not an ONNX model: it holds no graph (truncated or corrupt?)")
    if META_ARCH not in meta:
        raise ModelFileError(f"{path} has no mdflow metadata: it was not exported by mdflow_ros "
                             "(or it is truncated); export it with mdflow_ros from the .pt model file")
    if META_GRAPH not in meta:
        _warn_no_digest(str(path))
    elif graph_sha256(data) != meta[META_GRAPH]:
        raise ModelFileError(f"{path} is damaged: its graph does not match the digest recorded when it was exported "
                             f"({META_GRAPH} {meta[META_GRAPH][:16]}...)")
    return meta


def onnx_for(model_path: str | Path, with_confidence: bool) -> Path:
    """The standard-op ONNX graph that runs a model file.

    A .onnx file is itself (ModelFileError if it is damaged or not an mdflow_ros export,
    BackendUnavailable if it was exported with the other confidence setting). A .pt file uses
    the .onnx shipped beside it (same stem) when that one is intact and its metadata says it came
    from exactly these weights with this confidence setting, and otherwise the cached export
    (BackendUnavailable, naming the .onnx beside it, when PyTorch, needed to export, is not
    installed).
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
    problem = "there is no .onnx beside it"
    if beside.is_file():
        try:
            meta = onnx_metadata(beside)
        except ModelFileError as err:
            LOG.warning("ignoring %s beside %s: %s; the graph is exported again from the .pt", beside, model_path, err)
            meta, problem = {}, f"{beside} beside it is unusable ({err})"
        if meta.get(META_SOURCE) == file_sha256(model_path):
            if meta.get(META_CONFIDENCE) == str(int(with_confidence)):
                return beside
            problem = f"{beside} beside it was exported with confidence={not with_confidence}"
        elif meta:
            problem = (f"{beside} beside it was exported from other weights ({META_SOURCE} "
                       f"{meta.get(META_SOURCE, '?')[:16]}...), not from this file: the .pt changed or is damaged")
    try:
        from mdflow_ros.inference.onnx_export import cached_export
    except ImportError as err:
        raise BackendUnavailable(
            f"{model_path} cannot run on ONNX: {problem}, and exporting one needs PyTorch and onnx "
            f"(pip install 'mdflow_ros[torch]'; {err})") from None
    return cached_export(model_path, with_confidence)
