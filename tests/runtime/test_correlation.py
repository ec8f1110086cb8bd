"""The 53-offset correlation: reference, fast form and ONNX Runtime agree (random and real features)."""
import numpy as np
import onnxruntime as ort
import pytest
import torch

from mdflow_ros.conventions import CDDC_CHANNELS, CDDC_OFFSETS
from mdflow_ros.models import FastFlowNet
from mdflow_ros.models.correlation import (
    correlation_53,
    correlation_53_channels_first,
    correlation_53_channels_last,
    correlation_reference,
)


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


@pytest.mark.parametrize("shape", [(2, 16, 7, 9), (1, 32, 13, 5), (1, 64, 1, 3), (1, 8, 24, 32)])
def test_fast_forms_match_reference_on_random_features_of_odd_sizes(shape):
    g = torch.Generator().manual_seed(sum(shape))
    f1, f2 = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    ref = correlation_reference(f1, f2)
    torch.testing.assert_close(correlation_53_channels_first(f1, f2), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(correlation_53_channels_last(f1, f2), ref, atol=1e-5, rtol=1e-5)


def real_features() -> tuple[torch.Tensor, torch.Tensor]:
    """Level-3 features of two real photos (scikit-image) from a FastFlowNet pyramid."""
    from skimage import data

    img = torch.from_numpy(data.astronaut()[:200, :264].copy()).permute(2, 0, 1).float()[None] / 255
    torch.manual_seed(0)
    pyramid = FastFlowNet().pyramid
    with torch.no_grad():
        feats = pyramid(torch.cat((img[..., :192, :256], img[..., 5:197, 3:259]), 0))
    return feats[3][:1], feats[3][1:]


def test_fast_forms_match_reference_on_real_features():
    f1, f2 = real_features()
    ref = correlation_reference(f1, f2)
    torch.testing.assert_close(correlation_53(f1, f2), ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(correlation_53_channels_last(f1, f2), ref, atol=1e-5, rtol=1e-4)


def test_fast_form_exports_to_standard_onnx_ops_and_runs_in_onnx_runtime(tmp_path):
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
    assert {"Pad", "Slice", "Mul", "ReduceMean", "Concat"} <= {node.op_type for node in graph.node}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for a, b in ((f1, f2), (f1[..., :11, :7], f2[..., :11, :7])):
        got = session.run(None, {"a": a.numpy(), "b": b.numpy()})[0]
        np.testing.assert_allclose(got, correlation_reference(a, b).numpy(), atol=1e-5, rtol=1e-4)
