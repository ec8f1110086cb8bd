"""MDFlow's stages: one table (``STAGES``) of what each trains, with which partner, by which loss.

A recipe gets the trained network and a batch, and returns the total loss and its terms for
logging. Stage 1 (unsupervised initialisation of the teacher T, with augmentation
regularisation) is ``stage1_loss``; stage 2 (T -> S, ``ForwardDistillation``), stage 3
(S -> T, ``BackwardDistillation``) and the classical round (an OpenCV estimator -> T or S,
``ClassicalDistillation``) are recipes built around their frozen partner
(training/partners.py) as ``recipe.partner``, which the trainer moves to its device.
Every pass of the trained network in a step goes through one forward call (original and
augmented pairs, both directions, stacked in the batch), which is what
DistributedDataParallel expects.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from mdflow_ros.conventions import DIV_FLOW
from mdflow_ros.flow import teacher_flow_to_pixels, visible_mask
from mdflow_ros.models.model_file import arch_name
from training.augment import AugmentParams, Augmentor
from training.config import DISTILL_PASSES, STAGE3_MASKS, ConfigError, check_choice
from training.losses import epe_loss, masked_l1, multilevel_epe, photometric_loss, sequence_loss, smoothness_loss
from training.partners import ClassicalPartner, NetworkPartner
from training.pretrain import pretrain_loss, student_pretrain_loss
from training.selection import distillation_masks, reliable_masks


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


def augment_pair(augmentor: Augmentor, img1: torch.Tensor, img2: torch.Tensor
                 ) -> tuple[AugmentParams, torch.Tensor, torch.Tensor]:
    """One draw of the augmentor and the augmented images (B, 3, H, W): spatial, appearance, cut-out."""
    b, _, height, width = img1.shape
    params = augmentor.sample(b, height, width)
    aug1, aug2 = augmentor.appearance(params, augmentor.spatial(params, img1, 1), augmentor.spatial(params, img2, 2))
    return params, aug1, aug2


def augment_labels(augmentor: Augmentor, params: AugmentParams, flow_fw: torch.Tensor, flow_bw: torch.Tensor,
                   mask_fw: torch.Tensor, mask_bw: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Labels and masks of the augmented pair made by the same ``params``.

    flow_fw, flow_bw: (B, 2, H, W) pixels, frame 1 -> 2 and 2 -> 1; mask_fw, mask_bw: (B, 1, H, W)
    on frames 1 and 2. Returns A(F_f), A(F_b) (exact affine label transforms) and A(M_f),
    A(M_b) (masks resampled with their frame, the backward one also without the cut-out boxes
    of augmented frame 2, whose pixels show noise).
    """
    label_fw = augmentor.flow(params, flow_fw, "fw")
    label_bw = augmentor.flow(params, flow_bw, "bw")
    aug_mask_fw = augmentor.spatial(params, mask_fw, 1)
    aug_mask_bw = augmentor.spatial(params, mask_bw, 2) * augmentor.cutout_kept(params, mask_bw)
    return label_fw, label_bw, aug_mask_fw, aug_mask_bw


