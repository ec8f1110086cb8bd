"""Export a trained model to ONNX (checked against PyTorch) and to a TensorRT engine with its manifest.

    python training/export_trt.py CHECKPOINT --out DIR [--height H --width W | --profile MIN:OPT:MAX]
                                  [--fp16] [--workspace MB] [--confidence | --no-confidence]
                                  [--correlation onnx_ops|plugin_aot|auto]

CHECKPOINT is a model file or training checkpoint (.pt). Sizes are HEIGHTxWIDTH, multiples of
64 (default: a static 384x512 engine). DIR receives, in this order:
- ``model.onnx``: the deployed graph (standard ops, what ONNX Runtime runs);
- ``parity.json``: ONNX Runtime vs PyTorch on one image pair at the OPT size (flow and
  confidence differences, against the fp32 limits of training.parity: beyond them the export
  fails); after a build also TensorRT vs PyTorch, against its precision's limits;
- ``model.plugin.onnx`` (route plugin_aot): the correlation as the CUDA-kernel plugin;
- ``model.engine`` + ``manifest.json`` (see engine_manifest), and the TensorRT timing cache
  ``timing/<TensorRT version>-sm<cc>-<gpu>.cache``: one per GPU model and TensorRT version, so
  DIR can be reused on another GPU.
An engine and manifest left in DIR by an earlier export are deleted first. The ONNX part runs
anywhere. Where TensorRT, PyCUDA or a GPU is missing, or the build fails, the command says why
on one line and exits with status 3, keeping the ONNX files and the report.
Exit status: 0 engine written and within its parity limits, 1 the ONNX or the engine failed its
parity check (the files stay, for a look), 2 bad arguments, 3 no engine.

Route "auto" takes the kernel plugin where it can run (TensorRT >= 10.9, nvcc, a driver that
loads its PTX) and the standard-op route elsewhere (e.g. Jetson Orin on JetPack 6).

Precision and parity: fp32 engines are built with TF32 off (TensorRT allows TF32 convolutions
by default on Ampere and newer, which can exceed 0.01 px without any bug), so they get the fp32
limits (0.01 px); fp16 engines get looser limits on the mean differences (training.parity). FP16:
TensorRT 10 builds it with its FP16 builder flag. TensorRT 11 removed that flag; the ONNX must
then be FP16 itself, which this command makes with NVIDIA ModelOpt AutoCast when that is
installed (``model.fp16.onnx``; inputs and outputs stay FP32) and otherwise refuses.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F

from mdflow_ros.files import ModelFileError, atomic_write_bytes, file_sha256
from mdflow_ros.inference import trt_correlation_plugin as plugin
from mdflow_ros.inference.backend import BackendUnavailable
from mdflow_ros.inference.engine_manifest import ENGINE_FILE, MANIFEST_FILE, EngineSpec, Profile, timing_cache_path
from mdflow_ros.inference.onnx_export import export_onnx
from mdflow_ros.inference.onnx_files import INPUT_NAMES
from mdflow_ros.inference.tensorrt_backend import (ROUTE_CHOICES, EngineBuildError, TensorRTBackend, build_engine,
                                                   choose_route, has_fp16_flag, import_tensorrt, probe_device)
from mdflow_ros.models.deploy import DeployedFlow
from mdflow_ros.models.model_file import load_model
from training.parity import compare, describe_parity

EXIT_PARITY, EXIT_NO_ENGINE = 1, 3


def parity_pair(height: int, width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth random RGB image (1, 3, H, W) in [0, 1] and the same image moved by (3, 2) pixels."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, max(1, height // 8), max(1, width // 8), generator=g)
    img1 = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    return img1, torch.roll(img1, shifts=(2, 3), dims=(2, 3))


def reference_outputs(net: nn.Module, with_confidence: bool, img1: torch.Tensor, img2: torch.Tensor
                      ) -> list[np.ndarray]:
    """The deployed graph's outputs in PyTorch: [flow (1, 2, H, W) px] or [flow, confidence (1, H, W)]."""
    with torch.no_grad():
        return [t.numpy() for t in DeployedFlow(net, with_confidence)(img1, img2)]


def onnx_parity(net: nn.Module, onnx_path: Path, with_confidence: bool, size: tuple[int, int]) -> dict:
    """ONNX Runtime (CPU) against PyTorch on ``parity_pair`` at ``size``: the parity.json report."""
    img1, img2 = parity_pair(*size)
    reference = reference_outputs(net, with_confidence, img1, img2)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, dict(zip(INPUT_NAMES, (img1.numpy(), img2.numpy()))))
    return {"size": list(size), "max_abs_flow_px": float(np.abs(reference[0]).max()),
            "onnxruntime": compare(reference, outputs)}


