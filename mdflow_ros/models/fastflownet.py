"""The teacher T: FastFlowNet (Kong, Li & Yang, ICRA 2021), MDFlow's deployed network.

Reads like the paper: a shared feature pyramid (HEPP: strided convolutions to 1/8, average
pooling to 1/64), then coarse-to-fine decoding from level 6 (1/64) to level 2 (1/4). Each
level upsamples the coarser flow, warps the second feature map with it, builds the 53-offset
correlation (CDDC) and predicts a residual flow with a grouped, channel-shuffled decoder (SBD).

Input: two RGB images (B, 3, H, W) in [0, 1], sides multiples of 64; the network applies
MDFlow's normalisation itself. Output flows are stored as pixels / DIV_FLOW at the input
resolution, sampled at the level's resolution: training mode returns the five levels
(flow2 .. flow6, strides 4 .. 64), eval mode the finest (flow2, stride 4).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from mdflow_ros.conventions import DIV_FLOW
from mdflow_ros.flow import normalize_pair, warp
from mdflow_ros.models.correlation import correlation_53

PYRAMID_LEVELS = (6, 5, 4, 3, 2)
"""Decoding order; level l has stride 2**l."""

CORR_CHANNELS = 53
CONTEXT_CHANNELS = 32
DECODER_GROUPS = 3


def conv_lrelu(c_in: int, c_out: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """3 x 3 convolution (padding 1) followed by LeakyReLU(0.1)."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, groups=groups), nn.LeakyReLU(0.1))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet channel shuffle of (B, C, H, W), C divisible by groups."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class Decoder(nn.Module):
    """Shuffle-block decoder (SBD): 87 channels in, a 2-channel (residual) flow out."""

    def __init__(self, c_in: int = CORR_CHANNELS + CONTEXT_CHANNELS + 2, groups: int = DECODER_GROUPS):
        super().__init__()
        self.groups = groups
        self.conv1 = conv_lrelu(c_in, 96)
        self.grouped = nn.ModuleList(conv_lrelu(96, 96, groups=groups) for _ in range(3))
        self.conv5 = conv_lrelu(96, 64)
        self.conv6 = conv_lrelu(64, 32)
        self.predict = nn.Conv2d(32, 2, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for conv in self.grouped:
            x = channel_shuffle(conv(x), self.groups)
        return self.predict(self.conv6(self.conv5(x)))


class FeaturePyramid(nn.Module):
    """HEPP: features at strides 4 (32 ch), 8 .. 64 (64 ch) of one image, as {level: tensor}."""

    def __init__(self):
        super().__init__()
        self.level1 = nn.Sequential(conv_lrelu(3, 16, 2), conv_lrelu(16, 16))
        self.level2 = nn.Sequential(conv_lrelu(16, 32, 2), conv_lrelu(32, 32), conv_lrelu(32, 32))
        self.level3 = nn.Sequential(conv_lrelu(32, 64, 2), conv_lrelu(64, 64), conv_lrelu(64, 64))

    def forward(self, img: torch.Tensor) -> dict[int, torch.Tensor]:
        f2 = self.level2(self.level1(img))
        feats = {2: f2, 3: self.level3(f2)}
        for level in (4, 5, 6):
            feats[level] = F.avg_pool2d(feats[level - 1], 2, 2)
        return feats


class FastFlowNet(nn.Module):
    """FastFlowNet with MDFlow's conventions; 1,366,114 parameters."""

    def __init__(self):
        super().__init__()
        self.pyramid = FeaturePyramid()
        self.context = nn.ModuleDict({str(l): conv_lrelu(32 if l == 2 else 64, CONTEXT_CHANNELS) for l in PYRAMID_LEVELS})
        self.upsample = nn.ModuleDict({str(l): nn.ConvTranspose2d(2, 2, 4, 2, 1) for l in PYRAMID_LEVELS[1:]})
        self.decoders = nn.ModuleDict({str(l): Decoder() for l in PYRAMID_LEVELS})
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, img1: torch.Tensor, img2: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """img1, img2: (B, 3, H, W) RGB in [0, 1]. Flows are pixels / DIV_FLOW (see module doc)."""
        img1, img2 = normalize_pair(img1, img2)
        feats = self.pyramid(torch.cat((img1, img2), dim=0))
        batch = img1.shape[0]
        flows: list[torch.Tensor] = []
        flow = None
        for level in PYRAMID_LEVELS:
            f1, f2 = feats[level][:batch], feats[level][batch:]
            if flow is None:
                flow_up = f1.new_zeros(batch, 2, f1.shape[2], f1.shape[3])
            else:
                flow_up = self.upsample[str(level)](flow)
                f2 = warp(f2, flow_up * (DIV_FLOW / 2 ** level))
            cost = correlation_53(f1, f2)
            x = torch.cat((cost, self.context[str(level)](f1), flow_up), dim=1)
            flow = self.decoders[str(level)](x) + flow_up
            flows.append(flow)
        if self.training:
            return flows[::-1]
        return flows[-1]
