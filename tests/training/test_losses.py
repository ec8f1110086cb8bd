"""Stage-1 loss terms against cases computed by hand."""
import pytest
import torch

from mdflow_ros.flow import census_distance, fb_ratio, visible_mask, warp
from training.losses import (
    masked_l1,
    masked_mean,
    photometric_loss,
    sequence_loss,
    smoothness_loss,
    ssim_map,
)


def textured(h: int = 24, w: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_census_distance_of_an_image_with_itself_is_zero_and_positive_otherwise():
    img = textured()
    assert census_distance(img, img).abs().max() == 0
    assert census_distance(img, textured(seed=1)).mean() > 0.2
    assert census_distance(img, img * 0.5 + 0.2).mean() < 0.02, "census is nearly invariant to gain and offset"


def test_census_distance_by_hand_for_one_changed_neighbour():
    a = torch.zeros(1, 3, 3, 3)
    b = a.clone()
    b[0, :, 0, 0] = 1.0 / 255
    # centre pixel: only neighbour (0, 0) differs, by d = 0.9999 grey levels (the luma weights
    # sum to 0.9999), so its signature differs by t = d / sqrt(0.81 + d^2)
    d = 0.2989 + 0.5870 + 0.1140
    t = d / (0.81 + d * d) ** 0.5
    expected = (t * t / (0.1 + t * t)) / 9
    assert census_distance(a, b)[0, 0, 1, 1].item() == pytest.approx(expected, rel=1e-5)


def test_photometric_loss_is_zero_for_the_true_flow_and_not_for_zero_flow():
    img1 = textured(32, 40)
    true = torch.zeros(1, 2, 32, 40)
    true[:, 0] = 2.0
    img2 = warp(img1, -true, padding_mode="border")
    mask = torch.zeros(1, 1, 32, 40)
    mask[..., 4:-4, 4:-4] = 1
    assert photometric_loss(img1, img2, true, mask, w_census=1, w_ssim=1, w_l1=1) < 0.02
    assert photometric_loss(img1, img2, torch.zeros_like(true), mask) > 0.1


def test_smoothness_of_constant_and_linear_flows():
    img = textured()
    const = torch.full((1, 2, 24, 32), 3.0)
    assert smoothness_loss(const, img, order=1) == 0
    ramp = torch.arange(32.0).view(1, 1, 1, 32).expand(1, 2, 24, 32).clone()
    assert smoothness_loss(ramp, img, order=2) < 1e-7
    flat = torch.zeros(1, 3, 24, 32)
    # first order on a ramp of slope 1 over a flat image: x term (1 / 24) / 4, y term 0
    assert smoothness_loss(ramp, flat, order=1).item() == pytest.approx((1 / 24) / 4)
    with pytest.raises(ValueError, match="order"):
        smoothness_loss(const, img, order=3)


def test_masked_terms_normalise_by_the_mask():
    values = torch.tensor([[[[1.0, 3.0]]]])
    mask = torch.tensor([[[[1.0, 0.0]]]])
    assert masked_mean(values, mask).item() == pytest.approx(1.0, rel=1e-5)
    pred = torch.zeros(1, 2, 1, 2)
    target = torch.tensor([[[[1.0, 5.0]], [[3.0, 5.0]]]])
    assert masked_l1(pred, target, mask).item() == pytest.approx(2.0, rel=1e-5)


def test_sequence_loss_weights_later_iterations_more():
    target = torch.ones(1, 2, 4, 4)
    mask = torch.ones(1, 1, 4, 4)
    preds = [torch.zeros_like(target), torch.ones_like(target)]
    assert sequence_loss(preds, target, mask, gamma=0.5).item() == pytest.approx(0.5, rel=1e-5)
    huge = torch.full_like(target, 500.0)
    assert sequence_loss([torch.zeros_like(target)], huge, mask).item() == 0.0, "|target| >= 400 px is ignored"


def test_ssim_of_identical_images_is_zero_loss():
    img = textured()
    assert ssim_map(img, img).max() < 1e-4


def test_forward_backward_check_flags_inconsistent_pixels():
    fw = torch.zeros(1, 2, 16, 16)
    fw[:, 0] = 3.0
    bw = -fw.clone()
    vis = visible_mask(fw, bw)
    assert vis[..., :12].all() and not vis[..., 14:].any(), "pixels moving out of frame 2 count as occluded"
    bw[..., 8:, :] = 0.0
    vis = visible_mask(fw, bw)
    assert not vis[..., 10:, :].any() and vis[..., :6, :12].all()
    assert fb_ratio(fw, bw)[0, 0, 12, 5].item() == pytest.approx(9 / (0.01 * 9 + 0.5), rel=1e-5)
