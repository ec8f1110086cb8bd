"""The TensorRT backend's CPU-checkable parts: clear unavailability, the GPU worker thread, engine cache decisions.

TensorRT and PyCUDA are absent here: the worker is driven by a fake context that records which
thread pushes and pops it, and engine builds are replaced by a fake that writes an engine file
and its manifest like ``build_engine`` does.
"""
import dataclasses
import importlib.util
import threading

import pytest

from mdflow_ros.files import file_sha256
from mdflow_ros.inference import tensorrt_backend as trt_backend
from mdflow_ros.inference.backend import BackendUnavailable
from mdflow_ros.inference.engine_manifest import (ENGINE_FILE, MANIFEST_FILE, DeviceInfo, EngineSpec, Profile,
                                                  new_manifest, read_manifest, write_manifest)
from mdflow_ros.inference.tensorrt_backend import GpuWorker, TensorRTBackend

ORIN = DeviceInfo("10.3.0", "Orin (nvgpu)", (8, 7))
H100 = DeviceInfo("10.3.0", "NVIDIA H100 80GB HBM3", (9, 0))


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
