"""The OpenVINO backend (CPU): the deployed ONNX graph as a cached OpenVINO IR, at fp32, bf16 or int8.

It runs the same ONNX file the ONNX Runtime backend runs (``onnx_files.onnx_for``), converted
once to an IR in the cache (``$MDFLOW_CACHE/openvino/``). Every IR file is recorded with its
SHA-256 in a manifest beside it, and one that does not match (truncated, overwritten, from
another graph or OpenVINO version) is rebuilt from the ONNX, never loaded.

Precisions: ``fp32``; ``bf16`` (OpenVINO's inference-precision hint, on CPUs with AVX-512 BF16
or AMX); ``int8`` (NNCF post-training quantization, calibrated on real photos under known
motion, built at first use with its flow change against fp32 recorded in its manifest, like
training/quantize_onnx.py does for ONNX Runtime); ``auto``: the fastest of those the CPU
supports whose mean flow change against fp32 was checked and is below FLOW_CHANGE_LIMIT_PX
(bf16 is checked at first use, once per machine; int8 only once it was built). The model is
reshaped to each network size, and compiled models are kept per size.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import openvino as ov

from mdflow_ros.files import ModelFileError, atomic_write_bytes, file_sha256
from mdflow_ros.inference import cpu_choice
from mdflow_ros.inference.backend import PRECISIONS, BackendUnavailable, Cancelled
from mdflow_ros.inference.onnx_files import INPUT_NAMES, cache_dir, onnx_for

LOG = logging.getLogger("mdflow_ros.inference")

EXTRA = "pip install 'mdflow_ros[openvino]'"
"""What installs this backend's libraries (OpenVINO, and NNCF for int8)."""
FLOW_CHANGE_LIMIT_PX = 0.1
"""Largest mean flow change (px, against fp32) with which ``auto`` takes a reduced precision."""
CHECK_PAIRS = 3
CHECK_SEED = 1234
CALIBRATION_PAIRS = 16
CALIBRATION_SEED = 777
"""Held-out pairs (real photos under known motion, at cpu_choice.TIMING_SIZE by default) of the
flow-change check, and the calibration pairs of int8 (seeds apart from each other's, as in
training/quantize_onnx.py)."""
INT8_KEEP_FP32 = ("Multiply", "Add", "Subtract", "Divide", "MatMul", "ReduceMean", "Interpolate", "GridSample")
"""OpenVINO op types int8 leaves in fp32: only the (grouped) convolutions and deconvolutions are
quantized, as training/quantize_onnx.py does for ONNX Runtime (NNCF's default, which also quantizes
the correlation's products, moved the shipped teacher's flow by 2.8-12.5 px on gt-dev)."""
INT8_RECIPE = "conv-only-1"
"""Names the int8 recipe above in the manifest; an int8 IR of another recipe is rebuilt."""
MAX_COMPILED_SIZES = 4
"""Network sizes whose compiled models are kept; the least recently used beyond that is dropped."""
_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
"""INFERENCE_PRECISION_HINT per precision: int8's unquantized ops stay fp32. fp32 is set
explicitly, since OpenVINO's own default on BF16 CPUs is bf16."""
_CAPABILITIES = {"fp32": "FP32", "bf16": "BF16", "int8": "INT8"}
"""The CPU plugin's OPTIMIZATION_CAPABILITIES entry each precision needs."""


class PrecisionUnsupported(BackendUnavailable):
    """The precision asked for cannot run on this CPU (the message names what it supports)."""


@functools.cache
def shared_core() -> ov.Core:
    """The process's one OpenVINO Core, kept until the process exits.

    OpenVINO's CPU plugin points the alternate signal stack of the thread that loads it into its own
    memory, and restores it only on the thread that unloads it. Were the last Core released on another
    thread (a garbage collection in an executor thread, say), the loading thread would keep a stack in
    freed memory, and the next signal handled on it (Python's handlers, faulthandler, a DataLoader's
    SIGCHLD) would kill the process with SIGSEGV. One Core held for the process keeps the plugin loaded.
    """
    return ov.Core()


