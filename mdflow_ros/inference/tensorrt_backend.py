"""The TensorRT backend, and the engine build shared with training/export_trt.py.

TensorRT and PyCUDA are imported here only, and lazily: without them every entry point raises
``BackendUnavailable`` saying what is missing, so this module imports anywhere.

Runtime rules (the CUDA context is per thread; contexts mixed across threads or libraries give
"invalid resource handle" errors):
- one worker thread per backend (``GpuWorker``) does all GPU work: it retains the device's
  primary context (the one TensorRT and the CUDA runtime use; never ``pycuda.autoinit``) and
  pushes/pops it around every job. ``run`` may be called from any thread (a ROS executor's):
  the call is handed to the worker and waits for its result, so no other thread touches CUDA;
- pinned host buffers and device buffers are allocated once, at the profile's largest size;
  each frame is copy in, ``execute_async_v3``, copy out, all on one stream;
- engines are cached with a manifest (``engine_manifest``) and loaded only when it matches the
  ONNX, size profile, precision, correlation route, GPU and TensorRT version; otherwise they
  are rebuilt from the ONNX (taking minutes, logged) or refused with the reason.

The engine runs the deployed graph (img1, img2 -> flow [, confidence]) from
``onnx_export.export_onnx``. Precision: TensorRT 10 builds FP16 through its FP16 builder
flag; TensorRT 11 removed that flag (strong typing only), so FP16 there means an FP16 ONNX
made by NVIDIA ModelOpt AutoCast first. FP32 engines are built with BuilderFlag.TF32 cleared:
TensorRT allows TF32 (10-bit mantissa) convolutions by default on Ampere and newer, which can
move the flow by more than the 0.01 px parity limit without any bug; fp32 here means IEEE fp32
(fp16 is the fast precision). Correlation route "auto" takes the kernel plugin where it can
run (TensorRT >= 10.9, nvcc, a driver that loads its PTX) and the standard-op route elsewhere,
e.g. on Jetson Orin with JetPack 6 (TensorRT 10.3).

Status: written against the TensorRT 10/11 and PyCUDA documentation and unit-checked on a
machine without a GPU (the thread hand-off is tested with a fake context); the TensorRT and
PyCUDA calls themselves have not run on a GPU yet.
"""
from __future__ import annotations

import ctypes
import dataclasses
import logging
import queue
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Protocol, TypeVar

import numpy as np
import onnx

from mdflow_ros.files import atomic_write_bytes, file_sha256
from mdflow_ros.inference import trt_correlation_plugin as plugin
from mdflow_ros.inference.backend import BackendUnavailable
from mdflow_ros.inference.engine_manifest import (DEFAULT_DYNAMIC_PROFILE, ENGINE_FILE, MANIFEST_FILE, PRECISIONS,
                                                  ROUTES, DeviceInfo, EngineManifest, EngineSpec, ManifestError,
                                                  Profile, check_engine, engine_dir,
                                                  new_manifest, read_manifest, timing_cache_path, write_manifest)
from mdflow_ros.inference.onnx_files import INPUT_NAMES, cache_dir, onnx_for
from mdflow_ros.inference.ptx_compat import driver_cuda_version, parse_version

LOG = logging.getLogger("mdflow_ros.inference")
T = TypeVar("T")
MIN_TENSORRT = (10, 0)
"""This backend uses the TensorRT 10 API (name-based I/O, execute_async_v3, no implicit batch)."""
CUDA_DRIVER_LIBRARY = "libcuda.so.1"
"""The CUDA driver library (Linux, Jetson included), opened through ctypes for one call PyCUDA lacks."""
ROUTE_CHOICES = ("auto", *ROUTES)
"""What a user may ask for as the correlation route: "auto" resolves to one of ROUTES per device."""


class EngineBuildError(RuntimeError):
    """TensorRT could not build an engine from the ONNX; the message says why."""


