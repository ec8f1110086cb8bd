"""mdflow-flow: dense optical flow from the command line, for one image pair or a whole recording.

    mdflow-flow IMG1 IMG2 [--backend auto] [--model FILE] [--out FILE.flo|.png|.npy] [--viz FILE.png]
    mdflow-flow RECORDING [--out OUT.mcap|OUT.mp4|DIR/] [--topic T] [--backend B] [--model M]
                [--input-size H W] [--no-confidence] [--output-scale S] [--force]

Two image files: prints the flow statistics; --out writes the flow (.flo Middlebury, .png KITTI
16-bit, .npy), --viz a colour-wheel picture (with the confidence beside it unless --no-confidence).

One recording (a rosbag2 directory, .mcap or .db3, a ROS 1 .bag, a video file or a folder of
images): flow between its consecutive frames, paired by the node's rules, with a progress bar
and a summary at the end. --out OUT.mcap writes a ROS 2 recording with /optical_flow
(mdflow_ros/msg/OpticalFlow, its definition embedded) and /optical_flow/color, stamped as the
input frames; OUT.mp4 (.avi, .mkv, .mov) a video with one picture per pair (the frame, its
colour-wheel flow and the confidence); DIR/ one .flo and one .png per pair and pairs.csv. An
existing output is never overwritten without --force.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from mdflow_ros.files import ModelFileError
from mdflow_ros.inference import FlowEstimator, InputError, ModelNotShippedError
from mdflow_ros.inference.backend import BACKENDS, PRECISIONS, BackendUnavailable
from mdflow_ros.io import write_flow
from mdflow_ros.io.flow_files import check_flow_path
from mdflow_ros.io.colorwheel import flow_picture
from mdflow_ros.ros.pairing import MAX_FRAME_GAP_S

OFFLINE_HINT = "reading recordings needs the 'offline' extra: pip install 'mdflow_ros[offline]'"


def read_rgb(path: str) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB; a clear error if it cannot be read."""
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise InputError(f"cannot read an image from {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def estimator_from(args: argparse.Namespace) -> FlowEstimator:
    """The FlowEstimator the command line asks for."""
    return FlowEstimator(backend=args.backend, model=args.model, confidence=not args.no_confidence,
                         threads=args.threads, input_size=tuple(args.input_size) if args.input_size else None,
                         precision=args.precision)


def check_pair_outputs(args: argparse.Namespace) -> None:
    """A --out or --viz that cannot be written fails here, before the model loads and runs."""
    if args.out:
        check_flow_path(args.out)
    if args.viz and not cv2.haveImageWriter(args.viz):
        raise InputError(f"--viz {args.viz}: OpenCV cannot write {Path(args.viz).suffix or 'suffix-less'} pictures; "
                         "give a .png or .jpg file")


def flow_pair(args: argparse.Namespace) -> int:
    """Pair mode: flow from the first image file to the second."""
    img1, img2 = args.inputs
    check_pair_outputs(args)
    est = estimator_from(args)
    flow, conf = est.estimate(read_rgb(img1), read_rgb(img2), output_scale=args.output_scale)
    mag = np.linalg.norm(flow, axis=2)
    print(f"{img1} -> {img2}: {flow.shape[1]}x{flow.shape[0]}, {est.backend.description}, "
          f"{est.last_inference_s * 1000:.0f} ms; |flow| mean {mag.mean():.2f} px, max {mag.max():.2f} px"
          + ("" if conf is None else f"; confidence > 0.5 on {100 * (conf > 0.5).mean():.0f} % of pixels"))
    if args.out:
        write_flow(args.out, flow)
        print(f"wrote {args.out}")
    if args.viz:
        Path(args.viz).parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(args.viz, cv2.cvtColor(flow_picture(flow, conf), cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {args.viz}")
        print(f"wrote {args.viz}")
    return 0


def flow_recording(args: argparse.Namespace) -> int:
    """Sequence mode: flow between the consecutive frames of one recording, to --out."""
    try:
        from tqdm import tqdm

        from mdflow_ros.offline import FlowOutput, Summary, flow_pairs, open_recording, output_kind
    except ImportError as err:
        raise InputError(f"{OFFLINE_HINT} ({err})") from None
    if args.viz:
        raise InputError("--viz is for a pair of images; with a recording, --out writes a video or pictures")
    if args.out is not None:
        output_kind(args.out)  # a bad --out fails before the model loads
    recording = open_recording(args.inputs[0], args.topic)
    with recording:
        est = estimator_from(args)
        output = None if args.out is None else FlowOutput(args.out, recording, est, args.output_scale, args.force,
                                                          args.fps)
        summary = Summary()
        frames = tqdm(recording.frames(), total=recording.total, unit="frame", desc="mdflow-flow",
                      file=sys.stderr, dynamic_ncols=True)
        interrupted = False
        try:
            for pair in flow_pairs(frames, est, recording.stamped, args.max_frame_gap, args.output_scale, summary):
                if output is not None:
                    output.write(pair)
                frames.set_postfix(pairs=summary.pairs, refresh=False)
        except KeyboardInterrupt:
            interrupted = True
        except BaseException:
            if output is not None:
                output.close(keep=False)
            raise
        finally:
            frames.close()
        if output is not None:
            output.close(keep=True)
    for line in summary.lines(recording, est):
        print(line)
    if output is not None:
        print(f"wrote {output.path} ({output.written} pairs)" + (", interrupted" if interrupted else ""))
    return 130 if interrupted else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mdflow-flow", description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="two image files (one pair), or one recording: a bag (rosbag2 directory, .mcap, .db3, "
                             "ROS 1 .bag), a video file or a folder of images")
    parser.add_argument("--backend", default="auto", choices=BACKENDS)
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="OpenVINO precision (auto: the fastest checked one; bf16 and int8: openvino only)")
    parser.add_argument("--model", default=None, help="model file (.pt or .onnx), or 'teacher' / 'student' (shipped); default: the teacher")
    parser.add_argument("--out", default=None,
                        help="pair: the flow (.flo, .png KITTI, .npy); recording: OUT.mcap, a video (.mp4, .avi, "
                             ".mkv, .mov) or a folder DIR/")
    parser.add_argument("--viz", default=None, help="pair: write a colour-wheel PNG")
    parser.add_argument("--no-confidence", action="store_true", help="forward pass only (faster)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="network input size (multiples of 64); default: each frame side rounded to 64")
    parser.add_argument("--output-scale", type=float, default=1.0,
                        help="flow size relative to the frames, in (0, 1]; flow in pixels of that size")
    parser.add_argument("--topic", default=None, help="recording: the bag's image topic (default: its only one)")
    parser.add_argument("--max-frame-gap", type=float, default=MAX_FRAME_GAP_S,
                        help="recording: seconds between two bag frames' stamps beyond which they do not pair "
                             "(the node's max_frame_gap); 0: no limit")
    parser.add_argument("--fps", type=float, default=None,
                        help="recording: frame rate of a flow video (default: the recording's, or "
                             "10 for an image folder)")
    parser.add_argument("--force", action="store_true", help="recording: overwrite an existing output")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if len(args.inputs) > 2:
        parser.error("give two image files (one pair) or one recording (a bag, a video or a folder of images)")
    if not 0.0 < args.output_scale <= 1.0:
        parser.error(f"--output-scale must be in (0, 1], got {args.output_scale:g}")
    if args.max_frame_gap < 0:
        parser.error(f"--max-frame-gap must be 0 (no limit) or positive, got {args.max_frame_gap:g}")
    if args.fps is not None and not args.fps > 0:
        parser.error(f"--fps must be positive, got {args.fps:g}")
    try:
        return flow_pair(args) if len(args.inputs) == 2 else flow_recording(args)
    except (InputError, ModelNotShippedError, ModelFileError, BackendUnavailable, OSError, ValueError) as err:
        print(f"mdflow-flow: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mdflow-flow: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
