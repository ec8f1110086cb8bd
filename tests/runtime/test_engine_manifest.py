"""Engine manifests: JSON round trip, the decision to load or rebuild (with its reason), the cache layout.

The PTX/driver check runs on fake version numbers: a plugin engine's PTX (ISA 9.0 from nvcc
13.0) against drivers for CUDA 12.6 (refused, saying what to install) and 13.0 (accepted).
"""
import dataclasses
import json

import pytest

from mdflow_ros.inference.engine_manifest import (ENGINE_FILE, MANIFEST_FILE, DeviceInfo, EngineManifest, EngineSpec,
                                                  ManifestError, Profile, cache_key, check_engine, engine_dir,
                                                  mismatch, new_manifest, parse_size, read_manifest,
                                                  timing_cache_path, write_manifest)
from mdflow_ros.inference.ptx_compat import KernelBuild

ORIN = DeviceInfo("10.3.0", "Orin (nvgpu)", (8, 7))
H100 = DeviceInfo("10.3.0", "NVIDIA H100 80GB HBM3", (9, 0))
SPEC = EngineSpec(onnx_sha256="a" * 64, profile=Profile.static(384, 512), precision="fp16",
                  correlation_route="onnx_ops", kernel_sha256=None, with_confidence=True)
PLUGIN_SPEC = dataclasses.replace(SPEC, correlation_route="plugin_aot", kernel_sha256="b" * 64)
NVCC_13_PTX = KernelBuild(ptx_isa=(9, 0), nvcc=(13, 0))


def write_engine(folder, spec=SPEC, device=ORIN, data=b"serialized engine", kernel=None):
    folder.mkdir(parents=True, exist_ok=True)
    engine = folder / ENGINE_FILE
    engine.write_bytes(data)
    (folder / "model.onnx").write_bytes(b"onnx")
    if kernel is None and spec.correlation_route == "plugin_aot":
        kernel = NVCC_13_PTX
    manifest = new_manifest(spec, device, engine, folder / "model.onnx", kernel)
    write_manifest(manifest, folder / MANIFEST_FILE)
    return manifest


def test_profile_parsing_and_validation():
    assert Profile.parse("384x512") == Profile.static(384, 512)
    p = Profile.parse("256x320:384x512:512x640")
    assert (p.min, p.opt, p.max) == ((256, 320), (384, 512), (512, 640)) and not p.is_static
    assert str(p) == "256x320:384x512:512x640"
    assert p.accepts(384, 640) and not p.accepts(576, 320)
    assert parse_size(" 64X128 ") == (64, 128)
    for bad in ("384x500", "0x64", "384", "64x64:128x128", "128x128:64x64:256x256"):
        with pytest.raises(ValueError):
            Profile.parse(bad)


def test_spec_validates_precision_route_and_kernel_hash():
    with pytest.raises(ValueError, match="precision"):
        dataclasses.replace(SPEC, precision="int8")
    with pytest.raises(ValueError, match="route"):
        dataclasses.replace(SPEC, correlation_route="cupy")
    with pytest.raises(ValueError, match="kernel_sha256"):
        dataclasses.replace(SPEC, correlation_route="plugin_aot")
    with pytest.raises(ValueError, match="kernel_sha256"):
        dataclasses.replace(SPEC, kernel_sha256="b" * 64)


def test_manifest_round_trips_through_json(tmp_path):
    spec = dataclasses.replace(PLUGIN_SPEC, profile=Profile.parse("256x320:384x512:512x640"))
    written = write_engine(tmp_path, spec, device=dataclasses.replace(ORIN, cuda_driver=(12, 6)),
                           kernel=KernelBuild((8, 5), (12, 6)))
    data = json.loads((tmp_path / MANIFEST_FILE).read_text())
    assert data["manifest_version"] == 2
    assert data["device"] == {"tensorrt_version": "10.3.0", "gpu_name": "Orin (nvgpu)", "compute_capability": [8, 7],
                              "cuda_driver": [12, 6]}
    assert data["kernel"] == {"ptx_isa": [8, 5], "nvcc": [12, 6]}
    assert data["spec"]["profile"] == {"min": [256, 320], "opt": [384, 512], "max": [512, 640]}
    assert data["onnx_file"] == "model.onnx" and data["engine_file"] == ENGINE_FILE
    assert read_manifest(tmp_path / MANIFEST_FILE) == written
    assert not list(tmp_path.glob(".*tmp")), "atomic write leaves no temporary file"


def test_malformed_or_missing_manifests_give_clear_errors(tmp_path):
    with pytest.raises(ManifestError, match="no engine manifest"):
        read_manifest(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ManifestError, match="unreadable"):
        read_manifest(bad)
    manifest = write_engine(tmp_path / "e").to_dict()
    for broken in ({**manifest, "manifest_version": 99}, {k: v for k, v in manifest.items() if k != "spec"},
                   {**manifest, "spec": {**manifest["spec"], "precision": "int4"}},
                   {**manifest, "kernel": {"ptx_isa": [9, 0], "nvcc": [13, 0]}}):
        with pytest.raises(ManifestError):
            EngineManifest.from_dict(broken)
    plugin = write_engine(tmp_path / "p", PLUGIN_SPEC).to_dict()
    with pytest.raises(ManifestError, match="kernel build is required"):
        EngineManifest.from_dict({**plugin, "kernel": None})


def test_manifests_of_version_1_are_refused_so_their_engines_are_rebuilt(tmp_path):
    """Version 1 had no kernel build and fp32 engines that allowed TF32."""
    manifest = write_engine(tmp_path).to_dict()
    del manifest["kernel"], manifest["device"]["cuda_driver"]
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({**manifest, "manifest_version": 1}))
    assert check_engine(tmp_path / MANIFEST_FILE, SPEC, ORIN) == "manifest version 1 is not 2"


