"""Choose tau from evidence: what each reliable-match threshold keeps, and how good the kept flow is.

    python training/tau_report.py TEACHER.pt [--taus 0.1 0.2 0.3 0.4 0.5] [--synthetic 16]
                                  [--data DIR ...] [--config CONFIG.yaml] [--max-pairs N] [--out REPORT.md]

On pairs with ground truth (the held-out synthetic set, plus every ../shared/data/gt-dev/*
folder when present, or the --data folders) the teacher's forward and backward flows are
computed as deployed (FlowEstimator, pytorch backend, frame size). For each tau the reliable
mask M_f is the one training uses (training.selection.reliable_masks, with the config's census
radius and forward-backward constants); over the pixels with valid ground truth the report
gives the share kept, and the end-point error of the kept and of the dropped pixels
(pixel-weighted over the set). tau = inf is the occlusion mask O alone. It also lists
quantiles of the census distance on visible pixels. The markdown is printed and, with --out,
written (training/results/tau_report.md for the trained teacher).
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mdflow_ros.files import file_sha256
from mdflow_ros.flow import census_distance, visible_mask, warp
from mdflow_ros.inference import FlowEstimator
from training.config import load_config, load_pipeline_config, read_mapping
from training.evaluate import GroundTruthSet, benchmark_sets, synthetic_set
from training.selection import reliable_masks

GT_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "gt-dev"
"""The shared ground-truth development sets (../shared/data/gt-dev from the repository)."""

DEFAULT_TAUS: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)
QUANTILES: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)


@dataclass
class TauCounts:
    """Pixel counts and summed end-point errors (pixels) of kept and dropped pixels, for one tau."""

    kept: int = 0
    dropped: int = 0
    kept_err: float = 0.0
    dropped_err: float = 0.0

    def add(self, keep: np.ndarray, err: np.ndarray) -> None:
        """keep: (N,) bool over valid pixels; err: (N,) end-point errors in pixels."""
        self.kept += int(keep.sum())
        self.dropped += int((~keep).sum())
        self.kept_err += float(err[keep].sum())
        self.dropped_err += float(err[~keep].sum())


@dataclass
class SetReport:
    """The counts of every tau over one ground-truth set, and its visible census distances."""

    name: str
    pairs: int = 0
    counts: dict[float, TauCounts] = field(default_factory=dict)
    distances: list[np.ndarray] = field(default_factory=list)


def to_tensor(x: np.ndarray) -> torch.Tensor:
    """(H, W, C) array -> (1, C, H, W) float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None].float()


def measure_set(estimator: FlowEstimator, dataset: GroundTruthSet, taus: Sequence[float], loss_cfg: dict[str, Any],
                max_pairs: int | None = None) -> SetReport:
    """Kept share and kept / dropped EPE of every tau (and inf) over the valid pixels of ``dataset``."""
    report = SetReport(dataset.name, counts={tau: TauCounts() for tau in (*taus, math.inf)})
    radius, scale, bias = loss_cfg["census_radius"], loss_cfg["occ_scale"], loss_cfg["occ_bias"]
    for img1, img2, gt, valid in dataset.pairs[:max_pairs]:
        flow_fw, flow_bw = estimator.estimate(img1, img2).flow, estimator.estimate(img2, img1).flow
        im1, im2 = to_tensor(img1) / 255.0, to_tensor(img2) / 255.0
        fw, bw = to_tensor(flow_fw), to_tensor(flow_bw)
        err = np.linalg.norm(flow_fw - gt, axis=2)[valid]
        with torch.no_grad():
            for tau, counts in report.counts.items():
                keep = reliable_masks(im1, im2, fw, bw, tau, radius, scale, bias)[0][0, 0].numpy() > 0.5
                counts.add(keep[valid], err)
            dist = census_distance(im1, warp(im2, fw, padding_mode="border"), radius)[0, 0].numpy()
            visible = visible_mask(fw, bw, scale, bias)[0, 0].numpy() > 0.5
        report.distances.append(dist[visible & valid])
        report.pairs += 1
    return report


