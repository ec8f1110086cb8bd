"""Training checkpoints: written atomically, read without unpickling code, resumed exactly.

A checkpoint is a model file (``arch``, ``state_dict``, ``meta`` and the content digest; see
mdflow_ros.models.model_file) plus the optimiser state, the step, every RNG state and the
config, all as tensors or plain data so that ``torch.load(weights_only=True)`` reads it. A
damaged or garbage checkpoint is refused with a ModelFileError naming it, never resumed from.
A run killed while writing one leaves a temporary file beside it (``.latest.pt.*.tmp``), which
``remove_stale_temporaries`` clears at the next start.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mdflow_ros.files import ModelFileError
from mdflow_ros.models.model_file import arch_name, atomic_torch_save, check_tensors, read_torch_file

FORMAT = "mdflow_ros/checkpoint/1"

ENTRY_TYPES: dict[str, type] = {
    "arch": str, "state_dict": dict, "meta": dict, "optimizer": dict, "step": int, "config": dict, "rng": dict}
"""Every entry a checkpoint must hold, with its type."""

RNG_KEYS = ("torch", "augment", "numpy", "python")


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every RNG the training loop draws from, as plain data and tensors."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "augment": generator.get_state(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": random.getstate(),
    }


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    """Put back the RNG states saved by ``rng_state``."""
    torch.set_rng_state(state["torch"])
    generator.set_state(state["augment"])
    npk = state["numpy"]
    np.random.set_state(("MT19937", npk["key"].numpy().astype(np.uint32), npk["pos"], npk["has_gauss"], npk["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int,
                    config: dict[str, Any], generator: torch.Generator, meta: dict[str, Any],
                    ema: dict[str, torch.Tensor] | None = None) -> None:
    """Write a checkpoint atomically (a killed run never leaves a half-written file).

    ema: the run's moving average of the weights, stored beside them when the run keeps one.
    """
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    data = {"format": FORMAT, "arch": arch_name(model), "state_dict": state, "meta": meta,
            "optimizer": optimizer.state_dict(), "step": step, "config": config, "rng": rng_state(generator)}
    if ema is not None:
        data["ema"] = {k: v.detach().cpu().clone() for k, v in ema.items()}
    atomic_torch_save(data, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by save_checkpoint; ModelFileError naming the file for anything else.

    Refuses files that would unpickle code, damaged files (content digest), and files without
    every entry of a checkpoint (ENTRY_TYPES, the RNG states, tensors where weights go).
    """
    data = read_torch_file(path)
    if data.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not an mdflow_ros training checkpoint (format {FORMAT})")
    for key, kind in ENTRY_TYPES.items():
        if not isinstance(data.get(key), kind):
            found = "missing" if key not in data else f"a {type(data[key]).__name__}"
            raise ModelFileError(f"{path}: checkpoint entry '{key}' is {found}, expected {kind.__name__}")
    check_tensors(path, "state_dict", data["state_dict"])
    if "ema" in data:
        check_tensors(path, "ema", data["ema"])
    missing = [key for key in RNG_KEYS if key not in data["rng"]]
    if missing:
        raise ModelFileError(f"{path}: checkpoint entry 'rng' lacks {missing}")
    return data


def remove_stale_temporaries(run_dir: str | Path) -> list[Path]:
    """Delete the temporary files of checkpoint and model writes that a killed run left in ``run_dir``
    or below it (e.g. ``.latest.pt.k3j2.tmp``); returns them. Call it before the run writes."""
    stale = sorted(p for p in Path(run_dir).rglob(".*.pt.*.tmp") if p.is_file())
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
