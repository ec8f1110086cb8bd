"""Reliable matching selection on a hand-built pair with a known occluder, and the tau report."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mdflow_ros.flow import visible_mask
from mdflow_ros.models import FastFlowNet
from mdflow_ros.models.model_file import save_model_file
from training import tau_report
from training.config import DEFAULTS
from training.selection import distillation_masks, reliable_masks

H, W, SHIFT = 48, 96, 8
OCC_ROWS, OCC_COLS = slice(16, 32), slice(48, 64)
"""A static patch, the same in both frames, in front of a background moving SHIFT px right."""
INV_ROWS, INV_COLS = slice(34, 44), slice(16, 34)
"""Where frame 2's appearance is inverted (the flow is right there, but the match is not)."""


def texture(h: int, w: int, seed: int) -> torch.Tensor:
    """(1, 3, h, w) random texture in [0.1, 0.9], lightly smoothed."""
    noise = torch.rand(1, 3, h + 2, w + 2, generator=torch.Generator().manual_seed(seed))
    return 0.1 + 0.8 * F.avg_pool2d(noise, 3, 1)


def region(rows: slice, cols: slice) -> torch.Tensor:
    """(H, W) bool, True on rows x cols."""
    out = torch.zeros(H, W, dtype=torch.bool)
    out[rows, cols] = True
    return out


def occluder_scene() -> dict:
    """Frames, exact flows both ways, and the named regions each direction must drop."""
    background = texture(H, W + SHIFT, 0)
    img1 = background[..., SHIFT:].clone()
    img2 = background[..., :W].clone()
    for img in (img1, img2):
        img[..., OCC_ROWS, OCC_COLS] = texture(16, 16, 1)
    img2[..., INV_ROWS, INV_COLS] = 1.0 - img2[..., INV_ROWS, INV_COLS]
    flow_fw = torch.zeros(1, 2, H, W)
    flow_fw[:, 0] = SHIFT
    flow_fw[:, :, OCC_ROWS, OCC_COLS] = 0
    shifted = slice(INV_COLS.start - SHIFT, INV_COLS.stop - SHIFT)
    drop_fw = {"moves behind the occluder": region(OCC_ROWS, slice(OCC_COLS.start - SHIFT, OCC_COLS.start)),
               "leaves the frame": region(slice(None), slice(W - SHIFT, W)),
               "lands on inverted appearance": region(INV_ROWS, shifted)}
    drop_bw = {"was hidden by the occluder": region(OCC_ROWS, slice(OCC_COLS.stop, OCC_COLS.stop + SHIFT)),
               "entered the frame": region(slice(None), slice(0, SHIFT)),
               "has inverted appearance": region(INV_ROWS, INV_COLS)}
    return {"img1": img1, "img2": img2, "flow_fw": flow_fw, "flow_bw": -flow_fw, "drop_fw": drop_fw, "drop_bw": drop_bw}


def boundaries(drop: torch.Tensor, width: int = 2) -> torch.Tensor:
    """Pixels within ``width`` of an edge of ``drop``, of the occluder, or of the image (census and bilinear reach)."""
    near = torch.zeros(H, W, dtype=torch.bool)
    for area in (drop.float(), region(OCC_ROWS, OCC_COLS).float()):
        grown = F.max_pool2d(area[None, None], 2 * width + 1, 1, width)[0, 0]
        shrunk = -F.max_pool2d(-area[None, None], 2 * width + 1, 1, width)[0, 0]
        near |= (grown - shrunk) > 0
    near[:width], near[-width:], near[:, :width], near[:, -width:] = True, True, True, True
    return near


def test_reliable_mask_drops_occluded_and_mismatched_pixels_and_keeps_the_rest():
    s = occluder_scene()
    m_fw, m_bw = reliable_masks(s["img1"], s["img2"], s["flow_fw"], s["flow_bw"], DEFAULTS["loss"]["reliable_tau"])
    for mask, regions in ((m_fw[0, 0], s["drop_fw"]), (m_bw[0, 0], s["drop_bw"])):
        drop = torch.stack(list(regions.values())).any(0)
        sure = ~boundaries(drop)
        for name, area in regions.items():
            assert (area & sure).sum() >= 40, f"too few pixels that {name} to test"
            assert (mask[area & sure] == 0).all(), f"a pixel that {name} was kept"
        assert (~drop & sure).sum() > 2000
        assert (mask[~drop & sure] == 1).all(), "a correctly matched, visible pixel was dropped"


def test_the_census_test_drops_what_the_occlusion_check_keeps():
    s = occluder_scene()
    inverted = s["drop_fw"]["lands on inverted appearance"]
    sure = ~boundaries(inverted)
    visible = visible_mask(s["flow_fw"], s["flow_bw"])[0, 0]
    reliable = reliable_masks(s["img1"], s["img2"], s["flow_fw"], s["flow_bw"], 0.3)[0][0, 0]
    assert (visible[inverted & sure] == 1).all(), "the flow is consistent there: only the census test drops it"
    assert (reliable[inverted & sure] == 0).all()
    assert (reliable <= visible).all(), "M = [census <= tau] * O is a subset of O"


def test_mask_kinds_of_the_config():
    s = occluder_scene()
    loss = copy.deepcopy(DEFAULTS["loss"])
    args = (s["img1"], s["img2"], s["flow_fw"], s["flow_bw"])
    reliable = distillation_masks(*args, loss)
    torch.testing.assert_close(reliable, reliable_masks(*args, loss["reliable_tau"]))
    loss["distill_mask"] = "occlusion"
    torch.testing.assert_close(distillation_masks(*args, loss)[1], visible_mask(s["flow_bw"], s["flow_fw"]))
    loss["distill_mask"] = "none"
    assert all((m == 1).all() for m in distillation_masks(*args, loss))
    loss["distill_mask"] = "census"
    with pytest.raises(ValueError, match="distill_mask must be one of"):
        distillation_masks(*args, loss)


def test_tau_report_on_a_tiny_model(tmp_path):
    torch.manual_seed(0)
    model = tmp_path / "teacher.pt"
    save_model_file(model, FastFlowNet().eval())
    out = tmp_path / "tau.md"
    tau_report.main([str(model), "--synthetic", "2", "--synthetic-size", "64", "128", "--data", "--taus", "0.2", "0.4",
                     "--out", str(out)])
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| synthetic-2 |")]
    assert len(rows) == 4, text
    kept = [float(r.split("|")[4]) for r in rows[:3]]
    assert kept == sorted(kept), "a larger tau keeps at least as many pixels"
    assert np.isfinite([float(x) for x in rows[-1].split("|")[2:7]]).all()


def test_tau_report_reads_stage_2_constants_from_a_pipeline_config(tmp_path):
    pipeline = tmp_path / "mdflow.yaml"
    pipeline.write_text("rounds: 1\nstages:\n  stage2:\n    loss: {census_radius: 2}\n")
    stage = tmp_path / "stage2.yaml"
    stage.write_text("stage: stage2\nloss: {census_radius: 2}\n")
    assert tau_report.stage2_loss_config(str(pipeline)) == tau_report.stage2_loss_config(str(stage))
    assert tau_report.stage2_loss_config(str(pipeline))["census_radius"] == 2