def cpu_precisions(core: ov.Core) -> tuple[str, ...]:
    """The precisions this CPU runs natively, from the CPU plugin's optimisation capabilities."""
    caps = set(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    return tuple(p for p, cap in _CAPABILITIES.items() if cap in caps or p == "fp32")


def ir_folder(onnx_path: Path) -> Path:
    """The cache folder of the IRs of one ONNX graph under this OpenVINO version."""
    return cache_dir() / "openvino" / f"{file_sha256(onnx_path)[:16]}-{ov.__version__.split('-')[0]}"


def _manifest(xml: Path) -> dict | None:
    """The manifest of an IR when the IR's files match it (intact) and it is current, else None."""
    try:
        manifest = json.loads(xml.with_suffix(".json").read_text())
        if (file_sha256(xml) == manifest["xml_sha256"] and file_sha256(xml.with_suffix(".bin")) == manifest["bin_sha256"]
                and manifest["openvino"] == ov.__version__
                and (xml.stem != "int8" or manifest.get("recipe") == INT8_RECIPE)):
            return manifest
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _save_ir(model: ov.Model, xml: Path, record: dict) -> None:
    """Write ``model`` as ``xml`` + ``.bin`` (fp32 weights kept) and then its manifest with ``record``."""
    xml.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=xml.parent) as tmp:
        tmp_xml = Path(tmp) / xml.name
        ov.save_model(model, str(tmp_xml), compress_to_fp16=False)
        os.replace(tmp_xml.with_suffix(".bin"), xml.with_suffix(".bin"))
        os.replace(tmp_xml, xml)
    manifest = {**record, "xml_sha256": file_sha256(xml), "bin_sha256": file_sha256(xml.with_suffix(".bin")),
                "openvino": ov.__version__}
    atomic_write_bytes(xml.with_suffix(".json"), json.dumps(manifest, indent=1, sort_keys=True).encode())


