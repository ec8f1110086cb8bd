"""TensorRT engine manifests and the engine cache: what an engine was built from, on and for.

A serialized TensorRT engine only runs on the GPU model and TensorRT version it was built with,
and is only right for the ONNX file (and kernel source) it was built from. Every engine this
project writes therefore gets a JSON manifest beside it, and an engine is loaded only after
``check_engine`` compared that manifest with what is asked for and with the current device;
otherwise the caller rebuilds it from the ONNX or refuses, with the reason this module returns.

Cache layout (``cache_root`` defaults to ``onnx_files.cache_dir()``)::

    cache_root/engines/<key>/model.engine     serialized engine
    cache_root/engines/<key>/manifest.json    its EngineManifest
    cache_root/timing/<trt version>-sm<cc>-<gpu>.cache   TensorRT timing cache, per device + version

``<key>`` hashes the EngineSpec and the DeviceInfo (but not the driver version, which engines
do not depend on), so engines for different GPUs, TensorRT versions, sizes or precisions live
side by side. export_trt writes the same files (plus the ONNX they came from, and its timing
cache under ``timing/`` named the same way) into its output folder. Engines of the plugin route
embed PTX, which the driver compiles at load: their manifest records its ISA and nvcc release
(``ptx_compat.KernelBuild``), and ``mismatch`` refuses them on a driver too old for it. Pure
Python: no TensorRT needed here.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mdflow_ros.conventions import SIZE_MULTIPLE
from mdflow_ros.files import atomic_write_bytes, file_sha256
from mdflow_ros.inference.ptx_compat import KernelBuild, Version, ptx_load_problem, version_text

MANIFEST_VERSION = 2
"""2: the kernel build of plugin engines and the driver's CUDA version; fp32 means no TF32."""
ROUTES = ("onnx_ops", "plugin_aot")
"""Correlation in the engine: standard ONNX ops (default) or the CUDA kernel as an AOT plugin."""
PRECISIONS = ("fp32", "fp16")
"""fp32 engines are built with TF32 off (IEEE fp32 convolutions); fp16 with FP16 kernels allowed."""
ENGINE_FILE = "model.engine"
MANIFEST_FILE = "manifest.json"


class ManifestError(ValueError):
    """A manifest file is missing, unreadable or malformed; the message says which and why."""


Size = tuple[int, int]


