"""mdflow-flow: dense optical flow between two image files, from the command line.

    mdflow-flow IMG1 IMG2 [--backend auto] [--model FILE] [--out FILE.flo|.png|.npy] [--viz FILE.png]

Prints the flow statistics; --out writes the flow (.flo Middlebury, .png KITTI 16-bit, .npy),
--viz a colour-wheel picture (with the confidence beside it unless --no-confidence).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from mdflow_ros.files import ModelFileError
from mdflow_ros.inference import FlowEstimator, InputError, ModelNotShippedError
from mdflow_ros.inference.backend import BACKENDS, BackendUnavailable
from mdflow_ros.io import flow_to_color, write_flow


def read_rgb(path: str) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB; a clear error if it cannot be read."""
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise InputError(f"cannot read an image from {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def visualisation(flow: np.ndarray, confidence: np.ndarray | None) -> np.ndarray:
    """(H, W, 3) or (H, 2W, 3) uint8 RGB: the colour-wheel flow, and the confidence in grey."""
    color = flow_to_color(flow)
    if confidence is None:
        return color
    grey = np.repeat((np.clip(confidence, 0, 1) * 255).astype(np.uint8)[:, :, None], 3, axis=2)
    return np.concatenate((color, grey), axis=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mdflow-flow", description=__doc__.split("\n\n")[0])
    parser.add_argument("img1")
    parser.add_argument("img2")
    parser.add_argument("--backend", default="auto", choices=BACKENDS)
    parser.add_argument("--model", default=None, help="model file (.pt or .onnx), or 'teacher' / 'student' (shipped); default: the teacher")
    parser.add_argument("--out", default=None, help="write the flow: .flo, .png (KITTI) or .npy")
    parser.add_argument("--viz", default=None, help="write a colour-wheel PNG")
    parser.add_argument("--no-confidence", action="store_true", help="forward pass only (faster)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        est = FlowEstimator(backend=args.backend, model=args.model, confidence=not args.no_confidence,
                            threads=args.threads)
        flow, conf = est.estimate(read_rgb(args.img1), read_rgb(args.img2))
    except (InputError, ModelNotShippedError, ModelFileError, BackendUnavailable, FileNotFoundError) as err:
        print(f"mdflow-flow: {err}", file=sys.stderr)
        return 2
    mag = np.linalg.norm(flow, axis=2)
    print(f"{args.img1} -> {args.img2}: {flow.shape[1]}x{flow.shape[0]}, {est.backend.description}, "
          f"{est.last_inference_s * 1000:.0f} ms; |flow| mean {mag.mean():.2f} px, max {mag.max():.2f} px"
          + ("" if conf is None else f"; confidence > 0.5 on {100 * (conf > 0.5).mean():.0f} % of pixels"))
    if args.out:
        write_flow(args.out, flow)
        print(f"wrote {args.out}")
    if args.viz:
        Path(args.viz).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(args.viz, cv2.cvtColor(visualisation(flow, conf), cv2.COLOR_RGB2BGR))
        print(f"wrote {args.viz}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
