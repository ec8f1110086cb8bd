"""Torch flow maths, shared by the networks, the losses, the exporter and training.

Input normalisation, warping and bilinear sampling, the forward-backward check, the census
distance, MDFlow's reliable mask, the confidence map and the teacher's flow scaling; the
constants they use (and the image and flow conventions) are in ``mdflow_ros.conventions``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mdflow_ros.conventions import (ALIGN_CORNERS, CENSUS_RADIUS, DIV_FLOW, GRAY_WEIGHTS, OCC_BIAS, OCC_SCALE,
                                    RELIABLE_TAU)


def normalize_pair(img1: torch.Tensor, img2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MDFlow's centralisation: subtract one scalar per sample, the mean of both images.

    img1, img2: (B, 3, H, W) RGB in [0, 1]. Returns both minus their joint mean (B, 1, 1, 1).
    The mean is symmetric in the two images, so (I1, I2) and (I2, I1) are normalised alike.
    """
    mean = (img1.mean(dim=(1, 2, 3), keepdim=True) + img2.mean(dim=(1, 2, 3), keepdim=True)) * 0.5
    return img1 - mean, img2 - mean


def pixel_grid(batch: int, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W) grid of pixel coordinates (x, y), dtype and device of ``like``."""
    ys = torch.arange(height, dtype=like.dtype, device=like.device)
    xs = torch.arange(width, dtype=like.dtype, device=like.device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx, gy), dim=0).unsqueeze(0).expand(batch, 2, height, width)


def warp(x: torch.Tensor, flow: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """Backward warp: out(p) = x(p + flow(p)), bilinear, align_corners=True.

    x: (B, C, H, W); flow: (B, 2, H, W) in pixels of x. Samples outside x read zeros
    (``padding_mode="zeros"``, the network's feature warp) or the border (``"border"``,
    the photometric loss).
    """
    b, _, h, w = x.shape
    return sample(x, pixel_grid(b, h, w, flow) + flow, padding_mode)


def sample(x: torch.Tensor, coords: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """Bilinear samples of x (N, C, h, w) at pixel coordinates coords (N, 2, H, W) -> (N, C, H, W).

    coords hold (x, y) in pixels of x (0 is the first pixel centre); align_corners=True maps
    them exactly onto grid_sample's normalised range. While exporting to ONNX the side
    lengths are symbolic, so the guard for one-pixel-wide maps is left out of the graph (the
    networks never warp a map narrower than 2 pixels).
    """
    h, w = x.shape[-2:]
    if torch.onnx.is_in_onnx_export():
        sx, sy = 2.0 / (w - 1), 2.0 / (h - 1)
    else:
        sx, sy = 2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)
    grid = torch.stack((coords[:, 0] * sx - 1.0, coords[:, 1] * sy - 1.0), dim=3)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=ALIGN_CORNERS)


def fb_ratio(flow_fw: torch.Tensor, flow_bw: torch.Tensor, scale: float = OCC_SCALE, bias: float = OCC_BIAS
             ) -> torch.Tensor:
    """Forward-backward inconsistency relative to its tolerance, (B, 1, H, W), >= 0.

    flow_fw: (B, 2, H, W) frame 1 -> 2; flow_bw: (B, 2, H, W) frame 2 -> 1, both in pixels.
    The pixel is visible (not occluded) exactly when the ratio is below 1.
    """
    bw_at_fw = warp(flow_bw, flow_fw)
    err = (flow_fw + bw_at_fw).pow(2).sum(1, keepdim=True)
    tol = scale * (flow_fw.pow(2).sum(1, keepdim=True) + bw_at_fw.pow(2).sum(1, keepdim=True)) + bias
    return err / tol


def visible_mask(flow_fw: torch.Tensor, flow_bw: torch.Tensor, scale: float = OCC_SCALE, bias: float = OCC_BIAS
                 ) -> torch.Tensor:
    """Non-occlusion mask O_f (B, 1, H, W): 1 where the forward-backward check passes, else 0."""
    return (fb_ratio(flow_fw, flow_bw, scale, bias) < 1.0).to(flow_fw.dtype)


def rgb_to_gray(img: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, 1, H, W) luma in [0, 1]."""
    r, g, b = GRAY_WEIGHTS
    return img[:, 0:1] * r + img[:, 1:2] * g + img[:, 2:3] * b


