"""The TensorRT backend's CPU-checkable parts: clear unavailability, the GPU worker thread, engine cache decisions,
the engine build's handling of TensorRT's return values, the correlation route "auto".

TensorRT and PyCUDA are absent here: the worker is driven by a fake context that records which
thread pushes and pops it; the cache decisions by a fake build that writes an engine file and
its manifest like ``build_engine`` does; ``build_engine`` itself by a fake TensorRT module that
returns what TensorRT documents (None, False) where it does not raise; the primary context's
release by a fake of the two libcuda calls. The version logic runs on fake version numbers.
"""
import dataclasses
import importlib.util
import shutil
import sys
import threading
import types

import pytest

from fake_tensorrt import TIMING_MAGIC, fake_tensorrt
from mdflow_ros.files import file_sha256
from mdflow_ros.inference import tensorrt_backend as trt_backend
from mdflow_ros.inference import trt_correlation_plugin as plugin
from mdflow_ros.inference.backend import BackendUnavailable
from mdflow_ros.inference.engine_manifest import (ENGINE_FILE, MANIFEST_FILE, ROUTES, DeviceInfo, EngineSpec, Profile,
                                                  new_manifest, read_manifest, write_manifest)
from mdflow_ros.inference.tensorrt_backend import GpuWorker, TensorRTBackend

ORIN = DeviceInfo("10.3.0", "Orin (nvgpu)", (8, 7))
H100 = DeviceInfo("10.3.0", "NVIDIA H100 80GB HBM3", (9, 0))
NVCC = shutil.which("nvcc")


class FakeContext:
    def __init__(self, log):
        self.log = log
        self.current = False
        log.append(("open", threading.current_thread().name))

    def push(self):
        assert not self.current
        self.current = True
        self.log.append(("push", threading.current_thread().name))

    def pop(self):
        assert self.current
        self.current = False
        self.log.append(("pop", threading.current_thread().name))

    def release(self):
        self.log.append(("release", threading.current_thread().name))


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_backend_is_unavailable_without_tensorrt_and_says_so(tmp_path):
    with pytest.raises(BackendUnavailable, match="TensorRT is not installed"):
        TensorRTBackend(tmp_path / "model.pt", with_confidence=True, input_size=(384, 512))
    with pytest.raises(BackendUnavailable, match="TensorRT is not installed"):
        trt_backend.probe_device()


def test_bad_precision_or_route_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="precision"):
        TensorRTBackend(tmp_path / "m.pt", True, precision="int8")
    with pytest.raises(ValueError, match="correlation"):
        TensorRTBackend(tmp_path / "m.pt", True, correlation="cupy")


def test_worker_runs_every_job_on_its_own_thread_inside_the_pushed_context():
    log = []
    worker = GpuWorker(lambda: FakeContext(log), name="gpu-worker")
    job_threads, results = [], []

    def job(i):
        assert worker.context.current
        job_threads.append(threading.current_thread().name)
        return i * i

    callers = [threading.Thread(target=lambda i=i: results.append(worker.call(lambda: job(i)))) for i in range(8)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    worker.close()
    assert sorted(results) == [i * i for i in range(8)]
    assert set(job_threads) == {"gpu-worker"}
    assert {thread for _, thread in log} == {"gpu-worker"}, "the context is opened, pushed and released there only"
    assert [event for event, _ in log] == ["open"] + ["push", "pop"] * 8 + ["release"]


def test_worker_propagates_job_errors_pops_the_context_and_keeps_serving():
    log = []
    worker = GpuWorker(lambda: FakeContext(log))
    with pytest.raises(ZeroDivisionError):
        worker.call(lambda: 1 / 0)
    assert worker.call(lambda: worker.call(lambda: "nested calls run inline")) == "nested calls run inline"
    worker.close()
    assert [event for event, _ in log] == ["open", "push", "pop", "push", "pop", "release"]
    with pytest.raises(RuntimeError, match="closed"):
        worker.call(lambda: None)
    worker.close()


def test_worker_whose_context_cannot_open_fails_every_call_with_that_reason():
    def no_gpu():
        raise BackendUnavailable("no GPU: CUDA device 0 asked for, 0 found")

    worker = GpuWorker(no_gpu)
    for _ in range(2):
        with pytest.raises(BackendUnavailable, match="0 found"):
            worker.call(lambda: None)
    worker.close()


@pytest.fixture
def fake_build(monkeypatch):
    """Replace build_engine by a fake that writes an engine and its manifest; returns the list of builds."""
    builds = []

    def build(onnx_path, out_dir, spec, device, workspace_mb=1024, timing_cache=None):
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / ENGINE_FILE).write_bytes(f"engine for {device.gpu_name}".encode())
        manifest = new_manifest(spec, device, out_dir / ENGINE_FILE, onnx_path)
        write_manifest(manifest, out_dir / MANIFEST_FILE)
        builds.append((spec, device, out_dir, timing_cache))
        return manifest

    monkeypatch.setattr(trt_backend, "build_engine", build)
    return builds


