"""The GPU path in one command: on a machine with a GPU, within ten minutes; elsewhere, what is missing.

    python -m bench.gpu_smoke [--out FILE.jsonl] [--work DIR] [--wheels DIR] [--size 384x512]
                              [--runs 100] [--only STEP,...] [--budget-s 540]

Steps, each in a fresh process of its own (no CUDA state leaks from one into the next, and a
crash costs one step):
- environment: Python, the GPU and its driver, nvcc, PyTorch, TensorRT, PyCUDA, ONNX Runtime and
  its providers; what is missing, what each missing piece blocks, and how to bring it.
- kernel: the CUDA correlation kernel compiled by PyCUDA (SourceModule), and the PTX that the
  plugin route embeds loaded by the driver (module_from_buffer); both entry points (fp32, fp16)
  of each against the reference correlation on FastFlowNet-sized features.
- reference: the shipped teacher (with confidence) in PyTorch, fp32, on the CPU, on one smooth
  image pair moved by (3, 2) px at --size (HEIGHTxWIDTH, default 384x512, i.e. 512 wide).
- onnxruntime-gpu, pytorch-cuda: the same graph through the ONNX Runtime backend (CUDA
  provider) and the PyTorch backend on CUDA, each library with its own defaults (which may
  allow TF32): parity, reported against the fp32 limits but not judged, and time per call.
- build: fp32 and fp16 engines of the teacher at --size by both correlation routes (onnx_ops,
  plugin_aot) through the TensorRT backend and its engine cache (one shared timing cache).
- engine: each built engine loaded from its file (manifest checked) by the TensorRT backend:
  flow and confidence parity against the reference by its precision's limits
  (training.parity), time per call, and ``ratio_to``: its median time over each baseline's
  (below 1: the engine is faster).

Times are per ``Backend.run`` call (host arrays in and out, transfers included), the median of
--runs calls after warm-up. The output is one JSON object per line, on stdout and in --out:
{"check": STEP, "status": "ok" | "failed" | "missing" | "skipped", ...}, then a "summary" line;
what is missing is also listed on stderr. A reused --work keeps its engine cache (a "build"
then times a cache hit). Nothing is installed from the network: --wheels DIR
installs the wheels and source archives carried in DIR (pip --no-index --no-deps, sources built
with the local compilers and no build isolation) into WORK/site for the steps.
Exit status: 0 every check ran and passed; 1 a check failed; 2 bad arguments; 3 none failed
but some could not run (missing, or skipped for the time budget).
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mdflow_ros.inference.engine_manifest import PRECISIONS, ROUTES, parse_size
from mdflow_ros.inference.estimator import shipped_model

ROOT = Path(__file__).resolve().parents[1]

STEPS = ("kernel", "reference", "onnxruntime-gpu", "pytorch-cuda", "build", "engine")
"""The steps --only chooses from, in the order they run (environment always runs first)."""
STATUSES = ("ok", "failed", "missing", "skipped")
MARKER = "MDFLOW-SMOKE "
"""Prefix of the lines a step's process prints its records on (libraries print on stdout too)."""
WARMUP_RUNS = 10
KERNEL_SHAPES = ((1, 32, 96, 128), (1, 64, 6, 8))
"""(B, C, H, W) of the kernel check: FastFlowNet's finest and coarsest correlation at 384x512."""
KERNEL_TOLERANCE = {"float32": (1e-5, 1e-5), "float16": (1e-5, 2 ** -10)}
"""(atol, rtol) per entry point: fp32 differs from the reference by summation order only; fp16
rounds the fp32 sum once (one fp16 ulp), as tests/runtime/test_correlation_kernel.py holds."""
STEP_TIMEOUT_S = 300
"""The longest one step's process may run (the budget left may cut it shorter)."""


# --- what a step's process reports -------------------------------------------------------------

class Missing(Exception):
    """A step cannot run here; the message says what is missing (the step is recorded as "missing")."""


