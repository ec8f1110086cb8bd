"""The augmentor A of MDFlow: one set of random parameters applied to images, flows and masks.

Spatial augmentation is a pair of affine maps in pixel coordinates, A1 for frame 1 and
A2 = A1 * B (a small relative motion) for frame 2, each taking an augmented pixel to the
source pixel it samples. Labels are transformed exactly: a source flow F (frame 1 -> 2) at
augmented pixel p becomes A2^-1 (q + F(q)) - p with q = A1 p. Appearance changes (brightness,
contrast, saturation, gamma, noise; the same for both frames) leave labels alone. The optional
cut-out replaces boxes of frame 2 with noise; labels stay (the network must learn to predict
through occlusion), and so do masks of frame 1; ``cutout_kept`` gives the frame-2 pixels left
visible, which masks of frame-2 labels (backward flows) are multiplied by.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mdflow_ros.flow import pixel_grid, rgb_to_gray, sample


@dataclass
class AugmentConfig:
    """Ranges of the random augmentation (ARFlow's Sintel values by default)."""

    zoom: tuple[float, float] = (1.0, 1.5)
    squeeze: tuple[float, float] = (0.86, 1.16)
    rotate: tuple[float, float] = (-0.2, 0.2)
    translate: float = 0.2
    rel_zoom: tuple[float, float] = (0.985, 1.015)
    rel_rotate: float = 0.015
    rel_translate: float = 0.015
    hflip: bool = True
    vflip: bool = True
    brightness: float = 0.5
    contrast: float = 0.5
    saturation: float = 0.5
    gamma: tuple[float, float] = (0.7, 1.5)
    noise_std: float = 0.04
    cutout_prob: float = 0.0
    cutout_boxes: tuple[int, int] = (1, 3)
    cutout_size: tuple[float, float] = (0.05, 0.2)
    tries: int = 20


@dataclass
class AugmentParams:
    """One draw of the augmentor for a batch of B pairs of H x W images."""

    a1: torch.Tensor
    a2: torch.Tensor
    colour: torch.Tensor
    cutout: torch.Tensor
    height: int
    width: int


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def _affine(zoom: float, squeeze: float, angle: float, tx: float, ty: float, flip_x: bool, flip_y: bool,
            height: int, width: int) -> torch.Tensor:
    """3 x 3 map augmented pixel -> source pixel, about the image centre, in float64."""
    cx, cy = (width - 1) / 2, (height - 1) / 2
    c, s = math.cos(angle), math.sin(angle)
    scale = torch.diag(torch.tensor([1 / (zoom * squeeze) * (-1 if flip_x else 1), squeeze / zoom * (-1 if flip_y else 1), 1.0],
                                    dtype=torch.float64))
    rot = torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=torch.float64)
    to_centre = torch.tensor([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]], dtype=torch.float64)
    back = torch.tensor([[1, 0, cx + tx * width], [0, 1, cy + ty * height], [0, 0, 1]], dtype=torch.float64)
    return back @ rot @ scale @ to_centre


def _inside(a: torch.Tensor, height: int, width: int) -> bool:
    """Whether all four augmented corners map inside the source image."""
    corners = torch.tensor([[0, 0, 1], [width - 1, 0, 1], [0, height - 1, 1], [width - 1, height - 1, 1]],
                           dtype=torch.float64).T
    src = a @ corners
    return bool((src[0] >= 0).all() and (src[0] <= width - 1).all() and (src[1] >= 0).all() and (src[1] <= height - 1).all())