class ForwardDistillation:
    """Stage 2 (T -> S): the frozen teacher's reliable flows are labels for the RAFT student.

    Per step: T gives F_f, F_b on (I1, I2); the reliable masks M_f, M_b select labels
    (training/selection.py); the augmentor maps images, flows and masks alike; S on the
    augmented pair, both directions in one call, is trained with RAFT's masked sequence loss
    (weights gamma^(N-1-i), labels of |F| >= max_flow ignored). No photometric term.
    """

    def __init__(self, partner: NetworkPartner):
        self.partner = partner

    def __call__(self, student: nn.Module, batch: dict[str, torch.Tensor], augmentor: Augmentor,
                 loss_cfg: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """batch: img1, img2 (B, 3, H, W) RGB in [0, 1]. Returns the loss and its terms."""
        img1, img2 = batch["img1"], batch["img2"]
        b = img1.shape[0]
        with torch.no_grad():
            flow_fw, flow_bw = self.partner.flows(batch)
            mask_fw, mask_bw = distillation_masks(img1, img2, flow_fw, flow_bw, loss_cfg)
            params, aug1, aug2 = augment_pair(augmentor, img1, img2)
            label_fw, label_bw, m_fw, m_bw = augment_labels(augmentor, params, flow_fw, flow_bw, mask_fw, mask_bw)
        preds = student(torch.cat((aug1, aug2), 0), torch.cat((aug2, aug1), 0))
        gamma, max_flow = loss_cfg["sequence_gamma"], loss_cfg["max_flow"]
        loss = (sequence_loss([p[:b] for p in preds], label_fw, m_fw, gamma, max_flow)
                + sequence_loss([p[b:] for p in preds], label_bw, m_bw, gamma, max_flow)) / 2
        with torch.no_grad():
            label_epe = (epe_loss(preds[-1][:b], label_fw, m_fw) + epe_loss(preds[-1][b:], label_bw, m_bw)) / 2
        terms = {"loss": loss.item(), "label_epe": label_epe.item(),
                 "selected": ((mask_fw.mean() + mask_bw.mean()) / 2).item()}
        return loss, terms


class BackwardDistillation:
    """Stage 3 (S -> T): the frozen student's flows are labels for the teacher, plus its own L_ph + L_sm.

    Per step, in one teacher call: T on (I1, I2) both ways gives the photometric and
    smoothness loss and its occlusion masks O_f, O_b (the "extra unsupervised term", weight
    lambda = ``unsup_weight``); T on the augmented pair both ways is trained towards the
    augmented student flows A(F^_f), A(F^_b) with masked L1 on the finest level, masked by the
    augmented A(O_f), A(O_b) of T's own pass. Two options are not in MDFlow's figure: with
    ``distill_passes`` "both" the pass on (I1, I2) is also trained towards F^_f, F^_b masked by
    O_f, O_b, and the distillation term is the mean of the two passes' terms; with
    ``stage3_mask`` "reliable" every label mask is also multiplied by the student's reliable
    matches (training/selection.py on F^_f, F^_b).
    """

    def __init__(self, partner: NetworkPartner):
        self.partner = partner

    def __call__(self, teacher: nn.Module, batch: dict[str, torch.Tensor], augmentor: Augmentor,
                 loss_cfg: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """batch: img1, img2 (B, 3, H, W) RGB in [0, 1]. Returns the loss and its terms."""
        passes = check_choice(loss_cfg["distill_passes"], "loss.distill_passes", DISTILL_PASSES)
        label_mask = check_choice(loss_cfg["stage3_mask"], "loss.stage3_mask", STAGE3_MASKS)
        img1, img2 = batch["img1"], batch["img2"]
        b, _, height, width = img1.shape
        with torch.no_grad():
            student_fw, student_bw = self.partner.flows(batch)
            params, aug1, aug2 = augment_pair(augmentor, img1, img2)
        levels = teacher(torch.cat((img1, img2, aug1, aug2), 0), torch.cat((img2, img1, aug2, aug1), 0))
        unsup, terms, _, _, vis_fw, vis_bw = unsupervised_loss([lvl[:2 * b] for lvl in levels], img1, img2, loss_cfg)
        with torch.no_grad():
            if label_mask == "reliable":
                reliable_fw, reliable_bw = reliable_masks(img1, img2, student_fw, student_bw, loss_cfg["reliable_tau"],
                                                          loss_cfg["census_radius"], loss_cfg["occ_scale"],
                                                          loss_cfg["occ_bias"])
                vis_fw, vis_bw = vis_fw * reliable_fw, vis_bw * reliable_bw
                terms["selected"] = ((vis_fw.mean() + vis_bw.mean()) / 2).item()
            label_fw, label_bw, m_fw, m_bw = augment_labels(augmentor, params, student_fw, student_bw, vis_fw, vis_bw)
        pred = teacher_flow_to_pixels(levels[0], height, width)
        distill = (masked_l1(pred[2 * b:3 * b], label_fw, m_fw) + masked_l1(pred[3 * b:], label_bw, m_bw)) / 2
        if passes == "both":
            clean = (masked_l1(pred[:b], student_fw, vis_fw) + masked_l1(pred[b:2 * b], student_bw, vis_bw)) / 2
            terms["distillation_clean"] = clean.item()
            distill = (distill + clean) / 2
        loss = distill + loss_cfg["unsup_weight"] * unsup
        terms.update(distillation=distill.item(), unsupervised=unsup.item(), loss=loss.item())
        return loss, terms


class ClassicalDistillation:
    """The classical round: an OpenCV estimator's reliable flows are labels for T (or S), no labels needed.

    The partner (training/partners.py) ran in the loader workers on the whole raw frames:
    the batch holds its flows flow_fw, flow_bw (B, 2, H, W) px and masks mask_fw, mask_bw
    (B, 1, H, W), M = [census <= tau] * O from its own forward-backward check (synthetic
    pairs may carry their exact flow instead). One augmentor draw maps images, labels and
    masks; the trained network on the augmented pair, both directions in one call, is
    trained towards A(F) masked by A(M): the teacher with the multi-level end-point error
    (``loss.pretrain_level_weights``), the student with RAFT's sequence loss. The teacher
    also gets lambda (``unsup_weight``) times its own photometric + smoothness loss on the
    original pair, as in stage 3, and with ``distill_passes`` "both" the original pass is
    trained towards the unaugmented labels too (the mean of both passes' terms).
    """

    def __init__(self, partner: ClassicalPartner):
        self.partner = partner

    def __call__(self, net: nn.Module, batch: dict[str, torch.Tensor], augmentor: Augmentor,
                 loss_cfg: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """batch: img1, img2 (B, 3, H, W) RGB in [0, 1] and the partner's labels. Returns the loss and its terms."""
        passes = check_choice(loss_cfg["distill_passes"], "loss.distill_passes", DISTILL_PASSES)
        img1, img2 = batch["img1"], batch["img2"]
        b, _, height, width = img1.shape
        flow_fw, flow_bw = self.partner.flows(batch)
        mask_fw, mask_bw = batch["mask_fw"], batch["mask_bw"]
        with torch.no_grad():
            params, aug1, aug2 = augment_pair(augmentor, img1, img2)
            label_fw, label_bw, m_fw, m_bw = augment_labels(augmentor, params, flow_fw, flow_bw, mask_fw, mask_bw)
        labels, masks = torch.cat((label_fw, label_bw), 0), torch.cat((m_fw, m_bw), 0)
        terms = {"selected": float(torch.cat((mask_fw, mask_bw), 0).mean())}
        if arch_name(_unwrapped(net)) == "raft":
            preds = net(torch.cat((aug1, aug2), 0), torch.cat((aug2, aug1), 0))
            loss = sequence_loss(preds, labels, masks, loss_cfg["sequence_gamma"], loss_cfg["max_flow"])
            with torch.no_grad():
                terms["label_epe"] = epe_loss(preds[-1], labels, masks).item()
            terms["loss"] = loss.item()
            return loss, terms
        original = bool(loss_cfg["unsup_weight"]) or passes == "both"
        firsts = ([img1, img2] if original else []) + [aug1, aug2]
        seconds = ([img2, img1] if original else []) + [aug2, aug1]
        levels = net(torch.cat(firsts, 0), torch.cat(seconds, 0))
        k = 2 * b if original else 0
        distill, level_terms = multilevel_epe([lvl[k:] for lvl in levels], labels, masks,
                                              loss_cfg["pretrain_level_weights"])
        terms.update(level_terms)
        with torch.no_grad():
            terms["label_epe"] = epe_loss(teacher_flow_to_pixels(levels[0][k:], height, width), labels, masks).item()
        if passes == "both":
            clean, _ = multilevel_epe([lvl[:2 * b] for lvl in levels], torch.cat((flow_fw, flow_bw), 0),
                                      torch.cat((mask_fw, mask_bw), 0), loss_cfg["pretrain_level_weights"])
            terms["distillation_clean"] = clean.item()
            distill = (distill + clean) / 2
        loss = distill
        if loss_cfg["unsup_weight"]:
            unsup, unsup_terms, *_ = unsupervised_loss([lvl[:2 * b] for lvl in levels], img1, img2, loss_cfg)
            terms.update(unsup_terms, unsupervised=unsup.item())
            loss = loss + loss_cfg["unsup_weight"] * unsup
        terms.update(distillation=distill.item(), loss=loss.item())
        return loss, terms


def _unwrapped(net: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel wrapper (or the network itself)."""
    return getattr(net, "module", net)


Recipe = Callable[[nn.Module, dict[str, torch.Tensor], Augmentor, dict[str, Any], int],
                  tuple[torch.Tensor, dict[str, float]]]


@dataclass(frozen=True)
class Stage:
    """One row of the stage table.

    trains: the architecture trained ("fastflownet" or "raft"), or None when the config's
    ``network`` chooses it (the classical round). partner: None, "network" (a frozen model
    file of architecture ``partner_arch``) or "classical" (the config's ``partner`` section).
    recipe: the loss function, or the recipe class built around the partner. data:
    "synthetic" (the synthetic source's ground truth only, no --data) or "recordings"
    (--data mixed with synthetic pairs).
    """

    name: str
    trains: str | None
    partner: str | None
    partner_arch: str | None
    recipe: Callable[..., Any]
    data: str
    summary: str


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("pretrain", "fastflownet", None, None, pretrain_loss, "synthetic",
          "optional: the teacher on the synthetic source's exact flow"),
    Stage("student_pretrain", "raft", None, None, student_pretrain_loss, "synthetic",
          "optional: the student on the synthetic source's exact flow"),
    Stage("stage1", "fastflownet", None, None, stage1_loss, "recordings",
          "MDFlow stage 1: unsupervised teacher with augmentation regularisation"),
    Stage("classical", None, "classical", None, ClassicalDistillation, "recordings",
          "round 0: a classical estimator's reliable flows distilled into the teacher (or the student)"),
    Stage("stage2", "raft", "network", "fastflownet", ForwardDistillation, "recordings",
          "MDFlow stage 2: the frozen teacher's reliable flows distilled into the student"),
    Stage("stage3", "fastflownet", "network", "raft", BackwardDistillation, "recordings",
          "MDFlow stage 3: the frozen student's flows distilled back into the teacher, plus its own unsupervised loss"),
)}
"""Every stage train.py runs, by name."""

NETWORK_ARCH: dict[str, str] = {"teacher": "fastflownet", "student": "raft"}
"""The config's ``network`` (the classical round's trained network) -> architecture."""


def check_stage(config: dict[str, Any]) -> str:
    """The architecture a config's stage trains, after checking that the stage can run this config.

    ConfigError for an unknown stage, a ``network`` it cannot train, or (classical round) a
    RAFT student with the teacher-only options (its photometric term, the original pass).
    """
    arch = trained_arch(config)
    if STAGES[config["stage"]].partner == "classical" and arch == "raft":
        loss = config["loss"]
        if loss["unsup_weight"] or loss["distill_passes"] != "augmented":
            raise ConfigError("the classical round trains the RAFT student on the augmented pass only: "
                              "set loss.unsup_weight: 0 and loss.distill_passes: augmented")
    return arch


def trained_arch(config: dict[str, Any]) -> str:
    """The architecture a config's stage trains (ConfigError for an unknown stage or a ``network`` it cannot train)."""
    stage = STAGES.get(config["stage"])
    if stage is None:
        raise ConfigError(f"unknown stage {config['stage']!r}: expected one of {sorted(STAGES)}")
    network = config["network"]
    if network is not None and network not in NETWORK_ARCH:
        raise ConfigError(f"network must be one of {sorted(NETWORK_ARCH)} or null, got {network!r}")
    if stage.trains is None:
        return NETWORK_ARCH[network or "teacher"]
    if network is not None and NETWORK_ARCH[network] != stage.trains:
        raise ConfigError(f"{stage.name} trains the {stage.trains} network; network: {network} does not apply")
    return stage.trains


def make_recipe(stage: str, partner: NetworkPartner | ClassicalPartner | None = None) -> Recipe:
    """The recipe of ``stage``, built around ``partner`` (a frozen network in stages 2 and 3, classical in round 0)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}: expected one of {sorted(STAGES)}")
    spec = STAGES[stage]
    if spec.partner is None:
        if partner is not None:
            raise ValueError(f"{stage} trains without a partner, but one was given")
        return spec.recipe
    if spec.partner == "classical":
        if not isinstance(partner, ClassicalPartner):
            raise ValueError(f"{stage} needs a classical partner, got {type(partner).__name__}")
        return spec.recipe(partner)
    if not isinstance(partner, NetworkPartner) or arch_name(partner.net) != spec.partner_arch:
        got = "none" if not isinstance(partner, NetworkPartner) else arch_name(partner.net)
        raise ValueError(f"{stage} needs a frozen {spec.partner_arch} network, got {got}")
    return spec.recipe(partner)
