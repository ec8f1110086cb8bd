"""Where our models stand against the peers: accuracy, speed and memory, one command.

    python -m bench.accuracy [--teacher T.pt] [--student S.pt] [--int8 T_int8.onnx] [--model NAME=M.pt ...] [--data DIR ...]
                               [--threads 2] [--runs 10] [--quick] [--out-dir bench/results]

Rows: our teacher and student (default: the shipped files in mdflow_ros/weights/), and any
``--model NAME=FILE`` (e.g. your fine-tuned teacher beside the shipped one, on your ``--data``), through every
backend (PyTorch, ONNX Runtime, int8 ONNX Runtime when an int8 file is given), OpenCV DIS
(ultrafast, fast, medium), Farneback, DeepFlow and RLOF (opencv-contrib), and zero flow; see
bench/methods.py. Each method runs in its own process on ``--threads`` threads: first the
latency on real frames (scikit-image's astronaut under a known camera motion) at 512x384 and at
1024x436 (Sintel's native size), median after warm-up, and the peak resident memory after it;
then EPE and Fl-all on every ground-truth set: the held-out synthetic set, ../shared/data/gt-dev/*
when present, and every ``--data`` folder in a standard layout. Writes accuracy.md (tables,
latency as a ratio to DIS-medium measured in the same run), pareto.png (EPE against latency)
and pictures.png (flow colour images of real pairs, ours against the peers and ground truth).
"""
from __future__ import annotations

import argparse
import importlib.util
import datetime
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.latency import cpu_description, frames, peak_rss_mb
from bench.methods import PEERS, make_method

REPO = Path(__file__).resolve().parents[1]
GT_DEV = REPO.parent / "shared" / "data" / "gt-dev"
SPEED_SIZES = ((384, 512), (436, 1024))
PICTURE_METHODS = ("teacher/onnxruntime", "student/pytorch", "dis-medium", "farneback", "deepflow", "rlof")


def default_files(teacher: str | None, student: str | None, int8: str | None) -> dict[str, Path]:
    """Model files by role: the given ones, else the shipped ones that exist."""
    from mdflow_ros.inference.estimator import SHIPPED_FILES, shipped_model

    given = {"teacher": teacher, "student": student, "teacher-int8": int8}
    shipped = {**{name: shipped_model(name) for name in SHIPPED_FILES},
               "teacher-int8": shipped_model("teacher").with_suffix(".int8.onnx")}
    files = {}
    for role, path in given.items():
        if path is not None:
            files[role] = Path(path)
        elif shipped[role].is_file():
            files[role] = shipped[role]
    return files


def method_names(files: dict[str, Path]) -> list[str]:
    """Every row this run can measure: ours for each model file present (the teacher on OpenVINO too, at the
    precision its ``auto`` picks on this CPU, when OpenVINO is installed), then the peers, then zero flow."""
    names = []
    if "teacher" in files:
        names += ["teacher/pytorch", "teacher/onnxruntime"]
        if importlib.util.find_spec("openvino") is not None:
            names.append("teacher/openvino")
    if "teacher-int8" in files:
        names.append("teacher/onnxruntime-int8")
    if "student" in files:
        names += ["student/pytorch", "student/onnxruntime"]
    return names + list(PEERS) + ["zero"]


def time_method(flow, height: int, width: int, runs: int, budget_s: float = 20.0) -> float:
    """Median seconds per pair after 2 warm-up calls; slow methods get fewer runs (at least 3)."""
    a, b = frames(height, width)
    for _ in range(2):
        start = time.perf_counter()
        flow(a, b)
    first = time.perf_counter() - start
    times = []
    for _ in range(max(3, min(runs, int(budget_s / max(first, 1e-6))))):
        start = time.perf_counter()
        flow(a, b)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ground_truth_sets(synthetic: int, folders: list[str], max_pairs: int | None):
    """The held-out synthetic set and every ground-truth folder, each cut to ``max_pairs``."""
    from training.evaluate import GroundTruthSet, benchmark_sets, synthetic_set

    sets = ([synthetic_set(synthetic, (384, 512), 1234)] if synthetic else []) + benchmark_sets(folders)
    return [GroundTruthSet(s.name, s.pairs[:max_pairs]) for s in sets]


def measure(name: str, files: dict[str, Path], threads: int, runs: int, synthetic: int, folders: list[str],
            max_pairs: int | None) -> dict:
    """In the child process: latency at each speed size, peak memory, then accuracy on every set."""
    import torch

    from training.evaluate import evaluate

    torch.set_num_threads(threads)
    flow = make_method(name, files, threads)
    speed = {f"{w}x{h}": 1000 * time_method(flow, h, w, runs) for h, w in SPEED_SIZES}
    peak_mb = peak_rss_mb()
    accuracy = {s.name: dict(evaluate(flow, s), pairs=len(s.pairs))
                for s in ground_truth_sets(synthetic, folders, max_pairs)}
    return {"speed_ms": speed, "peak_mb": peak_mb, "accuracy": accuracy}


