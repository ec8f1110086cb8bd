"""Latency of the teacher per backend and precision against OpenCV DIS, timed round-robin in one process.

    python -m bench.latency [--model FILE.pt] [--threads 2] [--runs 15] [--phase all|timing|epe]
                            [--out bench/results/latency.md]

Methods: OpenCV DIS ultrafast and medium; the teacher through ONNX Runtime (fp32, and the int8
file shipped beside the model), OpenVINO at every precision this CPU supports (int8 is built
at first use, see mdflow_ros/inference/openvino_backend.py), PyTorch, and ``auto`` (what
FlowEstimator's default picks here), forward only (``flow``) and for the fp32 graphs also with
confidence (``conf``: forward + backward pass, batched).

- ``timing`` (run it on a quiet machine): at 512x384 and 1024x448, every method's calls are
  interleaved round-robin in this one process (the order rotating each round, a short pause
  before each call), so host noise hits all methods alike; reported are the median ms, the
  ratio to DIS-medium of the same rounds, the achieved GFLOP/s from the teacher's multiply-add
  count against the fp32 peak (PyTorch's matrix product, measured in the same run), and each
  method's peak resident memory, measured in a child process of its own (memory is per
  process). The bf16 and int8 peaks are not measured (no cheap, honest probe of them here),
  so their rows give GFLOP/s without a peak.
- ``epe``: the mean endpoint distance between each method's flow and ONNX Runtime fp32's on
  every ../shared/data/gt-dev set (the frames at their own size, the network at it rounded to
  64), and each method's EPE against the ground truth.
Both phases write bench/results/latency.json; the markdown is made from it, so a phase can be
rerun alone.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from mdflow_ros.inference.cpu_choice import cpu_description, round_robin_ms

SIZES = ((384, 512), (448, 1024))
SGEMM_N = 2048
"""Side of the square fp32 matrices whose product measures the CPU's fp32 peak (the roofline) in each run."""
REPO = Path(__file__).resolve().parents[1]
GT_DEV = REPO.parent / "shared" / "data" / "gt-dev"
PAUSE_S = 0.02
"""Pause before each timed call, so that no thread pool of the previous method is still spinning."""
REFERENCE = "onnxruntime fp32:flow"
"""The method the EPE change is measured against."""