def make_onnx(folder):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    path.write_bytes(b"stand-in for the deployed ONNX")
    return path


def spec_for(onnx_path, **change):
    spec = EngineSpec(file_sha256(onnx_path), Profile.static(384, 512), "fp16", "onnx_ops", None, True)
    return dataclasses.replace(spec, **change)


def test_cached_engine_is_built_once_per_device_and_then_reused(tmp_path, fake_build):
    onnx_path = make_onnx(tmp_path / "onnx")
    spec = spec_for(onnx_path)
    first, _ = trt_backend.cached_engine(onnx_path, spec, ORIN, tmp_path / "cache", 512)
    again, manifest = trt_backend.cached_engine(onnx_path, spec, ORIN, tmp_path / "cache", 512)
    assert first == again and len(fake_build) == 1 and manifest.device == ORIN
    assert fake_build[0][3].parent == tmp_path / "cache" / "timing"
    other, _ = trt_backend.cached_engine(onnx_path, spec, H100, tmp_path / "cache", 512)
    assert other != first and len(fake_build) == 2
    (first.parent / ENGINE_FILE).write_bytes(b"truncated")
    trt_backend.cached_engine(onnx_path, spec, ORIN, tmp_path / "cache", 512)
    assert len(fake_build) == 3, "an engine that no longer matches its manifest is rebuilt"


def prebuilt(tmp_path, device=ORIN, **change):
    """An export_trt-style folder: model.onnx, model.engine and manifest.json built on ``device``."""
    folder = tmp_path / "export"
    onnx_path = make_onnx(folder)
    (folder / ENGINE_FILE).write_bytes(b"prebuilt engine")
    write_manifest(new_manifest(spec_for(onnx_path, **change), device, folder / ENGINE_FILE, onnx_path),
                   folder / MANIFEST_FILE)
    return folder


def test_prebuilt_engine_is_used_when_its_manifest_matches_this_device(tmp_path, fake_build):
    folder = prebuilt(tmp_path)
    path, manifest = trt_backend.prebuilt_engine(folder / ENGINE_FILE, True, (384, 512), ORIN, tmp_path / "c", 512)
    assert path == folder / ENGINE_FILE and manifest == read_manifest(folder / MANIFEST_FILE) and not fake_build


def test_prebuilt_engine_for_another_gpu_is_rebuilt_from_its_onnx_into_the_cache(tmp_path, fake_build):
    folder = prebuilt(tmp_path, device=H100)
    path, manifest = trt_backend.prebuilt_engine(folder / ENGINE_FILE, True, None, ORIN, tmp_path / "c", 512)
    assert path.parent.parent == tmp_path / "c" / "engines" and manifest.device == ORIN
    assert fake_build[0][0] == read_manifest(folder / MANIFEST_FILE).spec
    assert (folder / ENGINE_FILE).read_bytes() == b"prebuilt engine", "the given engine file is left alone"