def in_child(name: str, args: argparse.Namespace, files: dict[str, Path], folders: list[str]) -> dict:
    """``measure`` in a fresh Python process, so that memory and threads are the method's own."""
    cmd = [sys.executable, "-m", "bench.accuracy", "--child", name, "--threads", str(args.threads),
           "--runs", str(args.runs), "--synthetic", str(args.synthetic), "--files", json.dumps({k: str(v) for k, v in files.items()}),
           "--folders", json.dumps(folders)] + (["--max-pairs", str(args.max_pairs)] if args.max_pairs else [])
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def markdown(results: dict[str, dict], args: argparse.Namespace, files: dict[str, Path]) -> str:
    """The accuracy and speed tables."""
    import cv2
    import onnxruntime
    import torch

    from mdflow_ros.files import file_sha256

    sets = list(next(iter(results.values()))["accuracy"])
    base = results["dis-medium"]["speed_ms"]
    lines = ["# Accuracy and speed against the peers", "",
             f"{datetime.date.today().isoformat()}; {cpu_description()} CPU ({args.threads} threads), Python "
             f"{platform.python_version()}, PyTorch {torch.__version__}, ONNX Runtime {onnxruntime.__version__}, "
             f"OpenCV {cv2.__version__}. Command: `python -m bench.accuracy {' '.join(args.argv)}`.", ""]
    lines += [f"- {role}: `{path.name}` (SHA-256 {file_sha256(path)[:12]})" for role, path in files.items()]
    if "teacher/openvino" in results:
        lines.append("- teacher/openvino: the teacher's .onnx in OpenVINO at the precision its `auto` picks on this CPU "
                     "(bf16 with AVX-512 BF16 or AMX when its checked flow change is under 0.1 px, else fp32)")
    lines += ["", "## Accuracy: EPE (px) / Fl-all (%), lower is better", "",
              "| method | " + " | ".join(f"{s} ({results['zero']['accuracy'][s]['pairs']} pairs)" for s in sets) + " |",
              "|---|" + "---|" * len(sets)]
    for name, r in results.items():
        cells = [f"{r['accuracy'][s]['epe']:.2f} / {r['accuracy'][s]['fl_all']:.1f}" for s in sets]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    sizes = list(base)
    lines += ["", f"## Speed: median ms per pair ({args.threads} threads), ratio to DIS-medium in the same run, "
              "peak memory", "", "| method | " + " | ".join(f"{s} ms | x DIS-medium" for s in sizes) + " | peak MB |",
              "|---|" + "---|---|" * len(sizes) + "---|"]
    for name, r in results.items():
        cells = [f"{r['speed_ms'][s]:.1f} | {r['speed_ms'][s] / base[s]:.2f}" for s in sizes]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {r['peak_mb']:.0f} |")
    lines += ["", "Ours run forward flow only here (the node's confidence adds a backward pass: "
              "see latency.md). Peak memory is the process's maximum resident set after timing, "
              "Python and libraries included. ![Pareto](pareto.png)", "", "![flow pictures](pictures.png)", ""]
    return "\n".join(lines)


def real_sets(results: dict[str, dict]) -> list[str]:
    """The sets measured, without the synthetic one when real ones exist."""
    sets = list(next(iter(results.values()))["accuracy"])
    real = [s for s in sets if not s.startswith("synthetic")]
    return real or sets


