"""The student S: RAFT (Teed & Deng, ECCV 2020), basic configuration, with MDFlow's inputs.

``RAFT.forward`` is the algorithm in order: feature and context encoders at 1/8 resolution,
the all-pairs correlation pyramid, iterative GRU updates of the flow, and convex upsampling
to full resolution. Input: two RGB images (B, 3, H, W) in [0, 1], sides multiples of 8; the
network applies MDFlow's normalisation itself (the same as the teacher's). Output flows are
in pixels at the input resolution, frame 1 -> frame 2: training mode returns the list of
per-iteration predictions, eval mode the last one.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from mdflow_ros.flow import normalize_pair, pixel_grid, sample

HIDDEN_DIM = 128
CONTEXT_DIM = 128
CORR_LEVELS = 4
CORR_RADIUS = 4
TEST_ITERS = 12
TRAIN_ITERS = 12


class ResidualBlock(nn.Module):
    """Two 3 x 3 convolutions with a skip connection (1 x 1 projection when striding)."""

    def __init__(self, c_in: int, c_out: int, norm: str, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.norm1, self.norm2 = make_norm(norm, c_out), make_norm(norm, c_out)
        self.skip = nn.Identity() if stride == 1 else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride), make_norm(norm, c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        return F.relu(self.skip(x) + y)


def make_norm(kind: str, channels: int) -> nn.Module:
    """'instance' (no affine parameters, the feature encoder) or 'batch' (the context encoder)."""
    if kind == "instance":
        return nn.InstanceNorm2d(channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    raise ValueError(f"unknown norm {kind!r}: expected 'instance' or 'batch'")


class Encoder(nn.Module):
    """Basic encoder: (B, 3, H, W) -> (B, out_dim, H/8, W/8)."""

    def __init__(self, out_dim: int, norm: str):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3), make_norm(norm, 64), nn.ReLU())
        self.layers = nn.Sequential(
            ResidualBlock(64, 64, norm), ResidualBlock(64, 64, norm),
            ResidualBlock(64, 96, norm, 2), ResidualBlock(96, 96, norm),
            ResidualBlock(96, 128, norm, 2), ResidualBlock(128, 128, norm),
        )
        self.head = nn.Conv2d(128, out_dim, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.stem(x)))


class CorrelationPyramid:
    """All-pairs correlation of 1/8 features, pooled into CORR_LEVELS levels, looked up locally."""

    def __init__(self, fmap1: torch.Tensor, fmap2: torch.Tensor):
        b, c, h, w = fmap1.shape
        corr = torch.einsum("bci,bcj->bij", fmap1.flatten(2), fmap2.flatten(2)) / c ** 0.5
        corr = corr.reshape(b * h * w, 1, h, w)
        self.levels = [corr]
        for _ in range(CORR_LEVELS - 1):
            corr = F.avg_pool2d(corr, 2, 2)
            self.levels.append(corr)
        r = CORR_RADIUS
        d = torch.arange(-r, r + 1, dtype=fmap1.dtype, device=fmap1.device)
        dy, dx = torch.meshgrid(d, d, indexing="ij")
        self.delta = torch.stack((dx, dy), dim=-1).view(1, 2 * r + 1, 2 * r + 1, 2)

    def __call__(self, coords: torch.Tensor) -> torch.Tensor:
        """coords (B, 2, H, W) in 1/8 pixels -> (B, CORR_LEVELS * 81, H, W) correlation features."""
        b, _, h, w = coords.shape
        centre = coords.permute(0, 2, 3, 1).reshape(b * h * w, 1, 1, 2)
        out = []
        for i, corr in enumerate(self.levels):
            pts = (centre / 2 ** i + self.delta).permute(0, 3, 1, 2)
            out.append(sample(corr, pts).view(b, h, w, -1))
        return torch.cat(out, dim=-1).permute(0, 3, 1, 2)


class MotionEncoder(nn.Module):
    """Encodes correlation features and the current flow into 128 channels (126 + flow)."""

    def __init__(self):
        super().__init__()
        corr_planes = CORR_LEVELS * (2 * CORR_RADIUS + 1) ** 2
        self.corr = nn.Sequential(nn.Conv2d(corr_planes, 256, 1), nn.ReLU(), nn.Conv2d(256, 192, 3, 1, 1), nn.ReLU())
        self.flow = nn.Sequential(nn.Conv2d(2, 128, 7, 1, 3), nn.ReLU(), nn.Conv2d(128, 64, 3, 1, 1), nn.ReLU())
        self.merge = nn.Conv2d(64 + 192, 128 - 2, 3, 1, 1)

    def forward(self, flow: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
        merged = F.relu(self.merge(torch.cat((self.corr(corr), self.flow(flow)), dim=1)))
        return torch.cat((merged, flow), dim=1)


class SepConvGRU(nn.Module):
    """Convolutional GRU applied twice: with 1 x 5 then 5 x 1 kernels."""

    def __init__(self, hidden: int = HIDDEN_DIM, inputs: int = 128 + CONTEXT_DIM):
        super().__init__()
        self.horizontal = nn.ModuleList(nn.Conv2d(hidden + inputs, hidden, (1, 5), 1, (0, 2)) for _ in range(3))
        self.vertical = nn.ModuleList(nn.Conv2d(hidden + inputs, hidden, (5, 1), 1, (2, 0)) for _ in range(3))

    @staticmethod
    def _step(convs: nn.ModuleList, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        conv_z, conv_r, conv_q = convs
        hx = torch.cat((h, x), dim=1)
        z = torch.sigmoid(conv_z(hx))
        r = torch.sigmoid(conv_r(hx))
        q = torch.tanh(conv_q(torch.cat((r * h, x), dim=1)))
        return (1 - z) * h + z * q

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self._step(self.vertical, self._step(self.horizontal, h, x), x)


class UpdateBlock(nn.Module):
    """One RAFT iteration: motion encoding, GRU, flow delta and the convex-upsampling mask."""

    def __init__(self):
        super().__init__()
        self.motion = MotionEncoder()
        self.gru = SepConvGRU()
        self.flow_head = nn.Sequential(nn.Conv2d(HIDDEN_DIM, 256, 3, 1, 1), nn.ReLU(), nn.Conv2d(256, 2, 3, 1, 1))
        self.mask_head = nn.Sequential(nn.Conv2d(HIDDEN_DIM, 256, 3, 1, 1), nn.ReLU(), nn.Conv2d(256, 64 * 9, 1))

    def forward(self, net: torch.Tensor, inp: torch.Tensor, corr: torch.Tensor, flow: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        motion = self.motion(flow, corr)
        net = self.gru(net, torch.cat((inp, motion), dim=1))
        return net, 0.25 * self.mask_head(net), self.flow_head(net)


def convex_upsample(flow: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W) flow at 1/8 and (B, 576, H, W) mask -> (B, 2, 8H, 8W) flow in full-res pixels."""
    b, _, h, w = flow.shape
    weights = torch.softmax(mask.view(b, 1, 9, 8, 8, h, w), dim=2)
    patches = F.unfold(8 * flow, kernel_size=3, padding=1).view(b, 2, 9, 1, 1, h, w)
    up = (weights * patches).sum(dim=2)
    return up.permute(0, 1, 4, 2, 5, 3).reshape(b, 2, 8 * h, 8 * w)


