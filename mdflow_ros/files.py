"""Files: atomic writes, new output files, SHA-256 digests, and the error for a model file that cannot be used.

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


def model_identity(path: str | Path) -> str:
    """'<file name>@<first 16 hex digits of its SHA-256>': the model field of an OpticalFlow message."""
    path = Path(path)
    return f"{path.name}@{file_sha256(path)[:16]}"


class OutputExistsError(FileExistsError):
    """An output file or folder that exists already and may not be overwritten."""


def make_folder(folder: str | Path) -> Path:
    """Create ``folder`` and its parents where missing; NotADirectoryError naming a file that is in the way."""
    folder = Path(folder)
    for part in (folder, *folder.parents):
        if part.exists():
            if not part.is_dir():
                raise NotADirectoryError(f"{part} is a file, not a folder")
            break
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class PendingFile:
    """A new output file written in place under a temporary name beside ``path``, renamed to it by commit().

    An existing ``path`` is refused (OutputExistsError) unless ``force``; a ``path`` that cannot be
    written is refused at once (OSError, before any work), so a long run never fails at its end.
    ``suffix`` ends the temporary name too (a writer that picks its format by the suffix, e.g.
    OpenCV's video writer, sees the same one). discard() removes the temporary file.
    """

    def __init__(self, path: str | Path, force: bool = False):
        self.path = Path(path)
        if self.path.is_dir():
            raise IsADirectoryError(f"{self.path} is a directory")
        if self.path.exists() and not force:
            raise OutputExistsError(f"{self.path} exists already (pass --force to overwrite it)")
        make_folder(self.path.parent)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=f".tmp{self.path.suffix}")
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # an output file's usual mode, not mkstemp's private 0600
        os.close(fd)
        self.tmp = Path(tmp)

    def commit(self) -> Path:
        """Rename the temporary file to ``path``; returns ``path``."""
        os.replace(self.tmp, self.path)
        return self.path

    def discard(self) -> None:
        """Remove the temporary file (nothing is written to ``path``)."""
        self.tmp.unlink(missing_ok=True)
