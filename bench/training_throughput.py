"""Stage-1 training throughput on this machine, and the speed-up of 2-process DDP.

    python bench/training_throughput.py [--steps 6] [--out bench/results/training_throughput.md]

Times full stage-1 steps (bidirectional pass, augmented pass, backward, Adam) of the teacher
on synthetic 320x448 pairs, batch 4: one process with 2 threads, one process with 1 thread,
and 2 DDP processes (gloo) with 1 thread each, the data sharded between them. Reports pairs
per second after one warm-up step.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

CROP = [320, 448]


def config(steps: int, threads: int, workdir: Path) -> Path:
    path = workdir / f"throughput_{threads}.yaml"
    path.write_text(yaml.safe_dump({
        "stage": "stage1", "seed": 0,
        "data": {"crop": CROP, "synthetic_pairs": 64, "num_workers": 0},
        "train": {"steps": steps + 1, "batch_size": 4, "threads": threads, "log_every": 1000,
                  "checkpoint_every": 100000, "val_every": 100000},
        "loss": {"warmup_steps": 0},
        "validation": {"synthetic_pairs": 0},
    }))
    return path


def worker(config_path: str, out: str) -> None:
    """Run in each process: time the steps after the first, print pairs/s as JSON (rank 0)."""
    from mdflow_ros.models import FastFlowNet
    from training.config import load_config
    from training.data.training_set import build_training_set
    from training.stages import STAGES
    from training.trainer import Trainer, seed_everything

    cfg = load_config(config_path)
    seed_everything(0)
    trainer = Trainer(cfg, out, FastFlowNet(), STAGES["stage1"].recipe, build_training_set(cfg, []), {"arch": "fastflownet"})
    trainer.run(1)
    start = time.perf_counter()
    steps = trainer.run() - 1
    elapsed = time.perf_counter() - start
    if trainer.rank == 0:
        print(json.dumps({"pairs_per_s": steps * cfg["train"]["batch_size"] * trainer.world / elapsed,
                          "s_per_step": elapsed / steps}))


def measure(cmd: list[str]) -> dict:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    return json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "training_throughput.md"))
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(*args.worker)
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        me = [sys.executable, __file__, "--worker"]
        single2 = measure(me + [str(config(args.steps, 2, tmp)), str(tmp / "a")])
        single1 = measure(me + [str(config(args.steps, 1, tmp)), str(tmp / "b")])
        ddp = measure([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", __file__, "--worker",
                       str(config(args.steps, 1, tmp)), str(tmp / "c")])
    lines = ["# Stage-1 training throughput (CPU)", "",
             f"Teacher, full stage-1 steps (both directions + augmented pass), batch 4, {CROP[0]}x{CROP[1]} crops, "
             f"{args.steps} timed steps after one warm-up step.", "",
             "| set-up | pairs/s | s/step | speed-up vs 1 process, 1 thread |", "|---|---|---|---|"]
    for name, r in (("1 process, 1 thread", single1), ("1 process, 2 threads", single2),
                    ("2 DDP processes (gloo), 1 thread each", ddp)):
        lines.append(f"| {name} | {r['pairs_per_s']:.2f} | {r['s_per_step']:.2f} | "
                     f"{r['pairs_per_s'] / single1['pairs_per_s']:.2f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