class RAFT(nn.Module):
    """Basic RAFT; 5,257,536 parameters."""

    def __init__(self, train_iters: int = TRAIN_ITERS, test_iters: int = TEST_ITERS):
        super().__init__()
        self.train_iters, self.test_iters = train_iters, test_iters
        self.fnet = Encoder(256, "instance")
        self.cnet = Encoder(HIDDEN_DIM + CONTEXT_DIM, "batch")
        self.update_block = UpdateBlock()

    def forward(self, img1: torch.Tensor, img2: torch.Tensor, iters: int | None = None
                ) -> torch.Tensor | list[torch.Tensor]:
        """img1, img2: (B, 3, H, W) RGB in [0, 1]. Flows in pixels (see module doc)."""
        iters = iters or (self.train_iters if self.training else self.test_iters)
        img1, img2 = normalize_pair(img1, img2)
        b = img1.shape[0]
        fmaps = self.fnet(torch.cat((img1, img2), dim=0)).float()
        corr_fn = CorrelationPyramid(fmaps[:b], fmaps[b:])
        net, inp = torch.split(self.cnet(img1), (HIDDEN_DIM, CONTEXT_DIM), dim=1)
        net, inp = torch.tanh(net), F.relu(inp)
        coords0 = pixel_grid(b, net.shape[2], net.shape[3], net)
        coords1 = coords0.clone()
        predictions = []
        for _ in range(iters):
            coords1 = coords1.detach()
            net, mask, delta = self.update_block(net, inp, corr_fn(coords1), coords1 - coords0)
            coords1 = coords1 + delta
            predictions.append(convex_upsample(coords1 - coords0, mask))
        return predictions if self.training else predictions[-1]