def _epe(total: float, count: int) -> str:
    return f"{total / count:.3f}" if count else "–"


def markdown(reports: Sequence[SetReport], model: Path, loss_cfg: dict[str, Any]) -> str:
    """The commit-ready report: one table of every set and tau, then the distance quantiles."""
    lines = [
        "# Reliable-match threshold tau: evidence",
        "",
        f"Teacher `{model.name}` (SHA-256 `{file_sha256(model)[:16]}`), flows as deployed (FlowEstimator, "
        f"pytorch). Census: soft Hamming, radius {loss_cfg['census_radius']} "
        f"({2 * loss_cfg['census_radius'] + 1}x{2 * loss_cfg['census_radius'] + 1}), distance in [0, 1). "
        f"Occlusion O: forward-backward check, scale {loss_cfg['occ_scale']}, bias {loss_cfg['occ_bias']}. "
        "Counts are over pixels with valid ground truth, pixel-weighted over each set; "
        "tau = inf is O alone. Produced by `training/tau_report.py`.",
        "",
        "| set | pairs | tau | kept % | EPE kept | EPE dropped | EPE all |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        for tau, c in r.counts.items():
            total = c.kept + c.dropped
            share = 100.0 * c.kept / total if total else 0.0
            lines.append(f"| {r.name} | {r.pairs} | {tau:g} | {share:.1f} | {_epe(c.kept_err, c.kept)} | "
                         f"{_epe(c.dropped_err, c.dropped)} | {_epe(c.kept_err + c.dropped_err, total)} |")
    lines += ["", "Census distance of visible pixels with valid ground truth, quantiles:", "",
              "| set | " + " | ".join(f"q{int(q * 100)}" for q in QUANTILES) + " |",
              "|---|" + "---|" * len(QUANTILES)]
    for r in reports:
        values = np.concatenate(r.distances) if r.distances else np.zeros(0)
        cells = [f"{np.quantile(values, q):.3f}" if values.size else "–" for q in QUANTILES]
        lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def default_data() -> list[Path]:
    """Every folder of ../shared/data/gt-dev, when it exists."""
    return sorted(p for p in GT_DEV.iterdir() if p.is_dir()) if GT_DEV.is_dir() else []


def stage2_loss_config(path: str | None) -> dict[str, Any]:
    """The loss constants of stage 2 from a stage config or a pipeline config (``rounds``/``stages``)."""
    if path is not None and {"rounds", "stages"} & set(read_mapping(path, "config")):
        return load_pipeline_config(path)[1]["stage2"]["loss"]
    return load_config(path)["loss"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="teacher model file (.pt)")
    parser.add_argument("--taus", type=float, nargs="+", default=list(DEFAULT_TAUS))
    parser.add_argument("--synthetic", type=int, default=16, help="held-out synthetic pairs (0: none)")
    parser.add_argument("--synthetic-size", type=int, nargs=2, default=[384, 512], metavar=("H", "W"))
    parser.add_argument("--data", nargs="*", default=None, help="ground-truth folders (default: ../shared/data/gt-dev/*)")
    parser.add_argument("--config", default=None,
                        help="stage config, or pipeline config (its stage 2), giving census radius and occlusion constants")
    parser.add_argument("--max-pairs", type=int, default=None, help="at most this many pairs per set")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    loss_cfg = stage2_loss_config(args.config)
    sets = [synthetic_set(args.synthetic, tuple(args.synthetic_size), 1234)] if args.synthetic else []
    sets += benchmark_sets(default_data() if args.data is None else args.data)
    estimator = FlowEstimator(backend="pytorch", model=args.model, confidence=False, threads=args.threads)
    text = markdown([measure_set(estimator, s, args.taus, loss_cfg, args.max_pairs) for s in sets], args.model, loss_cfg)
    print(text, end="")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
