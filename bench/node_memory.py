"""Peak memory of the real node for one pair of frames, up to the largest frame it accepts by default.

    python -m bench.node_memory [--model M.pt] [--threads 2] [--sizes 2160x3840 480x640]
                                [--networks frame 384x512] [--out bench/results/node_memory.md]

For each frame size and network input, a fresh node (python -m mdflow_ros.node, its own process,
ONNX Runtime, confidence on, default max_input_pixels) receives two real frames (rgb8, a photo
under camera motion) over DDS from this process, which also receives the OpticalFlow; the row
is the node's peak resident memory (VmHWM) after it published that flow, and its peak before the
frames (model loaded, idle). Memory only: nothing here is timed, so it needs no quiet machine.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.latency import peak_rss_mb
from bench.node_latency import START_TIMEOUT_S, parse_size
from mdflow_ros.files import file_sha256
from mdflow_ros.inference.estimator import default_model
from mdflow_ros.ros.frame_player import Plan
from mdflow_ros.ros.harness import (NodeLink, private_domain, session_environment, start_node, use_session_environment,
                                    write_params)
from mdflow_ros.ros.params import DEFAULT_MAX_INPUT_PIXELS
from mdflow_ros.synthetic import camera_motion_pair, photo_library

TOPIC = "/mdflow_memory/image_raw"
FLOW_TIMEOUT_S = 600.0


def measure(model: Path, threads: int, size: tuple[int, int], network: tuple[int, int], domain: int) -> dict:
    """One node, one pair of ``size`` frames at network input ``network`` ((0, 0): the frame size rounded)."""
    env = session_environment(domain)
    use_session_environment(env)
    scratch = Path(tempfile.mkdtemp(prefix="mdflow_memory_"))
    params = write_params(scratch / "params.yaml", model=str(model), backend="onnxruntime", threads=threads,
                          input_height=network[0], input_width=network[1], confidence=True)
    node = start_node(params, env, scratch / "node.log", "-r", f"image:={TOPIC}")
    link = NodeLink(domain, name="mdflow_node_memory")
    try:
        player = link.player(TOPIC)
        if not link.wait_for_node(node, START_TIMEOUT_S, player) or not player.wait_for_subscriber(30):
            raise RuntimeError(f"the node did not start: {node.output()[-2000:]}")
        idle = peak_rss_mb(node.pid)
        pair = camera_motion_pair(photo_library()[0], size, np.random.default_rng(0))
        sent = player.play(Plan([pair.img1, pair.img2], [{"frame": 0}, {"frame": 1}]), 10.0)
        if link.wait_for_flow(sent[-1]["stamp_ns"], FLOW_TIMEOUT_S) is None:
            raise RuntimeError(f"no flow within {FLOW_TIMEOUT_S:.0f} s: {node.output()[-2000:]}")
        return {"idle_mb": idle, "peak_mb": peak_rss_mb(node.pid)}
    finally:
        node.stop()
        link.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="model file (default: the shipped teacher)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", type=parse_size, nargs="+", default=[(2160, 3840), (1080, 1920), (480, 640)],
                        help="HxW frames")
    parser.add_argument("--networks", nargs="+", default=["frame", "384x512"],
                        help="network inputs: 'frame' (the frame size rounded to 64) or HxW")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "node_memory.md")
    args = parser.parse_args(argv)
    model = args.model or default_model()
    domain = private_domain()
    rows = []
    for size in args.sizes:
        for network in args.networks:
            net = (0, 0) if network == "frame" else parse_size(network)
            print(f"node_memory: {size[1]}x{size[0]} frames, network {network} ...", flush=True)
            rows.append(dict(measure(model, args.threads, size, net, domain), size=size, network=network))
    lines = ["# Peak memory of the node", "",
             f"{datetime.date.today().isoformat()}; {platform.machine()} CPU, {os.cpu_count()} cores, ONNX Runtime on "
             f"{args.threads} threads, confidence on; model `{model.name}` (SHA-256 {file_sha256(model)[:12]}); "
             f"one pair of rgb8 frames over Fast DDS, the OpticalFlow received. Default max_input_pixels "
             f"{DEFAULT_MAX_INPUT_PIXELS} (3840x2160). Command: "
             f"`python -m bench.node_memory {' '.join(sys.argv[1:] if argv is None else argv)}`.", "",
             "| frames | network input | node peak MB (idle) | node peak MB (after the pair) |",
             "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['size'][1]}x{r['size'][0]} | {r['network']} | {r['idle_mb']:.0f} | {r['peak_mb']:.0f} |")
    text = "\n".join(lines + [""])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