def test_prebuilt_engine_that_cannot_be_rebuilt_is_refused_with_the_reason(tmp_path, fake_build):
    folder = prebuilt(tmp_path, device=H100)
    (folder / "model.onnx").unlink()
    with pytest.raises(BackendUnavailable, match=r"built on NVIDIA H100.*but this GPU is Orin.*cannot be rebuilt"):
        trt_backend.prebuilt_engine(folder / ENGINE_FILE, True, None, ORIN, tmp_path / "c", 512)
    assert not fake_build


def test_prebuilt_engine_is_usable_alone_but_not_beside_a_newer_onnx(tmp_path, fake_build):
    folder = prebuilt(tmp_path)
    (folder / "model.onnx").unlink()
    assert trt_backend.prebuilt_engine(folder / ENGINE_FILE, True, None, ORIN, tmp_path / "c", 512)[0].is_file()
    (folder / "model.onnx").write_bytes(b"re-exported model")
    with pytest.raises(BackendUnavailable, match="built from another ONNX"):
        trt_backend.prebuilt_engine(folder / ENGINE_FILE, True, None, ORIN, tmp_path / "c", 512)
    assert not fake_build


@pytest.mark.parametrize("confidence, size, message", [
    (False, None, "built with confidence, but confidence=False"),
    (True, (448, 1024), "accepts sizes 384x512:384x512:384x512, not the input size"),
])
def test_prebuilt_engine_for_another_graph_or_size_is_refused(tmp_path, confidence, size, message):
    folder = prebuilt(tmp_path)
    with pytest.raises(BackendUnavailable, match=message):
        trt_backend.prebuilt_engine(folder / ENGINE_FILE, confidence, size, ORIN, tmp_path / "c", 512)


def test_engine_without_manifest_is_never_loaded(tmp_path):
    (tmp_path / "model.engine").write_bytes(b"engine of unknown origin")
    with pytest.raises(BackendUnavailable, match="not loaded without a valid manifest"):
        trt_backend.prebuilt_engine(tmp_path / "model.engine", True, None, ORIN, tmp_path / "c", 512)


# --- The engine build against a fake TensorRT (tests/fake_tensorrt.py) -------------------------

@pytest.fixture
def install_tensorrt(monkeypatch):
    """Put a fake TensorRT in sys.modules (where build_engine and the plugin's register import it from)."""
    def install(**kwargs):
        trt = fake_tensorrt(**kwargs)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        return trt
    return install


H100_TRT_10_9 = DeviceInfo("10.9.0.34", "NVIDIA H100 80GB HBM3", (9, 0), (13, 0))


def build(tmp_path, precision="fp32", route="onnx_ops", device=H100_TRT_10_9):
    onnx_path = make_onnx(tmp_path / "onnx")
    kernel = "k" * 64 if route == "plugin_aot" else None
    spec = EngineSpec(file_sha256(onnx_path), Profile.static(384, 512), precision, route, kernel, True)
    timing = tmp_path / "timing" / "t.cache"
    return trt_backend.build_engine(onnx_path, tmp_path / "engine", spec, device, 256, timing), timing


def test_fp32_engines_are_built_without_tf32_and_fp16_with_the_fp16_flag(tmp_path, install_tensorrt):
    trt = install_tensorrt()
    manifest, timing = build(tmp_path / "a", "fp32")
    build(tmp_path / "b", "fp16")
    assert trt.built_with == [set(), {"TF32", "FP16"}]
    assert manifest.kernel is None and read_manifest(tmp_path / "a" / "engine" / MANIFEST_FILE) == manifest
    assert timing.read_bytes() == TIMING_MAGIC + trt.device.encode()


@pytest.mark.parametrize("stale, warning", [
    (b"\x00 not a timing cache", "TensorRT cannot read it"),
    (TIMING_MAGIC + b"NVIDIA A100-SXM4-40GB", "it is for another GPU or TensorRT version"),
])
def test_an_unusable_timing_cache_is_replaced_not_fatal(tmp_path, install_tensorrt, caplog, stale, warning):
    trt = install_tensorrt()
    (tmp_path / "timing").mkdir()
    (tmp_path / "timing" / "t.cache").write_bytes(stale)
    manifest, timing = build(tmp_path)
    assert warning in caplog.text and (tmp_path / "engine" / ENGINE_FILE).is_file()
    assert timing.read_bytes() == TIMING_MAGIC + trt.device.encode(), "rewritten for this GPU"


