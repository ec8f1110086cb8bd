"""Training configuration: defaults for every constant, merged with a YAML file and checked.

A config is a plain nested dict (it is stored as-is in every checkpoint). Unknown keys are
errors, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from mdflow_ros.flow import OCC_BIAS, OCC_SCALE, RELIABLE_TAU

DEFAULTS: dict[str, Any] = {
    "stage": "stage1",
    "seed": 0,
    "data": {
        "crop": [256, 320],
        "stride": 1,
        "max_gap_s": 0.5,
        "resolution_policy": "resize",
        "resize": None,
        "hflip": True,
        "swap": True,
        "synthetic_pairs": 2000,
        "real_repeat": 1,
        "num_workers": 1,
    },
    "train": {
        "steps": 20000,
        "batch_size": 4,
        "lr": 1.0e-4,
        "weight_decay": 1.0e-6,
        "adam_eps": 1.0e-7,
        "grad_clip": 0.0,
        "amp": True,
        "threads": 0,
        "log_every": 10,
        "checkpoint_every": 100,
        "val_every": 500,
        "image_every": 2000,
    },
    "loss": {
        "w_census": 1.0,
        "w_ssim": 0.0,
        "w_l1": 0.0,
        "level_weights": [1.0, 1.0, 1.0, 1.0, 0.0],
        "smooth_weight": 50.0,
        "smooth_order": 1,
        "smooth_alpha": 10.0,
        "warmup_steps": 1000,
        "ar_weight": 0.01,
        "ar_directions": "both",
        "occ_scale": OCC_SCALE,
        "occ_bias": OCC_BIAS,
        "reliable_tau": RELIABLE_TAU,
        "sequence_gamma": 0.8,
    },
    "augment": {
        "zoom": [1.0, 1.5], "squeeze": [0.86, 1.16], "rotate": [-0.2, 0.2], "translate": 0.2,
        "rel_zoom": [0.985, 1.015], "rel_rotate": 0.015, "rel_translate": 0.015,
        "hflip": True, "vflip": True,
        "brightness": 0.5, "contrast": 0.5, "saturation": 0.5, "gamma": [0.7, 1.5], "noise_std": 0.04,
        "cutout_prob": 0.0, "cutout_boxes": [1, 3], "cutout_size": [0.05, 0.2],
    },
    "validation": {
        "synthetic_pairs": 16,
        "synthetic_size": [384, 512],
        "synthetic_seed": 1234,
        "paths": [],
    },
}

RESUMABLE_CHANGES = {
    ("train", "steps"), ("train", "log_every"), ("train", "checkpoint_every"), ("train", "val_every"),
    ("train", "image_every"), ("train", "threads"), ("data", "num_workers"), ("validation",),
}
"""Config entries a resumed run may change; any other difference refuses the resume."""


class ConfigError(ValueError):
    """A config file has an unknown key or a value of the wrong kind."""


def merge(base: dict[str, Any], override: dict[str, Any], where: str = "") -> dict[str, Any]:
    """Deep-merge ``override`` into a copy of ``base``; keys absent from base are errors."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if key not in base:
            raise ConfigError(f"unknown config key '{where}{key}' (known: {sorted(base)})")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{where}{key}' must be a mapping, got {value!r}")
            out[key] = merge(base[key], value, f"{where}{key}.")
        else:
            out[key] = value
    return out


def load_config(path: str | Path | None) -> dict[str, Any]:
    """DEFAULTS overridden by the YAML file at ``path`` (None: the defaults)."""
    if path is None:
        return copy.deepcopy(DEFAULTS)
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read config {path}: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a YAML mapping")
    return merge(DEFAULTS, data)


def resume_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Entries that differ between a checkpoint's config and the current one and forbid a resume."""
    diffs = []

    def walk(a: Any, b: Any, path: tuple[str, ...]) -> None:
        if any(path[:len(allowed)] == allowed for allowed in RESUMABLE_CHANGES):
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                walk(a.get(key), b.get(key), path + (key,))
        elif a != b:
            diffs.append(f"{'.'.join(path)}: checkpoint has {a!r}, config has {b!r}")

    walk(saved, current, ())
    return diffs
