"""The demo: the real flow node on real frames with known motion, over DDS, with a scored summary.

    python -m mdflow_ros.ros.demo [--model PATH] [--out demo_out] [--pairs 6] [--backend auto]

It starts the node (python -m mdflow_ros.node) as its own process through mdflow_ros.ros.harness,
plays real photos under known camera motion (mdflow_ros.synthetic) as bursts of two frames one
30 Hz frame period apart, receives optical_flow, scores every flow against the exact ground
truth (EPE, Fl-all, and the EPE of zero flow for scale), reports latency, and writes one picture
per pair (frames, estimated and true flow in the colour wheel) plus summary.json to --out.
The demo is closed-loop: each burst waits for the flow of the one before (up to FLOW_TIMEOUT_S),
so a slow or busy machine gives a slower demo, not missing pairs. Without --model it uses the
shipped model, and stops with a clear message while none ships.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from mdflow_ros.inference.backend import BACKENDS, PRECISIONS
from mdflow_ros.inference.estimator import ModelNotShippedError, resolve_model
from mdflow_ros.io.colorwheel import flow_to_color
from mdflow_ros.metrics import FlowMetrics, epe
from mdflow_ros.ros.frame_player import Plan
from mdflow_ros.ros.harness import (NodeLink, private_domain, session_environment, start_node, use_session_environment,
                                    write_params)
from mdflow_ros.synthetic import KnownMotionPair, camera_motion_pair, fixed_demo_pair, photo_library

TOPIC = "/mdflow_demo/image_raw"
BURST_PAUSE_S = 0.7
"""Pause before each burst, above the node's max_frame_gap (0.5 s): every burst is a fresh pair."""
START_TIMEOUT_S = 300.0
FLOW_TIMEOUT_S = 60.0
"""Longest wait for the flow of one burst before the demo counts it as not received and goes on."""


def demo_pairs(n: int, size: tuple[int, int]) -> list[KnownMotionPair]:
    """The README pair, then camera motions over the other photos (fixed seeds)."""
    photos = photo_library()
    pairs = [fixed_demo_pair(size)]
    pairs += [camera_motion_pair(photos[i % len(photos)], size, np.random.default_rng(100 + i)) for i in range(n - 1)]
    return pairs


def burst_plan(pair: KnownMotionPair) -> Plan:
    """One pair as two frames one frame period apart, after a pause that resets the node's pair."""
    return Plan([pair.img1, pair.img2], [{"frame": 0, "pause": BURST_PAUSE_S}, {"frame": 1}])


def picture(pair: KnownMotionPair, flow: np.ndarray) -> np.ndarray:
    """(2H, 2W, 3) BGR: frame 1 | frame 2 over estimated | true flow (one colour scale), labelled."""
    scale = max(float(np.linalg.norm(pair.flow[pair.valid], axis=1).max(initial=1.0)) * 1.2, 1.0)
    panels = [pair.img1, pair.img2, flow_to_color(flow, scale), flow_to_color(pair.flow, scale, pair.valid)]
    labels = ["frame 1", "frame 2", "estimated flow", "true flow (black: unknown)"]
    panels = [cv2.putText(np.ascontiguousarray(p), text, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 2,
                          cv2.LINE_AA) for p, text in zip(panels, labels)]
    grid = np.vstack([np.hstack(panels[:2]), np.hstack(panels[2:])])
    return cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)


def score(pairs: list[KnownMotionPair], sent: list[dict], results: list, out: Path) -> dict:
    """Per-pair metrics and pictures; returns the summary."""
    from mdflow_ros.io.ros_image import image_to_array

    rows = []
    for k, pair in enumerate(pairs):
        result = results[k]
        if result is None:
            rows.append({"pair": k, "received": False})
            continue
        arrived, msg = result
        flow = np.array(image_to_array(msg.flow))
        metrics = FlowMetrics.compute(flow, pair.flow, pair.valid)
        cv2.imwrite(str(out / f"pair_{k:02d}.png"), picture(pair, flow))
        rows.append({"pair": k, "received": True, "epe_px": metrics.epe, "fl_all_percent": metrics.fl_all,
                     "zero_flow_epe_px": epe(np.zeros_like(pair.flow), pair.flow, pair.valid),
                     "latency_ms": 1000.0 * (arrived - sent[2 * k + 1]["sent_monotonic"]),
                     "node_processing_ms": 1000.0 * msg.processing_time,
                     "inference_ms": 1000.0 * msg.inference_time, "backend": msg.backend, "model": msg.model})
    got = [r for r in rows if r["received"]]
    summary = {"pairs": rows, "received": len(got), "sent_pairs": len(pairs)}
    if got:
        summary.update({key: float(np.mean([r[key] for r in got])) for key in
                        ("epe_px", "fl_all_percent", "zero_flow_epe_px")})
        summary.update({f"latency_ms_p{p}": float(np.percentile([r["latency_ms"] for r in got], p)) for p in (50, 95)})
    return summary


