"""The PyTorch backend: the reference, running the deployed graph directly, from a model file or a network in memory."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mdflow_ros.inference.backend import BackendUnavailable
from mdflow_ros.models.deploy import DeployedFlow
from mdflow_ros.models.model_file import load_model


class TorchBackend:
    """Deployed graph in PyTorch on CPU or CUDA, under inference_mode.

    model: a .pt model file, or a network instance (an nn.Module, e.g. during training's
    evaluation), which only this backend can run.
    """

    name = "pytorch"

    def __init__(self, model: str | Path | torch.nn.Module, with_confidence: bool, device: str = "cpu",
                 threads: int | None = None):
        if not isinstance(model, torch.nn.Module) and Path(model).suffix == ".onnx":
            raise BackendUnavailable(f"the pytorch backend needs a .pt model file, got {model}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailable("device 'cuda' was asked for but torch sees no CUDA device")
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        net = model if isinstance(model, torch.nn.Module) else load_model(model)
        self.graph = DeployedFlow(net, with_confidence).to(self.device)
        self.with_confidence = with_confidence
        self.description = f"PyTorch {torch.__version__} on {self.device}, {torch.get_num_threads()} threads"

    def run(self, img1: np.ndarray, img2: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        with torch.inference_mode():
            out = self.graph(torch.from_numpy(img1).to(self.device), torch.from_numpy(img2).to(self.device))
        flow = out[0].float().cpu().numpy()
        conf = out[1].float().cpu().numpy() if self.with_confidence else None
        return flow, conf

    def cancel(self) -> None:
        """PyTorch cannot stop a forward pass from another thread: a run in progress finishes."""
