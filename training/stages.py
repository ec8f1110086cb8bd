"""Loss recipes of MDFlow's stages: what a step computes, and which network it trains.

A recipe gets the trained network and a batch, and returns the total loss and its terms for
logging. Stage 1 (unsupervised initialisation of the teacher T, with augmentation
regularisation) is ``stage1_loss``. Every pass of T in a step goes through one forward call
(original and augmented pairs, both directions, stacked in the batch), which is what
DistributedDataParallel expects.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from mdflow_ros.flow import DIV_FLOW, teacher_flow_to_pixels, visible_mask
from training.augment import Augmentor
from training.losses import masked_l1, photometric_loss, smoothness_loss


def pyramid_to_pixels(flow: torch.Tensor, level_index: int, height: int, width: int) -> torch.Tensor:
    """Teacher level output (B, 2, h, w) in pixels / DIV_FLOW -> pixel flow upsampled x4.

    Level index 0 is the finest (stride 4); its x4 upsampling is at the image resolution
    (height, width); index i is at 1 / 2**i of it, in pixels of that resolution.
    """
    h, w = height // 2 ** level_index, width // 2 ** level_index
    up = F.interpolate(flow, size=(h, w), mode="bilinear", align_corners=False)
    return up * (DIV_FLOW / 2 ** level_index)


def unsupervised_loss(levels: list[torch.Tensor], img1: torch.Tensor, img2: torch.Tensor, loss_cfg: dict[str, Any],
                      occlusion: bool = True) -> tuple[torch.Tensor, dict[str, float], torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bidirectional photometric + smoothness loss of the teacher's pyramid (L_ph + L_sm).

    levels: the teacher's five outputs for the stacked batch [(I1, I2); (I2, I1)], each
    (2B, 2, h_l, w_l). With ``occlusion`` False every pixel counts as visible (the warm-up,
    while the flows are still too poor for a forward-backward check). Returns the loss, its
    terms, and the full-resolution forward and backward flows (B, 2, H, W) and their
    non-occlusion masks (B, 1, H, W), detached.
    """
    b, _, height, width = img1.shape
    first = torch.cat((img1, img2), 0)
    second = torch.cat((img2, img1), 0)
    full = teacher_flow_to_pixels(levels[0], height, width)
    with torch.no_grad():
        if occlusion:
            vis = torch.cat((visible_mask(full[:b], full[b:], loss_cfg["occ_scale"], loss_cfg["occ_bias"]),
                             visible_mask(full[b:], full[:b], loss_cfg["occ_scale"], loss_cfg["occ_bias"])), 0)
        else:
            vis = torch.ones_like(full[:, :1])
    photometric = first.new_zeros(())
    for i, (flow, weight) in enumerate(zip(levels, loss_cfg["level_weights"])):
        if not weight:
            continue
        factor = 2 ** i
        flow_px = pyramid_to_pixels(flow, i, height, width)
        im1 = F.avg_pool2d(first, factor) if factor > 1 else first
        im2 = F.avg_pool2d(second, factor) if factor > 1 else second
        mask = F.interpolate(vis, size=im1.shape[-2:], mode="nearest")
        photometric = photometric + weight * photometric_loss(
            im1, im2, flow_px, mask, loss_cfg["w_census"], loss_cfg["w_ssim"], loss_cfg["w_l1"])
    smooth = smoothness_loss(full, first, loss_cfg["smooth_alpha"], loss_cfg["smooth_order"])
    loss = photometric + loss_cfg["smooth_weight"] * smooth
    terms = {"photometric": photometric.item(), "smoothness": smooth.item(), "visible": vis.mean().item()}
    return loss, terms, full[:b].detach(), full[b:].detach(), vis[:b], vis[b:]


def stage1_loss(teacher: torch.nn.Module, batch: dict[str, torch.Tensor], augmentor: Augmentor,
                loss_cfg: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
    """One stage-1 step: L_ph + L_sm on (I1, I2), plus ar_weight * L_sup on the augmented pair.

    batch: img1, img2 (B, 3, H, W) RGB in [0, 1]. The augmented pass is trained towards the
    augmented (detached) flows of the original pass, masked by their augmented
    non-occlusion (ARFlow's augmentation regularisation, in both directions as in MDFlow's
    figure, or forward only with ar_directions="forward"). For the first ``warmup_steps``
    steps there is neither occlusion masking nor augmentation term: photometric and
    smoothness only, as in ARFlow's pre-training.
    """
    img1, img2 = batch["img1"], batch["img2"]
    b, _, height, width = img1.shape
    if step < loss_cfg["warmup_steps"]:
        levels = teacher(torch.cat((img1, img2), 0), torch.cat((img2, img1), 0))
        loss, terms, *_ = unsupervised_loss(levels, img1, img2, loss_cfg, occlusion=False)
        terms["loss"] = loss.item()
        return loss, terms
    params = augmentor.sample(b, height, width)
    aug1, aug2 = augmentor.appearance(params, augmentor.spatial(params, img1, 1), augmentor.spatial(params, img2, 2))
    both = loss_cfg["ar_directions"] == "both"
    firsts = [img1, img2, aug1] + ([aug2] if both else [])
    seconds = [img2, img1, aug2] + ([aug1] if both else [])
    levels = teacher(torch.cat(firsts, 0), torch.cat(seconds, 0))
    original = [lvl[:2 * b] for lvl in levels]
    loss, terms, flow_fw, flow_bw, vis_fw, vis_bw = unsupervised_loss(original, img1, img2, loss_cfg)
    pred = teacher_flow_to_pixels(levels[0][2 * b:], height, width)
    ar = masked_l1(pred[:b], augmentor.flow(params, flow_fw, "fw"), augmentor.spatial(params, vis_fw, 1))
    if both:
        ar = (ar + masked_l1(pred[b:], augmentor.flow(params, flow_bw, "bw"), augmentor.spatial(params, vis_bw, 2))) / 2
    terms["augmentation"] = ar.item()
    loss = loss + loss_cfg["ar_weight"] * ar
    terms["loss"] = loss.item()
    return loss, terms


RECIPES = {"stage1": stage1_loss}
