"""Loss terms of MDFlow's stages, each a small function with its shapes documented.

Conventions: images (B, 3, H, W) RGB in [0, 1]; flows (B, 2, H, W) in pixels of their own
resolution, frame 1 -> frame 2; masks (B, 1, H, W) in [0, 1], 1 = use this pixel.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mdflow_ros.conventions import DIV_FLOW
from mdflow_ros.flow import census_distance, warp


MIN_CELL_SHARE: float = 0.5
"""A coarse pyramid cell is supervised when at least this share of its pixels carries a label."""


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of values (B, C, H, W) over pixels where mask (B, 1, H, W) is on, averaged over C.

    Normalised by the mask's mean as in ARFlow, so the scale does not depend on how many
    pixels are masked out; 0 when the mask is empty.
    """
    return (values * mask).mean() / (mask.mean() + 1e-7)


def border_mask(like: torch.Tensor, width: int = 1) -> torch.Tensor:
    """(B, 1, H, W) mask of ones with a ``width``-pixel frame of zeros (where the census is undefined)."""
    b, _, h, w = like.shape
    mask = like.new_zeros(b, 1, h, w)
    mask[:, :, width:h - width, width:w - width] = 1.0
    return mask


def census_loss(img1: torch.Tensor, img1_recon: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked soft-Hamming census distance between img1 and its reconstruction (scalar)."""
    return masked_mean(census_distance(img1, img1_recon), mask * border_mask(mask))


def ssim_map(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(1 - SSIM) / 2 per pixel (B, 3, H-2, W-2) with 3 x 3 windows, clamped to [0, 1]."""
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mu_x, mu_y = F.avg_pool2d(x, 3, 1), F.avg_pool2d(y, 3, 1)
    sigma_x = F.avg_pool2d(x * x, 3, 1) - mu_x ** 2
    sigma_y = F.avg_pool2d(y * y, 3, 1) - mu_y ** 2
    sigma_xy = F.avg_pool2d(x * y, 3, 1) - mu_x * mu_y
    ssim = ((2 * mu_x * mu_y + c1) * (2 * sigma_xy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sigma_x + sigma_y + c2))
    return ((1 - ssim) / 2).clamp(0, 1)


def photometric_loss(img1: torch.Tensor, img2: torch.Tensor, flow: torch.Tensor, mask: torch.Tensor,
                     w_census: float = 1.0, w_ssim: float = 0.0, w_l1: float = 0.0) -> torch.Tensor:
    """Photometric error of warp(img2, flow) against img1 on visible pixels (scalar).

    flow: (B, 2, H, W) frame 1 -> 2 at the images' resolution; mask: visible pixels of
    frame 1. Weighted sum of census (default), SSIM and L1 terms.
    """
    recon = warp(img2, flow, padding_mode="border")
    loss = img1.new_zeros(())
    if w_census:
        loss = loss + w_census * census_loss(img1, recon, mask)
    if w_ssim:
        loss = loss + w_ssim * masked_mean(ssim_map(recon * mask, img1 * mask), mask[:, :, 1:-1, 1:-1])
    if w_l1:
        loss = loss + w_l1 * masked_mean((recon - img1).abs(), mask)
    return loss


def smoothness_loss(flow: torch.Tensor, img: torch.Tensor, alpha: float = 10.0, order: int = 1) -> torch.Tensor:
    """Edge-aware smoothness of flow (B, 2, H, W) guided by img (B, 3, H, W) (scalar).

    First order penalises |dF| / 4, second order |d2F| / 2 (ARFlow's scales, so its weights 50
    and 75 carry over), each weighted by exp(-alpha * mean_c |dI|) in x and y, averaged over
    x and y terms alike; the flow is divided by min(H, W) first so the weight is
    resolution-independent.
    """
    if order not in (1, 2):
        raise ValueError(f"smoothness order must be 1 or 2, got {order}")
    flow = flow / min(flow.shape[-2:])

    def dx(t):
        return t[..., :, 1:] - t[..., :, :-1]

    def dy(t):
        return t[..., 1:, :] - t[..., :-1, :]

    wx = torch.exp(-alpha * dx(img).abs().mean(1, keepdim=True))
    wy = torch.exp(-alpha * dy(img).abs().mean(1, keepdim=True))
    if order == 1:
        return ((wx * dx(flow).abs()).mean() + (wy * dy(flow).abs()).mean()) / 4
    return ((wx[..., :, 1:] * dx(dx(flow)).abs()).mean() + (wy[..., 1:, :] * dy(dy(flow)).abs()).mean()) / 2


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked L1 between flows (B, 2, H, W), normalised by the mask's mean (ARFlow's AR loss)."""
    return masked_mean((pred - target).abs(), mask)


def sequence_loss(preds: list[torch.Tensor], target: torch.Tensor, mask: torch.Tensor, gamma: float = 0.8,
                  max_flow: float = 400.0) -> torch.Tensor:
    """RAFT's sequence loss: sum_i gamma^(N-1-i) masked_l1(pred_i, target), ignoring |target| >= max_flow."""
    mask = mask * (target.norm(dim=1, keepdim=True) < max_flow).to(mask.dtype)
    n = len(preds)
    return sum(gamma ** (n - 1 - i) * masked_l1(p, target, mask) for i, p in enumerate(preds))


def multilevel_epe(levels: list[torch.Tensor], flow: torch.Tensor, mask: torch.Tensor,
                   weights: list[float]) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted end-point error of the teacher's pyramid against a pixel flow, and each level's EPE.

    levels: the teacher's outputs, finest first, each (B, 2, h_l, w_l) in pixels / DIV_FLOW
    of the input resolution; flow: (B, 2, H, W) pixels; mask: (B, 1, H, W) in [0, 1]. Each
    level is compared, in pixels, with the mean of the flow over the masked pixels of each
    cell of its grid (magnitudes stay in input pixels, as the teacher stores them), on the
    cells at least half of whose pixels are masked: sparse labels (reliable matches) still
    supervise the coarse levels.
    """
    loss = flow.new_zeros(())
    terms: dict[str, float] = {}
    for i, (pred, weight) in enumerate(zip(levels, weights)):
        size = pred.shape[-2:]
        share = F.adaptive_avg_pool2d(mask, size)
        target = F.adaptive_avg_pool2d(flow * mask, size) / share.clamp_min(1e-6)
        level_mask = (share >= MIN_CELL_SHARE).to(pred.dtype)
        epe = masked_mean((DIV_FLOW * pred - target).norm(dim=1, keepdim=True), level_mask)
        terms[f"epe_level{i + 2}"] = epe.item()
        loss = loss + weight * epe
    return loss, terms


def epe_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean end-point error between flows (B, 2, H, W) (scalar)."""
    return masked_mean((pred - target).norm(dim=1, keepdim=True), mask)
