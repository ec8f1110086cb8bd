"""End-to-end latency of the real node over real DDS, against the bare estimator and DIS-medium.

    python -m bench.node_latency [--model M.pt] [--backends onnxruntime pytorch] [--rates 10 30]
                                 [--sizes 480x640 720x1280] [--threads 2] [--duration 20]
                                 [--variants 256x320 256x320-noconf] [--quick]
                                 [--out bench/results/node_latency.md]

For each frame size, backend and rate, the node (python -m mdflow_ros.node, its own process,
the launch file's Fast DDS settings, default parameters: network at the frame size, with
confidence) receives a continuous stream of real frames (scikit-image photos under camera
motion, rgb8) published from this process at the rate, and this process receives
/optical_flow. Then, at the first size and backend and the highest rate, the speed-knob
variants: a smaller network input (`input_height`/`input_width`) and confidence off.

Per message: end-to-end latency (arrival minus the publish time of the newer frame, one
monotonic clock) and the node's own inference and processing times (message fields); the
node's overhead is latency minus its inference time, per message (DDS both ways, image
conversion, message building, waiting for the worker). Per run: output rate, frames the node
dropped (sent but never the newer frame of a published flow; it keeps only the newest frame, by
design), and the node's peak resident memory (VmHWM). Measured in the same run, in this
process, with the same backend, threads and size: the bare FlowEstimator call (with
confidence, as the node runs it by default) and OpenCV DIS-medium.
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.accuracy import time_method
from bench.latency import peak_rss_mb
from bench.methods import make_method, ours
from mdflow_ros.files import file_sha256
from mdflow_ros.inference.cpu_choice import cpu_description
from mdflow_ros.inference.estimator import default_model
from mdflow_ros.ros.frame_player import Plan
from mdflow_ros.ros.harness import (NodeLink, private_domain, session_environment, start_node, use_session_environment,
                                    write_params)
from mdflow_ros.synthetic import camera_motion_pair, photo_library

TOPIC = "/mdflow_bench/image_raw"
START_TIMEOUT_S = 300.0


def stream_plan(size: tuple[int, int], frames: int) -> Plan:
    """``frames`` real frames in a loop of 8 photos under camera motion (plain steps, cached messages)."""
    photos = photo_library()
    pool = [camera_motion_pair(photos[i % len(photos)], size, np.random.default_rng(i)).img2 for i in range(8)]
    return Plan(pool, [{"frame": i % len(pool)} for i in range(frames)])


def summarise(sent: list[dict], received: dict[int, tuple[float, object]], duration_s: float) -> dict[str, float]:
    """Latency percentiles, node timings, output rate and drops from the send log and the received flows."""
    by_stamp = {r["stamp_ns"]: r["sent_monotonic"] for r in sent}
    flows = [(arrived - by_stamp[stamp], msg) for stamp, (arrived, msg) in received.items() if stamp in by_stamp]
    if not flows:
        raise RuntimeError("the node published no flow for the frames sent")
    latency = np.array([1000 * lat for lat, _ in flows])
    return {"p50_ms": float(np.percentile(latency, 50)), "p90_ms": float(np.percentile(latency, 90)),
            "p99_ms": float(np.percentile(latency, 99)),
            "inference_ms": 1000 * statistics.median(float(m.inference_time) for _, m in flows),
            "processing_ms": 1000 * statistics.median(float(m.processing_time) for _, m in flows),
            "overhead_ms": 1000 * statistics.median(lat - float(m.inference_time) for lat, m in flows),
            "output_hz": len(flows) / duration_s, "received": len(flows), "sent": len(sent),
            "dropped": len(sent) - len(flows) - 1}


def run_node(model: Path, backend: str, threads: int, size: tuple[int, int], rate: float, duration_s: float,
             domain: int, input_size: tuple[int, int] = (0, 0), confidence: bool = True) -> dict[str, float]:
    """One node process, one stream; its summary with the node's peak memory."""
    env = session_environment(domain)
    use_session_environment(env)
    scratch = Path(tempfile.mkdtemp(prefix="mdflow_bench_"))
    params = write_params(scratch / "params.yaml", model=str(model), backend=backend, input_height=input_size[0],
                          input_width=input_size[1], threads=threads, confidence=confidence)
    node = start_node(params, env, scratch / "node.log", "-r", f"image:={TOPIC}")
    link = NodeLink(domain, name="mdflow_node_latency")
    try:
        player = link.player(TOPIC)
        if not link.wait_for_node(node, START_TIMEOUT_S, player):
            raise RuntimeError(f"the node did not start: {node.output()[-2000:]}")
        player.play(stream_plan(size, int(2 * rate)), rate)
        time.sleep(2.0)
        start, started = len(link.flows), time.monotonic()
        sent = player.play(stream_plan(size, int(duration_s * rate)), rate)
        time.sleep(2.0)
        result = summarise(sent, link.flows_since(start), time.monotonic() - started - 2.0)
        result["node_peak_mb"] = peak_rss_mb(node.pid)
        return result
    finally:
        node.stop()
        link.close()


def bare_ms(model: Path, backend: str, threads: int, size: tuple[int, int], runs: int) -> dict[str, float]:
    """The estimator as the node calls it (with confidence), and DIS-medium, on the same frames and threads."""
    from mdflow_ros.inference import FlowEstimator

    est = FlowEstimator(backend=backend, model=model, confidence=True, threads=threads)
    with_confidence = 1000 * time_method(lambda a, b: est.estimate(a, b), *size, runs)
    forward = 1000 * time_method(ours(model, backend, threads), *size, runs)
    dis = 1000 * time_method(make_method("dis-medium", {}, threads), *size, runs)
    return {"bare_ms": with_confidence, "bare_forward_ms": forward, "dis_medium_ms": dis}