def tensorrt_version_problem(version: str) -> str | None:
    """Why this backend cannot use TensorRT ``version`` (older than MIN_TENSORRT), or None."""
    if parse_version(version) >= MIN_TENSORRT:
        return None
    return (f"TensorRT {version} is too old: this backend needs TensorRT >= {MIN_TENSORRT[0]} (JetPacks before 6.1 "
            "ship TensorRT 8: use JetPack 6.1 or newer, or the onnxruntime backend)")


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or BackendUnavailable saying it is not installed or too old."""
    try:
        import tensorrt
    except ImportError as err:
        raise BackendUnavailable(f"TensorRT is not installed (pip install 'mdflow_ros[gpu]'; {err})") from None
    problem = tensorrt_version_problem(tensorrt.__version__)
    if problem is not None:
        raise BackendUnavailable(problem)
    return tensorrt


def import_pycuda() -> Any:
    """``pycuda.driver``, or BackendUnavailable('PyCUDA is not installed ...') (it also needs the CUDA driver)."""
    try:
        import pycuda.driver as cuda
    except ImportError as err:
        raise BackendUnavailable(
            f"PyCUDA is not installed or finds no CUDA driver (pip install pycuda; {err})") from None
    return cuda


def open_device(cuda: Any, device_id: int = 0) -> Any:
    """Initialise the CUDA driver and return PyCUDA's Device ``device_id``; BackendUnavailable if there is no GPU."""
    try:
        cuda.init()
        count = cuda.Device.count()
    except cuda.Error as err:
        raise BackendUnavailable(f"no GPU: the CUDA driver could not initialise ({err})") from None
    if count <= device_id:
        raise BackendUnavailable(f"no GPU: CUDA device {device_id} asked for, {count} found")
    return cuda.Device(device_id)


def device_info(trt: Any, cuda: Any, device: Any) -> DeviceInfo:
    """TensorRT version, GPU name, compute capability of a PyCUDA Device, and the driver's CUDA version."""
    return DeviceInfo(trt.__version__, device.name(), tuple(device.compute_capability()),
                      driver_cuda_version(cuda.get_driver_version()))


def probe_device(device_id: int = 0) -> DeviceInfo:
    """DeviceInfo of GPU ``device_id``; BackendUnavailable naming what is missing (TensorRT, PyCUDA, a GPU)."""
    trt = import_tensorrt()
    cuda = import_pycuda()
    return device_info(trt, cuda, open_device(cuda, device_id))


def has_fp16_flag(trt: Any) -> bool:
    """Whether this TensorRT has BuilderFlag.FP16 (TensorRT 10 does; TensorRT 11 removed it)."""
    return hasattr(trt.BuilderFlag, "FP16")


def choose_route(requested: str, device: DeviceInfo, precision: str, fp16_flag: bool) -> str:
    """The correlation route to build: ``requested``, or for "auto" the plugin where it can run, else onnx_ops.

    The plugin route needs TensorRT >= 10.9 (and, for fp16, the FP16 builder flag), nvcc, and a
    driver that loads the PTX that nvcc writes (``trt_correlation_plugin.route_problem`` and
    ``kernel_problem``); the choice and its reason are logged.
    """
    if requested != "auto":
        return requested
    problem = (plugin.route_problem(device.tensorrt_version, precision, fp16_flag)
               or plugin.kernel_problem(device.compute_capability, device.cuda_driver))
    if problem is not None:
        LOG.info("correlation 'auto' on %s: the standard-op route (onnx_ops), since %s", device.describe(), problem)
        return "onnx_ops"
    LOG.info("correlation 'auto' on %s: the CUDA kernel plugin route (plugin_aot)", device.describe())
    return "plugin_aot"


