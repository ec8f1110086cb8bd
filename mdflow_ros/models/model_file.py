"""Model files: save and load network weights safely, and rebuild the network they belong to.

A model file is a ``torch.save`` of plain data only: ``{"arch": str, "state_dict": {name:
tensor}, "meta": {...}}``. Training checkpoints carry the same three keys (plus optimiser and
progress), so either loads here. Files are untrusted input: they are read with
``torch.load(weights_only=True)``, which refuses pickled code, and every structural problem
gives a ``ModelFileError`` saying what was expected.
"""
from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from mdflow_ros.files import ModelFileError, atomic_write
from mdflow_ros.models.fastflownet import FastFlowNet
from mdflow_ros.models.raft import RAFT

ARCHITECTURES: dict[str, type[nn.Module]] = {"fastflownet": FastFlowNet, "raft": RAFT}


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


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save to ``path`` atomically: never a half-written file."""
    atomic_write(path, lambda f: torch.save(obj, f))


def save_model_file(path: str | Path, model: nn.Module, meta: dict[str, Any] | None = None,
                    float_dtype: torch.dtype | None = None) -> None:
    """Write a model file (atomically) for ``model`` with plain-data ``meta``.

    float_dtype: store the floating-point weights in this dtype (e.g. torch.float16 halves the
    file); loading casts them back to the network's dtype.
    """
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if float_dtype is not None:
        state = {k: v.to(float_dtype) if v.is_floating_point() else v for k, v in state.items()}
    atomic_torch_save({"arch": arch_name(model), "state_dict": state, "meta": dict(meta or {})}, path)


def read_torch_file(path: str | Path) -> Any:
    """torch.load with weights_only=True: tensors and plain data only, clear errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ModelFileError(
            f"{path} was refused: it holds objects other than tensors and plain data "
            f"(a file that could run code when loaded). Details: {str(err).splitlines()[0]}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise ModelFileError(f"{path} is not a readable PyTorch file (corrupt or truncated?): {err}") from None


def load_model_file(path: str | Path) -> ModelFile:
    """Read a model file or training checkpoint without unpickling arbitrary objects."""
    data = read_torch_file(path)
    if not isinstance(data, dict) or "arch" not in data or "state_dict" not in data:
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ModelFileError(f"{path} is not an mdflow_ros model file: expected keys 'arch' and 'state_dict', found {keys}")
    if data["arch"] not in ARCHITECTURES:
        raise ModelFileError(f"{path} holds architecture {data['arch']!r}; expected one of {sorted(ARCHITECTURES)}")
    return ModelFile(arch=data["arch"], state_dict=data["state_dict"], meta=data.get("meta") or {})


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
