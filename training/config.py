"""Training configuration: defaults for every constant, merged with a YAML file and checked.

A config is a plain nested dict (it is stored as-is in every checkpoint). Unknown keys are
errors, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from mdflow_ros.conventions import CENSUS_RADIUS, OCC_BIAS, OCC_SCALE, RELIABLE_TAU
from mdflow_ros.models.raft import TRAIN_ITERS
from training.partners import LABEL_MASKS, ClassicalFlow, PartnerError

DEFAULTS: dict[str, Any] = {
    "stage": "stage1",
    "seed": 0,
    "network": None,
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
        "synthetic_photos": [],
    },
    "train": {
        "steps": 20000,
        "batch_size": 4,
        "lr": 1.0e-4,
        "lr_schedule": "constant",
        "lr_warmup_steps": 0,
        "weight_decay": 1.0e-6,
        "adam_eps": 1.0e-7,
        "grad_clip": 0.0,
        "ema_decay": 0.0,
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
        "pretrain_level_weights": [1.0, 0.5, 0.25, 0.125, 0.125],
        "ar_weight": 0.01,
        "ar_directions": "both",
        "occ_scale": OCC_SCALE,
        "occ_bias": OCC_BIAS,
        "reliable_tau": RELIABLE_TAU,
        "census_radius": CENSUS_RADIUS,
        "distill_mask": "reliable",
        "sequence_gamma": 0.8,
        "max_flow": 400.0,
        "unsup_weight": 1.0,
        "distill_passes": "augmented",
        "stage3_mask": "occlusion",
    },
    "student": {
        "train_iters": TRAIN_ITERS,
    },
    "partner": {
        "method": "dis-medium",
        "params": {},
        "threads": 1,
        "cache_dir": None,
        "mask": "reliable",
        "synthetic_labels": "ground_truth",
    },
    "augment": {
        "zoom": [1.0, 1.5], "squeeze": [0.86, 1.16], "rotate": [-0.2, 0.2], "translate": 0.2,
        "rel_zoom": [0.985, 1.015], "rel_rotate": 0.015, "rel_translate": 0.015,
        "hflip": True, "vflip": True,
        "brightness": 0.5, "contrast": 0.5, "saturation": 0.5, "gamma": [0.7, 1.5], "noise_std": 0.04,
        "cutout_prob": 0.0, "cutout_boxes": [1, 3], "cutout_size": [0.05, 0.2],
    },
    "validation": {
        "split_pairs": 0,
        "split_photos": [],
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

PIPELINE_STAGES: tuple[str, ...] = ("classical", "stage1", "stage2", "stage3")
"""Stages of a pipeline: round 0 (a classical partner -> teacher) or stage 1 (unsupervised teacher),
then rounds of 2 (teacher -> student) and 3 (student -> teacher)."""

FIRST_STAGES: tuple[str, ...] = ("stage1", "classical")
"""``first``: the stage a pipeline starts its teacher with."""

PIPELINE_DEFAULTS: dict[str, Any] = {
    "rounds": 1,
    "first": "stage1",
    "stages": {"classical": {}, "stage1": {}, "stage2": {"train": {"grad_clip": 1.0}}, "stage3": {}},
}
"""A pipeline file (training/mdflow.py): its ``first`` stage, ``rounds`` of stages 2 -> 3 after it, and
per-stage overrides of the common config. Stage 2 clips RAFT's gradients at 1.0 unless told otherwise."""


class ConfigError(ValueError):
    """A config file has an unknown key or a value of the wrong kind."""


LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine")
"""``train.lr_schedule``: the learning rate held at ``train.lr``, or decayed to zero over ``train.steps``
on a half cosine; either after ``train.lr_warmup_steps`` of linear warm-up."""

DISTILL_MASKS: tuple[str, ...] = ("reliable", "occlusion", "none")
"""``loss.distill_mask``, stage 2's label mask: MDFlow's reliable matches, O alone, or every pixel."""

DISTILL_PASSES: tuple[str, ...] = ("augmented", "both")
"""``loss.distill_passes``, stage 3's passes of the teacher trained towards the student: the
augmented one (MDFlow's figure), or the augmented and the original one."""

STAGE3_MASKS: tuple[str, ...] = ("occlusion", "reliable")
"""``loss.stage3_mask``, stage 3's label mask: the teacher's own occlusion O (MDFlow's figure), or
O times the student's reliable matches M (census check of the student's flow)."""

SYNTHETIC_LABELS: tuple[str, ...] = ("ground_truth", "partner")
"""``partner.synthetic_labels``: in the classical round, synthetic pairs are labelled by their exact
flow, or by the classical partner like recordings."""

CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("train", "lr_schedule"): LR_SCHEDULES, ("loss", "distill_mask"): DISTILL_MASKS,
    ("loss", "distill_passes"): DISTILL_PASSES, ("loss", "stage3_mask"): STAGE3_MASKS,
    ("partner", "mask"): LABEL_MASKS, ("partner", "synthetic_labels"): SYNTHETIC_LABELS,
}
"""Config entries that take one of a few words, checked when a config is loaded (a typo in a
stage-3 option fails before stage 1 trains, not hours later)."""


