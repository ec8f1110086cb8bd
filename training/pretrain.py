"""Optional supervised pre-training on the synthetic source: stages "pretrain" (teacher) and "student_pretrain".

MDFlow's stage 1 is unsupervised; on a small compute budget it starts slowly from random
weights, because the photometric loss only sees motions of a pixel or two at each pyramid
level. Pre-training on the synthetic source (real photos under known camera and layer
motion, exact ground truth) gives stage 1 a starting point, as supervised methods start from
FlyingChairs. The same holds for the RAFT student of stage 2: from random weights it needs far
more steps than a CPU affords before the teacher's noisy labels teach it anything (see
training/README.md, "student fit diagnostic"). Both use only generated data, never labels of
the user's recordings.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from mdflow_ros.conventions import DIV_FLOW
from training.augment import Augmentor
from training.losses import epe_loss, masked_mean, sequence_loss

PRETRAIN_STAGES: tuple[str, ...] = ("pretrain", "student_pretrain")
"""The stages that train on the synthetic source's ground truth (and on nothing else)."""


def pretrain_loss(teacher: torch.nn.Module, batch: dict[str, torch.Tensor], augmentor: Augmentor,
                  loss_cfg: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
    """Multi-level end-point error of the teacher against the synthetic ground truth.

    batch: img1, img2 (B, 3, H, W) in [0, 1], flow (B, 2, H, W) in pixels, valid (B, 1, H, W).
    Each of the five levels (finest first) is compared, in pixels, with the ground truth
    area-downsampled to its resolution (magnitudes stay in input pixels, as the teacher
    stores them), weighted by loss.pretrain_level_weights. Appearance augmentation only
    (labels unchanged).
    """
    img1, img2, flow, valid = batch["img1"], batch["img2"], batch["flow"], batch["valid"]
    params = augmentor.sample(img1.shape[0], *img1.shape[-2:])
    img1, img2 = augmentor.appearance(params, img1, img2)
    levels = teacher(img1, img2)
    loss = img1.new_zeros(())
    terms: dict[str, float] = {}
    for i, (pred, weight) in enumerate(zip(levels, loss_cfg["pretrain_level_weights"])):
        size = pred.shape[-2:]
        target = F.adaptive_avg_pool2d(flow, size)
        mask = (F.adaptive_avg_pool2d(valid, size) > 0.999).to(pred.dtype)
        epe = masked_mean((DIV_FLOW * pred - target).norm(dim=1, keepdim=True), mask)
        terms[f"epe_level{i + 2}"] = epe.item()
        loss = loss + weight * epe
    terms["loss"] = loss.item()
    return loss, terms


def student_pretrain_loss(student: torch.nn.Module, batch: dict[str, torch.Tensor], augmentor: Augmentor,
                          loss_cfg: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
    """RAFT's sequence loss of the student against the synthetic ground truth.

    batch: img1, img2 (B, 3, H, W) in [0, 1], flow (B, 2, H, W) in pixels, valid (B, 1, H, W).
    Every refinement iteration is compared with the flow (weights loss.sequence_gamma^(N-1-i),
    |flow| >= loss.max_flow ignored), as stage 2 compares it with the teacher's labels.
    Appearance augmentation only (labels unchanged).
    """
    img1, img2, flow, valid = batch["img1"], batch["img2"], batch["flow"], batch["valid"]
    params = augmentor.sample(img1.shape[0], *img1.shape[-2:])
    img1, img2 = augmentor.appearance(params, img1, img2)
    preds = student(img1, img2)
    loss = sequence_loss(preds, flow, valid, loss_cfg["sequence_gamma"], loss_cfg["max_flow"])
    with torch.no_grad():
        epe = epe_loss(preds[-1], flow, valid)
    return loss, {"loss": loss.item(), "epe": epe.item()}