def print_summary(summary: dict, out: Path) -> None:
    print(f"\n{'pair':>4} {'EPE px':>8} {'Fl-all %':>9} {'zero-flow EPE':>14} {'latency ms':>11} {'inference ms':>13}")
    for row in summary["pairs"]:
        if not row["received"]:
            print(f"{row['pair']:>4}   (no flow received)")
            continue
        print(f"{row['pair']:>4} {row['epe_px']:8.2f} {row['fl_all_percent']:9.1f} {row['zero_flow_epe_px']:14.2f} "
              f"{row['latency_ms']:11.0f} {row['inference_ms']:13.0f}")
    if summary["received"]:
        first = next(r for r in summary["pairs"] if r["received"])
        print(f"\nmean EPE {summary['epe_px']:.2f} px (zero flow: {summary['zero_flow_epe_px']:.2f} px), "
              f"Fl-all {summary['fl_all_percent']:.1f} %, latency p50 {summary['latency_ms_p50']:.0f} ms, "
              f"p95 {summary['latency_ms_p95']:.0f} ms over {summary['received']}/{summary['sent_pairs']} pairs")
        print(f"model {first['model']} on {first['backend']}")
    print(f"pictures and summary.json in {out}")


def run(args: argparse.Namespace) -> int:
    """Start the node, play, collect, score; the exit code of the demo."""
    args.out.mkdir(parents=True, exist_ok=True)
    domain = args.domain if args.domain is not None else private_domain()
    env = session_environment(domain)
    use_session_environment(env)

    print(f"rendering {args.pairs} frame pairs with known motion ({args.size[1]}x{args.size[0]})")
    pairs = demo_pairs(args.pairs, tuple(args.size))
    params = write_params(Path(tempfile.mkdtemp(prefix="mdflow_demo_")) / "params.yaml", model=str(args.model),
                          backend=args.backend, precision=args.precision, input_height=args.input_size[0], input_width=args.input_size[1],
                          threads=args.threads, confidence=True)
    node = start_node(params, env, args.out / "node.log", "-r", f"image:={TOPIC}")
    link = NodeLink(domain, name="mdflow_demo")
    try:
        player = link.player(TOPIC)
        print(f"starting the node (log: {node.log_path}) ...")
        if not link.wait_for_node(node, START_TIMEOUT_S, player):
            print(f"the node did not start:\n{node.output()}", file=sys.stderr)
            return 1
        sent: list[dict] = []
        results = []
        for k, pair in enumerate(pairs):
            sent += player.play(burst_plan(pair), args.rate)
            results.append(link.wait_for_flow(sent[-1]["stamp_ns"], FLOW_TIMEOUT_S))
            if results[-1] is None:
                print(f"pair {k}: no flow within {FLOW_TIMEOUT_S:.0f} s (see {node.log_path})", file=sys.stderr)
        summary = score(pairs, sent, results, args.out)
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
        print_summary(summary, args.out)
        return 0 if summary["received"] == len(pairs) else 1
    finally:
        node.stop()
        link.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model file (.pt/.onnx), or 'teacher' / 'student' (shipped); default: the teacher")
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="folder for pictures and summary.json")
    parser.add_argument("--pairs", type=int, default=6, help="number of frame pairs")
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"), help="frame size")
    parser.add_argument("--input-size", type=int, nargs=2, default=(0, 0), metavar=("H", "W"),
                        help="network input size, multiples of 64 (0 0: frame size rounded)")
    parser.add_argument("--backend", default="auto", choices=BACKENDS)
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help="OpenVINO precision")
    parser.add_argument("--threads", type=int, default=0, help="inference threads (0: library default)")
    parser.add_argument("--rate", type=float, default=30.0, help="frame rate within a burst (Hz)")
    parser.add_argument("--domain", type=int, help="ROS_DOMAIN_ID (default: a private one from the pid)")
    args = parser.parse_args(argv)
    try:
        args.model = resolve_model(args.model)
    except ModelNotShippedError as err:
        print(f"mdflow_ros demo: {err}\nRun the demo on a model file with --model PATH.", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"mdflow_ros demo: {err}", file=sys.stderr)
        return 2
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