def record(check: str, status: str, **fields: Any) -> dict[str, Any]:
    """One result line: ``check`` and ``status`` first, then the fields."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    return {"check": check, "status": status, **fields}


def emit(rec: dict[str, Any]) -> None:
    """Print one record for the parent process (on its own marked line)."""
    print(MARKER + json.dumps(rec), flush=True)


def time_calls(call: Callable[[], object], runs: int, warmup: int = WARMUP_RUNS) -> dict[str, float | int]:
    """Median, 10th and 90th percentile of ``runs`` calls of ``call`` in ms, after ``warmup`` calls."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    deciles = statistics.quantiles(times, n=10) if runs > 1 else [times[0]] * 9
    return {"runs": runs, "median_ms": statistics.median(times), "p10_ms": deciles[0], "p90_ms": deciles[-1]}


def version_of(dist: str) -> str | None:
    """The installed version of distribution ``dist``, or None."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# --- the steps (each runs in its own process) ----------------------------------------------------

def probe_gpu() -> dict[str, Any] | None:
    """Name, compute capability and driver CUDA version of GPU 0 (PyCUDA, else PyTorch, else nvidia-smi)."""
    try:
        import pycuda.driver as cuda

        from mdflow_ros.inference.ptx_compat import driver_cuda_version

        cuda.init()
        if cuda.Device.count():
            dev = cuda.Device(0)
            return {"name": dev.name(), "compute_capability": list(dev.compute_capability()),
                    "driver_cuda": list(driver_cuda_version(cuda.get_driver_version())), "seen_by": "pycuda"}
    except Exception:  # PyCUDA missing, or no driver: pycuda.driver.Error derives from Exception only
        pass
    if importlib.util.find_spec("torch") is not None:
        import torch

        if torch.cuda.is_available():
            return {"name": torch.cuda.get_device_name(0),
                    "compute_capability": list(torch.cuda.get_device_capability(0)), "driver_cuda": None,
                    "seen_by": "torch"}
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        result = subprocess.run([smi, "--query-gpu=name,compute_cap", "--format=csv,noheader"], capture_output=True,
                                text=True)
        if result.returncode == 0 and result.stdout.strip():
            name, cap = (part.strip() for part in result.stdout.splitlines()[0].split(","))
            return {"name": name, "compute_capability": [int(v) for v in cap.split(".")], "driver_cuda": None,
                    "seen_by": "nvidia-smi"}
    return None


def step_environment(args: argparse.Namespace) -> None:
    from mdflow_ros.inference import trt_correlation_plugin as plugin
    from mdflow_ros.inference.ptx_compat import version_text

    gpu = probe_gpu()
    try:
        nvcc = version_text(plugin.nvcc_version())
    except plugin.KernelCompileError:
        nvcc = None
    providers: list[str] = []
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        providers = onnxruntime.get_available_providers()
    torch_cuda = None
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch_cuda = torch.version.cuda
    have = {"gpu": gpu is not None, "pycuda": importlib.util.find_spec("pycuda") is not None,
            "tensorrt": importlib.util.find_spec("tensorrt") is not None, "nvcc": nvcc is not None,
            "torch": importlib.util.find_spec("torch") is not None, "torch_cuda": torch_cuda is not None,
            "onnxruntime_cuda": "CUDAExecutionProvider" in providers}
    versions = {dist: version_of(dist) for dist in ("torch", "tensorrt", "tensorrt-cu12", "tensorrt-cu13", "pycuda",
                                                    "onnxruntime", "onnxruntime-gpu", "onnx", "numpy")}
    missing = [item for item in MISSING if not have[item["key"]]]
    if versions["onnxruntime"] and versions["onnxruntime-gpu"]:
        missing.append({"key": "onnxruntime_cuda", "what": "one ONNX Runtime only",
                        "blocks": ["onnxruntime-gpu"], "how": "both onnxruntime and onnxruntime-gpu are installed "
                        "(they share one module; the last installed wins): uninstall both, then install "
                        "onnxruntime-gpu alone"})
    emit(record("environment", "ok", python=platform.python_version(), machine=platform.machine(), gpu=gpu,
                nvcc=nvcc, versions=versions, onnxruntime_providers=providers, torch_cuda=torch_cuda, have=have,
                missing=missing))


MISSING = (
    {"key": "gpu", "what": "a GPU with its driver", "blocks": ["kernel", "onnxruntime-gpu", "build", "engine"],
     "how": "run on a machine with an NVIDIA GPU and driver"},
    {"key": "pycuda", "what": "PyCUDA", "blocks": ["kernel", "build", "engine"],
     "how": "carry its source archive (and its wheels pytools, platformdirs, mako) in --wheels DIR: it is built "
            "here with the local nvcc"},
    {"key": "tensorrt", "what": "TensorRT", "blocks": ["build", "engine"],
     "how": "carry the tensorrt-cu13 (or -cu12, matching the driver) wheels with their libs in --wheels DIR; PyPI's "
            "'tensorrt' is a stub that downloads from pypi.nvidia.com while it installs"},
    {"key": "nvcc", "what": "nvcc (the CUDA compiler)", "blocks": ["kernel", "build plugin_aot"],
     "how": "install the CUDA toolkit, no newer than the driver's CUDA version"},
    {"key": "torch", "what": "PyTorch", "blocks": ["reference", "pytorch-cuda", "parity"],
     "how": "carry a torch wheel (pip install 'mdflow_ros[torch]' where there is a network)"},
    {"key": "torch_cuda", "what": "PyTorch built with CUDA", "blocks": ["pytorch-cuda"],
     "how": "carry a CUDA build of torch matching the driver"},
    {"key": "onnxruntime_cuda", "what": "ONNX Runtime's CUDAExecutionProvider", "blocks": ["onnxruntime-gpu"],
     "how": "carry the onnxruntime-gpu wheel, installed without the CPU onnxruntime beside it"},
)
"""What each step needs, what its absence blocks, and how to bring it on a machine without network."""


def step_kernel(args: argparse.Namespace) -> None:
    import pycuda.autoprimaryctx  # noqa: F401  retains and pushes GPU 0's primary context (never autoinit)
    import pycuda.driver as cuda
    import pycuda.gpuarray as gpuarray
    from pycuda.compiler import SourceModule

    from mdflow_ros.inference import trt_correlation_plugin as plugin

    cc = cuda.Context.get_device().compute_capability()
    ptx, build = plugin.compile_kernel(tuple(cc))
    modules = {"pycuda SourceModule": SourceModule(plugin.kernel_source(), no_extern_c=True, options=["-std=c++17"]),
               f"PTX ISA {build.ptx_isa[0]}.{build.ptx_isa[1]} (nvcc --ptx, loaded by the driver)":
                   cuda.module_from_buffer(ptx.encode() + b"\0")}
    rng = np.random.default_rng(0)
    features = [(rng.standard_normal(s).astype(np.float32), rng.standard_normal(s).astype(np.float32))
                for s in KERNEL_SHAPES]
    for compiled_by, module in modules.items():
        for dtype, entry in plugin.KERNEL_NAMES.items():
            atol, rtol = KERNEL_TOLERANCE[dtype]
            worst, passed = 0.0, True
            for f1, f2 in features:
                a, b = (gpuarray.to_gpu(np.ascontiguousarray(f.astype(dtype))) for f in (f1, f2))
                batch, channels, height, width = f1.shape
                out = gpuarray.empty((batch, plugin.NUM_OFFSETS, height, width), np.dtype(dtype))
                total = out.size
                module.get_function(entry)(a.gpudata, b.gpudata, np.int32(channels), np.int32(height),
                                           np.int32(width), np.int32(total), out.gpudata,
                                           block=(plugin.BLOCK_SIZE, 1, 1),
                                           grid=((total + plugin.BLOCK_SIZE - 1) // plugin.BLOCK_SIZE, 1))
                cuda.Context.synchronize()
                expected = plugin.correlation_numpy(a.get().astype(np.float32), b.get().astype(np.float32))
                if dtype == "float16":
                    expected = expected.astype(np.float16).astype(np.float32)
                got = out.get().astype(np.float32)
                worst = max(worst, float(np.abs(got - expected).max()))
                passed &= bool(np.allclose(got, expected, atol=atol, rtol=rtol))
            emit(record("kernel", "ok" if passed else "failed", entry=entry, compiled_by=compiled_by,
                        compute_capability=list(cc), shapes=[list(s) for s in KERNEL_SHAPES],
                        max_abs_diff=worst, atol=atol, rtol=rtol))


def reference_file(work: Path) -> Path:
    return work / "reference.npz"


def step_reference(args: argparse.Namespace) -> None:
    from mdflow_ros.models.model_file import load_model
    from training.export_trt import parity_pair, reference_outputs

    img1, img2 = parity_pair(*args.size)
    flow, conf = reference_outputs(load_model(shipped_model("teacher")), True, img1, img2)
    np.savez(reference_file(args.work), img1=img1.numpy(), img2=img2.numpy(), flow=flow, confidence=conf,
             size=np.array(args.size))
    emit(record("reference", "ok", size=list(args.size), max_abs_flow_px=float(np.abs(flow).max()),
                model=shipped_model("teacher").name))


def load_reference(work: Path, size: tuple[int, int]) -> dict[str, np.ndarray] | None:
    """The reference step's pair and outputs at ``size``, or None (not made, or made at another size)."""
    path = reference_file(work)
    if not path.is_file():
        return None
    ref = dict(np.load(path))
    return ref if tuple(ref["size"]) == tuple(size) else None