def check_choice(value: Any, name: str, allowed: tuple[str, ...]) -> str:
    """``value`` if it is one of ``allowed``, else ConfigError naming the entry ``name``."""
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def check_choices(config: dict[str, Any], where: str = "") -> dict[str, Any]:
    """``config`` after checking every entry of CHOICES in it, and that its classical partner runs."""
    for (section, key), allowed in CHOICES.items():
        check_choice(config[section][key], f"{where}{section}.{key}", allowed)
    partner = config["partner"]
    if not isinstance(partner["params"], dict):
        raise ConfigError(f"{where}partner.params must be a mapping of the method's parameters, got {partner['params']!r}")
    try:
        ClassicalFlow(partner["method"], partner["params"]).check()
    except PartnerError as err:
        raise ConfigError(f"{where}partner: {err}") from None
    return config


FREE_FORM: frozenset[str] = frozenset({"partner.params"})
"""Mappings whose keys are not ours to know (a classical method's OpenCV parameters): replaced
whole by an override and checked where they are used (training/partners.py)."""


def merge(base: dict[str, Any], override: dict[str, Any], where: str = "") -> dict[str, Any]:
    """Deep-merge ``override`` into a copy of ``base``; keys absent from base are errors (except in FREE_FORM)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if key not in base:
            raise ConfigError(f"unknown config key '{where}{key}' (known: {sorted(base)})")
        if f"{where}{key}" in FREE_FORM:
            out[key] = copy.deepcopy(value)
        elif isinstance(base[key], dict):
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
    return check_choices(merge(DEFAULTS, read_mapping(path, "config")))


def read_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """The YAML mapping in the file at ``path`` (an empty file is an empty mapping)."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read {what} {path}: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must be a YAML mapping")
    return data


def with_defaults(saved: dict[str, Any], defaults: dict[str, Any] = DEFAULTS) -> dict[str, Any]:
    """A copy of a stored config with every key it lacks taken from ``defaults``.

    A checkpoint written before a key existed ran with that key's default behaviour.
    """
    out = copy.deepcopy(saved)
    for key, value in defaults.items():
        if key not in out:
            out[key] = copy.deepcopy(value)
        elif isinstance(value, dict) and isinstance(out[key], dict):
            out[key] = with_defaults(out[key], value)
    return out


def resume_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Entries that differ between a checkpoint's config and the current one and forbid a resume.

    Keys the checkpoint predates count as their defaults.
    """
    saved = with_defaults(saved)
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


def load_pipeline_config(path: str | Path) -> tuple[int, dict[str, dict[str, Any]]]:
    """(rounds, {stage: config}) of a pipeline file (training/mdflow.py), stages in the order they run.

    The file holds a common config (any key of DEFAULTS except ``stage``), ``first`` (stage1 or
    classical: how the teacher starts), ``rounds`` and ``stages: {classical: {...}, stage1: {...},
    stage2: {...}, stage3: {...}}``, overrides of the common config per stage. A stage's config
    is DEFAULTS, then the common part, then PIPELINE_DEFAULTS' override of that stage, then the
    file's override of that stage. The result holds the first stage, stage2 and stage3.
    """
    data = read_mapping(path, "pipeline config")
    rounds = data.pop("rounds", PIPELINE_DEFAULTS["rounds"])
    first = data.pop("first", PIPELINE_DEFAULTS["first"])
    overrides = data.pop("stages", None) or {}
    if "stage" in data:
        raise ConfigError(f"pipeline config {path} must not set 'stage': the pipeline runs {', '.join(PIPELINE_STAGES)}")
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise ConfigError(f"rounds must be an integer >= 1, got {rounds!r}")
    check_choice(first, "first", FIRST_STAGES)
    if not isinstance(overrides, dict) or set(overrides) - set(PIPELINE_STAGES):
        raise ConfigError(f"stages must map some of {', '.join(PIPELINE_STAGES)} to config overrides, got {overrides!r}")
    unused = set(overrides) - {first, "stage2", "stage3"}
    if unused:
        raise ConfigError(f"stages.{sorted(unused)[0]} is set, but this pipeline starts with {first} and never runs it")
    common = merge(DEFAULTS, data)
    configs = {}
    for stage in (first, "stage2", "stage3"):
        override = overrides.get(stage) or {}
        if not isinstance(override, dict) or "stage" in override:
            raise ConfigError(f"stages.{stage} must be a mapping of config overrides without 'stage', got {override!r}")
        cfg = merge(common, PIPELINE_DEFAULTS["stages"][stage], f"stages.{stage}.")
        configs[stage] = check_choices(merge(cfg, dict(override, stage=stage), f"stages.{stage}."), f"stages.{stage}.")
    return rounds, configs