def test_matching_engine_is_accepted(tmp_path):
    write_engine(tmp_path)
    assert check_engine(tmp_path / MANIFEST_FILE, SPEC, ORIN) is None


@pytest.mark.parametrize("change, device, reason", [
    ({}, dataclasses.replace(ORIN, tensorrt_version="10.9.0"), "TensorRT 10.3.0, but this is TensorRT 10.9.0"),
    ({}, H100, "built on Orin (nvgpu) (sm_87), but this GPU is NVIDIA H100 80GB HBM3 (sm_90)"),
    ({"onnx_sha256": "c" * 64}, ORIN, "built from ONNX aaaaaaaaaaaa, but the model is now ONNX cccccccccccc"),
    ({"precision": "fp32"}, ORIN, "precision is fp16, but fp32 was asked for"),
    ({"profile": Profile.static(448, 1024)}, ORIN, "profile is 384x512:384x512:384x512, but 448x1024"),
    ({"with_confidence": False}, ORIN, "built with confidence, but confidence=False"),
    ({"correlation_route": "plugin_aot", "kernel_sha256": "b" * 64}, ORIN, "route onnx_ops, but plugin_aot"),
])
def test_every_difference_is_refused_with_its_reason(tmp_path, change, device, reason):
    write_engine(tmp_path)
    got = check_engine(tmp_path / MANIFEST_FILE, dataclasses.replace(SPEC, **change), device)
    assert got is not None and reason in got


def test_changed_kernel_source_invalidates_plugin_engines_only():
    manifest = EngineManifest(PLUGIN_SPEC, ORIN, ENGINE_FILE, "0" * 64, "model.onnx", "2026-01-01T00:00:00+00:00",
                              NVCC_13_PTX)
    assert "kernel source changed" in mismatch(manifest, dataclasses.replace(PLUGIN_SPEC, kernel_sha256="d" * 64),
                                               ORIN)
    assert mismatch(manifest, PLUGIN_SPEC, ORIN) is None


def test_plugin_engine_is_refused_on_a_driver_too_old_for_its_ptx_with_what_to_install(tmp_path):
    h100 = dataclasses.replace(H100, tensorrt_version="10.9.0")
    write_engine(tmp_path, PLUGIN_SPEC, device=dataclasses.replace(h100, cuda_driver=(13, 0)))
    reason = check_engine(tmp_path / MANIFEST_FILE, PLUGIN_SPEC, dataclasses.replace(h100, cuda_driver=(12, 6)))
    assert reason is not None
    for words in ("supports CUDA 12.6", "ISA 9.0, written by nvcc 13.0", "CUDA_ERROR_UNSUPPORTED_PTX_VERSION",
                  "an nvcc no newer than CUDA 12.6", "a GPU driver for CUDA 13.0 or newer"):
        assert words in reason
    for driver in ((13, 0), (13, 2), None):
        here = dataclasses.replace(h100, cuda_driver=driver)
        assert check_engine(tmp_path / MANIFEST_FILE, PLUGIN_SPEC, here) is None


def test_standard_op_engines_do_not_depend_on_the_driver(tmp_path):
    write_engine(tmp_path, device=dataclasses.replace(ORIN, cuda_driver=(13, 0)))
    assert check_engine(tmp_path / MANIFEST_FILE, SPEC, dataclasses.replace(ORIN, cuda_driver=(11, 4))) is None


def test_missing_or_replaced_engine_file_is_refused(tmp_path):
    write_engine(tmp_path)
    (tmp_path / ENGINE_FILE).write_bytes(b"serialized engine, truncated?")
    assert "does not match its manifest's SHA-256" in check_engine(tmp_path / MANIFEST_FILE, SPEC, ORIN)
    (tmp_path / ENGINE_FILE).unlink()
    assert "is missing" in check_engine(tmp_path / MANIFEST_FILE, SPEC, ORIN)
    assert "no engine manifest" in check_engine(tmp_path / "other" / MANIFEST_FILE, SPEC, ORIN)


def test_cache_layout_separates_devices_versions_and_specs(tmp_path):
    here = engine_dir(tmp_path, SPEC, ORIN)
    assert here.parent == tmp_path / "engines" and len(here.name) == 20
    assert here == engine_dir(tmp_path, dataclasses.replace(SPEC), DeviceInfo("10.3.0", "Orin (nvgpu)", [8, 7]))
    others = {engine_dir(tmp_path, SPEC, H100), engine_dir(tmp_path, dataclasses.replace(SPEC, precision="fp32"), ORIN),
              engine_dir(tmp_path, SPEC, dataclasses.replace(ORIN, tensorrt_version="11.4.1"))}
    assert here not in others and len(others) == 3
    assert cache_key(SPEC, ORIN) == cache_key(SPEC, dataclasses.replace(ORIN, cuda_driver=(12, 6))), \
        "a driver update keeps the cached engines"
    assert timing_cache_path(tmp_path, ORIN) == tmp_path / "timing" / "10.3.0-sm87-orin-nvgpu.cache"


def test_onnx_outside_the_engine_folder_is_recorded_by_absolute_path(tmp_path):
    (tmp_path / "e").mkdir()
    engine = tmp_path / "e" / ENGINE_FILE
    engine.write_bytes(b"x")
    manifest = new_manifest(SPEC, ORIN, engine, tmp_path / "onnx" / "m.onnx")
    assert manifest.onnx_file == str(tmp_path / "onnx" / "m.onnx")
