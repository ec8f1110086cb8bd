"""Evidence for mutual distillation: does each MDFlow stage help, and do the mask and the extra term?

    python bench/distillation_table.py --config config/train/mdflow.yaml --data PATH [PATH ...] --out RUN_DIR
        [--stage1-model TEACHER.pt] [--stage2-model STUDENT.pt] [--variants NAME ...]
        [--max-steps-per-stage N] [--threads 1]
        [--synthetic 16] [--gt-dev DIR ...] [--max-pairs N] [--table training/results/distillation_table.md]

Trains, with the pipeline config's stage settings, one run directory per variant under RUN_DIR:
the stage-1 teacher (or ``--stage1-model``), the stage-2 student with and without the reliable
mask, the stage-3 teacher with the extra unsupervised term, without it (lambda = 0), and from
the no-mask student, plus a control: the stage-1 teacher trained on with stage 1's recipe for as
many steps as stage 3 (does stage 3 beat plain extra training?). ``--stage2-model`` takes a
trained student as the stage-2 row (e.g. the shipped one) and ``--variants`` trains only the
named rows (each with the rows it starts from); the checks cover the rows present. Every variant is resumable (a
killed run continues where it stopped; complete variants are skipped). Then every model is
evaluated as deployed (FlowEstimator, pytorch backend) on the held-out synthetic pairs and the
ground-truth folders (default: ../shared/data/gt-dev/*), and one markdown table of EPE is
printed and written, with the checks the issue asks for (which gains appear) under it.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mdflow_ros.files import file_sha256
from mdflow_ros.inference import FlowEstimator
from mdflow_ros.models.model_file import load_model_file
from training.config import load_pipeline_config, merge
from training.evaluate import GroundTruthSet, benchmark_sets, estimator_fn, evaluate, synthetic_set, zero_flow
from training.mdflow import adopt_model, capped, completed_model, mark_done
from training.tau_report import default_data
from training.train import train_stage

LOG = logging.getLogger("mdflow_ros.bench")


@dataclass(frozen=True)
class Variant:
    """One trained model of the table: its stage, where its networks come from, and its config changes."""

    name: str
    stage: str
    label: str
    init: str | None = None
    frozen: str | None = None
    loss: dict[str, Any] = field(default_factory=dict)
    steps_of: str | None = None


VARIANTS: tuple[Variant, ...] = (
    Variant("stage1", "stage1", "T after stage 1"),
    Variant("stage2", "stage2", "S after stage 2, reliable mask M", frozen="stage1"),
    Variant("stage2-nomask", "stage2", "S after stage 2, no mask (every pixel)", frozen="stage1",
            loss={"distill_mask": "none"}),
    Variant("stage3", "stage3", "T after stage 3 (from S with M), with the extra unsupervised term",
            init="stage1", frozen="stage2"),
    Variant("stage3-nounsup", "stage3", "T after stage 3 (from S with M), without it (lambda = 0)",
            init="stage1", frozen="stage2", loss={"unsup_weight": 0.0}),
    Variant("stage3-nomask", "stage3", "T after stage 3 from S without mask, with the extra term",
            init="stage1", frozen="stage2-nomask"),
    Variant("stage1-more", "stage1", "control: T after stage 1 + as many more stage-1 steps as stage 3",
            init="stage1", loss={"warmup_steps": 0}, steps_of="stage3"),
)

CHECKS: tuple[tuple[str, str, str], ...] = (
    ("stage2", "stage1", "the student after stage 2 beats the stage-1 teacher"),
    ("stage3", "stage1", "the teacher after stage 3 beats its stage-1 self"),
    ("stage3", "stage1-more", "stage 3 beats as much plain stage-1 training"),
    ("stage2", "stage2-nomask", "the reliable mask helps the student"),
    ("stage3", "stage3-nomask", "the reliable mask helps the final teacher"),
    ("stage3", "stage3-nounsup", "the extra unsupervised term helps the final teacher"),
)
"""(better, worse, claim): the claim holds where ``better`` has the lower EPE."""


def variant_config(variant: Variant, configs: dict[str, dict[str, Any]], max_steps: int | None,
                   threads: int | None) -> dict[str, Any]:
    """The stage config of ``variant``: its stage's, with its loss changes, step count and thread count."""
    cfg = merge(configs[variant.stage], {"loss": variant.loss})
    if variant.steps_of is not None:
        cfg["train"]["steps"] = configs[variant.steps_of]["train"]["steps"]
    if threads is not None:
        cfg["train"]["threads"] = threads
    return capped(cfg, max_steps)


def selected_variants(names: Sequence[str] | None, given: Sequence[str]) -> list[Variant]:
    """The variants to train, in table order: ``names`` (all when None) and the rows they start from.

    given: the rows that come as trained model files (``--stage1-model``, ``--stage2-model``);
    they are kept, without their own sources.
    """
    by_name = {v.name: v for v in VARIANTS}
    unknown = sorted(set(names or ()) - set(by_name))
    if unknown:
        raise SystemExit(f"unknown variant(s) {', '.join(unknown)}; the variants are {', '.join(by_name)}")
    wanted = set(names or by_name) | set(given)
    todo = list(wanted)
    while todo:
        v = by_name[todo.pop()]
        if v.name in given:
            continue
        for source in (v.init, v.frozen):
            if source and source not in wanted:
                wanted.add(source)
                todo.append(source)
    return [v for v in VARIANTS if v.name in wanted]


