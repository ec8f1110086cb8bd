"""The plugin route's ONNX side: correlation subgraphs become mdflow::Correlation53 nodes, verified and wired right.

ONNX Runtime has no Correlation53 kernel, so the rewritten graph is run with a model-local ONNX
function that expands the node back into standard ops (written here, independently of the
exporter): the outputs must equal the original graph's.
"""
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper

from mdflow_ros.conventions import CDDC_OFFSETS, MAX_DISPLACEMENT
from mdflow_ros.inference import trt_correlation_plugin as plugin
from mdflow_ros.inference.onnx_export import export_onnx
from mdflow_ros.models import FastFlowNet
from mdflow_ros.models import correlation as correlation_module
from mdflow_ros.models.correlation import correlation_53, correlation_reference
from support import no_torch_environment


def correlation_function() -> onnx.FunctionProto:
    """mdflow.Correlation53(f1, f2) in standard ops: Pad f2, then per offset Slice, Mul, ReduceMean; Concat."""
    r = MAX_DISPLACEMENT

    def const(name, values):
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(values, np.int64)))

    nodes = [const("pads", [0, 0, r, r, 0, 0, r, r]), const("two", [2]), const("four", [4]), const("axes", [2, 3]),
             helper.make_node("Shape", ["f1"], ["shape"]), helper.make_node("Slice", ["shape", "two", "four"], ["hw"]),
             helper.make_node("Pad", ["f2", "pads"], ["f2p"])]
    for k, (dy, dx) in enumerate(CDDC_OFFSETS):
        nodes += [const(f"s{k}", [r + dy, r + dx]), helper.make_node("Add", ["hw", f"s{k}"], [f"e{k}"]),
                  helper.make_node("Slice", ["f2p", f"s{k}", f"e{k}", "axes"], [f"t{k}"]),
                  helper.make_node("Mul", ["f1", f"t{k}"], [f"m{k}"]),
                  helper.make_node("ReduceMean", [f"m{k}"], [f"p{k}"], axes=[1], keepdims=1)]
    nodes.append(helper.make_node("Concat", [f"p{k}" for k in range(len(CDDC_OFFSETS))], ["out"], axis=1))
    return helper.make_function("mdflow", "Correlation53", ["f1", "f2"], ["out"], nodes,
                                [helper.make_opsetid("", 17)], attributes=["plugin_namespace", "aot"])


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def with_reference_function(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.functions.append(correlation_function())
    return copy


def export_module(module: torch.nn.Module, path, shape=(1, 8, 6, 7)) -> onnx.ModelProto:
    f = torch.randn(shape)
    torch.onnx.export(module, (f, f), str(path), opset_version=17, input_names=["a", "b"],
                      dynamic_axes={"a": {2: "h", 3: "w"}, "b": {2: "h", 3: "w"}}, dynamo=False)
    return onnx.load(str(path))


class Corr(torch.nn.Module):
    def forward(self, a, b):
        return correlation_53(a, b)


class ShiftedPlanes(torch.nn.Module):
    """correlation_53's form with a chosen pad and offset order (to test that the rewrite verifies both)."""

    def __init__(self, pad: int, offsets):
        super().__init__()
        self.pad, self.offsets = pad, offsets

    def forward(self, a, b):
        r = self.pad
        h, w = a.shape[-2:]
        bp = F.pad(b, (r, r, r, r))
        return torch.cat([(a * bp[:, :, r + dy:r + dy + h, r + dx:r + dx + w]).mean(dim=1, keepdim=True)
                          for dy, dx in self.offsets], dim=1)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """The deployed FastFlowNet graph at 64 x 64 and its plugin variant."""
    folder = tmp_path_factory.mktemp("plugin")
    torch.manual_seed(0)
    src = export_onnx(FastFlowNet().eval(), folder / "model.onnx", False, sample_size=(64, 64))
    count = plugin.write_plugin_onnx(src, folder / "model.plugin.onnx")
    return onnx.load(str(src)), onnx.load(str(folder / "model.plugin.onnx")), count


def test_deployed_graph_gets_exactly_five_plugin_nodes_with_the_parser_attributes(deployed):
    original, rewritten, count = deployed
    nodes = [n for n in rewritten.graph.node if n.domain == "mdflow"]
    assert count == 5 and len(nodes) == 5
    for node in nodes:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert node.op_type == "Correlation53" and len(node.input) == 2 and len(node.output) == 1
        assert attrs == {"plugin_namespace": b"mdflow", "aot": 1}
    assert {(op.domain, op.version) for op in rewritten.opset_import} == {("", 17), ("mdflow", 1)}
    assert {p.key: p.value for p in rewritten.metadata_props}["mdflow.correlation_route"] == "plugin_aot"
    assert [sum(n.op_type == "MatMul" for n in m.graph.node) for m in (original, rewritten)] == [5, 0]
    assert len(rewritten.graph.node) < len(original.graph.node) - 5 * 20, "the replaced subgraphs are removed"
    onnx.checker.check_model(rewritten)


def test_each_plugin_node_takes_f1_then_the_warped_f2(deployed):
    _, rewritten, _ = deployed
    producer = {o: n for n in rewritten.graph.node for o in n.output}
    nodes = [n for n in rewritten.graph.node if n.op_type == "Correlation53"]
    assert [producer[n.input[1]].op_type for n in nodes] == ["Slice", "GridSample", "GridSample", "GridSample",
                                                           "GridSample"]
    assert all(producer[n.input[0]].op_type == "Slice" for n in nodes)


def test_substituting_the_standard_op_definition_back_reproduces_the_deployed_graph(deployed):
    original, rewritten, _ = deployed
    g = torch.Generator().manual_seed(3)
    feeds = {name: torch.rand(1, 3, 64, 128, generator=g).numpy() for name in ("img1", "img2")}
    expected = run(original, feeds)
    got = run(with_reference_function(rewritten), feeds)
    np.testing.assert_allclose(got[0], expected[0], atol=1e-5, rtol=1e-5)


def test_single_correlation_graph_is_rewritten_and_equals_the_reference(tmp_path):
    model = export_module(Corr(), tmp_path / "corr.onnx")
    assert plugin.replace_correlation(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Correlation53"]
    g = torch.Generator().manual_seed(5)
    f1, f2 = torch.randn(1, 8, 9, 11, generator=g), torch.randn(1, 8, 9, 11, generator=g)
    got = run(with_reference_function(model), {"a": f1.numpy(), "b": f2.numpy()})[0]
    np.testing.assert_allclose(got, correlation_reference(f1, f2).numpy(), atol=1e-5, rtol=1e-5)


def test_a_blocked_form_with_other_offsets_is_refused_by_what_it_computes(tmp_path, monkeypatch):
    monkeypatch.setattr(correlation_module, "_KEPT_COLUMNS", correlation_module._KEPT_COLUMNS[::-1])
    reordered = export_module(Corr(), tmp_path / "reordered.onnx")
    with pytest.raises(plugin.CorrelationGraphError, match="does not compute the 53-offset correlation"):
        plugin.replace_correlation(reordered)


def test_the_plane_form_of_earlier_exports_is_still_recognised(tmp_path):
    planes = export_module(ShiftedPlanes(MAX_DISPLACEMENT, CDDC_OFFSETS), tmp_path / "planes.onnx")
    assert plugin.replace_correlation(planes) == 1
    assert [n.op_type for n in planes.graph.node] == ["Correlation53"]


def test_recognition_is_by_what_the_subgraph_computes_not_by_its_exact_form(tmp_path):
    wider_pad = export_module(ShiftedPlanes(MAX_DISPLACEMENT + 1, CDDC_OFFSETS), tmp_path / "pad.onnx")
    assert plugin.replace_correlation(wider_pad) == 1, "pad 5 with starts shifted by 5 is the same correlation"
    reordered = export_module(ShiftedPlanes(MAX_DISPLACEMENT, CDDC_OFFSETS[::-1]), tmp_path / "order.onnx")
    with pytest.raises(plugin.CorrelationGraphError, match="does not compute the 53-offset correlation"):
        plugin.replace_correlation(reordered)
    moved = [(dy + 1, dx) for dy, dx in CDDC_OFFSETS]
    shifted = export_module(ShiftedPlanes(MAX_DISPLACEMENT + 1, moved), tmp_path / "moved.onnx")
    with pytest.raises(plugin.CorrelationGraphError, match="does not compute the 53-offset correlation"):
        plugin.replace_correlation(shifted)


def test_graph_without_correlation_is_an_error(tmp_path):
    class Plain(torch.nn.Module):
        def forward(self, a, b):
            return torch.cat([a * b, a + b], dim=1)

    with pytest.raises(plugin.CorrelationGraphError, match="no 53-offset correlation"):
        plugin.replace_correlation(export_module(Plain(), tmp_path / "plain.onnx"))


@pytest.mark.parametrize("version, precision, fp16_flag, refused", [
    ("10.3.0", "fp32", True, "needs TensorRT >= 10.9"),  # Jetson Orin, JetPack 6
    ("10.8.0.43", "fp16", True, "needs TensorRT >= 10.9"),
    ("10.9.0.34", "fp16", True, None),
    ("10.16.1", "fp32", True, None),
    ("11.4.1", "fp32", False, None),
    ("11.4.1", "fp16", False, "no FP16 builder flag"),  # TensorRT 11: FP16 must be in the ONNX
])
def test_plugin_route_needs_tensorrt_10_9_and_the_fp16_flag_for_fp16(version, precision, fp16_flag, refused):
    problem = plugin.route_problem(version, precision, fp16_flag)
    assert problem is None if refused is None else refused in problem


def test_numpy_correlation_is_the_reference_definition():
    g = torch.Generator().manual_seed(11)
    for shape in ((1, 3, 7, 9), (2, 16, 5, 12), (1, 1, 1, 1)):
        f1, f2 = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        np.testing.assert_allclose(plugin.correlation_numpy(f1.numpy(), f2.numpy()),
                                   correlation_reference(f1, f2).numpy(), atol=1e-6, rtol=1e-5)


def test_plugin_onnx_is_written_without_pytorch(deployed, tmp_path):
    """The TensorRT backend writes the plugin variant of a shipped .onnx on robots that have no PyTorch."""
    src = tmp_path / "model.onnx"
    onnx.save(deployed[0], str(src))
    log = tmp_path / "torch_imports.log"
    code = ("import sys; from mdflow_ros.inference import trt_correlation_plugin as p; "
            "print(p.write_plugin_onnx(sys.argv[1], sys.argv[2]))")
    result = subprocess.run([sys.executable, "-c", code, str(src), str(tmp_path / "plugin.onnx")],
                            env=no_torch_environment(dict(os.environ), log), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "5" and not log.exists()
    rewritten = onnx.load(str(tmp_path / "plugin.onnx"))
    assert sum(n.op_type == "Correlation53" for n in rewritten.graph.node) == 5
