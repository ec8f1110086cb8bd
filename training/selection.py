"""Reliable matching selection (MDFlow stage 2): which of the teacher's flows become labels.

M_f = [census Hamming(I1, warp(I2, F_f)) <= tau] * O_f, and M_b likewise from (I2, I1, F_b, O_b),
both computed by ``mdflow_ros.flow.reliable_mask``, the one definition that the deployed
confidence shares. The training config's ``loss`` section gives the census radius, tau and the
forward-backward constants, and the kind of mask (``distill_mask``): "reliable" (MDFlow's),
"occlusion" (O alone) or "none" (every pixel), the last two for ablations.

Shapes: images (B, 3, H, W) RGB in [0, 1]; flows (B, 2, H, W) in pixels, F_f frame 1 -> 2 and
F_b frame 2 -> 1; masks (B, 1, H, W) in {0, 1}, M_f on frame 1's pixels and M_b on frame 2's.
"""
from __future__ import annotations

from typing import Any

import torch

from mdflow_ros.conventions import CENSUS_RADIUS, OCC_BIAS, OCC_SCALE
from mdflow_ros.flow import reliable_mask, visible_mask
from training.config import DISTILL_MASKS

def reliable_masks(img1: torch.Tensor, img2: torch.Tensor, flow_fw: torch.Tensor, flow_bw: torch.Tensor,
                   tau: float, radius: int = CENSUS_RADIUS, occ_scale: float = OCC_SCALE,
                   occ_bias: float = OCC_BIAS) -> tuple[torch.Tensor, torch.Tensor]:
    """MDFlow's reliable masks (M_f, M_b), each (B, 1, H, W): census distance <= tau and visible."""
    m_fw = reliable_mask(img1, img2, flow_fw, flow_bw, tau, occ_scale, occ_bias, radius)
    m_bw = reliable_mask(img2, img1, flow_bw, flow_fw, tau, occ_scale, occ_bias, radius)
    return m_fw, m_bw


def distillation_masks(img1: torch.Tensor, img2: torch.Tensor, flow_fw: torch.Tensor, flow_bw: torch.Tensor,
                       loss_cfg: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The label masks (forward, backward) of stage 2, each (B, 1, H, W), as ``loss_cfg`` chooses."""
    kind = loss_cfg["distill_mask"]
    scale, bias = loss_cfg["occ_scale"], loss_cfg["occ_bias"]
    if kind == "reliable":
        return reliable_masks(img1, img2, flow_fw, flow_bw, loss_cfg["reliable_tau"], loss_cfg["census_radius"],
                              scale, bias)
    if kind == "occlusion":
        return visible_mask(flow_fw, flow_bw, scale, bias), visible_mask(flow_bw, flow_fw, scale, bias)
    if kind == "none":
        ones = torch.ones_like(flow_fw[:, :1])
        return ones, ones.clone()
    raise ValueError(f"loss.distill_mask must be one of {DISTILL_MASKS}, got {kind!r}")