def engine_parity(net: nn.Module, engine_path: Path, with_confidence: bool, size: tuple[int, int],
                  precision: str) -> dict:
    """The built engine against PyTorch on ``parity_pair``, judged by PARITY_LIMITS[precision] (GPU only)."""
    img1, img2 = parity_pair(*size)
    reference = reference_outputs(net, with_confidence, img1, img2)
    backend = TensorRTBackend(engine_path, with_confidence, size)
    try:
        flow, conf = backend.run(img1.numpy(), img2.numpy())
    finally:
        backend.close()
    return compare(reference, [flow] if conf is None else [flow, conf], precision)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="model file or training checkpoint (.pt)")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--height", type=int, help="static engine input height (multiple of 64)")
    parser.add_argument("--width", type=int, help="static engine input width (multiple of 64)")
    parser.add_argument("--profile", help="dynamic sizes MIN:OPT:MAX, each HEIGHTxWIDTH (e.g. 256x320:384x512:512x640)")
    parser.add_argument("--fp16", action="store_true", help="FP16 engine (default FP32)")
    parser.add_argument("--workspace", type=int, default=1024, metavar="MB", help="TensorRT workspace limit (MiB)")
    parser.add_argument("--confidence", action=argparse.BooleanOptionalAction, default=True,
                        help="include the confidence output (one batched forward + backward pass)")
    parser.add_argument("--correlation", choices=ROUTE_CHOICES, default="onnx_ops",
                        help="correlation in the engine: standard ONNX ops (default), the CUDA kernel plugin, or "
                             "auto (the plugin where it can run)")
    args = parser.parse_args(argv)
    if args.profile is not None and (args.height is not None or args.width is not None):
        parser.error("give either --height and --width or --profile, not both")
    if (args.height is None) != (args.width is None):
        parser.error("--height and --width go together")
    if args.workspace <= 0:
        parser.error("--workspace must be positive")
    try:
        if args.profile is not None:
            args.profile = Profile.parse(args.profile)
        else:
            args.profile = Profile.static(args.height or 384, args.width or 512)
    except ValueError as err:
        parser.error(str(err))
    return args


def fail(code: int, message: str) -> int:
    print(f"export_trt: {message}", file=sys.stderr)
    return code


def write_plugin_variant(onnx_path: Path, dst: Path) -> Path:
    """The plugin-route ONNX of ``onnx_path`` at ``dst`` (CPU only), announced on stdout."""
    count = plugin.write_plugin_onnx(onnx_path, dst)
    print(f"wrote {dst}: {count} correlations as {plugin.PLUGIN_ID} nodes")
    return dst


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.out
    try:
        net = load_model(args.checkpoint)
    except ModelFileError as err:
        return fail(2, str(err))
    out.mkdir(parents=True, exist_ok=True)
    for stale in (ENGINE_FILE, MANIFEST_FILE):
        (out / stale).unlink(missing_ok=True)
    onnx_path = export_onnx(net, out / "model.onnx", args.confidence, sample_size=args.profile.opt,
                            source_sha256=file_sha256(args.checkpoint))
    report = onnx_parity(net, onnx_path, args.confidence, args.profile.opt)
    report_path = out / "parity.json"
    atomic_write_bytes(report_path, (json.dumps(report, indent=2) + "\n").encode())
    size = f"{args.profile.opt[0]}x{args.profile.opt[1]}"
    print(f"wrote {onnx_path}; at {size}, {describe_parity('ONNX Runtime', report['onnxruntime'])}")
    if not report["onnxruntime"]["passed"]:
        return fail(EXIT_PARITY, f"ONNX parity failed: {describe_parity('ONNX Runtime', report['onnxruntime'])}; "
                                 f"see {report_path}")
    precision = "fp16" if args.fp16 else "fp32"
    plugin_path = out / "model.plugin.onnx"
    if args.correlation == "plugin_aot":
        write_plugin_variant(onnx_path, plugin_path)
    kept = f"{onnx_path.name} and {report_path.name} are in {out}"
    try:
        device = probe_device()
        route = choose_route(args.correlation, device, precision, has_fp16_flag(import_tensorrt()))
        if route == "plugin_aot" and args.correlation == "auto":
            write_plugin_variant(onnx_path, plugin_path)
        engine_onnx = plugin_path if route == "plugin_aot" else onnx_path
        kernel = plugin.kernel_sha256() if route == "plugin_aot" else None
        spec = EngineSpec(file_sha256(engine_onnx), args.profile, precision, route, kernel, args.confidence)
        print(f"building the TensorRT engine ({precision}, correlation {route}) on {device.describe()} (takes minutes)")
        build_engine(engine_onnx, out, spec, device, args.workspace, timing_cache_path(out, device))
    except BackendUnavailable as err:
        return fail(EXIT_NO_ENGINE, f"no engine built: {err}. {kept}")
    except RuntimeError as err:  # EngineBuildError, the plugin's PluginRouteError, TensorRT's own errors
        reason = " | ".join(line.strip() for line in str(err).splitlines() if line.strip())
        return fail(EXIT_NO_ENGINE, f"engine build failed: {reason}; {kept}")
    try:
        report["tensorrt"] = engine_parity(net, out / ENGINE_FILE, args.confidence, args.profile.opt, precision)
    except BackendUnavailable as err:
        return fail(EXIT_NO_ENGINE, f"the engine was built but cannot be loaded here: {err}; {kept}")
    atomic_write_bytes(report_path, (json.dumps(report, indent=2) + "\n").encode())
    summary = describe_parity(f"TensorRT {precision}", report["tensorrt"])
    if not report["tensorrt"]["passed"]:
        return fail(EXIT_PARITY, f"engine parity failed: {summary}; the engine stays in {out}, see {report_path}")
    print(f"wrote {out / ENGINE_FILE} and {out / MANIFEST_FILE}; {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