def fp16_onnx_for_strong_typing(src: Path, dst: Path) -> Path:
    """TensorRT 11 path to FP16: convert the ONNX with ModelOpt AutoCast (FP32 inputs and outputs kept).

    Only for the standard-op ONNX: AutoCast runs the graph in ONNX Runtime, which has no
    ``mdflow::Correlation53`` (``trt_correlation_plugin.route_problem`` refuses that case first).
    """
    try:
        from modelopt.onnx.autocast import convert_to_mixed_precision
    except ImportError:
        raise EngineBuildError(
            "this TensorRT has no FP16 builder flag (removed in TensorRT 11): FP16 must be in the ONNX. Install "
            "NVIDIA ModelOpt (pip install 'mdflow_ros[autocast]') to convert it with AutoCast, or build fp32"
        ) from None
    model = convert_to_mixed_precision(onnx_path=str(src), low_precision_type="fp16", keep_io_types=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    onnx.save(model, str(tmp))
    tmp.replace(dst)
    return dst


def attach_timing_cache(config: Any, path: Path) -> bool:
    """Give the builder ``config`` the timing cache at ``path``, or an empty one if TensorRT cannot use that.

    TensorRT reports these failures by return value, not by exception: ``create_timing_cache``
    returns None for bytes it cannot parse, and ``set_timing_cache`` returns False for a cache
    from another device or TensorRT version when mismatches are not ignored (NvInfer.h,
    IBuilderConfig::createTimingCache / setTimingCache; the Python bindings in TensorRT's
    python/src/infer/pyCore.cpp pass both results through unchecked). Returns whether a cache
    is attached; the build then runs without one, only slower.
    """
    previous = path.read_bytes() if path.is_file() else b""
    if previous:
        cache = config.create_timing_cache(previous)
        if cache is not None and config.set_timing_cache(cache, False):
            return True
        why = "TensorRT cannot read it" if cache is None else "it is for another GPU or TensorRT version"
        LOG.warning("ignoring the timing cache %s (%s); starting an empty one", path, why)
    cache = config.create_timing_cache(b"")
    if cache is not None and config.set_timing_cache(cache, False):
        return True
    LOG.warning("building without a timing cache: TensorRT could not create an empty one")
    return False


def save_timing_cache(config: Any, path: Path) -> bool:
    """Write ``config``'s timing cache to ``path`` after a build; False (logged) when TensorRT returns none."""
    cache = config.get_timing_cache()
    if cache is None:
        LOG.warning("TensorRT returned no timing cache after the build; %s is left as it was", path)
        return False
    atomic_write_bytes(path, bytes(cache.serialize()))
    return True


def build_engine(onnx_path: Path, out_dir: Path, spec: EngineSpec, device: DeviceInfo, workspace_mb: int = 1024,
                 timing_cache: Path | None = None) -> EngineManifest:
    """Build ``out_dir/model.engine`` from ``onnx_path`` and write its manifest; returns the manifest.

    ``onnx_path`` is the file ``spec.onnx_sha256`` describes (the plugin ONNX for route
    plugin_aot). Inputs img1, img2 get ``spec.profile`` (1, 3, H, W). The engine is written to
    a temporary file and renamed, then the manifest; a crash in between leaves a manifest whose
    SHA-256 no longer matches, which ``check_engine`` refuses. ``timing_cache`` is read if TensorRT
    can use it (``attach_timing_cache``) and rewritten after the build. fp32 builds clear TF32.
    EngineBuildError, or the plugin's PluginRouteError, says why no engine could be built.
    Runs on the GPU; not yet run on one.
    """
    trt = import_tensorrt()
    out_dir.mkdir(parents=True, exist_ok=True)
    weak_fp16 = spec.precision == "fp16" and has_fp16_flag(trt)
    kernel = None
    if spec.correlation_route == "plugin_aot":
        problem = plugin.route_problem(trt.__version__, spec.precision, has_fp16_flag(trt))
        if problem is not None:
            raise plugin.PluginRouteError(problem)
        kernel = plugin.register(device.compute_capability, device.cuda_driver)
    build_onnx = onnx_path
    if spec.precision == "fp16" and not weak_fp16:
        build_onnx = fp16_onnx_for_strong_typing(onnx_path, out_dir / f"{onnx_path.stem}.fp16.onnx")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(build_onnx)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT's ONNX parser rejected {build_onnx}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if weak_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if spec.precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    for name in INPUT_NAMES:
        profile.set_shape(name, (1, 3, *spec.profile.min), (1, 3, *spec.profile.opt), (1, 3, *spec.profile.max))
    config.add_optimization_profile(profile)
    cached = timing_cache is not None and attach_timing_cache(config, timing_cache)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT could not build an engine from {build_onnx} (its log above says why)")
    engine_path = out_dir / ENGINE_FILE
    atomic_write_bytes(engine_path, bytes(serialized))
    if cached:
        save_timing_cache(config, timing_cache)
    manifest = new_manifest(spec, device, engine_path, onnx_path, kernel)
    write_manifest(manifest, out_dir / MANIFEST_FILE)
    return manifest


class ContextLike(Protocol):
    """What GpuWorker needs of a CUDA context."""

    def push(self) -> None: ...

    def pop(self) -> None: ...

    def release(self) -> None: ...


def current_context(driver: Any) -> int:
    """The calling thread's current CUDA context (its handle; 0 for none), through libcuda's cuCtxGetCurrent."""
    current = ctypes.c_void_p()
    if driver.cuCtxGetCurrent(ctypes.byref(current)) != 0:
        return 0
    return current.value or 0


def pop_if_current(driver: Any, handle: int) -> bool:
    """Pop the calling thread's current CUDA context if it is ``handle`` (not 0); whether it was popped.

    ``driver`` is the CUDA driver library (libcuda) through ctypes; cuCtxPopCurrent_v2 is the
    symbol ``cuCtxPopCurrent`` names since CUDA 4.0, and returns 0 on success.
    """
    if not handle or current_context(driver) != handle:
        return False
    popped = ctypes.c_void_p()
    return driver.cuCtxPopCurrent_v2(ctypes.byref(popped)) == 0


class PrimaryContext:
    """GPU ``device_id``'s primary context, retained through PyCUDA (create it on the thread that will use it)."""

    def __init__(self, cuda: Any, device_id: int = 0):
        self._cuda = cuda
        self.device = open_device(cuda, device_id)
        self._context = self.device.retain_primary_context()

    def push(self) -> None:
        self._context.push()

    def pop(self) -> None:
        self._cuda.Context.pop()

    def release(self) -> None:
        """Release the retained primary context and take it off this thread's context stack.

        PyCUDA's ``detach`` of a context that is not current pushes it, then calls
        cuDevicePrimaryCtxRelease, which "unlike cuCtxDestroy() does not pop the context from
        stack in any circumstances" (CUDA driver API; inducer/pycuda src/cpp/cuda.hpp,
        ``context::detach`` and ``primary_context::detach_internal``). PyCUDA's own stack is
        empty by then, so ``Context.pop`` would refuse: the context's handle is read while it is
        pushed once more, and after the release it is popped through the driver.
        """
        try:
            driver = ctypes.CDLL(CUDA_DRIVER_LIBRARY)
        except OSError as err:
            LOG.warning("cannot open %s to pop the released primary context (%s)", CUDA_DRIVER_LIBRARY, err)
            self._context.detach()
            return
        self._context.push()
        handle = current_context(driver)
        self._cuda.Context.pop()
        self._context.detach()
        pop_if_current(driver, handle)


class GpuWorker:
    """One thread that owns a CUDA context and runs every GPU job, one at a time.

    ``open_context`` runs on the worker thread; each job runs between ``push`` and ``pop`` of
    that context, and ``release`` runs when the worker stops. ``call`` hands a job over from any
    thread and returns its result (or raises its exception); a job calling ``call`` runs inline.
    If ``open_context`` fails, every call raises that error.
    """

    def __init__(self, open_context: Callable[[], ContextLike], name: str = "mdflow-gpu"):
        self._open_context = open_context
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self.context: ContextLike | None = None
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def call(self, job: Callable[[], T]) -> T:
        if threading.current_thread() is self._thread:
            return job()
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the GPU worker is closed")
            self._jobs.put((job, future))
        return future.result()

    def close(self) -> None:
        """Stop after the queued jobs and release the context; later calls raise RuntimeError."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._jobs.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def _loop(self) -> None:
        error: BaseException | None = None
        try:
            self.context = self._open_context()
        except BaseException as err:
            error = err
        try:
            while (item := self._jobs.get()) is not None:
                job, future = item
                if error is not None:
                    future.set_exception(error)
                    continue
                try:
                    self.context.push()
                    try:
                        result = job()
                    finally:
                        self.context.pop()
                except BaseException as err:
                    future.set_exception(err)
                else:
                    future.set_result(result)
        finally:
            if self.context is not None:
                self.context.release()


class EngineSession:
    """A deserialized engine with its execution context, stream and buffers; used on the worker thread only."""

    def __init__(self, trt: Any, cuda: Any, engine_bytes: bytes, profile: Profile):
        self._cuda = cuda
        self.profile = profile
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise BackendUnavailable("TensorRT could not deserialize the engine (its log above says why)")
        self.context = self.engine.create_execution_context()
        self.stream = cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        if sorted(self.inputs) != sorted(INPUT_NAMES):
            raise BackendUnavailable(f"engine inputs are {self.inputs}, expected {list(INPUT_NAMES)}")
        self._set_size(*profile.max)
        self.host: dict[str, np.ndarray] = {}
        self.device: dict[str, Any] = {}
        for name in names:
            count = int(np.prod(tuple(self.context.get_tensor_shape(name))))
            self.host[name] = cuda.pagelocked_empty(count, np.dtype(trt.nptype(self.engine.get_tensor_dtype(name))))
            self.device[name] = cuda.mem_alloc(self.host[name].nbytes)
            self.context.set_tensor_address(name, int(self.device[name]))

    def _set_size(self, height: int, width: int) -> None:
        for name in self.inputs:
            if not self.context.set_input_shape(name, (1, 3, height, width)):
                raise ValueError(f"TensorRT refused input shape (1, 3, {height}, {width}) for {name}")
        self.size = (height, width)

    def infer(self, img1: np.ndarray, img2: np.ndarray) -> dict[str, np.ndarray]:
        """img1, img2 (1, 3, H, W) float32 in [0, 1] -> {name: float32 array}.

        Outputs: flow (1, 2, H, W) in pixels and, in graphs with confidence, confidence (1, H, W).
        """
        height, width = img1.shape[2:]
        if img1.shape != (1, 3, height, width) or img2.shape != img1.shape:
            raise ValueError(f"expected two (1, 3, H, W) arrays, got {img1.shape} and {img2.shape}")
        if not self.profile.accepts(height, width):
            raise ValueError(f"input {height}x{width} is outside the engine's size profile {self.profile}")
        if (height, width) != self.size:
            self._set_size(height, width)
        cuda = self._cuda
        for name, img in zip(INPUT_NAMES, (img1, img2)):
            staged = self.host[name][:img.size].reshape(img.shape)
            np.copyto(staged, img, casting="same_kind")
            cuda.memcpy_htod_async(self.device[name], staged, self.stream)
        if not self.context.execute_async_v3(self.stream.handle):
            raise RuntimeError("TensorRT execute_async_v3 failed (its log above says why)")
        results = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            staged = self.host[name][:int(np.prod(shape))]
            cuda.memcpy_dtoh_async(staged, self.device[name], self.stream)
            results[name] = (staged, shape)
        self.stream.synchronize()
        return {name: np.array(staged.reshape(shape), dtype=np.float32) for name, (staged, shape) in results.items()}

    def close(self) -> None:
        """Free the buffers, stream and TensorRT objects here, on the worker thread with the context pushed."""
        for alloc in self.device.values():
            alloc.free()
        self.device.clear()
        self.host.clear()
        del self.context, self.engine, self.runtime, self.stream


def plugin_onnx(onnx_path: Path, out: Path) -> Path:
    """The plugin-route variant of ``onnx_path`` at ``out``, written once per source ONNX."""
    if not out.is_file():
        plugin.write_plugin_onnx(onnx_path, out)
    return out


def cached_engine(onnx_path: Path, spec: EngineSpec, device: DeviceInfo, cache_root: Path, workspace_mb: int
                  ) -> tuple[Path, EngineManifest]:
    """The cached engine for ``spec`` on ``device``, built from ``onnx_path`` first when there is no valid one."""
    folder = engine_dir(cache_root, spec, device)
    reason = check_engine(folder / MANIFEST_FILE, spec, device)
    if reason is None:
        return folder / ENGINE_FILE, read_manifest(folder / MANIFEST_FILE)
    if not folder.exists():
        reason = "no cached engine for this model, size profile, precision and GPU yet"
    LOG.warning("building a TensorRT engine for %s on %s (%s); this takes minutes, the result is cached in %s",
                onnx_path.name, device.describe(), reason, folder)
    manifest = build_engine(onnx_path, folder, spec, device, workspace_mb, timing_cache_path(cache_root, device))
    return folder / ENGINE_FILE, manifest


def prebuilt_engine(engine_path: Path, with_confidence: bool, input_size: tuple[int, int] | None,
                    device: DeviceInfo, cache_root: Path, workspace_mb: int) -> tuple[Path, EngineManifest]:
    """A .engine from export_trt: used if its manifest matches this device, else rebuilt from its ONNX or refused.

    The ONNX named by the manifest may be absent (an engine copied alone to a robot) but, when
    present, must be the one the engine was built from.
    """
    manifest_path = engine_path.parent / MANIFEST_FILE
    try:
        manifest = read_manifest(manifest_path)
    except ManifestError as err:
        raise BackendUnavailable(f"{engine_path} is not loaded without a valid manifest ({err}); rebuild it with "
                                 "training/export_trt.py or pass the .pt/.onnx model") from None
    if manifest.engine_file != engine_path.name:
        raise BackendUnavailable(f"{manifest_path} describes {manifest.engine_file}, not {engine_path.name}")
    spec = manifest.spec
    if spec.with_confidence != with_confidence:
        raise BackendUnavailable(f"{engine_path} was built {'with' if spec.with_confidence else 'without'} "
                                 f"confidence, but confidence={with_confidence} was asked for")
    if input_size is not None and not spec.profile.accepts(*input_size):
        raise BackendUnavailable(f"{engine_path} accepts sizes {spec.profile}, not the input size {input_size}")
    onnx_path = manifest_path.parent / manifest.onnx_file
    onnx_matches = onnx_path.is_file() and file_sha256(onnx_path) == spec.onnx_sha256
    if onnx_path.is_file() and not onnx_matches:
        raise BackendUnavailable(f"{engine_path} was built from another ONNX than {onnx_path} (re-exported since?); "
                                 "run training/export_trt.py again")
    if spec.correlation_route == "plugin_aot":
        spec = dataclasses.replace(spec, kernel_sha256=plugin.kernel_sha256())
    reason = check_engine(manifest_path, spec, device)
    if reason is None:
        return engine_path, manifest
    if not onnx_matches:
        raise BackendUnavailable(f"cannot use {engine_path}: {reason}; and its ONNX {onnx_path} is missing, so it "
                                 "cannot be rebuilt here")
    LOG.warning("%s: %s; rebuilding it from %s into the engine cache", engine_path, reason, onnx_path)
    return cached_engine(onnx_path, spec, device, cache_root, workspace_mb)


class TensorRTBackend:
    """Deployed graph as a TensorRT engine on one GPU (see the module docstring for the runtime rules).

    model_path: .pt model file or .onnx deployed graph (an engine is built and cached per GPU,
    TensorRT version, size profile, precision and route), or a .engine from export_trt (used
    when its manifest matches, otherwise rebuilt from its ONNX or refused). input_size: fixed
    (height, width) for a static engine; None accepts any multiple of 64 up to 1088 x 1920.
    precision "fp32" (IEEE, TF32 off) or "fp16"; correlation "onnx_ops" (default), "plugin_aot"
    (the CUDA kernel; TensorRT >= 10.9, nvcc and a driver that loads its PTX needed to build) or
    "auto" (``choose_route``). cache_root: engine cache (default $MDFLOW_CACHE or ~/.cache/mdflow_ros).
    """

    name = "tensorrt"

    def __init__(self, model_path: str | Path, with_confidence: bool, input_size: tuple[int, int] | None = None, *,
                 precision: str = "fp32", correlation: str = "onnx_ops", cache_root: str | Path | None = None,
                 workspace_mb: int = 1024, device_id: int = 0):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if correlation not in ROUTE_CHOICES:
            raise ValueError(f"correlation must be one of {ROUTE_CHOICES}, got {correlation!r}")
        trt = import_tensorrt()
        cuda = import_pycuda()
        self.with_confidence = with_confidence
        model_path = Path(model_path)
        cache = Path(cache_root) if cache_root is not None else cache_dir()
        profile = Profile.static(*input_size) if input_size is not None else DEFAULT_DYNAMIC_PROFILE

        def open_engine() -> tuple[EngineSession, Path, EngineManifest]:
            device = device_info(trt, cuda, cuda.Device(device_id))
            if model_path.suffix in (".engine", ".plan"):
                engine_path, manifest = prebuilt_engine(model_path, with_confidence, input_size, device, cache,
                                                        workspace_mb)
            else:
                onnx_path = onnx_for(model_path, with_confidence)
                kernel = None
                route = choose_route(correlation, device, precision, has_fp16_flag(trt))
                if route == "plugin_aot":
                    variant = cache / "onnx" / f"{file_sha256(onnx_path)[:20]}.plugin.onnx"
                    onnx_path = plugin_onnx(onnx_path, variant)
                    kernel = plugin.kernel_sha256()
                spec = EngineSpec(file_sha256(onnx_path), profile, precision, route, kernel, with_confidence)
                engine_path, manifest = cached_engine(onnx_path, spec, device, cache, workspace_mb)
            session = EngineSession(trt, cuda, engine_path.read_bytes(), manifest.spec.profile)
            warm = np.zeros((1, 3, *manifest.spec.profile.opt), np.float32)
            for _ in range(2):
                session.infer(warm, warm)
            return session, engine_path, manifest

        self._worker = GpuWorker(lambda: PrimaryContext(cuda, device_id), name="mdflow-tensorrt")
        try:
            self._session, self.engine_path, manifest = self._worker.call(open_engine)
        except (EngineBuildError, plugin.PluginRouteError) as err:
            self._worker.close()
            raise BackendUnavailable(f"no TensorRT engine: {err}") from err
        except BaseException:
            self._worker.close()
            raise
        spec, device = manifest.spec, manifest.device
        self.description = (f"TensorRT {device.tensorrt_version} on {device.gpu_name} ({device.sm}), {spec.precision}, "
                            f"correlation {spec.correlation_route}, sizes {spec.profile}, engine {self.engine_path}")

    def run(self, img1: np.ndarray, img2: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        out = self._worker.call(lambda: self._session.infer(img1, img2))
        return out["flow"], (out["confidence"] if self.with_confidence else None)

    def cancel(self) -> None:
        """An enqueued engine cannot be stopped: a run in progress finishes (on a GPU, in milliseconds)."""

    def close(self) -> None:
        """Free the GPU buffers and stop the worker thread (the backend is unusable afterwards)."""
        try:
            self._worker.call(self._session.close)
        finally:
            self._worker.close()