def _network_input(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (1, 3, H, W) float32 in [0, 1]."""
    return np.ascontiguousarray(img.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0


def _check_pairs(count: int, seed: int, size: tuple[int, int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` held-out pairs of real photos at ``size`` as network inputs (needs scikit-image)."""
    from mdflow_ros.synthetic import held_out_pairs

    return [(_network_input(p.img1), _network_input(p.img2)) for p in held_out_pairs(count, size, seed=seed)]


class OpenVinoBackend:
    """Deployed graph in OpenVINO on the CPU at one precision; a .pt model runs its .onnx (see onnx_for)."""

    name = "openvino"

    def __init__(self, model_path: str | Path, with_confidence: bool, precision: str = "auto",
                 threads: int | None = None):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.onnx_path = onnx_for(model_path, with_confidence)
        self.with_confidence = with_confidence
        self.threads = threads
        self._core = shared_core()
        self.supported = cpu_precisions(self._core)
        cpu = self._core.get_property("CPU", "FULL_DEVICE_NAME")
        if precision not in ("auto", *self.supported):
            raise PrecisionUnsupported(
                f"precision {precision} is not supported by this CPU ({cpu}): OpenVINO runs "
                f"{', '.join(self.supported)} here" + (" (bf16 needs AVX-512 BF16 or AMX)" if precision == "bf16" else ""))
        self._folder = ir_folder(self.onnx_path)
        self._fp32 = self._load_fp32()
        self.precision = self._auto_precision() if precision == "auto" else precision
        self._model = self._load_int8() if self.precision == "int8" else self._fp32
        self._requests: OrderedDict[tuple[int, int], ov.InferRequest] = OrderedDict()
        self._cancelled = False
        self.description = (f"OpenVINO {ov.__version__.split('-')[0]}, CPU {self.precision}, "
                            f"{threads or 'default'} threads, {self.onnx_path.name}")

    def _load_fp32(self) -> ov.Model:
        """The fp32 IR of the ONNX graph, from the cache when intact, else converted now (and cached)."""
        xml = self._folder / "fp32.xml"
        if _manifest(xml) is None:
            if xml.exists() or xml.with_suffix(".json").exists():
                LOG.warning("OpenVINO IR %s does not match its manifest (damaged or stale): rebuilding it from %s",
                            xml, self.onnx_path)
            try:
                model = ov.convert_model(str(self.onnx_path))
            except Exception as err:  # OpenVINO's frontend raises its own types for graphs it cannot read
                raise ModelFileError(f"OpenVINO cannot read {self.onnx_path}: {str(err).splitlines()[0]}") from None
            _save_ir(model, xml, {"onnx": str(self.onnx_path), "onnx_sha256": file_sha256(self.onnx_path)})
        return self._core.read_model(str(xml))

    def _load_int8(self) -> ov.Model:
        """The int8 IR: from the cache when intact, else quantized now with NNCF (and its flow change recorded)."""
        xml = self._folder / "int8.xml"
        if _manifest(xml) is None:
            if xml.exists() or xml.with_suffix(".json").exists():
                LOG.warning("OpenVINO int8 IR %s does not match its manifest (damaged or stale): rebuilding it", xml)
            self.build_int8(xml)
        return self._core.read_model(str(xml))

    def build_int8(self, xml: Path, calibration: int = CALIBRATION_PAIRS, check: int = CHECK_PAIRS,
                   size: tuple[int, int] = cpu_choice.TIMING_SIZE) -> dict:
        """Quantize the fp32 IR with NNCF, calibrated on ``calibration`` real pairs at ``size`` (height,
        width), write it as ``xml`` with its manifest, and return the manifest's record (its mean flow
        change against fp32 on ``check`` other real pairs)."""
        try:
            import nncf
        except ImportError as err:
            raise BackendUnavailable(f"int8 needs NNCF to quantize the graph ({err}); {EXTRA}") from None
        try:
            pairs = _check_pairs(calibration, CALIBRATION_SEED, size)
        except ImportError as err:
            raise BackendUnavailable(f"int8 calibration needs real photos: {err}") from None
        LOG.info("quantizing %s to int8 with NNCF (%d calibration pairs; once, cached in %s)",
                 self.onnx_path.name, calibration, xml.parent)
        model = self._fp32.clone()
        model.reshape({name: [1, 3, *size] for name in INPUT_NAMES})
        dataset = nncf.Dataset(pairs, lambda pair: dict(zip(INPUT_NAMES, pair)))
        quantized = nncf.quantize(model, dataset, subset_size=calibration,
                                  ignored_scope=nncf.IgnoredScope(types=list(INT8_KEEP_FP32), validate=False))
        quantized.reshape({name: [1, 3, -1, -1] for name in INPUT_NAMES})
        change = self._flow_change(quantized, "int8", check, size)
        record = {"onnx": str(self.onnx_path), "onnx_sha256": file_sha256(self.onnx_path), "calibration_pairs": calibration,
                  "check_pairs": check, "check_size": list(size), "flow_change_px": change, "nncf": nncf.__version__,
                  "recipe": INT8_RECIPE}
        _save_ir(quantized, xml, record)
        LOG.info("int8 IR %s: mean flow change against fp32 %.3f px on %d held-out pairs", xml, change, check)
        return record

    def _compile(self, model: ov.Model, precision: str, size: tuple[int, int]) -> ov.CompiledModel:
        """``model`` reshaped to ``size`` (height, width) and compiled for the CPU at ``precision``'s hint
        with this backend's threads, not pinned to cores: the teacher with confidence at bf16 (512x384, 2
        threads, a Xeon with AMX) ran as fast unpinned as pinned on a quiet machine (56-58 against 66-68
        ms in one round-robin run; 4.72x against 4.67x DIS-medium in two runs of bench/latency.py) and
        faster next to a niced training job (126 against 161 ms)."""
        model.reshape({name: [1, 3, *size] for name in INPUT_NAMES})
        config = {"INFERENCE_PRECISION_HINT": _HINTS[precision], "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                  "ENABLE_CPU_PINNING": False}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        return self._core.compile_model(model, "CPU", config)

    def _flow_change(self, model: ov.Model, precision: str, count: int,
                     size: tuple[int, int] = cpu_choice.TIMING_SIZE) -> float:
        """Mean endpoint distance (px) between the flows of the fp32 graph and ``model`` at ``precision``
        on ``count`` held-out real pairs at ``size``."""
        ref = self._compile(self._fp32.clone(), "fp32", size)
        new = self._compile(model.clone(), precision, size)
        change = [float(np.linalg.norm(ref(list(p))[0] - new(list(p))[0], axis=1).mean())
                  for p in _check_pairs(count, CHECK_SEED, size)]
        return float(np.mean(change))

    def _timed(self, precision: str, model: ov.Model, change: float) -> dict:
        """This machine's record of a reduced precision: its one-off round-robin timing against fp32 (cached per
        CPU, threads, OpenVINO version, graph and flow change; measured now when missing, see
        cpu_choice.timed_record)."""
        key = {"cpu": cpu_choice.cpu_description(), "threads": self.threads or 0, "openvino": ov.__version__,
               "onnx_sha256": file_sha256(self.onnx_path), "precision": precision, "flow_change_px": change}
        def measure() -> dict:
            a, b = cpu_choice.timing_pair()
            runs = {p: self._compile(m.clone(), p, cpu_choice.TIMING_SIZE) for p, m in
                    (("fp32", self._fp32), (precision, model))}
            ms = cpu_choice.round_robin_ms({p: (lambda c=c: c([a, b])) for p, c in runs.items()})
            return {"ms": ms[precision], "fp32_ms": ms["fp32"]}

        record, where = cpu_choice.timed_record("openvino-precision", key, measure)
        LOG.info("OpenVINO %s on this CPU: %.1f ms against fp32's %.1f ms (%s)", precision, record["ms"],
                 record["fp32_ms"], where)
        return record

    def _bf16_change(self) -> float:
        """bf16's mean flow change against fp32 on this machine (cached like the timings; measured once)."""
        key = {"cpu": cpu_choice.cpu_description(), "openvino": ov.__version__,
               "onnx_sha256": file_sha256(self.onnx_path), "pairs": CHECK_PAIRS}
        record = cpu_choice.read_record("openvino-bf16-change", key)
        if record is None:
            record = {"flow_change_px": self._flow_change(self._fp32, "bf16", CHECK_PAIRS)}
            path = cpu_choice.write_record("openvino-bf16-change", key, record)
            LOG.info("OpenVINO bf16 checked on this CPU: mean flow change %.3f px against fp32 (%s)",
                     record["flow_change_px"], path)
        return record["flow_change_px"]

    def _auto_precision(self) -> str:
        """The fastest precision this CPU supports whose checked flow change is below the limit; logs why."""
        usable, reasons = {}, []
        for precision in ("bf16", "int8"):
            if precision not in self.supported:
                reasons.append(f"{precision}: not supported by this CPU")
                continue
            model = self._fp32
            try:
                if precision == "bf16":
                    change = self._bf16_change()
                else:
                    manifest = _manifest(self._folder / "int8.xml")
                    if manifest is None:
                        reasons.append("int8: not built for this graph yet (precision=int8 builds it once, with its "
                                       "flow change recorded)")
                        continue
                    change = manifest["flow_change_px"]
            except ImportError as err:
                reasons.append(f"{precision}: its flow change cannot be checked here ({err})")
                continue
            if change >= FLOW_CHANGE_LIMIT_PX:
                reasons.append(f"{precision}: moves the flow by {change:.2f} px (limit {FLOW_CHANGE_LIMIT_PX} px)")
                continue
            if precision == "int8":
                model = self._core.read_model(str(self._folder / "int8.xml"))
            record = self._timed(precision, model, change)
            if record["ms"] >= record["fp32_ms"]:
                reasons.append(f"{precision}: not faster than fp32 here ({record['ms']:.0f} vs {record['fp32_ms']:.0f} ms)")
            else:
                usable[precision] = {**record, "flow_change_px": change}
        chosen = min(usable, key=lambda p: usable[p]["ms"]) if usable else "fp32"
        why = (f"{usable[chosen]['ms']:.0f} ms against fp32's {usable[chosen]['fp32_ms']:.0f} ms, flow change "
               f"{usable[chosen]['flow_change_px']:.3f} px" if usable else "no reduced precision qualifies")
        LOG.info("OpenVINO precision 'auto' chose %s (%s)%s", chosen, why, "".join(f"; {r}" for r in reasons))
        return chosen

    def _request(self, height: int, width: int) -> ov.InferRequest:
        """The infer request of the model compiled at this network size (compiled at its first use)."""
        size = (height, width)
        if size not in self._requests:
            self._requests[size] = self._compile(self._model, self.precision, size).create_infer_request()
            if len(self._requests) > MAX_COMPILED_SIZES:
                self._requests.popitem(last=False)
        self._requests.move_to_end(size)
        return self._requests[size]

    def run(self, img1: np.ndarray, img2: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if self._cancelled:
            raise Cancelled("the OpenVINO backend was cancelled")
        request = self._request(*img1.shape[2:])
        request.start_async({INPUT_NAMES[0]: img1, INPUT_NAMES[1]: img2})
        request.wait()
        if self._cancelled:
            raise Cancelled("the OpenVINO run was cancelled")
        flow = request.get_output_tensor(0).data.copy()
        return flow, (request.get_output_tensor(1).data.copy() if self.with_confidence else None)

    def cancel(self) -> None:
        """Stop the run in progress (OpenVINO cancels an asynchronous request) and refuse every later one."""
        self._cancelled = True
        for request in list(self._requests.values()):
            request.cancel()