def markdown(rows: list[dict], args: argparse.Namespace, model: Path) -> str:
    lines = ["# The node end to end: latency over DDS", "",
             f"{datetime.date.today().isoformat()}; {cpu_description()}, {os.cpu_count()} cores, inference on "
             f"{args.threads} threads; model `{model.name}` (SHA-256 {file_sha256(model)[:12]}); "
             f"rgb8 frames published and received in one other process over Fast DDS (shared memory, the launch "
             f"file's profile), {args.duration:.0f} s per row after 2 s of warm-up. "
             f"Command: `python -m bench.node_latency {' '.join(args.argv)}`.", "",
             "| size | backend | network input | confidence | rate Hz | latency p50 / p90 / p99 ms | "
             "node inference ms | node overhead ms | bare call ms | output Hz | dropped / sent | "
             "x DIS-medium (p50) | node peak MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        bare = f"{r['bare_ms']:.0f}" if "bare_ms" in r else "-"
        lines.append(
            f"| {r['size']} | {r['backend']} | {r['network']} | {'on' if r['confidence'] else 'off'} | {r['rate']:g} "
            f"| {r['p50_ms']:.0f} / {r['p90_ms']:.0f} / {r['p99_ms']:.0f} | {r['inference_ms']:.0f} "
            f"| {r['overhead_ms']:.0f} | {bare} | {r['output_hz']:.1f} | {r['dropped']} / {r['sent']} "
            f"| {r['p50_ms'] / r['dis_medium_ms']:.1f} | {r['node_peak_mb']:.0f} |")
    lines += ["", "Latency is from publishing the newer frame to receiving its flow: DDS transport both ways, "
              "conversion, the forward pass, the backward pass when confidence is on, message building. "
              "Node overhead = latency minus the node's own inference time, median over messages. "
              "Bare call = the estimator called directly in this process, with confidence, at the frame size "
              "(default rows only). The network input `frame` means the frame size rounded to 64 (the default). "
              "The node never queues: when frames arrive faster than it computes, it keeps the newest and "
              "counts the rest as dropped, so latency stays bounded and the output rate is the compute rate. "
              "Bare forward-only calls (no confidence): "
              + ", ".join(f"{r['size']} {r['backend']} {r['bare_forward_ms']:.0f} ms" for r in rows
                          if "bare_forward_ms" in r and r["rate"] == args.rates[0]) + ".", ""]
    return "\n".join(lines)


def parse_size(text: str) -> tuple[int, int]:
    height, width = (int(v) for v in text.split("x"))
    return height, width


def parse_variant(text: str) -> tuple[tuple[int, int], bool]:
    """'HxW' or 'HxW-noconf' (network input size, confidence off); 'frame' for the frame size."""
    size, _, flag = text.partition("-")
    if flag not in ("", "noconf"):
        raise argparse.ArgumentTypeError(f"variant {text!r}: expected HxW, HxW-noconf, frame or frame-noconf")
    return ((0, 0) if size == "frame" else parse_size(size)), flag != "noconf"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="model file (default: the shipped teacher)")
    parser.add_argument("--backends", nargs="+", default=["onnxruntime", "pytorch"])
    parser.add_argument("--rates", type=float, nargs="+", default=[10.0, 30.0])
    parser.add_argument("--sizes", type=parse_size, nargs="+", default=[(480, 640), (720, 1280)], help="HxW frames")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of stream per row")
    parser.add_argument("--runs", type=int, default=10, help="timed bare calls per size and backend")
    parser.add_argument("--variants", type=parse_variant, nargs="*",
                        default=[parse_variant("frame-noconf"), parse_variant("256x320"), parse_variant("256x320-noconf")],
                        help="speed knobs at the first size and backend, highest rate: HxW network input, -noconf")
    parser.add_argument("--quick", action="store_true", help="480x640, onnxruntime, 10 Hz, 5 s, no variants")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "node_latency.md")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.quick:
        args.backends, args.rates, args.sizes, args.duration, args.runs = ["onnxruntime"], [10.0], [(480, 640)], 5.0, 3
        args.variants = []
    model = args.model or default_model()
    domain = private_domain()
    rows = []
    for size in args.sizes:
        for backend in args.backends:
            bare = bare_ms(model, backend, args.threads, size, args.runs)
            for rate in args.rates:
                print(f"node_latency: {size[1]}x{size[0]} {backend} {rate:g} Hz ...", flush=True)
                result = run_node(model, backend, args.threads, size, rate, args.duration, domain)
                rows.append(dict(result, **bare, size=f"{size[1]}x{size[0]}", backend=backend, rate=rate,
                                 network="frame", confidence=True))
    size, backend, rate = args.sizes[0], args.backends[0], max(args.rates)
    dis = next(r["dis_medium_ms"] for r in rows if r["size"] == f"{size[1]}x{size[0]}")
    for input_size, confidence in args.variants:
        network = f"{input_size[1]}x{input_size[0]}" if input_size != (0, 0) else "frame"
        print(f"node_latency: {size[1]}x{size[0]} {backend} {rate:g} Hz, network {network}, "
              f"confidence {'on' if confidence else 'off'} ...", flush=True)
        result = run_node(model, backend, args.threads, size, rate, args.duration, domain, input_size, confidence)
        rows.append(dict(result, dis_medium_ms=dis, size=f"{size[1]}x{size[0]}", backend=backend, rate=rate,
                         network=network, confidence=confidence))
    text = markdown(rows, args, model)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
