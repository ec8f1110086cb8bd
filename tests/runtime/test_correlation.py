"""The 53-offset correlation: reference, fast form (values and gradients), ONNX Runtime and OpenVINO agree."""
import numpy as np
import onnxruntime as ort
import pytest
import torch

from mdflow_ros.conventions import CDDC_CHANNELS, CDDC_OFFSETS
from mdflow_ros.models import FastFlowNet
from mdflow_ros.models.correlation import CORRELATION_BLOCK, correlation_53, correlation_reference


def test_pattern_is_fastflownets_center_dense_dilated_subset():
    assert len(CDDC_CHANNELS) == 53 and len(set(CDDC_OFFSETS)) == 53
    offsets = set(CDDC_OFFSETS)
    assert all((dy, dx) in offsets for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    assert (4, 4) in offsets and (3, 3) in offsets and (4, 3) not in offsets
    assert offsets == {(dx, dy) for dy, dx in offsets}


def test_reference_matches_a_hand_computed_value():
    f1 = torch.zeros(1, 2, 5, 5)
    f2 = torch.zeros(1, 2, 5, 5)
    f1[0, :, 2, 2] = torch.tensor([1.0, 2.0])
    f2[0, :, 3, 4] = torch.tensor([3.0, 4.0])
    out = correlation_reference(f1, f2)
    k = CDDC_OFFSETS.index((1, 2))
    assert out[0, k, 2, 2] == pytest.approx((1 * 3 + 2 * 4) / 2)
    assert out.abs().sum() == pytest.approx(5.5)


@pytest.mark.parametrize("shape", [(2, 16, 7, 9), (1, 32, 13, 5), (1, 64, 1, 3), (1, 8, 24, 32), (1, 4, 1, 1),
                                   (1, 3, 5, CORRELATION_BLOCK + 1)])
def test_fast_form_matches_reference_on_random_features_of_odd_sizes(shape):
    g = torch.Generator().manual_seed(sum(shape))
    f1, f2 = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    torch.testing.assert_close(correlation_53(f1, f2), correlation_reference(f1, f2), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(2, 8, 6, 21), (1, 16, 3, 4)])
def test_fast_form_has_the_references_gradients(shape):
    g = torch.Generator().manual_seed(7)
    f1, f2 = torch.randn(shape, generator=g, requires_grad=True), torch.randn(shape, generator=g, requires_grad=True)
    weights = torch.randn(shape[0], 53, *shape[2:], generator=g)
    fast = torch.autograd.grad((correlation_53(f1, f2) * weights).sum(), (f1, f2))
    reference = torch.autograd.grad((correlation_reference(f1, f2) * weights).sum(), (f1, f2))
    for got, expected in zip(fast, reference):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def real_features() -> tuple[torch.Tensor, torch.Tensor]:
    """Level-3 features of two real photos (scikit-image) from a FastFlowNet pyramid."""
    from skimage import data

    img = torch.from_numpy(data.astronaut()[:200, :264].copy()).permute(2, 0, 1).float()[None] / 255
    torch.manual_seed(0)
    pyramid = FastFlowNet().pyramid
    with torch.no_grad():
        feats = pyramid(torch.cat((img[..., :192, :256], img[..., 5:197, 3:259]), 0))
    return feats[3][:1], feats[3][1:]


def test_fast_form_matches_reference_on_real_features():
    f1, f2 = real_features()
    torch.testing.assert_close(correlation_53(f1, f2), correlation_reference(f1, f2), atol=1e-5, rtol=1e-4)


def test_fast_form_exports_to_standard_onnx_ops_and_runs_at_other_sizes_in_onnx_runtime_and_openvino(tmp_path):
    class Corr(torch.nn.Module):
        def forward(self, a, b):
            return correlation_53(a, b)

    f1, f2 = real_features()
    path = tmp_path / "corr.onnx"
    torch.onnx.export(Corr(), (f1, f2), str(path), opset_version=17, input_names=["a", "b"],
                      dynamic_axes={"a": {2: "h", 3: "w"}, "b": {2: "h", 3: "w"}}, dynamo=False)
    import onnx

    graph = onnx.load(str(path)).graph
    assert {node.domain for node in graph.node} <= {"", "ai.onnx"}, "only standard ONNX operators"
    ops = [node.op_type for node in graph.node]
    assert ops.count("MatMul") == 1 and "ReduceMean" not in ops, "one matrix product, no per-offset planes"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    openvino = pytest.importorskip("openvino")
    compiled = openvino.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    for a, b in ((f1, f2), (f1[..., :11, :7], f2[..., :11, :7]), (f1[..., :5, :CORRELATION_BLOCK + 3], f2[..., 2:7, :19])):
        expected = correlation_reference(a, b).numpy()
        feeds = {"a": a.numpy(), "b": b.numpy()}
        np.testing.assert_allclose(session.run(None, feeds)[0], expected, atol=1e-5, rtol=1e-4)
        np.testing.assert_allclose(compiled(feeds)[0], expected, atol=1e-5, rtol=1e-4)
