"""Does a classical partner teach faster per CPU-hour than photometric stage 1? Rows of equal CPU budget.

    python bench/classical_table.py --config config/train/classical.yaml --stage1-config config/train/stage1.yaml \
        --data PATH [PATH ...] --out RUN_DIR --teacher mdflow_ros/weights/teacher_fastflownet.pt \
        --phase rates|train|table [--budget-min 20] [--rows NAME ...] [--threads 1] [--table FILE.md]

Three phases. The budget is CPU time (of the training process and its loader workers), which
other work on a shared machine barely changes, unlike wall time:

- ``rates``: each row's training throughput in pairs per CPU second (labels included: classical
  rows start with an empty partner cache), from ``--probe-steps`` more steps than a 3-step run,
  on ``--threads`` threads; written to RUN_DIR/rates.json after each row (rows already there are
  kept, so an interrupted phase resumes; delete the file to measure again).
- ``train``: each row trains for budget x its rate pairs, i.e. the same CPU time on this CPU
  (resumable; complete rows are skipped), validating its moving average 4 times on the way on
  the validation split, the held-out synthetic set and the ground-truth folders.
- ``table``: one markdown table of EPE and Fl-all at each of those checkpoints, the partners
  themselves beside them, and the rate of each row.

Rows (ROWS): stage 1 from scratch; the classical round (DIS-medium) from scratch and from the
shipped teacher; ablations from the shipped teacher: no reliable mask, the teacher's own
photometric term on (lambda = 1), DeepFlow as the partner, DIS labels on the synthetic pairs too
(no exact flow anywhere), and the synthetic exact flow alone (no recordings).
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from training.config import load_config, merge
from training.evaluate import VALIDATION_SPLIT, benchmark_sets, evaluate, synthetic_set
from training.data.synthetic_pairs import photos_from_folders
from training.mdflow import completed_model, mark_done
from training.partners import ClassicalFlow
from training.train import train_stage

LOG = logging.getLogger("mdflow_ros.bench")

REPO = Path(__file__).resolve().parents[1]

WARMUP_STEPS: int = 3
"""Untimed steps before a row's throughput is measured."""

CHECKPOINTS: int = 4
"""Validations through each row's budget (at 1/4, 2/4, 3/4 and all of it)."""


@dataclass(frozen=True)
class Row:
    """One training run of the table: its base config (classical or stage 1), start, and changes."""

    name: str
    label: str
    base: str = "classical"
    init: bool = True
    changes: dict[str, Any] = field(default_factory=dict)
    recordings: bool = True


ROWS: tuple[Row, ...] = (
    Row("stage1-scratch", "stage 1 (photometric) from scratch", base="stage1", init=False),
    Row("classical-scratch", "classical (DIS-medium) from scratch", init=False),
    Row("classical", "classical (DIS-medium) from the shipped teacher"),
    Row("no-mask", "  without the reliable mask", changes={"partner": {"mask": "none"}}),
    Row("lambda", "  with the teacher's photometric term (lambda = 1)", changes={"loss": {"unsup_weight": 1.0}}),
    Row("deepflow", "  DeepFlow as the partner", changes={"partner": {"method": "deepflow"}}),
    Row("dis-synthetic", "  DIS labels on the synthetic pairs too (no exact flow)",
        changes={"partner": {"synthetic_labels": "partner"}}),
    Row("synthetic-only", "  synthetic exact flow only (no recordings)", recordings=False),
)

PARTNER_ROWS: tuple[str, ...] = ("dis-medium", "deepflow")
"""The partners themselves, evaluated beside the networks they teach."""