def frames(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Two real frames of the requested size (the fixed demo pair, resized)."""
    import cv2

    from mdflow_ros.synthetic import fixed_demo_pair

    pair = fixed_demo_pair()
    return tuple(cv2.resize(x, (width, height), interpolation=cv2.INTER_AREA) for x in (pair.img1, pair.img2))


def peak_rss_mb(pid: int | str = "self") -> float:
    """Peak resident memory (VmHWM) of a live process in MB, 0 when it is gone.

    Not getrusage's ru_maxrss: a child started by fork and exec reports its parent's peak there.
    """
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def teacher_macs(height: int, width: int) -> float:
    """Multiply-adds of one FastFlowNet forward pass (convolutions and deconvolutions) at height x width."""
    import torch

    from mdflow_ros.models import FastFlowNet

    total = 0

    def hook(module, inputs, output):
        nonlocal total
        total += output.numel() * module.weight[0].numel()

    net = FastFlowNet().eval()
    for m in net.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            m.register_forward_hook(hook)
    with torch.no_grad():
        net(torch.rand(1, 3, height, width), torch.rand(1, 3, height, width))
    return float(total)


def method_names(model: str | None) -> list[str]:
    """Every method this machine can run: 'dis-*', or 'BACKEND PRECISION:MODE' (MODE flow or conf)."""
    from mdflow_ros.inference.estimator import resolve_model

    names = ["dis-ultrafast", "dis-medium", "auto:flow", "onnxruntime fp32:flow", "onnxruntime fp32:conf"]
    if resolve_model(model).with_suffix(".int8.onnx").is_file():
        names.append("onnxruntime int8:flow")
    try:
        from mdflow_ros.inference.openvino_backend import cpu_precisions, shared_core
    except ImportError:
        supported: tuple[str, ...] = ()
    else:
        supported = cpu_precisions(shared_core())
    for precision in supported:
        names.append(f"openvino {precision}:flow")
        if precision != "int8":
            names.append(f"openvino {precision}:conf")
    return names + ["pytorch fp32:flow"]


def make_runner(method: str, model: str | None, threads: int, height: int | None, width: int | None):
    """A callable ``flow(img1, img2)`` of ``method`` (or, for "sgemm", a zero-argument matrix product)."""
    if method == "sgemm":
        import torch

        torch.set_num_threads(threads)
        x = torch.randn(SGEMM_N, SGEMM_N)
        return lambda: x @ x
    import cv2

    if method.startswith("dis-"):
        cv2.setNumThreads(threads)
        preset = {"dis-ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
                  "dis-medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}[method]
        dis = cv2.DISOpticalFlow_create(preset)
        gray = lambda x: cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)  # noqa: E731
        return lambda a, b: dis.calc(gray(a), gray(b), None)
    from mdflow_ros.inference import FlowEstimator
    from mdflow_ros.inference.estimator import resolve_model

    spec, _, mode = method.partition(":")
    backend, _, precision = spec.partition(" ")
    path = resolve_model(model)
    if backend == "onnxruntime" and precision == "int8":
        path, precision = path.with_suffix(".int8.onnx"), "fp32"
    est = FlowEstimator(backend=backend, model=path, confidence=mode == "conf", threads=threads,
                        input_size=(height, width) if height else None, precision=precision or "auto")
    run = lambda a, b: est.estimate(a, b).flow  # noqa: E731
    run.description = est.backend.description
    return run


def round_robin(runners: dict, a: np.ndarray, b: np.ndarray, runs: int) -> dict[str, float]:
    """Median ms of each runner on (a, b), the calls interleaved round-robin after two warm-up rounds."""
    return round_robin_ms({name: (lambda run=run: run(a, b)) for name, run in runners.items()}, runs, warmup=2,
                          pause_s=PAUSE_S)


def memory_child(method: str, model: str | None, threads: int) -> dict[str, float]:
    """Inside a child process: the peak resident MB after running ``method`` at each size of SIZES."""
    peaks = {}
    for height, width in SIZES:
        run = make_runner(method, model, threads, height, width)
        a, b = frames(height, width)
        run(a, b)
        run(a, b)
        peaks[f"{width}x{height}"] = peak_rss_mb()
    return peaks


def peak_memory(method: str, model: str | None, threads: int) -> dict[str, float]:
    """``memory_child`` in a fresh Python process."""
    cmd = [sys.executable, "-m", "bench.latency", "--memory-child", method, "--threads", str(threads)]
    out = subprocess.run(cmd + (["--model", model] if model else []), check=True, capture_output=True, text=True,
                         cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def timing(names: list[str], model: str | None, threads: int, runs: int) -> dict:
    """The timing phase: the fp32 peak, then per size the round-robin medians, the GFLOP and the descriptions."""
    sgemm = make_runner("sgemm", None, threads, None, None)
    sgemm()
    start = time.perf_counter()
    for _ in range(5):
        sgemm()
    peak = 2 * SGEMM_N ** 3 / ((time.perf_counter() - start) / 5) / 1e9
    result = {"fp32_peak_gflops": peak, "sizes": {}, "memory_mb": {}}
    for height, width in SIZES:
        runners = {name: make_runner(name, model, threads, height, width) for name in names}
        ms = round_robin(runners, *frames(height, width), runs)
        result["sizes"][f"{width}x{height}"] = {
            "gflop": 2 * teacher_macs(height, width) / 1e9, "ms": ms,
            "descriptions": {n: getattr(r, "description", "") for n, r in runners.items()}}
        del runners
    for name in names:
        result["memory_mb"][name] = peak_memory(name, model, threads)
    return result


def epe_change(names: list[str], model: str | None, threads: int) -> dict:
    """The EPE phase: per gt-dev set, each method's mean EPE to ONNX Runtime fp32's flow and to the ground truth."""
    from mdflow_ros.metrics import epe
    from training.evaluate import benchmark_sets

    sets = benchmark_sets(sorted(p for p in GT_DEV.iterdir() if p.is_dir())) if GT_DEV.is_dir() else []
    ours = [n for n in names if n.endswith(":flow")]
    runners = {name: make_runner(name, model, threads, None, None) for name in ours}
    result = {}
    for dataset in sets:
        rows = {name: {"change": [], "epe": []} for name in ours}
        for img1, img2, flow, valid in dataset.pairs:
            reference = runners[REFERENCE](img1, img2)
            for name in ours:
                got = reference if name == REFERENCE else runners[name](img1, img2)
                rows[name]["change"].append(float(np.linalg.norm(got - reference, axis=2).mean()))
                rows[name]["epe"].append(epe(got, flow, valid))
        result[dataset.name] = {"pairs": len(dataset.pairs),
                                **{n: {k: float(np.mean(v)) for k, v in r.items()} for n, r in rows.items()}}
    return result


def row_precision(name: str, description: str) -> str:
    """The precision a method ran at: its name's, or for "auto" the one its backend's description names."""
    spec = name.partition(":")[0]
    if spec != "auto":
        return spec.partition(" ")[2]
    words = description.replace(",", "").split()
    return words[words.index("CPU") + 1] if "OpenVINO" in description and "CPU" in words else "fp32"


def markdown(data: dict, threads: int) -> str:
    """The latency table(s) and the EPE-change table from the measured data."""
    t = data.get("timing")
    lines = [f"# Teacher latency on CPU ({threads} threads), per backend and precision", "",
             f"Machine: {data['cpu']}, Python {data['python']}; {data.get('versions', '')}."]
    if t:
        lines += ["", f"Median of {data['runs']} round-robin rounds in one process after 2 warm-up rounds (every "
                  "method called once per round, the order rotating, a 20 ms pause before each call); "
                  "`flow` = forward only, `conf` = forward + backward pass with confidence (batched). fp32 peak: "
                  f"{t['fp32_peak_gflops']:.0f} GFLOP/s (PyTorch's {SGEMM_N}x{SGEMM_N} fp32 matrix product on the "
                  "same threads, this run); the bf16 and int8 peaks were not measured (no cheap probe of them "
                  "here), so those rows give GFLOP/s only. Peak MB: the maximum resident memory of a fresh process "
                  "running only that method (at 512x384, then 1024x448)."]
        for size, s in t["sizes"].items():
            base = s["ms"]["dis-medium"]
            lines += ["", f"## {size} (teacher forward: {s['gflop']:.1f} GFLOP; at the fp32 peak "
                      f"{1000 * s['gflop'] / t['fp32_peak_gflops']:.0f} ms)", "",
                      "| method | runs as | median ms | FPS | x DIS-medium | GFLOP/s | % of fp32 peak | peak MB |",
                      "|---|---|---|---|---|---|---|---|"]
            for name, ms in s["ms"].items():
                passes = 2 if name.endswith(":conf") else 1
                ours = not name.startswith("dis")
                rate = passes * s["gflop"] / (ms / 1000)
                fp32 = ours and row_precision(name, s["descriptions"][name]) == "fp32"
                share = f"{100 * rate / t['fp32_peak_gflops']:.0f} %" if fp32 else "-"
                lines.append(f"| {name} | {s['descriptions'][name] or '-'} | {ms:.1f} | {1000 / ms:.1f} | "
                             f"{ms / base:.2f} | {f'{rate:.0f}' if ours else '-'} | {share} | "
                             f"{t['memory_mb'].get(name, {}).get(size, 0):.0f} |")
    e = data.get("epe")
    if e:
        names = [n for n in next(iter(e.values())) if n != "pairs"]
        lines += ["", "## Flow change against ONNX Runtime fp32 on ../shared/data/gt-dev", "",
                  "Mean endpoint distance (px) between each method's flow and ONNX Runtime fp32's on every pair "
                  "(frames at their own size, the network at it rounded to 64); in brackets the method's EPE "
                  "against the ground truth.", "",
                  "| method | " + " | ".join(f"{k} ({v['pairs']} pairs)" for k, v in e.items()) + " |",
                  "|---|" + "---|" * len(e)]
        for name in names:
            lines.append(f"| {name} | " + " | ".join(f"{v[name]['change']:.3f} ({v[name]['epe']:.2f})"
                                                     for v in e.values()) + " |")
    return "\n".join(lines) + "\n"


def versions() -> str:
    """The inference libraries' versions."""
    import cv2
    import onnxruntime

    parts = [f"ONNX Runtime {onnxruntime.__version__}", f"OpenCV {cv2.__version__}"]
    try:
        import openvino

        parts.append(f"OpenVINO {openvino.__version__.split('-')[0]}")
    except ImportError:
        parts.append("OpenVINO not installed")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="teacher model file (.pt); default: the shipped one")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--phase", choices=("all", "timing", "epe"), default="all")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "latency.md")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.model, args.threads)))
        return
    store = args.out.with_suffix(".json")
    data = json.loads(store.read_text()) if store.is_file() else {}
    names = method_names(args.model)
    data.update(cpu=cpu_description(), python=platform.python_version(), versions=versions())
    if args.phase in ("all", "epe"):
        data["epe"] = epe_change(names, args.model, args.threads)
    if args.phase in ("all", "timing"):
        data["timing"] = timing(names, args.model, args.threads, args.runs)
        data["runs"] = args.runs
    store.parent.mkdir(parents=True, exist_ok=True)
    store.write_text(json.dumps(data, indent=1))
    args.out.write_text(markdown(data, args.threads))
    print(markdown(data, args.threads))


if __name__ == "__main__":
    main()
