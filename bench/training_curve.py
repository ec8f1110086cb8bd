"""The validation curves of training runs, from their TensorBoard logs, as a plot and a table.

    python bench/training_curve.py RUN_DIR [RUN_DIR ...] [--zero SET=EPE ...]
        [--png training/results/teacher_curve.png] [--md training/results/teacher_curve.md]

Runs are drawn one after the other on a common step axis (a run that starts from another's
weights continues its curve). One panel per validation set (``val/<set>/epe``), with the
zero-flow EPE of that set as a dashed line when given (``--zero flyingchairs=10.51``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

Curve = dict[str, list[tuple[int, float]]]


def read_curves(run_dir: Path) -> Curve:
    """{set: [(step, EPE), ...]} from ``run_dir/tb`` (the last value logged at each step)."""
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    curves: Curve = {}
    for tag in events.Tags()["scalars"]:
        if tag.startswith("val/") and tag.endswith("/epe"):
            by_step = {e.step: e.value for e in events.Scalars(tag)}
            curves[tag[4:-4]] = sorted(by_step.items())
    if not curves:
        raise ValueError(f"{run_dir}: no validation EPE in {run_dir / 'tb'}")
    return curves


def chain(runs: list[tuple[str, Curve]]) -> list[tuple[str, int, Curve]]:
    """Each run with its step offset: the previous runs' last steps added up."""
    out, offset = [], 0
    for name, curves in runs:
        out.append((name, offset, curves))
        offset += max(step for points in curves.values() for step, _ in points)
    return out


def plot(chained: list[tuple[str, int, Curve]], zero: dict[str, float], path: Path) -> None:
    """One panel per validation set, EPE against the cumulative step."""
    sets = sorted({s for _, _, curves in chained for s in curves})
    fig, axes = plt.subplots(1, len(sets), figsize=(4.2 * len(sets), 3.4), squeeze=False)
    for ax, name in zip(axes[0], sets):
        for run, offset, curves in chained:
            points = curves.get(name, [])
            ax.plot([offset + s for s, _ in points], [v for _, v in points], marker=".", label=run)
        if name in zero:
            ax.axhline(zero[name], color="grey", linestyle="--", label="zero flow")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel("EPE (px)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def markdown(chained: list[tuple[str, int, Curve]], zero: dict[str, float]) -> str:
    """A table: one row per validation step, one column per set (zero flow in the header)."""
    sets = sorted({s for _, _, curves in chained for s in curves})
    head = [f"{s} (zero {zero[s]:.2f})" if s in zero else s for s in sets]
    lines = ["| run | step | " + " | ".join(head) + " |", "|---|---|" + "---|" * len(sets)]
    for run, offset, curves in chained:
        steps = sorted({step for points in curves.values() for step, _ in points})
        for step in steps:
            values = [dict(curves.get(s, [])).get(step) for s in sets]
            cells = " | ".join("-" if v is None else f"{v:.2f}" for v in values)
            lines.append(f"| {run} | {offset + step} | {cells} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories, in training order")
    parser.add_argument("--zero", nargs="*", default=[], help="SET=EPE of zero flow")
    parser.add_argument("--png", type=Path, default=Path("training/results/teacher_curve.png"))
    parser.add_argument("--md", type=Path, default=Path("training/results/teacher_curve.md"))
    args = parser.parse_args(argv)
    zero = {k: float(v) for k, v in (item.split("=", 1) for item in args.zero)}
    chained = chain([(run.name, read_curves(run)) for run in args.runs])
    plot(chained, zero, args.png)
    args.md.parent.mkdir(parents=True, exist_ok=True)
    args.md.write_text(markdown(chained, zero))
    print(args.md.read_text(), end="")


if __name__ == "__main__":
    main()