def test_a_missing_timing_cache_after_the_build_leaves_the_file_alone(tmp_path, install_tensorrt, caplog):
    install_tensorrt(loses_timing_cache=True)
    (tmp_path / "timing").mkdir()
    (tmp_path / "timing" / "t.cache").write_bytes(b"old")
    build(tmp_path)
    assert "returned no timing cache" in caplog.text and (tmp_path / "timing" / "t.cache").read_bytes() == b"old"


def test_without_any_timing_cache_the_build_still_runs(tmp_path, install_tensorrt, caplog):
    install_tensorrt(no_timing_cache=True)
    manifest, timing = build(tmp_path)
    assert "building without a timing cache" in caplog.text and not timing.exists() and manifest.device


def test_a_failed_build_is_an_engine_build_error(tmp_path, install_tensorrt):
    install_tensorrt(build_fails=True)
    with pytest.raises(trt_backend.EngineBuildError, match="could not build an engine"):
        build(tmp_path)


def test_tensorrt_older_than_10_is_refused_with_what_to_use_instead(install_tensorrt):
    install_tensorrt(version="8.6.2")  # an older JetPack
    with pytest.raises(BackendUnavailable, match="TensorRT 8.6.2 is too old.*JetPack 6.1 or newer"):
        trt_backend.import_tensorrt()
    assert trt_backend.tensorrt_version_problem("10.3.0") is None


@pytest.mark.skipif(importlib.util.find_spec("modelopt") is not None, reason="ModelOpt is installed here")
def test_fp16_on_tensorrt_11_without_modelopt_says_what_to_install(tmp_path, install_tensorrt):
    install_tensorrt(version="11.4.1", fp16_flag=False)
    with pytest.raises(trt_backend.EngineBuildError, match=r"mdflow_ros\[autocast\]"):
        build(tmp_path, "fp16", device=dataclasses.replace(H100_TRT_10_9, tensorrt_version="11.4.1"))


def test_plugin_route_on_jetpack_6_tensorrt_is_refused_before_anything_compiles(tmp_path, install_tensorrt):
    install_tensorrt(version="10.3.0")
    with pytest.raises(plugin.PluginRouteError, match=r"needs TensorRT >= 10.9.*this is TensorRT 10.3.0"):
        build(tmp_path, route="plugin_aot", device=dataclasses.replace(ORIN, cuda_driver=(12, 6)))


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
def test_plugin_route_refuses_ptx_the_driver_cannot_load_and_says_what_to_install(tmp_path, install_tensorrt):
    install_tensorrt()
    _, kernel = plugin.compile_kernel((9, 0))
    old_driver = (kernel.cuda_needed[0] - 1, 9)
    with pytest.raises(plugin.PluginRouteError, match=r"would be refused at load.*an nvcc no newer than CUDA"):
        build(tmp_path, route="plugin_aot", device=dataclasses.replace(H100_TRT_10_9, cuda_driver=old_driver))
    assert not (tmp_path / "engine" / ENGINE_FILE).exists()


# --- Correlation route "auto": version logic on fake devices -----------------------------------

ORIN_JETPACK_6 = DeviceInfo("10.3.0", "Orin (nvgpu)", (8, 7), (12, 6))


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_auto_takes_the_standard_op_route_on_jetson_orin_with_jetpack_6(precision, caplog):
    caplog.set_level("INFO", logger="mdflow_ros.inference")
    assert trt_backend.choose_route("auto", ORIN_JETPACK_6, precision, True) == "onnx_ops"
    assert "needs TensorRT >= 10.9" in caplog.text