def parse_size(text: str) -> Size:
    """'384x512' -> (384, 512): height x width, both positive multiples of SIZE_MULTIPLE."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if match is None:
        raise ValueError(f"size {text!r} is not HEIGHTxWIDTH (e.g. 384x512)")
    size = (int(match.group(1)), int(match.group(2)))
    if any(s <= 0 or s % SIZE_MULTIPLE for s in size):
        raise ValueError(f"size {text!r}: height and width must be positive multiples of {SIZE_MULTIPLE}")
    return size


@dataclass(frozen=True)
class Profile:
    """The input sizes (height, width) an engine accepts: min <= opt <= max per side; opt is tuned for."""

    min: Size
    opt: Size
    max: Size

    def __post_init__(self):
        for name in ("min", "opt", "max"):
            size = tuple(int(v) for v in getattr(self, name))
            if len(size) != 2 or any(s <= 0 or s % SIZE_MULTIPLE for s in size):
                raise ValueError(f"profile {name} size {size} must be two positive multiples of {SIZE_MULTIPLE}")
            object.__setattr__(self, name, size)
        if not all(self.min[i] <= self.opt[i] <= self.max[i] for i in range(2)):
            raise ValueError(f"profile must have min <= opt <= max per side, got {self}")

    @classmethod
    def static(cls, height: int, width: int) -> Profile:
        """A profile for one fixed size (fastest engines)."""
        return cls((height, width), (height, width), (height, width))

    @classmethod
    def parse(cls, text: str) -> Profile:
        """'256x320:384x512:512x640' (min:opt:max) or '384x512' (static)."""
        parts = text.split(":")
        if len(parts) == 1:
            return cls.static(*parse_size(parts[0]))
        if len(parts) != 3:
            raise ValueError(f"profile {text!r} is not MIN:OPT:MAX with each HEIGHTxWIDTH")
        return cls(*(parse_size(p) for p in parts))

    @property
    def is_static(self) -> bool:
        return self.min == self.max

    def accepts(self, height: int, width: int) -> bool:
        """Whether an input of this size lies inside the profile."""
        return self.min[0] <= height <= self.max[0] and self.min[1] <= width <= self.max[1]

    def __str__(self) -> str:
        return ":".join(f"{h}x{w}" for h, w in (self.min, self.opt, self.max))


DEFAULT_DYNAMIC_PROFILE = Profile((64, 64), (384, 512), (1088, 1920))
"""Used when no input size is fixed: any multiple of 64 up to 1920 x 1088 (1080p rounded up)."""


@dataclass(frozen=True)
class DeviceInfo:
    """Where an engine is built or run: TensorRT version, GPU name, compute capability, driver.

    cuda_driver: the CUDA version the GPU driver supports, e.g. (12, 6); None when unknown. It
    is not part of the cache key: an engine does not depend on it, but its PTX may need a newer one.
    """

    tensorrt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]
    cuda_driver: Version | None = None

    def __post_init__(self):
        object.__setattr__(self, "compute_capability", tuple(int(v) for v in self.compute_capability))
        if self.cuda_driver is not None:
            object.__setattr__(self, "cuda_driver", tuple(int(v) for v in self.cuda_driver))

    @property
    def sm(self) -> str:
        """'sm_87' for compute capability (8, 7)."""
        return f"sm_{self.compute_capability[0]}{self.compute_capability[1]}"

    def describe(self) -> str:
        driver = "" if self.cuda_driver is None else f", driver for CUDA {version_text(self.cuda_driver)}"
        return f"{self.gpu_name} ({self.sm}) with TensorRT {self.tensorrt_version}{driver}"


@dataclass(frozen=True)
class EngineSpec:
    """What an engine computes: built from which ONNX, for which sizes, precision and correlation route.

    onnx_sha256: SHA-256 of the ONNX file the engine is built from (the plugin variant for
    route "plugin_aot"). kernel_sha256: SHA-256 of the rendered CUDA kernel source for route
    "plugin_aot", None for "onnx_ops" (whose engines do not depend on the kernel).
    """

    onnx_sha256: str
    profile: Profile
    precision: str
    correlation_route: str
    kernel_sha256: str | None
    with_confidence: bool

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.correlation_route not in ROUTES:
            raise ValueError(f"correlation route must be one of {ROUTES}, got {self.correlation_route!r}")
        if (self.kernel_sha256 is None) != (self.correlation_route == "onnx_ops"):
            raise ValueError("kernel_sha256 is required for route 'plugin_aot' and must be None for 'onnx_ops'")


@dataclass(frozen=True)
class EngineManifest:
    """The JSON record beside an engine file.

    engine_file: the engine's file name, in the manifest's folder. onnx_file: the ONNX it was
    built from, relative to that folder or absolute (used to rebuild). engine_sha256: SHA-256 of
    the engine file, to catch a replaced or truncated engine. kernel: the PTX the engine embeds
    (route plugin_aot, where it is required), None for onnx_ops.
    """

    spec: EngineSpec
    device: DeviceInfo
    engine_file: str
    engine_sha256: str
    onnx_file: str
    created_utc: str
    kernel: KernelBuild | None = None

    def __post_init__(self):
        if (self.kernel is None) != (self.spec.correlation_route == "onnx_ops"):
            raise ValueError("the kernel build is required for route 'plugin_aot' and must be None for 'onnx_ops'")

    def to_dict(self) -> dict[str, Any]:
        spec = asdict(self.spec)
        spec["profile"] = {k: list(v) for k, v in spec["profile"].items()}
        device = asdict(self.device)
        device["compute_capability"] = list(self.device.compute_capability)
        device["cuda_driver"] = None if self.device.cuda_driver is None else list(self.device.cuda_driver)
        kernel = None if self.kernel is None else {k: list(v) for k, v in asdict(self.kernel).items()}
        return {"manifest_version": MANIFEST_VERSION, "spec": spec, "device": device, "kernel": kernel,
                "engine_file": self.engine_file, "engine_sha256": self.engine_sha256,
                "onnx_file": self.onnx_file, "created_utc": self.created_utc}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineManifest:
        """Inverse of to_dict; ManifestError naming the problem for anything malformed."""
        try:
            if data["manifest_version"] != MANIFEST_VERSION:
                raise ManifestError(f"manifest version {data['manifest_version']!r} is not {MANIFEST_VERSION}")
            spec = dict(data["spec"])
            spec["profile"] = Profile(**{k: tuple(v) for k, v in spec["profile"].items()})
            kernel = None if data["kernel"] is None else KernelBuild(**data["kernel"])
            return cls(spec=EngineSpec(**spec), device=DeviceInfo(**data["device"]),
                       engine_file=data["engine_file"], engine_sha256=data["engine_sha256"],
                       onnx_file=data["onnx_file"], created_utc=data["created_utc"], kernel=kernel)
        except ManifestError:
            raise
        except (KeyError, TypeError, ValueError) as err:
            raise ManifestError(f"malformed engine manifest ({type(err).__name__}: {err})") from None


def new_manifest(spec: EngineSpec, device: DeviceInfo, engine_path: Path, onnx_path: Path,
                 kernel: KernelBuild | None = None) -> EngineManifest:
    """The manifest for an engine just written to ``engine_path`` (hashes the engine file)."""
    onnx_path = Path(onnx_path)
    onnx_file = onnx_path.name if onnx_path.parent.resolve() == Path(engine_path).parent.resolve() else str(onnx_path)
    return EngineManifest(spec=spec, device=device, engine_file=Path(engine_path).name,
                          engine_sha256=file_sha256(engine_path), onnx_file=onnx_file,
                          created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"), kernel=kernel)


def write_manifest(manifest: EngineManifest, path: str | Path) -> None:
    """Write the manifest as indented JSON, atomically."""
    atomic_write_bytes(Path(path), (json.dumps(manifest.to_dict(), indent=2) + "\n").encode())


def read_manifest(path: str | Path) -> EngineManifest:
    """Read a manifest; ManifestError if it is missing, not JSON or malformed."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"no engine manifest at {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ManifestError(f"engine manifest {path} is unreadable: {err}") from None
    if not isinstance(data, dict):
        raise ManifestError(f"engine manifest {path} is not a JSON object")
    return EngineManifest.from_dict(data)


def mismatch(manifest: EngineManifest, spec: EngineSpec, device: DeviceInfo) -> str | None:
    """Why an engine with this manifest must not be used for ``spec`` on ``device``; None if it may."""
    built, here = manifest.device, device
    if built.tensorrt_version != here.tensorrt_version:
        return (f"engine was built with TensorRT {built.tensorrt_version}, but this is TensorRT "
                f"{here.tensorrt_version}")
    if built.compute_capability != here.compute_capability or built.gpu_name != here.gpu_name:
        return f"engine was built on {built.gpu_name} ({built.sm}), but this GPU is {here.gpu_name} ({here.sm})"
    old, new = manifest.spec, spec
    if old.onnx_sha256 != new.onnx_sha256:
        return (f"engine was built from ONNX {old.onnx_sha256[:12]}, but the model is now ONNX "
                f"{new.onnx_sha256[:12]}")
    if old.correlation_route != new.correlation_route:
        return f"engine uses correlation route {old.correlation_route}, but {new.correlation_route} was asked for"
    if old.kernel_sha256 != new.kernel_sha256:
        return "the correlation kernel source changed since the engine was built"
    if old.precision != new.precision:
        return f"engine precision is {old.precision}, but {new.precision} was asked for"
    if old.profile != new.profile:
        return f"engine input profile is {old.profile}, but {new.profile} was asked for"
    if old.with_confidence != new.with_confidence:
        return (f"engine was built {'with' if old.with_confidence else 'without'} confidence, but "
                f"confidence={new.with_confidence} was asked for")
    if manifest.kernel is not None and here.cuda_driver is not None:
        return ptx_load_problem(manifest.kernel, here.cuda_driver)
    return None


def check_engine(manifest_path: str | Path, spec: EngineSpec, device: DeviceInfo) -> str | None:
    """Whether the engine described by ``manifest_path`` may be loaded: None, or the reason it may not.

    Checks the manifest (present, well-formed), that it matches ``spec`` and ``device``
    (see ``mismatch``), and that its engine file exists with the recorded SHA-256.
    """
    manifest_path = Path(manifest_path)
    try:
        manifest = read_manifest(manifest_path)
    except ManifestError as err:
        return str(err)
    reason = mismatch(manifest, spec, device)
    if reason is not None:
        return reason
    engine = manifest_path.parent / manifest.engine_file
    if not engine.is_file():
        return f"engine file {engine} is missing"
    if file_sha256(engine) != manifest.engine_sha256:
        return f"engine file {engine} does not match its manifest's SHA-256 (replaced or truncated)"
    return None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower()


def cache_key(spec: EngineSpec, device: DeviceInfo) -> str:
    """20 hex digits naming the cache entry of ``spec`` built on ``device`` (whatever its driver version)."""
    where = {k: v for k, v in asdict(device).items() if k != "cuda_driver"}
    payload = json.dumps({"spec": asdict(spec), "device": where}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def engine_dir(cache_root: str | Path, spec: EngineSpec, device: DeviceInfo) -> Path:
    """The cache folder holding ENGINE_FILE and MANIFEST_FILE for ``spec`` on ``device``."""
    return Path(cache_root) / "engines" / cache_key(spec, device)


def timing_cache_path(cache_root: str | Path, device: DeviceInfo) -> Path:
    """The TensorRT timing cache shared by all builds on this GPU model and TensorRT version.

    A timing cache only serves the device and TensorRT version that wrote it (TensorRT's
    builder-performance guide), so each pair gets its own file, in the engine cache and in
    export_trt's output folder alike.
    """
    name = f"{_slug(device.tensorrt_version)}-{device.sm.replace('_', '')}-{_slug(device.gpu_name)}.cache"
    return Path(cache_root) / "timing" / name