def check_backend(check: str, make: Callable[[], Any], precision: str, args: argparse.Namespace, judged: bool,
                  **fields: Any) -> None:
    """Open a backend, compare it with the reference, time it, close it: one record.

    ``judged``: the record fails when the parity is outside PARITY_LIMITS[precision] (and is
    "missing" without a reference); otherwise the parity is only reported (the baselines run
    with their libraries' defaults, which may allow TF32 convolutions).
    """
    from training.parity import compare

    ref = load_reference(args.work, args.size)
    img1, img2 = ((ref["img1"], ref["img2"]) if ref is not None else
                  (np.zeros((1, 3, *args.size), np.float32),) * 2)
    start = time.perf_counter()
    backend = make()
    try:
        open_s = time.perf_counter() - start
        flow, conf = backend.run(img1, img2)
        parity = None if ref is None else compare([ref["flow"], ref["confidence"]], [flow, conf], precision)
        timing = time_calls(lambda: backend.run(img1, img2), args.runs)
    finally:
        close = getattr(backend, "close", None)
        if close is not None:
            close()
    status = "ok"
    if judged:
        status = "missing" if parity is None else ("ok" if parity["passed"] else "failed")
    emit(record(check, status, **fields, precision=precision, backend=backend.description, open_s=open_s,
                parity=parity or "missing: no PyTorch reference", **timing))


