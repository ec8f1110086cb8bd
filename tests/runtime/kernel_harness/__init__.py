"""Build and load the CPU harness of the CUDA correlation kernel (tests only).

``build_harness`` compiles ``harness.cpp`` (which includes the rendered kernel text,
``trt_correlation_plugin.kernel_source()``) with the host C++ compiler into a shared library;
``CorrelationHarness`` calls it through ctypes. The CUDA-only parts of the kernel are behind
``#ifdef __CUDACC__``, so what runs here is the kernel's own index, offset-table and
accumulation code. fp16 entry points exist when the CUDA headers (cuda_fp16.h) are found.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

from mdflow_ros.inference.trt_correlation_plugin import kernel_source

HARNESS_CPP = Path(__file__).with_name("harness.cpp")


class HarnessBuildError(RuntimeError):
    """The host compiler is missing or rejected the kernel; the message has its output."""


def cuda_include_dir() -> Path | None:
    """A directory holding cuda_fp16.h ($CUDA_HOME/include or /usr/local/cuda/include), or None."""
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "include" / "cuda_fp16.h").is_file():
            return Path(root) / "include"
    return None


def build_harness(out_dir: Path) -> tuple[Path, str]:
    """Compile the harness into ``out_dir``; returns (library path, compiler diagnostics)."""
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise HarnessBuildError("no host C++ compiler (g++/c++) found")
    source = out_dir / "kernel.cu"
    source.write_text(kernel_source())
    lib = out_dir / "libcorrelation_harness.so"
    cmd = [compiler, "-x", "c++", "-std=c++17", "-O2", "-shared", "-fPIC", "-Wall", "-Wextra",
           f'-DKERNEL_SOURCE="{source}"', str(HARNESS_CPP), "-o", str(lib)]
    include = cuda_include_dir()
    if include is not None:
        cmd[1:1] = [f"-I{include}"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise HarnessBuildError(f"{' '.join(cmd)} failed:\n{result.stderr}")
    return lib, result.stderr


class CorrelationHarness:
    """The kernel's per-element code looped over the output grid on the CPU."""

    def __init__(self, lib_path: Path):
        self.lib = ctypes.CDLL(str(lib_path))
        self.lib.harness_num_offsets.restype = ctypes.c_int
        self.lib.harness_has_half.restype = ctypes.c_int
        int_p = ctypes.POINTER(ctypes.c_int)
        self.lib.harness_offset.argtypes = [ctypes.c_int, int_p, int_p]
        self.num_offsets = self.lib.harness_num_offsets()
        self.has_half = bool(self.lib.harness_has_half())
        ptr = ctypes.c_void_p
        dims = [ctypes.c_int] * 4
        self._entry = {np.dtype(np.float32): self.lib.harness_correlation_f32}
        if self.has_half:
            self._entry[np.dtype(np.float16)] = self.lib.harness_correlation_f16
        for fn in self._entry.values():
            fn.argtypes = [ptr, ptr, *dims, ptr]
            fn.restype = None

    def offsets(self) -> list[tuple[int, int]]:
        """The (dy, dx) table compiled into the kernel, in channel order."""
        dy, dx = ctypes.c_int(), ctypes.c_int()
        table = []
        for k in range(self.num_offsets):
            self.lib.harness_offset(k, ctypes.byref(dy), ctypes.byref(dx))
            table.append((dy.value, dx.value))
        return table

    def correlation(self, f1: np.ndarray, f2: np.ndarray) -> np.ndarray:
        """f1, f2 (B, C, H, W) float32 or float16 -> (B, 53, H, W) of the same dtype."""
        if f1.shape != f2.shape or f1.dtype != f2.dtype or f1.ndim != 4:
            raise ValueError(f"f1 {f1.shape} {f1.dtype} and f2 {f2.shape} {f2.dtype} must be equal 4-D arrays")
        entry = self._entry[f1.dtype]
        a, b = np.ascontiguousarray(f1), np.ascontiguousarray(f2)
        batch, channels, height, width = a.shape
        out = np.full((batch, self.num_offsets, height, width), np.nan, dtype=a.dtype)
        entry(a.ctypes.data, b.ctypes.data, batch, channels, height, width, out.ctypes.data)
        return out