def train_variants(configs: dict[str, dict[str, Any]], data: Sequence[str], out: Path, max_steps: int | None,
                   threads: int | None, given: dict[str, Path], names: Sequence[str] | None = None) -> dict[str, Path]:
    """Train (or resume, or skip when complete) the variants; returns {name: model file}.

    given: {row: trained model file} adopted as that row's result instead of training it.
    """
    models: dict[str, Path] = {}
    for v in selected_variants(names, list(given)):
        directory = out / v.name
        if v.name in given:
            model = adopt_model(directory, 1, v.stage, given[v.name])
        else:
            model = completed_model(directory)
        if model is None:
            LOG.info("training %s in %s", v.name, directory)
            model = train_stage(variant_config(v, configs, max_steps, threads), data, directory, resume=True,
                                init=models.get(v.init), frozen=models.get(v.frozen))
            mark_done(directory, 1, v.stage, model)
        models[v.name] = model
    return models


def evaluation_sets(synthetic: int, folders: Sequence[str | Path], max_pairs: int | None) -> list[GroundTruthSet]:
    """The held-out synthetic set and the ground-truth folders, each cut to ``max_pairs``."""
    sets = [synthetic_set(synthetic, (384, 512), 1234)] if synthetic else []
    sets += benchmark_sets(folders)
    return [GroundTruthSet(s.name, s.pairs[:max_pairs]) for s in sets]


def evaluate_models(models: dict[str, Path], sets: Sequence[GroundTruthSet], threads: int
                    ) -> dict[str, dict[str, dict[str, float]]]:
    """{row: {set: {"epe", "fl_all"}}} for every model, and the zero-flow baseline."""
    results = {"zero": {s.name: evaluate(zero_flow, s) for s in sets}}
    for name, path in models.items():
        fn = estimator_fn(FlowEstimator(backend="pytorch", model=path, confidence=False, threads=threads))
        results[name] = {s.name: evaluate(fn, s) for s in sets}
        LOG.info("%s: %s", name, {k: round(v["epe"], 3) for k, v in results[name].items()})
    return results


def markdown(results: dict[str, dict[str, dict[str, float]]], models: dict[str, Path], sets: Sequence[GroundTruthSet],
             configs: dict[str, dict[str, Any]], command: str) -> str:
    """The table (EPE per set and its mean, per model), then the checks."""
    names = [s.name for s in sets]
    labels = {v.name: v.label for v in VARIANTS} | {"zero": "zero flow (reference)"}
    steps = {name: load_model_file(path).meta.get("step", "?") for name, path in models.items()}
    lines = ["# Mutual distillation: evidence", "",
             f"`{command}`", "",
             "EPE in pixels at the frames' resolution (FlowEstimator, pytorch backend), mean over the pairs of each "
             f"set ({', '.join(f'{s.name}: {len(s.pairs)} pairs' for s in sets)}). Steps: the network's training steps "
             "in that stage. lambda = " + f"{configs['stage3']['loss']['unsup_weight']:g}, "
             f"tau = {configs['stage2']['loss']['reliable_tau']:g}.", "",
             "| row | model | steps | " + " | ".join(names) + " | mean |",
             "|---|---|---|" + "---|" * (len(names) + 1)]
    for name in ["zero", *models]:
        epes = [results[name][n]["epe"] for n in names]
        sha = "" if name == "zero" else f" (`{file_sha256(models[name])[:8]}`)"
        lines.append(f"| {name} | {labels[name]}{sha} | {steps.get(name, '–')} | "
                     + " | ".join(f"{e:.3f}" for e in epes) + f" | {np.mean(epes):.3f} |")
    lines += ["", "| check | holds on | mean EPE |", "|---|---|---|"]
    for better, worse, claim in CHECKS:
        if better not in models or worse not in models:
            continue
        wins = sum(results[better][n]["epe"] < results[worse][n]["epe"] for n in names)
        means = (np.mean([results[better][n]["epe"] for n in names]), np.mean([results[worse][n]["epe"] for n in names]))
        lines.append(f"| {claim} ({better} < {worse}) | {wins} of {len(names)} sets | {means[0]:.3f} vs {means[1]:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="pipeline YAML (e.g. config/train/mdflow.yaml)")
    parser.add_argument("--data", nargs="*", default=[], help="training bags, videos or image folders")
    parser.add_argument("--out", type=Path, required=True, help="run directory (one subdirectory per variant)")
    parser.add_argument("--stage1-model", type=Path, default=None, help="a trained stage-1 teacher to start from")
    parser.add_argument("--stage2-model", type=Path, default=None, help="a trained stage-2 student (the stage2 row)")
    parser.add_argument("--variants", nargs="*", default=None,
                        help=f"train only these rows and their sources (default: all of {', '.join(v.name for v in VARIANTS)})")
    parser.add_argument("--max-steps-per-stage", type=int, default=None, help="cap every variant at N steps")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for training and evaluation")
    parser.add_argument("--synthetic", type=int, default=16, help="held-out synthetic pairs (0: none)")
    parser.add_argument("--gt-dev", nargs="*", default=None, help="ground-truth folders (default: ../shared/data/gt-dev/*)")
    parser.add_argument("--max-pairs", type=int, default=None, help="evaluate at most this many pairs per set")
    parser.add_argument("--table", type=Path, default=None, help="write the markdown here too")
    args = parser.parse_args(argv)
    _, configs = load_pipeline_config(args.config)
    given = {name: path for name, path in (("stage1", args.stage1_model), ("stage2", args.stage2_model)) if path}
    models = train_variants(configs, args.data, args.out, args.max_steps_per_stage, args.threads, given, args.variants)
    folders = default_data() if args.gt_dev is None else args.gt_dev
    threads = args.threads or configs["stage1"]["train"]["threads"] or torch.get_num_threads()
    sets = evaluation_sets(args.synthetic, folders, args.max_pairs)
    results = evaluate_models(models, sets, threads)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    text = markdown(results, models, sets, configs, "python bench/distillation_table.py " + " ".join(argv or sys.argv[1:]))
    print(text, end="")
    if args.table is not None:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