def step_onnxruntime_gpu(args: argparse.Namespace) -> None:
    from mdflow_ros.inference.backend import BackendUnavailable
    from mdflow_ros.inference.onnxruntime_backend import OnnxRuntimeBackend

    def make() -> OnnxRuntimeBackend:
        try:
            backend = OnnxRuntimeBackend(shipped_model("teacher"), True, gpu=True)
        except BackendUnavailable as err:
            raise Missing(str(err)) from None
        used = backend.session.get_providers()[0]
        if used != "CUDAExecutionProvider":  # listed as available, but its CUDA/cuDNN libraries did not load
            raise Missing(f"ONNX Runtime's CUDA provider did not load (the session fell back to {used}): the CUDA "
                          "and cuDNN libraries this onnxruntime-gpu was built for are not found")
        return backend

    check_backend("onnxruntime-gpu", make, "fp32", args, False)


def step_pytorch_cuda(args: argparse.Namespace) -> None:
    import torch

    from mdflow_ros.inference.backend import BackendUnavailable
    from mdflow_ros.inference.torch_backend import TorchBackend

    def make() -> TorchBackend:
        try:
            return TorchBackend(shipped_model("teacher"), True, device="cuda")
        except BackendUnavailable as err:
            raise Missing(str(err)) from None

    check_backend("pytorch-cuda", make, "fp32", args, False, cudnn_tf32=torch.backends.cudnn.allow_tf32)


