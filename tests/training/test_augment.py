"""The augmentor: exact label transforms, labels untouched by appearance, masks following frame 1."""
import torch

from mdflow_ros.flow import warp
from training.augment import AugmentConfig, Augmentor


def scene(h: int = 96, w: int = 128) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A smooth texture and its copy moved by a known, spatially varying flow (frame 1 -> 2)."""
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    tex = torch.stack((torch.sin(xx / 3) + torch.cos(yy / 5), torch.sin((xx + yy) / 7), torch.cos(xx / 4 - yy / 6)))
    img1 = (tex[None] * 0.25 + 0.5)
    flow = torch.stack((2.0 + 0.02 * xx, -1.5 + 0.01 * yy))[None]
    # frame 2 such that img2(p + flow(p)) = img1(p): sample img1 at p - flow (flow is smooth)
    img2 = warp(img1, -flow, padding_mode="border")
    return img1, img2, flow


def test_augmented_label_takes_augmented_frame_1_to_augmented_frame_2():
    img1, img2, flow = scene()
    aug = Augmentor(AugmentConfig(), torch.Generator().manual_seed(3))
    for _ in range(4):
        p = aug.sample(1, 96, 128)
        a1, a2 = aug.spatial(p, img1, 1), aug.spatial(p, img2, 2)
        label = aug.flow(p, flow, "fw")
        err = (warp(a2, label) - a1).abs()[..., 12:-12, 12:-12].mean()
        assert err < 0.01, err
        assert (label - flow).abs().mean() > 0.05, "the transform changed the label"


def test_backward_labels_take_augmented_frame_2_to_frame_1():
    img1, img2, flow = scene()
    back = -warp(flow, -flow, padding_mode="border")
    aug = Augmentor(AugmentConfig(), torch.Generator().manual_seed(5))
    p = aug.sample(1, 96, 128)
    a1, a2 = aug.spatial(p, img1, 1), aug.spatial(p, img2, 2)
    label = aug.flow(p, back, "bw")
    assert (warp(a1, label) - a2).abs()[..., 12:-12, 12:-12].mean() < 0.02


def test_identity_augmentation_keeps_the_label():
    _, _, flow = scene()
    cfg = AugmentConfig(zoom=(1, 1), squeeze=(1, 1), rotate=(0, 0), translate=0, rel_zoom=(1, 1), rel_rotate=0,
                        rel_translate=0, hflip=False, vflip=False)
    aug = Augmentor(cfg, torch.Generator().manual_seed(0))
    p = aug.sample(2, 96, 128)
    torch.testing.assert_close(aug.flow(p, flow.expand(2, -1, -1, -1), "fw"), flow.expand(2, -1, -1, -1),
                               atol=1e-4, rtol=1e-4)


def test_appearance_changes_both_frames_alike_and_stays_in_range():
    img1, img2, _ = scene()
    cfg = AugmentConfig(noise_std=0.0)
    aug = Augmentor(cfg, torch.Generator().manual_seed(1))
    p = aug.sample(1, 96, 128)
    b1, b2 = aug.appearance(p, img1, img1.clone())
    torch.testing.assert_close(b1, b2)
    assert 0 <= b1.min() and b1.max() <= 1 and (b1 - img1).abs().mean() > 0.01


def test_cutout_replaces_boxes_of_frame_2_only():
    img1, img2, _ = scene()
    cfg = AugmentConfig(cutout_prob=1.0, brightness=0, contrast=0, saturation=0, gamma=(1, 1), noise_std=0)
    aug = Augmentor(cfg, torch.Generator().manual_seed(2))
    p = aug.sample(1, 96, 128)
    c1, c2 = aug.appearance(p, img1, img2)
    torch.testing.assert_close(c1, img1, atol=1e-4, rtol=1e-4)
    changed = (c2 - img2).abs().sum(1) > 1e-3
    assert 0.002 < changed.float().mean() < 0.2


def test_masks_follow_frame_1():
    aug = Augmentor(AugmentConfig(), torch.Generator().manual_seed(4))
    mask = torch.zeros(1, 1, 96, 128)
    mask[..., :, :64] = 1
    p = aug.sample(1, 96, 128)
    moved = aug.spatial(p, mask, 1)
    coords = aug._coords(p.a1, mask)
    inside_left = coords[:, 0] < 62
    assert (moved[:, 0][inside_left] > 0.99).all()
