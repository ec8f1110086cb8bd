"""TensorRT on a real GPU: small engines of the shipped teacher built here and compared with ONNX Runtime.

Marked ``gpu`` and skipped, with the reason, where TensorRT, PyCUDA or an NVIDIA GPU is missing (this
project's CI machine has none). On a GPU machine with ``pip install -e '.[gpu,dev]'``:

    python -m pytest -m gpu tests/runtime/test_tensorrt_gpu.py -q

builds a static 256x320 engine per precision (fp32 with TF32 off, fp16) into a scratch cache and judges it by
training/parity.py's limits against ONNX Runtime on the same frames (the shipped .onnx, which is itself
within 0.01 px of PyTorch).
"""
import numpy as np
import pytest

from mdflow_ros.inference import BackendUnavailable, FlowEstimator
from mdflow_ros.inference.estimator import shipped_model
from training.parity import compare
from training.reference import INPUTS, occluder_scene

TEACHER = shipped_model("teacher")
SIZE = INPUTS["fastflownet"].set_size


def _gpu_problem() -> str | None:
    """Why TensorRT cannot run on a GPU here, or None."""
    try:
        from mdflow_ros.inference.tensorrt_backend import import_pycuda, import_tensorrt, open_device

        import_tensorrt()
        open_device(import_pycuda())
    except (BackendUnavailable, ImportError) as err:
        return str(err)
    return None if TEACHER.is_file() else "no shipped teacher"


PROBLEM = _gpu_problem()
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(PROBLEM is not None, reason=f"needs TensorRT on an NVIDIA GPU: {PROBLEM}")]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_a_tensorrt_engine_of_the_shipped_teacher_matches_onnx_runtime(precision, tmp_path):
    from mdflow_ros.inference.onnxruntime_backend import OnnxRuntimeBackend
    from mdflow_ros.inference.tensorrt_backend import TensorRTBackend

    pair, _ = occluder_scene(INPUTS["fastflownet"])
    batch1, batch2 = (np.ascontiguousarray(img.transpose(2, 0, 1)[None], np.float32) / 255.0
                      for img in (pair.img1, pair.img2))
    engine = TensorRTBackend(TEACHER, True, SIZE, precision=precision, cache_root=tmp_path)
    report = compare(list(OnnxRuntimeBackend(TEACHER, True).run(batch1, batch2)), list(engine.run(batch1, batch2)),
                     precision)
    print(engine.description, report)
    assert report["passed"], report


def test_the_estimator_on_tensorrt_builds_its_engine_once_and_reuses_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MDFLOW_CACHE", str(tmp_path))
    pair, _ = occluder_scene(INPUTS["fastflownet"])
    first = FlowEstimator(backend="tensorrt", model=TEACHER, input_size=SIZE).estimate(pair.img1, pair.img2)
    engines = sorted(tmp_path.rglob("*.engine"))
    assert engines, "an engine was built into $MDFLOW_CACHE"
    stamps = [p.stat().st_mtime_ns for p in engines]
    again = FlowEstimator(backend="tensorrt", model=TEACHER, input_size=SIZE).estimate(pair.img1, pair.img2)
    assert [p.stat().st_mtime_ns for p in sorted(tmp_path.rglob("*.engine"))] == stamps, "the cached engine is reused"
    assert abs(first.flow - again.flow).max() < 1e-4
