"""Int8 ONNX of a teacher for ONNX Runtime on CPUs with VNNI, with its accuracy cost measured.

    python training/quantize_onnx.py MODEL.pt --out teacher_int8.onnx [--calibration N] [--check N]

Exports the forward-only deployed graph, quantizes its convolutions statically (QDQ, int8
per-channel weights, uint8 activations calibrated on real photos under known motion), and
reports the EPE of the int8 graph against the fp32 graph and against the ground truth on
held-out synthetic pairs (``python -m bench.accuracy --int8 FILE`` measures it on every
ground-truth set). The correlation, warps and resizes stay fp32. Prints a markdown table; exits non-zero if the int8 file could not be made.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

from mdflow_ros.files import ModelFileError, file_sha256
from mdflow_ros.inference import BackendUnavailable, FlowEstimator
from mdflow_ros.inference.onnx_export import export_onnx, seal_onnx_file
from mdflow_ros.models.model_file import load_model
from mdflow_ros.synthetic import held_out_pairs
from training.cli import OneLineParser, error_line, positive_int


def calibration_inputs(count: int, size: tuple[int, int]) -> list[dict[str, np.ndarray]]:
    """ONNX inputs of ``count`` synthetic pairs (seeds apart from the evaluation set's)."""
    def tensor(img: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(img.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0

    return [{"img1": tensor(p.img1), "img2": tensor(p.img2)} for p in held_out_pairs(count, size, seed=777)]


def quantize(model_path: str | Path, out: str | Path, calibration: int = 16, size: tuple[int, int] = (384, 512)) -> Path:
    """Write the int8 forward-only graph of the model file to ``out``, with its graph digest recorded."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(calibration_inputs(calibration, size))

        def get_next(self):
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        export_onnx(load_model(model_path), fp32, with_confidence=False, source_sha256=file_sha256(model_path))
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["Conv", "ConvTranspose"])
    return seal_onnx_file(out)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="quantize_onnx.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="teacher model file (.pt)")
    parser.add_argument("--out", required=True, help="the int8 .onnx to write")
    parser.add_argument("--calibration", type=positive_int, default=16, help="calibration pairs")
    parser.add_argument("--check", type=positive_int, default=8, help="held-out pairs for the accuracy check")
    args = parser.parse_args(argv)
    try:
        fp32 = FlowEstimator(backend="onnxruntime", model=args.model, confidence=False)
        int8 = quantize(args.model, args.out, args.calibration)
        q = FlowEstimator(backend="onnxruntime", model=int8, confidence=False)
    except (ModelFileError, BackendUnavailable, OSError) as err:
        print(error_line(parser.prog, err), file=sys.stderr)
        return 1
    diffs, epe32, epe8 = [], [], []
    for p in held_out_pairs(args.check, (384, 512), seed=1234):
        a, b = fp32.estimate(p.img1, p.img2).flow, q.estimate(p.img1, p.img2).flow
        diffs.append(float(np.linalg.norm(a - b, axis=2).mean()))
        epe32.append(float(np.linalg.norm(a - p.flow, axis=2)[p.valid].mean()))
        epe8.append(float(np.linalg.norm(b - p.flow, axis=2)[p.valid].mean()))
    print("| graph | EPE vs ground truth | mean |int8 - fp32| |\n|---|---|---|")
    print(f"| fp32 | {np.mean(epe32):.3f} | - |\n| int8 | {np.mean(epe8):.3f} | {np.mean(diffs):.3f} px |")
    print(f"wrote {int8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
