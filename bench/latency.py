"""Latency benchmark of the teacher against OpenCV DIS, on this machine's CPU threads.

    python bench/latency.py [--model FILE.pt] [--threads 2] [--runs 20] [--out bench/results/latency.md]

Every method runs in its own process (so its peak memory is its own), on the same real
frames (scikit-image's astronaut under a known camera motion) at 512x384 and 1024x448:
OpenCV DIS ultrafast and medium, and the teacher through PyTorch and ONNX Runtime, forward
only and with confidence (and int8 ONNX Runtime when a quantized file is given). It reports
the median latency after warm-up, the ratio to DIS-medium measured in the same run, the
achieved GFLOP/s from the model's multiply-add count, and the peak resident memory.

The ratios of methods timed one after another in separate processes move with the host's
load (on a shared 2-core machine DIS-medium alone varied 12-18 ms between runs). The target's
ratio, forward-only ONNX Runtime against DIS-medium, is therefore also measured paired: both
in one process, calls alternating (order swapped every pair, a pause before each call so that
no thread pool is still spinning), the median of the per-pair ratios with its quartiles.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SIZES = ((384, 512), (448, 1024))
SGEMM_N = 2048
"""Side of the square fp32 matrices whose product measures the CPU's peak (the roofline) in each run."""
SIMD_FLAGS = ("avx512f", "avx512_vnni", "avx2", "fma", "amx_tile")


