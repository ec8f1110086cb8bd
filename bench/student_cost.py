"""What the RAFT student costs against the FastFlowNet teacher: parameters, work, ONNX size, CPU latency.

    python bench/student_cost.py [--size 384 512] [--threads 1] [--runs 5] [--out FILE.md]

Both networks run as deployed (FlowEstimator, forward flow only, no confidence) through the
PyTorch and ONNX Runtime backends on the same real frames, with untrained weights (cost does not
depend on the weights). Latency is the median of ``--runs`` calls after one warm-up call.
Multiply-adds count convolutions and deconvolutions (every RAFT iteration), plus RAFT's
all-pairs correlation volume; the ONNX size is that of the exported forward-only graph.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn

from mdflow_ros.inference import FlowEstimator
from mdflow_ros.inference.onnx_export import cached_export
from mdflow_ros.models import RAFT, FastFlowNet
from mdflow_ros.models.model_file import save_model_file
from mdflow_ros.synthetic import fixed_demo_pair

NETWORKS: dict[str, type[nn.Module]] = {"teacher FastFlowNet": FastFlowNet, "student RAFT (12 iterations)": RAFT}


def multiply_adds(net: nn.Module, height: int, width: int) -> float:
    """Convolution and deconvolution multiply-adds of one forward pass at height x width (RAFT: plus correlation)."""
    total = 0

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        total += output.numel() * module.weight[0].numel()

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    with torch.no_grad():
        net.eval()(torch.rand(1, 3, height, width), torch.rand(1, 3, height, width))
    for h in handles:
        h.remove()
    if isinstance(net, RAFT):
        total += (height // 8 * width // 8) ** 2 * 256
    return float(total)


def latency_ms(model: Path, backend: str, threads: int, frames: tuple[np.ndarray, np.ndarray], runs: int) -> float:
    """Median milliseconds of FlowEstimator.estimate (forward only) after one warm-up call."""
    est = FlowEstimator(backend=backend, model=model, confidence=False, threads=threads, input_size=frames[0].shape[:2])
    est.estimate(*frames)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        est.estimate(*frames)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs=2, default=[384, 512], metavar=("H", "W"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    height, width = args.size
    pair = fixed_demo_pair()
    frames = tuple(cv2.resize(x, (width, height), interpolation=cv2.INTER_AREA) for x in (pair.img1, pair.img2))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MDFLOW_CACHE"] = tmp
        for name, cls in NETWORKS.items():
            torch.manual_seed(0)
            net = cls().eval()
            model = Path(tmp) / f"{cls.__name__}.pt"
            save_model_file(model, net)
            onnx_mb = cached_export(model, with_confidence=False).stat().st_size / 1e6
            rows.append((name, sum(p.numel() for p in net.parameters()), multiply_adds(net, height, width) / 1e9,
                         onnx_mb, latency_ms(model, "pytorch", args.threads, frames, args.runs),
                         latency_ms(model, "onnxruntime", args.threads, frames, args.runs)))
    teacher = rows[0]
    lines = [f"| network | parameters | GMAC at {width}x{height} | ONNX MB | PyTorch ms | ONNX Runtime ms | "
             "x teacher (ORT) |", "|---|---|---|---|---|---|---|"]
    for name, params, gmac, mb, torch_ms, ort_ms in rows:
        lines.append(f"| {name} | {params:,} | {gmac:.1f} | {mb:.1f} | {torch_ms:.0f} | {ort_ms:.0f} | "
                     f"{ort_ms / teacher[5]:.1f} |")
    text = (f"Forward flow only, {args.threads} CPU thread(s), median of {args.runs} runs after a warm-up "
            f"(`python bench/student_cost.py --size {height} {width} --threads {args.threads} --runs {args.runs}`).\n\n"
            + "\n".join(lines) + "\n")
    print(text, end="")
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
