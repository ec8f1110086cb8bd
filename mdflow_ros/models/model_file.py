"""Model files: save and load network weights safely, and rebuild the network they belong to.

A model file is a ``torch.save`` of plain data only: ``{"arch": str, "state_dict": {name:
tensor}, "meta": {...}, "content_sha256": hex}``. Training checkpoints carry the same keys
(plus optimiser and progress), so either loads here. Files are untrusted input: they are read
with ``torch.load(weights_only=True)``, which refuses pickled code, and every problem (missing,
unreadable, truncated, garbage, damaged, the wrong structure) gives a ``ModelFileError`` naming
the file and saying what is wrong; no other exception leaves this module's loaders.

``content_sha256`` is the digest of everything else in the file (each tensor's dtype, shape and
bytes, and the plain data around them; see ``content_digest``), recorded when the file is
written and checked when it is read, so flipped bits in the weights are refused instead of
loaded. Files written before digests were recorded still load, with a warning; ``python -m
mdflow_ros.models.model_file add-digest FILE...`` re-saves them with one (same weights).
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import logging
import pickle
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from mdflow_ros.files import ModelFileError, ModelFileMissing, atomic_write
from mdflow_ros.models.fastflownet import FastFlowNet
from mdflow_ros.models.raft import RAFT

LOG = logging.getLogger("mdflow_ros.models")

ARCHITECTURES: dict[str, type[nn.Module]] = {"fastflownet": FastFlowNet, "raft": RAFT}

DIGEST_KEY = "content_sha256"
"""Top-level key of the content digest in model files and checkpoints."""


@dataclass
class ModelFile:
    """The contents of a model file: architecture name, weights and plain-data metadata."""

    arch: str
    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)


def arch_name(model: nn.Module) -> str:
    """The architecture key of a network instance ("fastflownet" or "raft")."""
    for name, cls in ARCHITECTURES.items():
        if type(model) is cls:
            return name
    raise ModelFileError(f"{type(model).__name__} is not one of {sorted(ARCHITECTURES)}")


def _feed(digest: Any, value: Any) -> None:
    """Add one value of a model file's plain-data tree to ``digest``, typed and length-prefixed."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    elif isinstance(value, dict):
        digest.update(f"D{len(value)}".encode())
        for key in sorted(value, key=repr):
            _feed(digest, key)
            _feed(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"{'L' if isinstance(value, list) else 'U'}{len(value)}".encode())
        for item in value:
            _feed(digest, item)
    elif value is None or isinstance(value, (bool, int, float, str, bytes)):
        text = repr(value).encode()
        digest.update(f"{type(value).__name__}{len(text)}:".encode() + text)
    else:
        raise TypeError(f"a model file holds tensors and plain data only, not {type(value).__name__}")


def content_digest(data: dict[str, Any]) -> str:
    """Hex SHA-256 of a model file's or checkpoint's contents, the ``content_sha256`` entry excluded.

    It covers every tensor (dtype, shape, bytes) and every plain value with its place in the
    tree, and does not depend on dict order or on how torch.save lays the file out.
    """
    digest = hashlib.sha256()
    _feed(digest, {key: value for key, value in data.items() if key != DIGEST_KEY})
    return digest.hexdigest()


def atomic_torch_save(obj: dict[str, Any], path: str | Path) -> None:
    """torch.save ``obj`` with its content digest to ``path`` atomically: never a half-written file."""
    sealed = dict(obj, **{DIGEST_KEY: content_digest(obj)})
    atomic_write(path, lambda f: torch.save(sealed, f))


def save_model_file(path: str | Path, model: nn.Module, meta: dict[str, Any] | None = None,
                    float_dtype: torch.dtype | None = None) -> None:
    """Write a model file (atomically, with its content digest) for ``model`` with plain-data ``meta``.

    float_dtype: store the floating-point weights in this dtype (e.g. torch.float16 halves the
    file); loading casts them back to the network's dtype.
    """
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if float_dtype is not None:
        state = {k: v.to(float_dtype) if v.is_floating_point() else v for k, v in state.items()}
    atomic_torch_save({"arch": arch_name(model), "state_dict": state, "meta": dict(meta or {})}, path)


def _load_failure(path: Path, err: Exception) -> ModelFileError:
    """The ModelFileError for an exception of torch.load on ``path``."""
    text = str(err)
    if isinstance(err, pickle.UnpicklingError) and "GLOBAL" in text:
        detail = next((line for line in text.splitlines() if "GLOBAL" in line), text.splitlines()[0])
        return ModelFileError(f"{path} was refused: it holds objects other than tensors and plain data "
                              f"(a file that could run code when loaded). Details: {detail.strip()}")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    marker = next((i for i, line in enumerate(lines) if line.startswith("WeightsUnpickler error")), None)
    detail = lines[marker + 1] if marker is not None and marker + 1 < len(lines) else (lines[0] if lines else "")
    return ModelFileError(f"{path} is not a readable PyTorch file (corrupt, truncated or not a model file): "
                          f"{type(err).__name__}: {detail[:200]}")