def row_config(row: Row, classical: dict[str, Any], stage1: dict[str, Any], threads: int, cache: Path | None
               ) -> dict[str, Any]:
    """The config of ``row``: its base with the row's changes, ``threads``, an EMA fit for short runs,
    the classical round's data and validation sections (the same data for every row), and the
    partner cache at ``cache`` (one per partner method, None: no cache)."""
    base = copy.deepcopy(classical if row.base == "classical" else stage1)
    base["data"] = copy.deepcopy(classical["data"])
    cfg = merge(base, row.changes)
    cfg["train"].update(threads=threads, ema_decay=0.99, lr_schedule="constant", checkpoint_every=25)
    cfg["validation"] = copy.deepcopy(classical["validation"])
    cfg["partner"]["cache_dir"] = None if cache is None else str(cache / cfg["partner"]["method"])
    return cfg


def cpu_seconds_of(cfg: dict[str, Any], data: Sequence[str], teacher: Path | None, steps: int, tmp: Path) -> float:
    """CPU seconds (user + system, loader workers included) of train.py running ``cfg`` for ``steps`` steps."""
    run = tmp / f"run{steps}"
    config = tmp / f"config{steps}.yaml"
    config.write_text(yaml.safe_dump(merge(cfg, {"train": {"steps": steps}})))
    cmd = [sys.executable, str(REPO / "training" / "train.py"), "--config", str(config), "--data", *data,
           "--out", str(run)] + (["--init", str(teacher)] if teacher else [])
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, check=True, capture_output=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def measure_rate(cfg: dict[str, Any], data: Sequence[str], teacher: Path | None, steps: int) -> float:
    """Training pairs per CPU second of ``cfg``: the CPU time of ``steps`` more steps than a WARMUP_STEPS run.

    CPU time (of the training process and its loader workers), not wall time, so that other work on
    the machine does not change the budget; start-up cancels out between the two runs, each with
    an empty partner cache (labels included in the cost).
    """
    cfg = merge(cfg, {"train": {"val_every": 10 ** 9, "checkpoint_every": 10 ** 9},
                      "validation": {"split_pairs": 0, "synthetic_pairs": 0, "paths": []}})
    with tempfile.TemporaryDirectory() as tmp:
        costs = []
        for n in (WARMUP_STEPS, WARMUP_STEPS + steps):
            if cfg["partner"]["cache_dir"] is not None:
                cfg["partner"]["cache_dir"] = str(Path(tmp) / f"cache{n}")
            costs.append(cpu_seconds_of(cfg, data, teacher, n, Path(tmp)))
        return steps * cfg["train"]["batch_size"] / (costs[1] - costs[0])


def read_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} of a run's TensorBoard validation scalars."""
    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: sorted({e.step: e.value for e in events.Scalars(tag)}.items())
            for tag in events.Tags()["scalars"] if tag.startswith("val/")}