def engine_cache(work: Path) -> Path:
    return work / "engine-cache"


def build_problem(route: str, precision: str) -> str | None:
    """What this machine lacks to build a ``precision`` engine by ``route`` (the backend's own checks), or None."""
    from mdflow_ros.inference import trt_correlation_plugin as plugin
    from mdflow_ros.inference.tensorrt_backend import has_fp16_flag, import_tensorrt, probe_device

    trt = import_tensorrt()
    if route == "plugin_aot":
        device = probe_device()
        return (plugin.route_problem(trt.__version__, precision, has_fp16_flag(trt))
                or plugin.kernel_problem(device.compute_capability, device.cuda_driver))
    if precision == "fp16" and not has_fp16_flag(trt) and importlib.util.find_spec("modelopt") is None:
        return (f"TensorRT {trt.__version__} builds FP16 only from an FP16 ONNX, which needs NVIDIA ModelOpt "
                "(pip install 'mdflow_ros[autocast]')")
    return None


def step_build(args: argparse.Namespace) -> None:
    from mdflow_ros.inference.tensorrt_backend import TensorRTBackend

    problem = build_problem(args.route, args.precision)
    if problem is not None:
        raise Missing(problem)
    start = time.perf_counter()
    backend = TensorRTBackend(shipped_model("teacher"), True, args.size, precision=args.precision,
                              correlation=args.route, cache_root=engine_cache(args.work))
    try:
        seconds = time.perf_counter() - start
        engine = backend.engine_path
        emit(record("build", "ok", route=args.route, precision=args.precision, seconds=seconds, engine=str(engine),
                    engine_mb=engine.stat().st_size / 2 ** 20, backend=backend.description))
    finally:
        backend.close()


def step_engine(args: argparse.Namespace) -> None:
    from mdflow_ros.inference.tensorrt_backend import TensorRTBackend

    check_backend("engine", lambda: TensorRTBackend(args.engine, True, args.size), args.precision, args, True,
                  route=args.route)


STEP_FUNCTIONS: dict[str, Callable[[argparse.Namespace], None]] = {
    "environment": step_environment, "kernel": step_kernel, "reference": step_reference,
    "onnxruntime-gpu": step_onnxruntime_gpu, "pytorch-cuda": step_pytorch_cuda, "build": step_build,
    "engine": step_engine,
}


# --- the parent: plan, run each step in a process, collect ----------------------------------------

def parse_records(output: str) -> list[dict[str, Any]]:
    """The records a step's process printed (lines starting with MARKER), in order."""
    return [json.loads(line[len(MARKER):]) for line in output.splitlines() if line.startswith(MARKER)]


def run_step(cmd: list[str], env: dict[str, str], timeout: float, check: str, **fields: Any) -> list[dict[str, Any]]:
    """Run one step's process: its records, and a "failed" one with its output's tail if it broke unreported."""
    try:
        proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        tail = (err.stdout or b"")[-2000:]
        tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
        return [record(check, "failed", **fields, reason=f"timed out after {timeout:.0f} s", output_tail=tail)]
    records = parse_records(proc.stdout)
    if not records or (proc.returncode != 0 and not any(r["status"] == "failed" for r in records)):
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        records.append(record(check, "failed", **fields, reason=f"the step's process exited with {proc.returncode}",
                              output_tail=tail))
    return records


