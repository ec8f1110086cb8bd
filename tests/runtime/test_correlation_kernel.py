"""The CUDA correlation kernel: its own code, run on the CPU, equals the PyTorch reference; it compiles to PTX.

The kernel's per-element function (index decomposition, generated offset table, fp32
accumulation) is compiled with the host C++ compiler by tests/runtime/kernel_harness and looped over
the output grid; nvcc compiles the same text to PTX for Jetson Orin (sm_87) and H100 (sm_90).
"""
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from kernel_harness import CorrelationHarness, build_harness
from mdflow_ros.conventions import CDDC_OFFSETS
from mdflow_ros.inference.trt_correlation_plugin import (KERNEL_NAMES, KERNEL_PATH, compile_ptx, kernel_sha256,
                                                         kernel_source)
from mdflow_ros.models import FastFlowNet
from mdflow_ros.models.correlation import correlation_reference

NVCC = shutil.which("nvcc")
PTXAS = shutil.which("ptxas")


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    lib, diagnostics = build_harness(tmp_path_factory.mktemp("harness"))
    return CorrelationHarness(lib), diagnostics


@pytest.fixture(scope="module")
def harness(build):
    return build[0]


def test_kernel_compiles_for_the_host_without_warnings(build):
    assert build[1].strip() == ""


def test_offset_table_compiled_into_the_kernel_is_flow_py_pattern(harness):
    assert harness.num_offsets == 53
    assert harness.offsets() == list(CDDC_OFFSETS)


def test_kernel_source_is_generated_from_flow_py_and_refuses_to_compile_without_the_table(tmp_path):
    text = kernel_source()
    table = ", ".join(f"{dy}, {dx}" for dy, dx in CDDC_OFFSETS)
    assert f"#define MDFLOW_CDDC_TABLE {table}\n" in text
    assert "MDFLOW_CDDC_TABLE {" not in KERNEL_PATH.read_text(), "no hand-written copy of the table in the .cu"
    assert len(kernel_sha256()) == 64
    raw = tmp_path / "raw.cpp"
    raw.write_text(KERNEL_PATH.read_text())
    result = subprocess.run(["g++", "-x", "c++", "-fsyntax-only", str(raw)], capture_output=True, text=True)
    assert result.returncode != 0 and "needs the generated offset table" in result.stderr


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 16, 7, 9), (1, 32, 13, 5), (1, 3, 1, 12), (3, 8, 10, 2)])
def test_harness_matches_reference_on_random_features_of_odd_sizes(harness, shape):
    g = torch.Generator().manual_seed(sum(shape))
    f1, f2 = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    got = harness.correlation(f1.numpy(), f2.numpy())
    np.testing.assert_allclose(got, correlation_reference(f1, f2).numpy(), atol=1e-6, rtol=1e-5)


def test_harness_is_zero_exactly_where_the_offset_leaves_the_image(harness):
    f1 = np.ones((1, 4, 5, 6), np.float32)
    got = harness.correlation(f1, f1)
    for k, (dy, dx) in enumerate(CDDC_OFFSETS):
        ys, xs = np.mgrid[0:5, 0:6]
        inside = (ys + dy >= 0) & (ys + dy < 5) & (xs + dx >= 0) & (xs + dx < 6)
        np.testing.assert_array_equal(got[0, k], inside.astype(np.float32))


@pytest.fixture(scope="module")
def real_pyramid():
    """FastFlowNet pyramid features {level: (f1, f2)} of a real photo and its copy moved by (5, 3) pixels."""
    from skimage import data

    img = torch.from_numpy(data.astronaut()[:200, :264].copy()).permute(2, 0, 1).float()[None] / 255
    torch.manual_seed(0)
    with torch.no_grad():
        feats = FastFlowNet().pyramid(torch.cat((img[..., :192, :256], img[..., 5:197, 3:259]), 0))
    return {level: (f[:1], f[1:]) for level, f in feats.items()}


@pytest.mark.parametrize("level", [2, 3, 6])
def test_harness_matches_reference_on_real_pyramid_features(harness, real_pyramid, level):
    f1, f2 = real_pyramid[level]
    got = harness.correlation(f1.numpy(), f2.numpy())
    np.testing.assert_allclose(got, correlation_reference(f1, f2).numpy(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 32, 7, 9), (2, 64, 13, 5)])
def test_fp16_inputs_accumulate_in_fp32(harness, shape):
    if not harness.has_half:
        pytest.skip("cuda_fp16.h not found: the harness was built without the half entry point")
    g = torch.Generator().manual_seed(7 + sum(shape))
    f1 = (torch.randn(shape, generator=g) * 4).half()
    f2 = (torch.randn(shape, generator=g) * 4).half()
    got = harness.correlation(f1.numpy(), f2.numpy())
    assert got.dtype == np.float16
    expected = correlation_reference(f1.float(), f2.float()).half().numpy()
    # fp32 accumulation of the fp16-rounded inputs, one rounding to fp16 at the end: within one fp16 ulp.
    np.testing.assert_allclose(got.astype(np.float32), expected.astype(np.float32), rtol=2 ** -10, atol=1e-5)


def test_fp16_accumulation_keeps_sums_that_fp16_accumulation_would_lose(harness):
    if not harness.has_half:
        pytest.skip("cuda_fp16.h not found: the harness was built without the half entry point")
    # 2048 + 63 ones: an fp16 running sum never leaves 2048 (2048 + 1 rounds back to it); fp32 reaches 2111.
    f1 = np.full((1, 64, 1, 1), 2048.0, np.float16)
    f1[0, 1:] = 1.0
    f2 = np.ones_like(f1)
    got = harness.correlation(f1, f2)
    centre = CDDC_OFFSETS.index((0, 0))
    assert float(got[0, centre, 0, 0]) == pytest.approx((2048.0 + 63.0) / 64, rel=2 ** -10)


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
@pytest.mark.parametrize("arch", [(8, 7), (9, 0)])
def test_nvcc_compiles_the_kernel_to_ptx_with_both_entry_points_and_the_table(arch, tmp_path):
    ptx = compile_ptx(arch)
    if PTXAS is not None:  # assemble it as the driver's JIT will when TensorRT loads the engine
        (tmp_path / "k.ptx").write_text(ptx)
        result = subprocess.run([PTXAS, f"-arch=sm_{arch[0]}{arch[1]}", str(tmp_path / "k.ptx"), "-o",
                                 str(tmp_path / "k.cubin")], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    assert f".target sm_{arch[0]}{arch[1]}" in ptx
    entries = re.findall(r"\.visible \.entry (\w+)\(", ptx)
    assert sorted(entries) == sorted(KERNEL_NAMES.values())
    table = re.search(r"\.const \.align 4 \.b8 \w*kOffsetsDevice\w*\[(\d+)\] = \{([^}]*)\}", ptx)
    assert table is not None and int(table.group(1)) == 4 * 2 * 53
    data = bytes(int(v) for v in table.group(2).split(","))
    data += bytes(int(table.group(1)) - len(data))  # PTX leaves trailing zero bytes of an initializer out
    values = np.frombuffer(data, dtype="<i4").reshape(53, 2)
    assert [tuple(map(int, row)) for row in values] == list(CDDC_OFFSETS)