def markdown(rows: Sequence[Row], out: Path, rates: dict[str, float], budget_min: float,
             partners: dict[str, dict[str, dict[str, float]]], set_names: list[str], command: str) -> str:
    """The table: per row and checkpoint, EPE (Fl-all %) on every set; the partners beneath."""
    lines = ["# Classical partner against photometric stage 1, at equal CPU budgets", "", f"`{command}`", "",
             f"Every row trains for {budget_min:g} CPU-minutes (training process and loader workers) at its own "
             "measured rate (pairs per CPU second, labels included, on an empty partner cache), validated 4 times "
             "on the way; the model is the moving average of the "
             "weights (EMA 0.99). EPE in pixels (Fl-all in %). The validation split is the set a checkpoint would be "
             "chosen on; the others are evaluation sets.", "",
             "| row | pairs per CPU s | step | " + " | ".join(set_names) + " |",
             "|---|---|---|" + "---|" * len(set_names)]
    for row in rows:
        done = completed_model(out / row.name) is not None
        scalars = read_scalars(out / row.name) if (out / row.name / "tb").is_dir() else {}
        steps = [s for s, _ in scalars.get(f"val/{set_names[0]}/epe", [])]
        for k, step in enumerate(steps):
            cells = []
            for name in set_names:
                epe = dict(scalars.get(f"val/{name}/epe", [])).get(step)
                fl = dict(scalars.get(f"val/{name}/fl_all", [])).get(step)
                cells.append("–" if epe is None else f"{epe:.2f} ({fl:.1f})")
            label = f"{row.name}: {row.label}" if k == 0 else ""
            rate = f"{rates[row.name]:.2f}" if k == 0 and row.name in rates else ""
            lines.append(f"| {label} | {rate} | {step}{'' if done or k < len(steps) - 1 else ' (running)'} | "
                         + " | ".join(cells) + " |")
    for name, results in partners.items():
        lines.append(f"| partner itself: {name} | | | "
                     + " | ".join(f"{results[s]['epe']:.2f} ({results[s]['fl_all']:.1f})" for s in set_names) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, type=Path, help="the classical round's config")
    parser.add_argument("--stage1-config", required=True, type=Path, help="stage 1's config")
    parser.add_argument("--data", nargs="*", default=[], help="training bags, videos or image folders")
    parser.add_argument("--out", type=Path, required=True, help="run directory (one subdirectory per row)")
    parser.add_argument("--teacher", type=Path, required=True, help="the shipped teacher (start of the rows that use it)")
    parser.add_argument("--phase", choices=("rates", "train", "table"), required=True)
    parser.add_argument("--budget-min", type=float, default=20.0, help="CPU-minutes per row (training process and workers)")
    parser.add_argument("--probe-steps", type=int, default=10, help="timed steps per row in the rates phase")
    parser.add_argument("--rows", nargs="*", default=None, help=f"only these rows (default: {', '.join(r.name for r in ROWS)})")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--table", type=Path, default=None, help="write the markdown here too")
    args = parser.parse_args(argv)
    classical, stage1 = load_config(args.config), load_config(args.stage1_config)
    rows = [r for r in ROWS if args.rows is None or r.name in args.rows]
    args.out.mkdir(parents=True, exist_ok=True)
    rates_file = args.out / "rates.json"
    rates = json.loads(rates_file.read_text()) if rates_file.is_file() else {}
    for row in rows:
        data = list(args.data) if row.recordings else []
        teacher = args.teacher if row.init else None
        if args.phase == "rates" and row.name not in rates:
            cfg = row_config(row, classical, stage1, args.threads, Path("unused"))
            rates[row.name] = measure_rate(cfg, data, teacher, args.probe_steps)
            LOG.info("%s: %.3f pairs/s", row.name, rates[row.name])
            rates_file.write_text(json.dumps(rates, indent=1))
        elif args.phase == "train" and completed_model(args.out / row.name) is None:
            cfg = row_config(row, classical, stage1, args.threads, args.out / "partner_cache")
            steps = max(CHECKPOINTS, round(args.budget_min * 60 * rates[row.name] / cfg["train"]["batch_size"]))
            cfg["train"].update(steps=steps, val_every=max(1, steps // CHECKPOINTS))
            model = train_stage(cfg, data, args.out / row.name, resume=True, init=teacher)
            mark_done(args.out / row.name, 1, cfg["stage"], model)
    if args.phase == "table":
        v = classical["validation"]
        sets = [synthetic_set(v["split_pairs"], v["synthetic_size"], v["synthetic_seed"],
                              photos_from_folders(v["split_photos"]), VALIDATION_SPLIT),
                synthetic_set(v["synthetic_pairs"], v["synthetic_size"], v["synthetic_seed"])]
        sets += benchmark_sets(v["paths"])
        partners = {name: {s.name: evaluate(ClassicalFlow(name, threads=args.threads), s) for s in sets}
                    for name in PARTNER_ROWS}
        text = markdown(rows, args.out, rates, args.budget_min, partners, [s.name for s in sets],
                        "python bench/classical_table.py " + " ".join(argv or sys.argv[1:]))
        print(text, end="")
        if args.table is not None:
            args.table.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