class Run:
    """The parent's state: the output file, the records so far, the clock."""

    def __init__(self, args: argparse.Namespace, env: dict[str, str]):
        self.args, self.env = args, env
        self.records: list[dict[str, Any]] = []
        self.deadline = time.monotonic() + args.budget_s
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
        self.out = open(args.out, "w") if args.out else None

    def add(self, rec: dict[str, Any]) -> dict[str, Any]:
        self.records.append(rec)
        line = json.dumps(rec)
        print(line, flush=True)
        if self.out is not None:
            self.out.write(line + "\n")
            self.out.flush()
        return rec

    def step(self, check: str, child_args: list[str], finish: Callable[[dict[str, Any]], None] | None = None,
             **fields: Any) -> list[dict[str, Any]]:
        """Run step ``check`` in its own process (unless the budget is spent); ``finish`` amends each record."""
        left = self.deadline - time.monotonic()
        if left < 5:
            return [self.add(record(check, "skipped", **fields, reason="the time budget (--budget-s) is spent"))]
        a = self.args
        cmd = [sys.executable, "-m", "bench.gpu_smoke", "--child", check, "--work", str(a.work),
               "--size", f"{a.size[0]}x{a.size[1]}", "--runs", str(a.runs), *child_args]
        records = run_step(cmd, self.env, min(STEP_TIMEOUT_S, left), check, **fields)
        for r in records:
            if finish is not None:
                finish(r)
            self.add(r)
        return records

    def missing(self, check: str, have: dict[str, bool], needs: tuple[str, ...], **fields: Any) -> bool:
        """Record ``check`` as missing (and return True) when one of ``needs`` is absent."""
        absent = [item["what"] for item in MISSING if item["key"] in needs and not have.get(item["key"])]
        if absent:
            self.add(record(check, "missing", **fields, missing=absent))
        return bool(absent)


def install_wheels(wheels: Path, work: Path) -> dict[str, Any]:
    """pip install --no-index --no-deps the files in ``wheels`` into WORK/site (nothing from the network)."""
    files = sorted(str(p) for p in wheels.iterdir() if p.name.endswith((".whl", ".tar.gz", ".zip")))
    if not files:
        return record("wheels", "failed", reason=f"{wheels} holds no .whl, .tar.gz or .zip")
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-build-isolation", "--no-cache-dir",
           "--target", str(work / "site"), *files]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return record("wheels", "failed", files=files, output_tail=proc.stderr[-2000:])
    return record("wheels", "ok", files=[Path(f).name for f in files], target=str(work / "site"))


