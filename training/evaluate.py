"""Evaluate flow on ground-truth pairs: EPE and Fl-all, for a model or a classical peer.

Training's validation and the command line share this. Models run through FlowEstimator,
the same pre- and post-processing as deployment.

    python training/evaluate.py MODEL.pt [MODEL.pt ...] [--data BENCHMARK_DIR ...] [--synthetic N]
                                [--split-photos DIR ... [--split-pairs N]]

With ``--split-photos`` it also measures the validation split (pairs rendered from photos
training never sees, as the trainer's validation does): the set to choose a checkpoint on.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mdflow_ros.files import ModelFileError
from mdflow_ros.inference import BackendUnavailable, FlowEstimator
from mdflow_ros.inference.backend import BACKENDS
from mdflow_ros.metrics import evaluate_flow
from mdflow_ros.synthetic import held_out_pairs
from training.cli import OneLineParser, error_line
from mdflow_ros.io.frames import DataError


@dataclass
class GroundTruthSet:
    """A named list of (img1, img2, flow, valid): RGB uint8, (H, W, 2) float32 px, (H, W) bool."""

    name: str
    pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]


FlowFn = Callable[[np.ndarray, np.ndarray], np.ndarray]

VALIDATION_SPLIT: str = "validation"
"""Name of the validation split: synthetic pairs rendered from photos training never draws from
(``validation.split_photos``), the set checkpoints are chosen on (never the evaluation sets)."""


def evaluate(flow_fn: FlowFn, dataset: GroundTruthSet) -> dict[str, float]:
    """Mean over pairs of per-pair EPE and Fl-all (%) of ``flow_fn(img1, img2) -> (H, W, 2)``."""
    rows = [evaluate_flow(flow_fn(a, b), gt, valid) for a, b, gt, valid in dataset.pairs]
    return {"epe": float(np.mean([r["epe"] for r in rows])), "fl_all": float(np.mean([r["fl_all"] for r in rows]))}


def estimator_fn(estimator: FlowEstimator) -> FlowFn:
    """A FlowEstimator as a flow function."""
    return lambda a, b: estimator.estimate(a, b).flow


def zero_flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The zero-motion baseline."""
    return np.zeros(a.shape[:2] + (2,), np.float32)


def synthetic_set(count: int, size: tuple[int, int], seed: int, photos: list[np.ndarray] | None = None,
                  name: str = "synthetic") -> GroundTruthSet:
    """A deterministic held-out synthetic set (real photos under known motion), named ``<name>-<count>``.

    photos: the photos to render (default: scikit-image's, the held-out evaluation set).
    """
    pairs = [(p.img1, p.img2, p.flow, p.valid) for p in held_out_pairs(count, tuple(size), seed, photos)]
    return GroundTruthSet(f"{name}-{count}", pairs)


def benchmark_sets(paths: Iterable[str | Path]) -> list[GroundTruthSet]:
    """Ground-truth sets from benchmark folders in any layout training.data.benchmarks detects."""
    from training.data.benchmarks import open_benchmark

    sets = []
    for path in paths:
        bench = open_benchmark(path)
        sets.append(GroundTruthSet(Path(path).name, [bench[i] for i in range(len(bench))]))
    return sets


def make_validator(config: dict[str, Any]) -> Callable[[torch.nn.Module, int], dict[str, float]]:
    """The trainer's validation: EPE / Fl-all of the network on every configured set."""
    v = config["validation"]
    sets = []
    if v["split_pairs"]:
        from training.data.synthetic_pairs import photos_from_folders

        sets.append(synthetic_set(v["split_pairs"], v["synthetic_size"], v["synthetic_seed"],
                                  photos_from_folders(v["split_photos"]), VALIDATION_SPLIT))
    if v["synthetic_pairs"]:
        sets.append(synthetic_set(v["synthetic_pairs"], v["synthetic_size"], v["synthetic_seed"]))
    sets += benchmark_sets(v["paths"])

    def validate(model: torch.nn.Module, step: int) -> dict[str, float]:
        fn = estimator_fn(FlowEstimator(backend="pytorch", model=model.eval(), confidence=False))
        out = {}
        for dataset in sets:
            for key, value in evaluate(fn, dataset).items():
                out[f"{dataset.name}/{key}"] = value
        return out

    return validate


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="evaluate.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="model files (.pt or .onnx)")
    parser.add_argument("--data", nargs="*", default=[], help="ground-truth folders (Sintel, KITTI, Chairs, Middlebury, pairs.tsv)")
    parser.add_argument("--synthetic", type=int, default=16, help="held-out synthetic pairs (0: none)")
    parser.add_argument("--split-photos", nargs="*", default=[], help="photo folders of the validation split")
    parser.add_argument("--split-pairs", type=int, default=32, help="validation-split pairs (with --split-photos)")
    parser.add_argument("--backend", default="auto", choices=BACKENDS)
    args = parser.parse_args(argv)
    try:
        methods = [(str(m), estimator_fn(FlowEstimator(backend=args.backend, model=m, confidence=False)))
                   for m in args.models] + [("zero flow", zero_flow)]
        sets = []
        if args.split_photos:
            from training.data.synthetic_pairs import photos_from_folders

            sets.append(synthetic_set(args.split_pairs, (384, 512), 1234, photos_from_folders(args.split_photos),
                                      VALIDATION_SPLIT))
        sets += ([synthetic_set(args.synthetic, (384, 512), 1234)] if args.synthetic else []) + benchmark_sets(args.data)
    except (ModelFileError, BackendUnavailable, DataError, OSError) as err:
        print(error_line(parser.prog, err), file=sys.stderr)
        return 1
    print("| set | method | EPE | Fl-all |\n|---|---|---|---|")
    for dataset in sets:
        for name, method in methods:
            r = evaluate(method, dataset)
            print(f"| {dataset.name} | {name} | {r['epe']:.3f} | {r['fl_all']:.1f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
