"""The deployed graph: a network wrapped into "two frames in, flow (and confidence) out".

This is the one computation that every inference backend runs (PyTorch directly, ONNX
Runtime and TensorRT through its ONNX export), so pre- and post-processing inside the graph
cannot drift between backends.

Inputs: img1, img2 (B, 3, H, W) RGB in [0, 1], H and W multiples of 64.
Outputs: flow (B, 2, H, W) in pixels, frame 1 -> frame 2; with confidence also
confidence (B, H, W) in [0, 1] from one batched forward + backward pass (see flow.confidence).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from mdflow_ros.flow import confidence, teacher_flow_to_pixels
from mdflow_ros.models.fastflownet import FastFlowNet


class DeployedFlow(nn.Module):
    """Wrap a FastFlowNet or RAFT (in eval mode) as the deployed graph."""

    def __init__(self, net: nn.Module, with_confidence: bool):
        super().__init__()
        self.net = net
        self.with_confidence = with_confidence
        self.eval()

    def train(self, mode: bool = True) -> "DeployedFlow":
        """The deployed graph is inference only: it stays in eval mode whatever is asked."""
        return super().train(False)

    def pixel_flow(self, img1: torch.Tensor, img2: torch.Tensor) -> torch.Tensor:
        """The network's flow (B, 2, H, W) in pixels at the input resolution."""
        out = self.net(img1, img2)
        if isinstance(self.net, FastFlowNet):
            return teacher_flow_to_pixels(out, img1.shape[2], img1.shape[3])
        return out

    def forward(self, img1: torch.Tensor, img2: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if not self.with_confidence:
            return (self.pixel_flow(img1, img2),)
        b = img1.shape[0]
        both = self.pixel_flow(torch.cat((img1, img2), 0), torch.cat((img2, img1), 0))
        flow_fw, flow_bw = both[:b], both[b:]
        return flow_fw, confidence(img1, img2, flow_fw, flow_bw)