def cpu_description() -> str:
    """The CPU's model name and vector extensions (from /proc/cpuinfo where there is one): the
    ratios between methods depend on them (e.g. AVX-512 speeds the networks, not DIS)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in info.splitlines()) if v}
    flags = [f for f in SIMD_FLAGS if f in fields.get("flags", "").split()]
    return f"{fields.get('model name', platform.machine())} ({platform.machine()}; {', '.join(flags) or 'no AVX'})"


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
        k = module.weight[0].numel()
        total += output.numel() * k

    net = FastFlowNet().eval()
    for m in net.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            m.register_forward_hook(hook)
    with torch.no_grad():
        net(torch.rand(1, 3, height, width), torch.rand(1, 3, height, width))
    return float(total)


def make_runner(method: str, model: str | None, threads: int, height: int, width: int):
    """A zero-argument callable computing one flow with ``method`` on the benchmark frames."""
    if method == "sgemm":
        import torch

        torch.set_num_threads(threads)
        x = torch.randn(SGEMM_N, SGEMM_N)
        return lambda: x @ x
    import cv2

    a, b = frames(height, width)
    if method.startswith("dis-"):
        cv2.setNumThreads(threads)
        preset = {"dis-ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
                  "dis-medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}[method]
        dis = cv2.DISOpticalFlow_create(preset)
        ga, gb = (cv2.cvtColor(x, cv2.COLOR_RGB2GRAY) for x in (a, b))
        return lambda: dis.calc(ga, gb, None)
    from mdflow_ros.inference import FlowEstimator

    backend, _, mode = method.partition(":")
    est = FlowEstimator(backend="onnxruntime" if backend.startswith("onnxruntime") else backend, model=model,
                        confidence=mode == "conf", threads=threads, input_size=(height, width))
    return lambda: est.estimate(a, b)


def measure(method: str, model: str | None, threads: int, height: int, width: int, runs: int) -> dict:
    """Run inside the child process: warm up, time ``runs`` calls, report median and peak memory."""
    run = make_runner(method, model, threads, height, width)
    for _ in range(3):
        run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return {"median_ms": 1000 * statistics.median(times), "peak_mb": peak_rss_mb()}


def paired_ratio(method: str, model: str | None, threads: int, height: int, width: int, runs: int,
                 pause_s: float = 0.05) -> dict:
    """``method``'s latency over DIS-medium's, from ``runs`` pairs of alternating calls in this process.

    Returns the median and quartiles of the per-pair ratios and both methods' median ms.
    """
    ours, peer = make_runner(method, model, threads, height, width), make_runner("dis-medium", model, threads, height, width)
    for _ in range(3):
        ours(), peer()

    def timed(run) -> float:
        time.sleep(pause_s)
        start = time.perf_counter()
        run()
        return time.perf_counter() - start

    pairs = []
    for i in range(runs):
        if i % 2:
            t_peer = timed(peer)
            t_ours = timed(ours)
        else:
            t_ours = timed(ours)
            t_peer = timed(peer)
        pairs.append((t_ours, t_peer))
    q1, median, q3 = statistics.quantiles([a / b for a, b in pairs], n=4)
    return {"ratio": median, "ratio_q1": q1, "ratio_q3": q3, "ours_ms": 1000 * statistics.median(a for a, _ in pairs),
            "dis_medium_ms": 1000 * statistics.median(b for _, b in pairs)}


def in_child(method: str, model: str | None, threads: int, height: int, width: int, runs: int,
             paired: bool = False) -> dict:
    """``measure`` (or ``paired_ratio``) in a fresh Python process, so that peak memory is per method."""
    cmd = [sys.executable, __file__, "--child", method, "--threads", str(threads), "--runs", str(runs),
           "--size", str(height), str(width)] + (["--model", model] if model else []) + (["--paired"] if paired else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="teacher model file (.pt); default: the shipped one")
    parser.add_argument("--int8", default=None,
                        help="an int8 ONNX file of the same teacher (default with the shipped model: its int8 file)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "latency.md"))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, nargs=2, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--paired", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        measured = (paired_ratio if args.paired else measure)(args.child, args.model, args.threads, *args.size, args.runs)
        print(json.dumps(measured))
        return
    methods = ["dis-ultrafast", "dis-medium", "pytorch:flow", "onnxruntime:flow", "onnxruntime:conf"]
    from mdflow_ros.inference.estimator import shipped_model

    shipped_int8 = shipped_model("teacher").with_suffix(".int8.onnx")
    if args.int8 is None and args.model is None and shipped_int8.is_file():
        args.int8 = str(shipped_int8)
    sgemm_ms = in_child("sgemm", None, args.threads, SGEMM_N, SGEMM_N, args.runs)["median_ms"]
    roofline_gflops = 2 * SGEMM_N ** 3 / sgemm_ms / 1e6
    lines = [f"# Teacher latency on CPU ({args.threads} threads)", "",
             f"Machine: {cpu_description()}, Python {platform.python_version()}. "
             f"Median of {args.runs} runs after 3 warm-up runs, each method in its own process; "
             "`flow` = forward only, `conf` = forward + backward pass with confidence. fp32 roofline: "
             f"{roofline_gflops:.0f} GFLOP/s, PyTorch's {SGEMM_N}x{SGEMM_N} matrix product on the same threads "
             "in this run.", ""]
    for height, width in SIZES:
        gflop = 2 * teacher_macs(height, width) / 1e9
        results = {m: in_child(m, args.model, args.threads, height, width, args.runs) for m in methods}
        if args.int8:
            results["onnxruntime-int8:flow"] = in_child("onnxruntime:flow", args.int8, args.threads, height, width, args.runs)
        base = results["dis-medium"]["median_ms"]
        lines += [f"## {width}x{height} (teacher forward: {gflop:.1f} GFLOP; fp32 roofline "
                  f"{1000 * gflop / roofline_gflops:.0f} ms)", "",
                  "| method | median ms | FPS | x DIS-medium | GFLOP/s | peak MB |", "|---|---|---|---|---|---|"]
        for name, r in results.items():
            ms = r["median_ms"]
            passes = 2 if name.endswith(":conf") else 1
            rate = f"{passes * gflop / (ms / 1000):.0f}" if not name.startswith("dis") else "-"
            lines.append(f"| {name} | {ms:.1f} | {1000 / ms:.1f} | {ms / base:.2f} | {rate} | {r['peak_mb']:.0f} |")
        lines += ["", "Paired with DIS-medium (one process, alternating calls; median ratio of "
                  f"{args.runs} pairs [quartiles]):", "", "| method | x DIS-medium | its ms | DIS-medium ms |",
                  "|---|---|---|---|"]
        paired = {"onnxruntime:flow": args.model}
        if args.int8:
            paired["onnxruntime-int8:flow"] = args.int8
        for name, model in paired.items():
            r = in_child("onnxruntime:flow", model, args.threads, height, width, args.runs, paired=True)
            lines.append(f"| {name} | {r['ratio']:.2f} [{r['ratio_q1']:.2f}-{r['ratio_q3']:.2f}] | "
                         f"{r['ours_ms']:.1f} | {r['dis_medium_ms']:.1f} |")
        lines.append("")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
