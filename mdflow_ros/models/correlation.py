"""FastFlowNet's 53-offset local correlation, in a reference and a fast form.

Both compute, for every kept offset (dy, dx) of ``conventions.CDDC_OFFSETS``,
``out[b, k, y, x] = mean_c f1[b, c, y, x] * f2[b, c, y + dy, x + dx]``
(sum over channels divided by C, zero where (y + dy, x + dx) falls outside f2).

- ``correlation_reference`` is the plain definition: the full 9 x 9 cost volume by explicit
  loops over offsets, then FastFlowNet's channel selection. It is for tests.
- ``correlation_53`` is what the networks use, in training and in every export: blocks of
  CORRELATION_BLOCK pixels of a row of f1 against the 9 row-shifted windows of f2 around them,
  one batched matrix product per pyramid level, from which a skew (pad and reshape) and one
  Gather take the kept offsets. Standard ops only (Pad, Transpose, Slice, Reshape, Concat,
  MatMul, Gather), so it exports to ONNX opset 17 and runs in ONNX Runtime, OpenVINO and
  TensorRT without a plugin, with dynamic height and width.
The CUDA kernel in ``mdflow_ros/kernels/correlation.cu`` implements the same definition.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mdflow_ros.conventions import CDDC_CHANNELS, CDDC_OFFSETS, MAX_DISPLACEMENT

CORRELATION_BLOCK: int = 16
"""Pixels of a row per matrix product in ``correlation_53``. Measured on the teacher at 512x384, 2
threads (a Xeon with AMX): 16 was fastest of 8, 16 and 32 in ONNX Runtime fp32 and OpenVINO bf16, and
against the earlier form of 53 Slice/Mul/ReduceMean planes it cut the whole forward pass by 12 %
(ONNX Runtime fp32), 30 % (OpenVINO fp32) and 26 % (OpenVINO bf16)."""

_SPAN = CORRELATION_BLOCK + 2 * MAX_DISPLACEMENT
_KEPT_COLUMNS: tuple[int, ...] = tuple((dy + MAX_DISPLACEMENT) * _SPAN + dx + MAX_DISPLACEMENT for dy, dx in CDDC_OFFSETS)
"""Column of offset (dy, dx) in a skewed row of ``correlation_53``'s products, in CDDC_OFFSETS order."""


def correlation_reference(f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
    """Reference correlation: (B, C, H, W) x (B, C, H, W) -> (B, 53, H, W), divided by C."""
    b, c, h, w = f1.shape
    r = MAX_DISPLACEMENT
    full = f1.new_zeros(b, (2 * r + 1) ** 2, h, w)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            k = (dy + r) * (2 * r + 1) + (dx + r)
            y0, y1 = max(0, -dy), min(h, h - dy)
            x0, x1 = max(0, -dx), min(w, w - dx)
            if y0 >= y1 or x0 >= x1:
                continue
            prod = f1[:, :, y0:y1, x0:x1] * f2[:, :, y0 + dy:y1 + dy, x0 + dx:x1 + dx]
            full[:, k, y0:y1, x0:x1] = prod.sum(dim=1) / c
    return full[:, list(CDDC_CHANNELS)]


def correlation_53(f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
    """Fast correlation over the 53 kept offsets: (B, C, H, W) x (B, C, H, W) -> (B, 53, H, W), divided by C.

    The width is padded to n blocks of T = CORRELATION_BLOCK pixels. For each block and each row
    shift dy, the f2 window spans the block's T columns and 2R more (R = MAX_DISPLACEMENT); the 9
    windows of a block are stacked, so one MatMul gives (T, 9 (T + 2R)) products per block, of which
    pixel x of the block needs column dy (T + 2R) + x + dx + R. Padding each row of that product
    by one element per row (flattened, then T more at the end) shifts row x left by x, so those
    columns become fixed indices for every x, taken with one Gather.
    """
    b, c, h, w = f1.shape
    r, t, span = MAX_DISPLACEMENT, CORRELATION_BLOCK, _SPAN
    n = (w + t - 1) // t
    rows = 2 * r + 1
    a = F.pad(f1, (0, n * t - w)).permute(0, 2, 3, 1).reshape(b, h, n, t, c)             # (B, H, n, T, C)
    f2p = F.pad(f2, (r, (n + 1) * t - w - r, r, r)).permute(0, 2, 3, 1)                  # (B, H+2R, (n+1)T, C)
    windows = []
    for dy in range(rows):
        blocks = f2p[:, dy:dy + h].reshape(b, h, n + 1, t, c)
        windows.append(torch.cat((blocks[:, :, :n], blocks[:, :, 1:, :2 * r]), dim=3))   # (B, H, n, T+2R, C)
    products = torch.matmul(a, torch.cat(windows, dim=3).transpose(3, 4))                # (B, H, n, T, 9 span)
    length = rows * span
    skewed = F.pad(products.reshape(b, h, n, t * length), (0, t)).reshape(b, h, n, t, length + 1)
    kept = torch.tensor(_KEPT_COLUMNS, device=f1.device)
    out = skewed.index_select(4, kept).reshape(b, h, n * t, len(CDDC_OFFSETS))[:, :, :w]  # (B, H, W, 53)
    return out.permute(0, 3, 1, 2) / c