def summary(records: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    counts = {s: sum(r["status"] == s for r in records) for s in STATUSES}
    status = "failed" if counts["failed"] else ("ok" if counts["missing"] + counts["skipped"] == 0 else "missing")
    return record("summary", status, counts=counts, seconds=seconds)


def plan(run: Run) -> None:
    """Run the steps: environment, then those of --only whose needs are met, each once per case."""
    args = run.args
    env_records = run.step("environment", [])
    environment = next((r for r in env_records if r["check"] == "environment" and r["status"] == "ok"), None)
    have = environment["have"] if environment else {}
    if environment and environment["missing"]:
        lines = "\n".join(f"  - {m['what']}: blocks {', '.join(m['blocks'])}; {m['how']}"
                          for m in environment["missing"])
        print(f"gpu_smoke: missing here:\n{lines}", file=sys.stderr)
    steps = args.only
    if "kernel" in steps and not run.missing("kernel", have, ("gpu", "pycuda", "nvcc")):
        run.step("kernel", [])
    if "reference" in steps and not run.missing("reference", have, ("torch",)):
        run.step("reference", [])
    baselines = {}
    for check, needs in (("onnxruntime-gpu", ("gpu", "onnxruntime_cuda")), ("pytorch-cuda", ("torch_cuda",))):
        if check in steps and not run.missing(check, have, needs):
            done = [r for r in run.step(check, []) if r["check"] == check and "median_ms" in r]
            if done:
                baselines[check] = done[0]["median_ms"]

    def ratios(r: dict[str, Any]) -> None:
        """The engine's median time over each baseline's, measured in this run (below 1: the engine is faster)."""
        if "median_ms" in r:
            r["ratio_to"] = {name: r["median_ms"] / ms for name, ms in baselines.items()}

    for route in ROUTES:
        for precision in PRECISIONS:
            case = {"route": route, "precision": precision}
            engine = None
            if "build" in steps and not run.missing("build", have, ("gpu", "pycuda", "tensorrt"), **case):
                made = run.step("build", ["--route", route, "--precision", precision], **case)
                engine = next((r["engine"] for r in made if r["check"] == "build" and r["status"] == "ok"), None)
            if "engine" not in steps:
                continue
            if engine is None:
                run.add(record("engine", "missing", **case, missing=["its engine (the build step did not make it)"]))
                continue
            run.step("engine", ["--engine", engine, "--route", route, "--precision", precision], ratios, **case)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="also write the JSON lines to this file")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a new temporary one)")
    parser.add_argument("--wheels", type=Path, help="folder of carried wheels / source archives to install first")
    parser.add_argument("--size", default="384x512", help="network input HEIGHTxWIDTH, multiples of 64")
    parser.add_argument("--runs", type=int, default=100, help="timed calls per backend")
    parser.add_argument("--only", default=",".join(STEPS), help=f"comma-separated steps of {', '.join(STEPS)}")
    parser.add_argument("--budget-s", type=float, default=540.0, help="stop starting steps after this many seconds")
    parser.add_argument("--child", choices=sorted(STEP_FUNCTIONS), help=argparse.SUPPRESS)
    parser.add_argument("--engine", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--route", choices=ROUTES, help=argparse.SUPPRESS)
    parser.add_argument("--precision", choices=PRECISIONS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        args.size = parse_size(args.size)
    except ValueError as err:
        parser.error(str(err))
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.budget_s <= 0:
        parser.error("--budget-s must be positive")
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(args.only) - set(STEPS))
    if unknown:
        parser.error(f"unknown step(s) {', '.join(unknown)} in --only; the steps are {', '.join(STEPS)}")
    if args.wheels is not None and not args.wheels.is_dir():
        parser.error(f"--wheels {args.wheels} is not a folder")
    return args


def child_environment(work: Path) -> dict[str, str]:
    """The steps' environment: WORK/site (carried wheels), then this repository, first on PYTHONPATH."""
    path = [str(work / "site"), str(ROOT), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p), "PYTHONUNBUFFERED": "1"}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.work is None:
        args.work = Path(tempfile.mkdtemp(prefix="mdflow-gpu-smoke-"))
    args.work.mkdir(parents=True, exist_ok=True)
    if args.child is not None:
        case = {k: getattr(args, k) for k in ("route", "precision") if getattr(args, k)}
        try:
            STEP_FUNCTIONS[args.child](args)
        except Missing as err:
            emit(record(args.child, "missing", **case, missing=[str(err)]))
        except Exception as err:  # reported as this step's result; the parent goes on with the next step
            emit(record(args.child, "failed", **case, reason=f"{type(err).__name__}: {err}",
                        traceback=traceback.format_exc(limit=-8)))
            return 1
        return 0
    start = time.monotonic()
    run = Run(args, child_environment(args.work))
    try:
        if args.wheels is not None:
            run.add(install_wheels(args.wheels, args.work))
        plan(run)
        final = run.add(summary(run.records, time.monotonic() - start))
    finally:
        if run.out is not None:
            run.out.close()
    return {"ok": 0, "failed": 1}.get(final["status"], 3)


if __name__ == "__main__":
    sys.exit(main())
