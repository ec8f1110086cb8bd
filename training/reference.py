"""Reference measurements of a shipped model: what a user gets from it, recorded when it ships.

    python training/ship_model.py --record-reference mdflow_ros/weights/teacher_fastflownet.pt [...student_raft.pt]

``record`` measures a shipped model file through the public FlowEstimator API on fixed inputs
(ReferenceInputs: real scikit-image photos under known motion, the same on every machine) with
every backend it ships for (PyTorch on the ``.pt``; ONNX Runtime on the ``.onnx`` beside it; the
int8 ``.int8.onnx`` when shipped), and writes ``<name>.reference.json`` beside it: the files
(SHA-256), the inputs, the library versions, and per backend the EPE on the held-out pairs, the
median flow of each exact translation, and (with confidence) the share of reliable pixels
(confidence > 0.5) on the occluded and on the visible background of a scene with a known
occluder. ``measure`` is what the tests (tests/runtime/test_shipped_models.py) run live and
compare with the record, so a change in what users receive (scale, axes, confidence, weights)
fails them.
"""
from __future__ import annotations

import datetime
import json
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mdflow_ros.files import atomic_write_bytes, file_sha256
from mdflow_ros.inference import FlowEstimator
from mdflow_ros.metrics import epe
from mdflow_ros.synthetic import PHOTO_NAMES, KnownMotionPair, held_out_pairs, occluder_pair, photo_library, translated_pair

REFERENCE_SUFFIX = ".reference.json"
INT8_SUFFIX = ".int8.onnx"
THREADS = 2


@dataclass(frozen=True)
class ReferenceInputs:
    """The fixed inputs of every reference measurement (frames (height, width), shifts (u, v) px)."""

    set_pairs: int = 6
    set_size: tuple[int, int] = (256, 320)
    set_seed: int = 21
    shift_photo: str = "astronaut"
    shift_origin: tuple[int, int] = (100, 100)
    shifts: tuple[tuple[int, int], ...] = ((7, -4), (-5, 3))
    occluder_patch: str = "coffee"
    occluder_patch_corner: tuple[int, int] = (150, 200)
    occluder_side: int = 96
    occluder_corner: tuple[int, int] = (80, 100)
    occluder_background_shift: tuple[int, int] = (2, 1)
    occluder_shift: tuple[int, int] = (14, 6)
    confidence: bool = True

    @classmethod
    def from_record(cls, recorded: dict[str, Any]) -> "ReferenceInputs":
        """The inputs a reference file records (JSON lists back to tuples)."""
        def tupled(value: Any) -> Any:
            return tuple(tupled(v) for v in value) if isinstance(value, list) else value

        names = cls.__dataclass_fields__
        return cls(**{k: tupled(v) for k, v in recorded.items() if k in names})


INPUTS = {"fastflownet": ReferenceInputs(),
          "raft": ReferenceInputs(set_pairs=2, set_size=(128, 192), shifts=((7, -4),), confidence=False)}
"""The reference inputs per architecture: the RAFT student is about 10x slower, so it gets fewer and
smaller pairs, and its flow only (it ships for training and offline flow, where confidence is optional)."""


def reference_set(inputs: ReferenceInputs) -> list[KnownMotionPair]:
    """The EPE set: held-out synthetic pairs (camera motion and layered, real photos)."""
    return held_out_pairs(inputs.set_pairs, inputs.set_size, inputs.set_seed)


def _photo(name: str) -> np.ndarray:
    return photo_library()[PHOTO_NAMES.index(name)]


def shift_pairs(inputs: ReferenceInputs) -> list[KnownMotionPair]:
    """One exact integer translation of a photo per ``inputs.shifts``."""
    return [translated_pair(_photo(inputs.shift_photo), inputs.set_size, shift, inputs.shift_origin)
            for shift in inputs.shifts]


def occluder_scene(inputs: ReferenceInputs) -> tuple[KnownMotionPair, np.ndarray]:
    """The background photo translated, a square photo patch moving across it; and the occluded mask."""
    top, left = inputs.occluder_patch_corner
    patch = _photo(inputs.occluder_patch)[top:top + inputs.occluder_side, left:left + inputs.occluder_side]
    return occluder_pair(_photo(inputs.shift_photo), patch, inputs.set_size, inputs.shift_origin,
                         inputs.occluder_background_shift, inputs.occluder_corner, inputs.occluder_shift)