@functools.lru_cache(maxsize=None)
def _warn_no_digest(path: str) -> None:
    """Warn once per file that it records no content digest."""
    LOG.warning("%s records no content digest (written before mdflow_ros recorded them): damage to its weights "
                "cannot be detected. Add one with: python -m mdflow_ros.models.model_file add-digest %s", path, path)


def _read(path: Path) -> tuple[dict[str, Any], str | None]:
    """The dict in a torch file (its digest entry removed) and the digest it recorded, if any; ModelFileError otherwise."""
    if not path.is_file():
        raise ModelFileMissing(f"model file {path} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load fails on damaged files with many exception types
        raise _load_failure(path, err) from None
    if not isinstance(data, dict):
        raise ModelFileError(f"{path} is not an mdflow_ros model file: it holds a {type(data).__name__}, not a dict")
    return data, data.pop(DIGEST_KEY, None)


def _verify(path: Path, data: dict[str, Any], recorded: Any) -> None:
    """ModelFileError unless ``data`` has the content digest ``recorded``."""
    try:
        actual = content_digest(data)
    except TypeError as err:
        raise ModelFileError(f"{path} is not an mdflow_ros model file: {err}") from None
    if actual != recorded:
        raise ModelFileError(f"{path} is damaged: its contents do not match the digest recorded when it was written "
                             f"({DIGEST_KEY} {str(recorded)[:16]}..., contents {actual[:16]}...)")


def read_torch_file(path: str | Path) -> dict[str, Any]:
    """The dict in a model file or checkpoint, read with weights_only=True and checked against its digest.

    Raises ModelFileError for a missing, unreadable, unsafe or damaged file, or one that does
    not hold a dict. A file without a digest loads with a warning (once per file).
    """
    path = Path(path)
    data, recorded = _read(path)
    if recorded is None:
        _warn_no_digest(str(path))
    else:
        _verify(path, data, recorded)
    return data


def check_tensors(path: str | Path, name: str, value: Any) -> dict[str, torch.Tensor]:
    """``value`` when it is a dict of name -> tensor (a state dict), else ModelFileError naming ``path`` and ``name``."""
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in value.items()):
        raise ModelFileError(f"{path}: '{name}' is not a dict of named tensors")
    return value


def load_model_file(path: str | Path) -> ModelFile:
    """Read a model file or training checkpoint without unpickling arbitrary objects (ModelFileError if unusable)."""
    data = read_torch_file(path)
    if "arch" not in data or "state_dict" not in data:
        raise ModelFileError(f"{path} is not an mdflow_ros model file: expected keys 'arch' and 'state_dict', "
                             f"found {sorted(map(str, data))}")
    if not isinstance(data["arch"], str) or data["arch"] not in ARCHITECTURES:
        raise ModelFileError(f"{path} holds architecture {data['arch']!r}; expected one of {sorted(ARCHITECTURES)}")
    meta = data.get("meta") or {}
    if not isinstance(meta, dict):
        raise ModelFileError(f"{path}: 'meta' is a {type(meta).__name__}, not a dict")
    return ModelFile(arch=data["arch"], state_dict=check_tensors(path, "state_dict", data["state_dict"]), meta=meta)


def build_model(model_file: ModelFile, source: str | Path = "model") -> nn.Module:
    """Instantiate the network of ``model_file`` with its weights, in eval mode."""
    model = ARCHITECTURES[model_file.arch]()
    try:
        model.load_state_dict(model_file.state_dict, strict=True)
    except RuntimeError as err:
        raise ModelFileError(f"{source}: weights do not fit {model_file.arch}: {str(err).splitlines()[0]}") from None
    return model.eval()


def load_model(path: str | Path) -> nn.Module:
    """Load a model file (or training checkpoint) into its network, in eval mode."""
    return build_model(load_model_file(path), path)


def add_digest(path: str | Path) -> bool:
    """Re-save a model file or checkpoint that has no content digest with one, its contents unchanged.

    Returns False when the file already has a digest (then it is verified and left as it is).
    """
    path = Path(path)
    data, recorded = _read(path)
    if recorded is not None:
        _verify(path, data, recorded)
        return False
    atomic_torch_save(data, path)
    return True


def main(argv: list[str] | None = None) -> int:
    """``python -m mdflow_ros.models.model_file add-digest FILE...``: give old files a content digest."""
    parser = argparse.ArgumentParser(prog="mdflow_ros.models.model_file", description=main.__doc__)
    parser.add_argument("command", choices=["add-digest"])
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    try:
        for path in args.files:
            print(f"{path}: {'digest added' if add_digest(path) else 'already has a digest (verified)'}")
    except ModelFileError as err:
        print(f"mdflow_ros.models.model_file: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