class Augmentor:
    """Draws augmentation parameters from ``generator`` and applies them consistently."""

    def __init__(self, config: AugmentConfig, generator: torch.Generator):
        self.cfg = config
        self.gen = generator

    def sample(self, batch: int, height: int, width: int) -> AugmentParams:
        """Random parameters for ``batch`` pairs; spatial maps keep every sample inside the source."""
        cfg, g = self.cfg, self.gen
        a1s, a2s = [], []
        for _ in range(batch):
            a1 = a2 = torch.eye(3, dtype=torch.float64)
            for _ in range(cfg.tries):
                flip_x = cfg.hflip and _uniform(g, 0, 1) < 0.5
                flip_y = cfg.vflip and _uniform(g, 0, 1) < 0.5
                cand1 = _affine(_uniform(g, *cfg.zoom), _uniform(g, *cfg.squeeze), _uniform(g, *cfg.rotate),
                                _uniform(g, -cfg.translate / 2, cfg.translate / 2),
                                _uniform(g, -cfg.translate / 2, cfg.translate / 2), flip_x, flip_y, height, width)
                rel = _affine(_uniform(g, *cfg.rel_zoom), 1.0, _uniform(g, -cfg.rel_rotate, cfg.rel_rotate),
                              _uniform(g, -cfg.rel_translate / 2, cfg.rel_translate / 2),
                              _uniform(g, -cfg.rel_translate / 2, cfg.rel_translate / 2), False, False, height, width)
                cand2 = cand1 @ rel
                if _inside(cand1, height, width) and _inside(cand2, height, width):
                    a1, a2 = cand1, cand2
                    break
            a1s.append(a1)
            a2s.append(a2)
        colour = torch.stack([
            torch.tensor([_uniform(g, 1 - cfg.brightness, 1 + cfg.brightness), _uniform(g, 1 - cfg.contrast, 1 + cfg.contrast),
                          _uniform(g, 1 - cfg.saturation, 1 + cfg.saturation), _uniform(g, *cfg.gamma),
                          _uniform(g, 0, cfg.noise_std)])
            for _ in range(batch)])
        boxes = torch.zeros(batch, cfg.cutout_boxes[1], 4)
        for i in range(batch):
            if _uniform(g, 0, 1) < cfg.cutout_prob:
                n = int(torch.randint(cfg.cutout_boxes[0], cfg.cutout_boxes[1] + 1, (), generator=g))
                for k in range(n):
                    bh, bw = _uniform(g, *cfg.cutout_size) * height, _uniform(g, *cfg.cutout_size) * width
                    y0, x0 = _uniform(g, 0, height - bh), _uniform(g, 0, width - bw)
                    boxes[i, k] = torch.tensor([y0, x0, y0 + bh, x0 + bw])
        return AugmentParams(torch.stack(a1s), torch.stack(a2s), colour, boxes, height, width)

    @staticmethod
    def _coords(a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Source pixel coordinates (B, 2, H, W) of every augmented pixel under maps a (B, 3, 3)."""
        b, _, h, w = like.shape
        grid = pixel_grid(b, h, w, like.double()).reshape(b, 2, -1)
        src = a[:, :2, :2].to(grid) @ grid + a[:, :2, 2:].to(grid)
        return src.view(b, 2, h, w).to(like.dtype)

    def spatial(self, p: AugmentParams, x: torch.Tensor, frame: int) -> torch.Tensor:
        """Resample images or masks (B, C, H, W) of frame 1 or 2 into the augmented view."""
        return sample(x, self._coords(p.a1 if frame == 1 else p.a2, x), padding_mode="border")

    def flow(self, p: AugmentParams, flow: torch.Tensor, direction: str) -> torch.Tensor:
        """Exact label transform of a flow (B, 2, H, W): "fw" is frame 1 -> 2, "bw" is 2 -> 1."""
        src_map, dst_map = (p.a1, p.a2) if direction == "fw" else (p.a2, p.a1)
        q = self._coords(src_map, flow)
        moved = q + sample(flow, q, padding_mode="border")
        inv = torch.linalg.inv(dst_map).to(flow.device)
        b, _, h, w = flow.shape
        dest = (inv[:, :2, :2].to(flow.dtype) @ moved.reshape(b, 2, -1) + inv[:, :2, 2:].to(flow.dtype)).view(b, 2, h, w)
        return dest - pixel_grid(b, h, w, flow)

    def appearance(self, p: AugmentParams, img1: torch.Tensor, img2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Colour jitter, gamma and noise with the same parameters for both frames, then cut-out on frame 2."""
        c = p.colour.to(img1)
        brightness, contrast, saturation, gamma, noise = (c[:, i].view(-1, 1, 1, 1) for i in range(5))
        out = []
        for img in (img1, img2):
            img = img * brightness
            mean = rgb_to_gray(img).mean(dim=(2, 3), keepdim=True)
            img = (mean + (img - mean) * contrast).clamp(0, 1)
            gray = rgb_to_gray(img)
            img = (gray + (img - gray) * saturation).clamp(0, 1)
            img = img.clamp_min(1e-6) ** gamma
            img = img + noise * torch.randn(img.shape, generator=self.gen).to(img)
            out.append(img.clamp(0, 1))
        return out[0], self._cutout(p, out[1])

    def cutout_kept(self, p: AugmentParams, like: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) mask of augmented frame 2: 0 inside its cut-out boxes, 1 elsewhere (dtype, device of like)."""
        h, w = like.shape[-2:]
        return 1.0 - _inside_boxes(p.cutout, h, w).unsqueeze(1).to(like)

    def _cutout(self, p: AugmentParams, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        if not p.cutout.any():
            return img
        inside = _inside_boxes(p.cutout, h, w)
        noise = torch.rand(img.shape, generator=self.gen).to(img)
        return torch.where(inside.unsqueeze(1).to(img.device), noise, img)


def _inside_boxes(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, H, W) bool: pixels inside any of the boxes (B, K, 4) = (y0, x0, y1, x1), all-zero boxes are empty."""
    ys = torch.arange(height, dtype=torch.float32).view(1, height, 1)
    xs = torch.arange(width, dtype=torch.float32).view(1, 1, width)
    box = boxes.view(boxes.shape[0], -1, 4, 1, 1)
    return ((ys >= box[:, :, 0]) & (ys < box[:, :, 2]) & (xs >= box[:, :, 1]) & (xs < box[:, :, 3])).any(1)