def reliable_shares(confidence: np.ndarray, pair: KnownMotionPair, occluded: np.ndarray,
                    background_shift: tuple[int, int]) -> dict[str, float]:
    """Share of pixels with confidence (H, W) > 0.5 on the occluded region and on the visible background
    (valid pixels moving by ``background_shift``)."""
    background = pair.valid & (pair.flow == np.array(background_shift, np.float32)).all(axis=2)
    reliable = confidence > 0.5
    return {"reliable_occluded": float(reliable[occluded].mean()),
            "reliable_visible_background": float(reliable[background].mean())}


def measure(estimator: FlowEstimator, inputs: ReferenceInputs) -> dict[str, Any]:
    """What ``estimator`` gives on the reference inputs: EPE (px) per pair and mean, zero flow's EPE, the
    median flow (u, v) px per shift, and with confidence the reliable shares on the occluder scene."""
    pairs = reference_set(inputs)
    epes = [epe(estimator.estimate(p.img1, p.img2).flow, p.flow, p.valid) for p in pairs]
    medians = []
    for pair in shift_pairs(inputs):
        flow = estimator.estimate(pair.img1, pair.img2).flow
        medians.append([float(np.median(flow[..., axis][pair.valid])) for axis in (0, 1)])
    result: dict[str, Any] = {
        "epe": float(np.mean(epes)), "epe_per_pair": [float(e) for e in epes],
        "zero_flow_epe": float(np.mean([epe(np.zeros_like(p.flow), p.flow, p.valid) for p in pairs])),
        "shift_median_flow": medians,
    }
    if estimator.with_confidence:
        scene, occluded = occluder_scene(inputs)
        result["occluder"] = reliable_shares(estimator.estimate(scene.img1, scene.img2).confidence, scene, occluded,
                                             inputs.occluder_background_shift)
    return result


def reference_path(model: Path) -> Path:
    """Where the reference of a shipped model file lives: ``<name>.reference.json`` beside it."""
    return model.with_name(model.stem + REFERENCE_SUFFIX)


def int8_path(model: Path) -> Path:
    """The int8 graph shipped beside a model file (it may be absent)."""
    return model.with_name(model.stem + INT8_SUFFIX)


def shipped_backends(model: Path) -> dict[str, tuple[str, Path, bool]]:
    """Reference key -> (backend, model argument, confidence) for what ships beside ``model``."""
    backends = {"pytorch": ("pytorch", model, True)}
    if model.with_suffix(".onnx").is_file():
        backends["onnxruntime"] = ("onnxruntime", model, True)
    if int8_path(model).is_file():
        backends["onnxruntime-int8"] = ("onnxruntime", int8_path(model), False)
    return backends


def record(model: Path, inputs: ReferenceInputs | None = None) -> Path:
    """Measure the shipped ``model`` with every backend it ships for; write and return its reference file.

    inputs: the reference inputs (default: INPUTS of the model's architecture).
    """
    import onnxruntime
    import torch

    from mdflow_ros.models.model_file import load_model_file

    inputs = inputs or INPUTS[load_model_file(model).arch]
    backends = {}
    for key, (backend, path, conf) in shipped_backends(model).items():
        est = FlowEstimator(backend=backend, model=path, confidence=conf and inputs.confidence, threads=THREADS)
        backends[key] = {"file": Path(path).name if key != "onnxruntime" else est.backend.onnx_path.name,
                         "description": est.backend.description, **measure(est, inputs)}
    files = {p.name: file_sha256(p) for p in (model, model.with_suffix(".onnx"), int8_path(model)) if p.is_file()}
    record_ = {
        "model": model.name, "files_sha256": files,
        "recorded": datetime.date.today().isoformat(),
        "command": f"python training/ship_model.py --record-reference {model}",
        "inputs": {**asdict(inputs), "photos": "scikit-image sample photos (mdflow_ros.synthetic)",
                   "set": f"held_out_pairs({inputs.set_pairs}, {inputs.set_size}, seed={inputs.set_seed})"},
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
                     "python": platform.python_version(), "cpu": platform.processor() or platform.machine()},
        "threads": THREADS, "backends": backends,
    }
    path = reference_path(model)
    atomic_write_bytes(path, (json.dumps(record_, indent=1) + "\n").encode())
    return path


def load_reference(model: Path) -> dict[str, Any]:
    """The recorded reference of ``model``; FileNotFoundError saying how to record it."""
    path = reference_path(model)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: record it with python training/ship_model.py "
                                f"--record-reference {model}")
    return json.loads(path.read_text())