def census_transform(img: torch.Tensor, radius: int = CENSUS_RADIUS) -> torch.Tensor:
    """Soft census signature (B, P, H, W) of an RGB image, P = (2 radius + 1)^2.

    Each channel is t = d / sqrt(0.81 + d^2) with d the difference (on a 0-255 luma scale)
    between a patch neighbour and the centre; neighbours outside the image count as 0.
    """
    gray = rgb_to_gray(img) * 255.0
    size = 2 * radius + 1
    patches = F.unfold(gray, kernel_size=size, padding=radius)
    patches = patches.view(gray.shape[0], size * size, gray.shape[2], gray.shape[3])
    diff = patches - gray
    return diff / torch.sqrt(0.81 + diff * diff)


def census_distance(img1: torch.Tensor, img2: torch.Tensor, radius: int = CENSUS_RADIUS) -> torch.Tensor:
    """Soft Hamming distance of census signatures, (B, 1, H, W) in [0, 1).

    img1, img2: (B, 3, H, W) RGB in [0, 1]. Mean over the patch of d^2 / (0.1 + d^2), with d
    the signature difference (ARFlow's ternary loss); 0 for identical patches.
    """
    d = census_transform(img1, radius) - census_transform(img2, radius)
    d2 = d * d
    return (d2 / (0.1 + d2)).mean(dim=1, keepdim=True)


def reliable_mask(img1: torch.Tensor, img2: torch.Tensor, flow_fw: torch.Tensor, flow_bw: torch.Tensor,
                  tau: float = RELIABLE_TAU, occ_scale: float = OCC_SCALE, occ_bias: float = OCC_BIAS,
                  radius: int = CENSUS_RADIUS) -> torch.Tensor:
    """MDFlow's reliable matches M_f = [census(I1, warp(I2, F_f)) <= tau] * O_f, (B, 1, H, W).

    radius is the census patch radius of the distance (1: the 3 x 3 patch).
    """
    dist = census_distance(img1, warp(img2, flow_fw, padding_mode="border"), radius)
    return (dist <= tau).to(flow_fw.dtype) * visible_mask(flow_fw, flow_bw, occ_scale, occ_bias)


def confidence(img1: torch.Tensor, img2: torch.Tensor, flow_fw: torch.Tensor, flow_bw: torch.Tensor,
               tau: float = RELIABLE_TAU) -> torch.Tensor:
    """Per-pixel confidence (B, H, W) in [0, 1] of the forward flow.

    Combines the forward-backward check and the census photometric check into
    2 ** -max(fb_ratio, census / tau): 1 for a perfect match, exactly 0.5 on the border of
    MDFlow's reliable mask (so confidence > 0.5 selects the reliable matches), then decaying.
    """
    ratio = fb_ratio(flow_fw, flow_bw)
    photometric = census_distance(img1, warp(img2, flow_fw, padding_mode="border")) / tau
    worst = torch.maximum(ratio, photometric)
    return torch.exp(-math.log(2.0) * worst)[:, 0]


def teacher_flow_to_pixels(flow: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Teacher output (B, 2, h, w) in pixels / DIV_FLOW -> (B, 2, height, width) in pixels.

    The teacher's values are already in units of the input resolution, so upsampling is
    bilinear (align_corners=False) with no per-axis magnitude scaling, then times DIV_FLOW.
    """
    return DIV_FLOW * F.interpolate(flow, size=(height, width), mode="bilinear", align_corners=False)