def pareto_plot(results: dict[str, dict], path: Path) -> None:
    """Mean EPE over the real sets against latency at 512x384, one point per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = real_sets(results)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ours = 0
    for name, r in results.items():
        if name == "zero":
            continue
        epe = float(np.mean([r["accuracy"][s]["epe"] for s in sets]))
        ms = r["speed_ms"]["512x384"]
        if name.startswith(("teacher", "student")):
            # one model through several backends lands in one spot: name ours in the legend
            marker = "*" if name.startswith("teacher") else "D"
            ax.scatter(ms, epe, marker=marker, s=150 if marker == "*" else 60, color=f"C{3 + ours}", label=name)
            ours += 1
        else:
            ax.scatter(ms, epe, marker="o", s=40, color="tab:blue")
            ax.annotate(name, (ms, epe), textcoords="offset points", xytext=(5, 4), fontsize=7)
    zero = float(np.mean([results["zero"]["accuracy"][s]["epe"] for s in sets]))
    ax.axhline(zero, color="grey", linestyle="--", linewidth=1, label="zero flow")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_xscale("log")
    ax.set_xlabel("latency at 512x384 (ms, log scale)")
    ax.set_ylabel("mean EPE (px)")
    ax.set_title(f"EPE (mean over {', '.join(sets)}) against latency", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def picture_grid(files: dict[str, Path], names: list[str], folders: list[str], synthetic: int, threads: int,
                 path: Path, count: int = 3) -> None:
    """Flow colour images of the first real pair of up to ``count`` sets: frame 1, ground truth, then each method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mdflow_ros.io.colorwheel import flow_to_color

    sets = [s for s in ground_truth_sets(synthetic, folders, 1) if folders and not s.name.startswith("synthetic")]
    sets = (sets or ground_truth_sets(synthetic, [], 1))[:count]
    methods = [m for m in PICTURE_METHODS if m in names]
    flows = {m: make_method(m, files, threads) for m in methods}
    columns = ["frame 1", "ground truth"] + methods
    fig, axes = plt.subplots(len(sets), len(columns), figsize=(2.1 * len(columns), 1.7 * len(sets)), squeeze=False)
    for row, dataset in zip(axes, sets):
        img1, img2, gt, valid = dataset.pairs[0]
        radius = float(np.percentile(np.linalg.norm(np.where(valid[..., None], gt, 0), axis=2), 99)) or 1.0
        images = [img1, flow_to_color(gt, radius, valid)] + [flow_to_color(flows[m](img1, img2), radius) for m in methods]
        for ax, image, title in zip(row, images, columns):
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=7)
        row[0].set_ylabel(dataset.name, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def extra_models(specs: list[str], files: dict[str, Path]) -> dict[str, Path]:
    """{NAME: file} of ``--model NAME=FILE`` arguments (SystemExit for a malformed one, a taken name or a missing file)."""
    extra = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or "/" in name or not path:
            raise SystemExit(f"accuracy: --model takes NAME=FILE (NAME without '/'), got {spec!r}")
        if name in files or name in extra or name in PEERS or name == "zero":
            raise SystemExit(f"accuracy: --model name {name!r} is taken; choose another")
        if not Path(path).is_file():
            raise SystemExit(f"accuracy: --model {name}: no such file {path}")
        extra[name] = Path(path)
    return extra


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default=None, help="teacher model file (default: the shipped one)")
    parser.add_argument("--student", default=None, help="student model file (default: the shipped one)")
    parser.add_argument("--int8", default=None, help="int8 ONNX file of the teacher (default: the shipped one)")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=FILE",
                        help="one more model file as row NAME/onnxruntime (repeatable): e.g. your fine-tuned "
                             "teacher beside the shipped one, on your --data")
    parser.add_argument("--data", nargs="*", default=[], help="more ground-truth folders (Sintel, KITTI, Chairs, Middlebury)")
    parser.add_argument("--methods", nargs="*", default=None, help="only these rows (default: all available)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10, help="timed runs per size, after 2 warm-up runs")
    parser.add_argument("--synthetic", type=int, default=16, help="held-out synthetic pairs (0: none)")
    parser.add_argument("--max-pairs", type=int, default=None, help="at most this many pairs per set")
    parser.add_argument("--quick", action="store_true", help="2 pairs per set, 3 timed runs (for development)")
    parser.add_argument("--out-dir", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--files", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--folders", default="[]", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.quick:
        args.max_pairs, args.runs, args.synthetic = 2, 3, min(args.synthetic, 2)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        files = {k: Path(v) for k, v in json.loads(args.files).items()}
        print(json.dumps(measure(args.child, files, args.threads, args.runs, args.synthetic,
                                 json.loads(args.folders), args.max_pairs)))
        return 0
    files = default_files(args.teacher, args.student, args.int8)
    extra = extra_models(args.model, files)
    files.update(extra)
    folders = (sorted(str(p) for p in GT_DEV.iterdir() if p.is_dir()) if GT_DEV.is_dir() else []) + list(args.data)
    names = args.methods or method_names(files) + [f"{name}/onnxruntime" for name in extra]
    for needed in ("dis-medium", "zero"):
        if needed not in names:
            names.append(needed)
    missing = [role for role in ("teacher", "student") if role not in files]
    if missing:
        print(f"accuracy: no {' or '.join(missing)} model file (shipped or given): those rows are skipped")
    results = {}
    for name in names:
        print(f"accuracy: {name} ...", flush=True)
        results[name] = in_child(name, args, files, folders)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "accuracy.json").write_text(json.dumps(results, indent=1))
    pareto_plot(results, args.out_dir / "pareto.png")
    picture_grid(files, names, folders, args.synthetic, args.threads, args.out_dir / "pictures.png")
    text = markdown(results, args, files)
    (args.out_dir / "accuracy.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
