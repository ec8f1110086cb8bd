"""Files: atomic writes, SHA-256 digests, and the error for a model file that cannot be used.

Writes go to a temporary file beside the target, flushed, then renamed over it, so a reader
(or a run resumed after a kill) never sees a half-written checkpoint, manifest or marker
file. Digests name model files, ONNX exports and engines. No PyTorch here: the deployed
runtime uses this module.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


class ModelFileError(ValueError):
    """A model file is missing, corrupt, unsafe, or not a model of a known architecture."""


class ModelFileMissing(ModelFileError, FileNotFoundError):
    """A model file that does not exist (caught as either a ModelFileError or a FileNotFoundError)."""


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(f)`` on a temporary binary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write(path, lambda f: f.write(data))


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