def test_explicit_routes_are_kept_whatever_the_device():
    for route in ROUTES:
        assert trt_backend.choose_route(route, ORIN_JETPACK_6, "fp32", True) == route


@pytest.mark.parametrize("device, precision, fp16_flag, route", [
    (H100_TRT_10_9, "fp16", True, "plugin_aot"),
    (dataclasses.replace(H100_TRT_10_9, tensorrt_version="11.4.1"), "fp32", False, "plugin_aot"),
    (dataclasses.replace(H100_TRT_10_9, tensorrt_version="11.4.1"), "fp16", False, "onnx_ops"),
    (dataclasses.replace(H100_TRT_10_9, cuda_driver=(11, 8)), "fp32", True, "onnx_ops"),
])
def test_auto_takes_the_plugin_where_tensorrt_nvcc_and_driver_allow(device, precision, fp16_flag, route):
    if NVCC is None and route == "plugin_aot":
        pytest.skip("nvcc is not installed: auto cannot take the plugin route here")
    assert trt_backend.choose_route("auto", device, precision, fp16_flag) == route


# --- The primary context is popped after it is released ----------------------------------------

class FakeDriver:
    """The two libcuda entry points the release calls, over one thread's context stack."""

    def __init__(self, stack=()):
        self.stack = list(stack)
        self.released = 0

    def cuCtxGetCurrent(self, out):
        out._obj.value = self.stack[-1] if self.stack else None
        return 0

    def cuCtxPopCurrent_v2(self, out):
        out._obj.value = self.stack.pop()
        return 0


class FakePyCudaContext:
    """PyCUDA's primary-context object as inducer/pycuda src/cpp/cuda.hpp implements it over the driver."""

    def __init__(self, cuda, handle):
        self.cuda, self.handle = cuda, handle

    def push(self):  # context_push: prepare_context_switch, then cuCtxPushCurrent
        if self.cuda.stack:
            self.cuda.driver.stack.pop()
        self.cuda.driver.stack.append(self.handle)
        self.cuda.stack.append(self)

    def detach(self):  # not current: raw cuCtxPushCurrent, then cuDevicePrimaryCtxRelease, which never pops
        if not (self.cuda.stack and self.cuda.stack[-1] is self):
            self.cuda.driver.stack.append(self.handle)
        self.cuda.driver.released += 1


class FakePyCuda:
    """The parts of pycuda.driver that PrimaryContext uses."""

    class Error(Exception):
        pass

    def __init__(self, driver):
        self.driver, self.stack = driver, []
        primary = FakePyCudaContext(self, 0x7000)
        device = types.SimpleNamespace(retain_primary_context=lambda: primary)
        self.Device = lambda index: device
        self.Device.count = lambda: 1
        self.Context = types.SimpleNamespace(pop=self.pop)

    def init(self):
        pass

    def pop(self):  # context::pop: prepare_context_switch, then PyCUDA's own stack
        if not self.stack:
            raise self.Error("context::pop failed: cannot pop non-current context")
        self.driver.stack.pop()
        self.stack.pop()


def test_the_released_primary_context_is_popped_only_when_it_is_current():
    driver = FakeDriver([0x1000, 0x2000])
    assert not trt_backend.pop_if_current(driver, 0x1000) and driver.stack == [0x1000, 0x2000]
    assert trt_backend.pop_if_current(driver, 0x2000) and driver.stack == [0x1000]
    assert not trt_backend.pop_if_current(FakeDriver(), 0x2000) and not trt_backend.pop_if_current(driver, 0)


def test_releasing_the_primary_context_leaves_the_worker_thread_without_a_current_context(monkeypatch):
    driver = FakeDriver()
    monkeypatch.setattr(trt_backend.ctypes, "CDLL", lambda name: driver)
    cuda = FakePyCuda(driver)
    context = trt_backend.PrimaryContext(cuda)
    for _ in range(3):  # the worker's jobs
        context.push()
        context.pop()
    assert driver.stack == []
    context.release()
    assert driver.released == 1 and driver.stack == [] and cuda.stack == []
