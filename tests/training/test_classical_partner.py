"""The classical partner and round: OpenCV flow in the loader workers, its mask, its cache, the stage end to end."""
from __future__ import annotations

import math
import signal
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from mdflow_ros.flow import warp
from mdflow_ros.models.model_file import load_model, load_model_file
from mdflow_ros.synthetic import photo_library
from training.augment import AugmentConfig, Augmentor
from training.checkpoint import load_checkpoint
from training.config import DEFAULTS, ConfigError, load_config, load_pipeline_config, merge
from mdflow_ros.io.file_sources import ImageFolderFrames
from training.data.pairs import FramePairs
from training.make_bag import write_known_motion_bag
from training.partners import (
    CLASSICAL_METHODS,
    ClassicalFlow,
    ClassicalPartner,
    FlowCache,
    MaskRule,
    PairLabeler,
    PartnerError,
    label_masks,
)
from training.stages import augment_labels, augment_pair
from training_cli import run_script

REPO = Path(__file__).resolve().parents[2]
SIZE = (96, 128)
RULE = MaskRule("reliable", DEFAULTS["loss"]["reliable_tau"], DEFAULTS["loss"]["census_radius"],
                DEFAULTS["loss"]["occ_scale"], DEFAULTS["loss"]["occ_bias"])
TINY = {
    "stage": "classical", "seed": 3,
    "partner": {"method": "dis-fast", "params": {"finest_scale": 1}},
    "data": {"crop": [64, 64], "synthetic_pairs": 4, "num_workers": 1, "max_gap_s": 0.5, "resolution_policy": "keep"},
    "train": {"steps": 5, "batch_size": 2, "threads": 1, "log_every": 1, "checkpoint_every": 1, "val_every": 1000,
              "ema_decay": 0.9, "lr_warmup_steps": 2},
    "validation": {"synthetic_pairs": 0},
}


def panned_frames(count: int = 6, step: int = 3) -> list[np.ndarray]:
    """(96, 128, 3) uint8 RGB frames of a real photo panning ``step`` px a frame to the left."""
    photo = cv2.resize(photo_library()[0], (220, 160), interpolation=cv2.INTER_AREA)
    return [np.ascontiguousarray(photo[20:20 + SIZE[0], step * k:step * k + SIZE[1]]) for k in range(count)]


def write_folder(folder: Path, frames: list[np.ndarray]) -> Path:
    folder.mkdir(parents=True)
    for k, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"frame_{k:02d}.png"), frame[:, :, ::-1])
    return folder


def dis_medium(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """OpenCV's DIS-medium written out here, independently of training/partners.py."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return dis.calc(cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), cv2.cvtColor(b, cv2.COLOR_RGB2GRAY), None)


def test_partner_flow_from_a_loader_worker_equals_opencv_on_the_same_frames(tmp_path):
    frames = panned_frames()
    pairs = FramePairs([ImageFolderFrames(write_folder(tmp_path / "seq", frames))],
                       labeler=PairLabeler(ClassicalPartner(ClassicalFlow("dis-medium")), RULE))
    loader = DataLoader(pairs, batch_size=None, sampler=[(2, 0)], num_workers=1)
    item = next(iter(loader))
    fw, bw = dis_medium(frames[2], frames[3]), dis_medium(frames[3], frames[2])
    np.testing.assert_array_equal(item["flow_fw"].permute(1, 2, 0).numpy(), fw)
    np.testing.assert_array_equal(item["flow_bw"].permute(1, 2, 0).numpy(), bw)
    assert abs(float(np.median(fw[..., 0])) + 3) < 0.3, "the photo pans 3 px to the left"
    assert item["mask_fw"].shape == (1,) + SIZE and 0.5 < float(item["mask_fw"].mean()) <= 1.0


@pytest.mark.parametrize("method", CLASSICAL_METHODS)
def test_every_classical_method_finds_a_known_shift(method):
    frames = panned_frames(2)
    flow = ClassicalFlow(method)(frames[0], frames[1])
    assert flow.shape == SIZE + (2,) and flow.dtype == np.float32
    inner = flow[16:-16, 16:-16]
    assert abs(float(np.median(inner[..., 0])) + 3) < 0.5 and abs(float(np.median(inner[..., 1]))) < 0.5


def occluder_scene() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A background moving 3 px right, a square moving 12 px left over it; (img1, img2, occluded, far).

    occluded: (H, W) bool, background pixels of frame 1 that the square covers in frame 2;
    far: background pixels at least 16 px from either position of the square.
    """
    photos = photo_library()
    bg = cv2.resize(photos[0], (240, 160), interpolation=cv2.INTER_AREA)
    square = cv2.resize(photos[1], (40, 40), interpolation=cv2.INTER_AREA)
    h, w = SIZE
    img1, img2 = bg[20:20 + h, 40:40 + w].copy(), bg[20:20 + h, 37:37 + w].copy()
    (y, x1), x2 = (28, 70), 58
    img1[y:y + 40, x1:x1 + 40] = square
    img2[y:y + 40, x2:x2 + 40] = square
    xs = np.arange(w)[None].repeat(h, 0)
    ys = np.arange(h)[:, None].repeat(w, 1)
    in1 = (ys >= y) & (ys < y + 40) & (xs >= x1) & (xs < x1 + 40)
    covered_later = (ys >= y) & (ys < y + 40) & (xs + 3 >= x2) & (xs + 3 < x2 + 40)
    near = (ys >= y - 16) & (ys < y + 56) & (xs >= x2 - 16) & (xs < x1 + 56)
    return img1, img2, covered_later & ~in1, ~near


def test_the_reliable_mask_drops_a_known_occluder():
    img1, img2, occluded, far = occluder_scene()
    assert occluded.sum() > 300, "a strip of background is hidden in frame 2"
    fw, bw = dis_medium(img1, img2), dis_medium(img2, img1)
    mask_fw, _ = label_masks(img1, img2, fw, bw, RULE)
    assert mask_fw[occluded].mean() < 0.2, "the occluded strip is dropped"
    assert mask_fw[far].mean() > 0.8, "the background away from the square is kept"
    visible, _ = label_masks(img1, img2, fw, bw, MaskRule("occlusion", *list(RULE.__dict__.values())[1:]))
    assert visible[occluded].mean() < 0.3 and (visible >= mask_fw).all(), "reliable = census check within the visible"
    every, _ = label_masks(img1, img2, fw, bw, MaskRule("none", *list(RULE.__dict__.values())[1:]))
    assert every.all()


def photometric_error(first: torch.Tensor, second: torch.Tensor, flow: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean |warp(second, flow) - first| over mask pixels (tensors with a batch of 1 or more)."""
    err = (warp(second, flow, "border") - first).abs().mean(1, keepdim=True)
    return float((err * mask).sum() / mask.sum())


def test_labels_follow_crops_flips_swaps_and_the_augmentor(tmp_path):
    frames = panned_frames(8, step=4)
    pairs = FramePairs([ImageFolderFrames(write_folder(tmp_path / "seq", frames))], crop=(64, 64), hflip=True,
                       swap=True, labeler=PairLabeler(ClassicalPartner(ClassicalFlow("dis-medium")), RULE))
    items = [pairs[(i, seed)] for i in range(4) for seed in range(4)]
    batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
    directions = batch["flow_fw"][:, 0, 16:-16, 16:-16].median(dim=-1).values.median(dim=-1).values
    assert (directions > 3).any() and (directions < -3).any(), "flips and swaps reverse the pan in some items"
    zero = torch.zeros_like(batch["flow_fw"])
    for first, second, flow, mask in (("img1", "img2", "flow_fw", "mask_fw"), ("img2", "img1", "flow_bw", "mask_bw")):
        with_label = photometric_error(batch[first], batch[second], batch[flow], batch[mask])
        without = photometric_error(batch[first], batch[second], zero, batch[mask])
        assert with_label < 0.25 * without, f"{flow} takes {first} to {second}"

    aug = Augmentor(AugmentConfig(noise_std=0.0), torch.Generator().manual_seed(5))
    params, a1, a2 = augment_pair(aug, batch["img1"], batch["img2"])
    label_fw, label_bw, m_fw, m_bw = augment_labels(aug, params, batch["flow_fw"], batch["flow_bw"],
                                                    batch["mask_fw"], batch["mask_bw"])
    colour = aug.appearance(params, aug.spatial(params, batch["img1"], 1), aug.spatial(params, batch["img2"], 2))
    assert torch.equal(colour[0], a1)
    inner = torch.zeros_like(m_fw)
    inner[..., 8:-8, 8:-8] = 1
    for first, second, label, mask in ((a1, a2, label_fw, m_fw), (a2, a1, label_bw, m_bw)):
        assert photometric_error(first, second, label, mask * inner) < 0.3 * photometric_error(
            first, second, torch.zeros_like(label), mask * inner)


def test_the_cache_is_hit_on_a_second_epoch_and_refuses_damaged_or_stale_entries(tmp_path):
    frames = panned_frames()
    cache = FlowCache(tmp_path / "cache")
    partner = ClassicalPartner(ClassicalFlow("dis-medium"), cache)
    pairs = FramePairs([ImageFolderFrames(write_folder(tmp_path / "seq", frames))], labeler=PairLabeler(partner, RULE))
    first = [pairs[(i, 0)] for i in range(len(pairs))]
    assert (cache.stats.hits, cache.stats.misses, cache.stats.refused) == (0, 5, 0)
    second = [pairs[(i, 0)] for i in range(len(pairs))]
    assert (cache.stats.hits, cache.stats.misses) == (5, 5), "the second epoch reads every pair from the cache"
    for a, b in zip(first, second):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == 5 and not list((tmp_path / "cache").rglob("*.tmp"))

    key01 = cache.key(partner.flow.record(), frames[0], frames[1])
    key12 = cache.key(partner.flow.record(), frames[1], frames[2])
    assert cache.key(ClassicalFlow("dis-fast").record(), frames[0], frames[1]) != key01, "the method is in the key"
    fresh = (dis_medium(frames[0], frames[1]), dis_medium(frames[1], frames[0]))
    entry = cache.path(key01)
    damages = {
        "truncated": lambda data: data[: len(data) // 2],
        "bit flip": lambda data: data[:-400] + bytes([data[-400] ^ 0x40]) + data[-399:],
        "garbage": lambda data: b"not an npz file",
        "stale": lambda data: cache.path(key12).read_bytes(),
    }
    for n, (name, damage) in enumerate(damages.items(), start=1):
        entry.write_bytes(damage(entry.read_bytes()))
        fw, bw = partner.pair_flows(frames[0], frames[1])
        assert cache.stats.refused == n, f"a {name} entry is refused"
        np.testing.assert_array_equal(fw, fresh[0])
        np.testing.assert_array_equal(bw, fresh[1])
    hits = cache.stats.hits
    partner.pair_flows(frames[0], frames[1])
    assert cache.stats.hits == hits + 1, "the refused entry was rewritten"


def test_pairs_the_partner_cannot_process_are_skipped_and_counted(tmp_path):
    tiny = [cv2.resize(f, (40, 24), interpolation=cv2.INTER_AREA) for f in panned_frames(3)]
    pairs = FramePairs([ImageFolderFrames(write_folder(tmp_path / "a_tiny", tiny)),
                        ImageFolderFrames(write_folder(tmp_path / "b_ok", panned_frames(3)))],
                       resolution_policy="keep", labeler=PairLabeler(ClassicalPartner(ClassicalFlow("dis-fast")), RULE))
    item = pairs[(0, 0)]
    assert item["img1"].shape == (3,) + SIZE and pairs.skipped_pairs == 2, "both tiny pairs were skipped"
    with pytest.raises(PartnerError, match="at least 32 px"):
        ClassicalFlow("dis-fast")(tiny[0], tiny[1])
    with pytest.raises(PartnerError, match="one size"):
        ClassicalFlow("dis-fast")(panned_frames(1)[0], tiny[0])


@pytest.mark.parametrize(("partner", "message"), [
    ({"method": "dis-slow"}, "unknown classical method 'dis-slow'"),
    ({"method": "dis-medium", "params": {"finest_scal": 1}}, "dis-medium has no parameter 'finest_scal'"),
    ({"method": "dis-medium", "params": {"patch_size": "big"}}, "OpenCV rejects patch_size='big'"),
    ({"method": "dis-medium", "params": {"patch_size": -4}}, "dis-medium"),
    ({"method": "farneback", "params": {"levels": 5, "winsz": 9}}, "farneback has no parameter"),
    ({"method": "deepflow", "params": {"alpha": 1.0}}, "deepflow takes no parameters"),
    ({"method": "dis-medium", "mask": "census"}, "partner.mask must be one of"),
    ({"method": "dis-medium", "params": [1]}, "partner.params must be a mapping"),
])
def test_a_partner_opencv_cannot_run_is_a_config_error_at_load(tmp_path, partner, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"stage": "classical", "partner": partner}))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config(path)


def test_the_classical_pipeline_config_runs_classical_then_stages_2_and_3(tmp_path):
    rounds, cfgs = load_pipeline_config(REPO / "config" / "train" / "mdflow_classical.yaml")
    assert list(cfgs) == ["classical", "stage2", "stage3"] and rounds == 1
    assert cfgs["classical"]["partner"]["method"] == "dis-medium" and cfgs["stage2"]["stage"] == "stage2"
    assert load_config(REPO / "config" / "train" / "classical.yaml")["stage"] == "classical"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"first": "classical", "stages": {"stage1": {"train": {"steps": 3}}}}))
    with pytest.raises(ConfigError, match="starts with classical and never runs it"):
        load_pipeline_config(bad)


@pytest.fixture(scope="module")
def bag(tmp_path_factory) -> Path:
    """A real rosbag2 (sqlite3) of known-motion frames."""
    return write_known_motion_bag(tmp_path_factory.mktemp("bag") / "cam", frames=8, size=(96, 128), storage="sqlite3")


def write_config(path: Path, **overrides) -> Path:
    cfg = yaml.safe_load(yaml.safe_dump(TINY))
    for section, values in overrides.items():
        cfg[section] = dict(cfg.get(section, {}), **values) if isinstance(values, dict) else values
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_the_classical_round_on_a_rosbag2_resumes_exactly_after_a_kill(bag, tmp_path):
    config = write_config(tmp_path / "tiny.yaml", partner={"cache_dir": str(tmp_path / "cache")})
    straight = run_script("train.py", config, bag, tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-2000:]
    model = tmp_path / "straight" / "teacher_fastflownet.pt"
    meta = load_model_file(model).meta
    assert meta["stage"] == "classical" and meta["step"] == 5
    assert meta["partner"] == {"kind": "classical", "method": "dis-fast", "params": {"finest_scale": 1},
                               "cache": str(tmp_path / "cache")}
    ckpt = load_checkpoint(tmp_path / "straight" / "latest.pt")
    ema = ckpt["ema"]
    deployed = load_model(model).state_dict()
    assert all(torch.equal(ema[k], deployed[k]) for k in ema), "the model file holds the weight average"
    assert any(not torch.equal(ema[k], ckpt["state_dict"][k]) for k in ema), "which differs from the weights"
    assert list((tmp_path / "cache").rglob("*.npz")), "the partner's flows were cached"

    run = tmp_path / "killed"
    proc = run_script("train.py", config, bag, run, wait=False)
    deadline = time.time() + 240
    while time.time() < deadline and not (run / "latest.pt").exists():
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(run / "latest.pt")["step"]
    assert 1 <= killed_at <= 5
    resumed = run_script("train.py", config, bag, run, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = load_model(model).state_dict(), load_model(run / "teacher_fastflownet.pt").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), f"killed at step {killed_at}, the resumed run differs"


def test_an_unknown_partner_fails_before_training_with_one_line(bag, tmp_path):
    config = write_config(tmp_path / "bad.yaml", partner={"method": "dis-slow"})
    result = run_script("train.py", config, bag, tmp_path / "run")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "train.py: partner: unknown classical method 'dis-slow'" in result.stderr
    assert not (tmp_path / "run").exists()


def test_the_student_can_be_the_classical_rounds_network(bag, tmp_path):
    student = write_config(tmp_path / "student.yaml", network="student", student={"train_iters": 2},
                           train={"steps": 2, "ema_decay": 0.0})
    refused = run_script("train.py", student, bag, tmp_path / "refused")
    assert refused.returncode != 0 and "set loss.unsup_weight: 0" in refused.stderr
    student = write_config(tmp_path / "student.yaml", network="student", student={"train_iters": 2},
                           train={"steps": 2, "ema_decay": 0.0}, loss={"unsup_weight": 0.0})
    result = run_script("train.py", student, bag, tmp_path / "run")
    assert result.returncode == 0, result.stderr[-2000:]
    assert load_model_file(tmp_path / "run" / "student_raft.pt").arch == "raft"


def test_the_teachers_photometric_term_and_original_pass_add_their_terms(bag, tmp_path):
    cfg = merge(load_config(write_config(tmp_path / "c.yaml")), {"loss": {"unsup_weight": 0.5, "distill_passes": "both"}})
    from training.data.training_set import build_training_set
    from training.partners import classical_partner
    from training.stages import make_recipe

    partner = classical_partner(cfg["partner"])
    data = build_training_set(cfg, [str(bag)], partner)
    batch = {k: torch.stack([data[(i, i)][k] for i in range(2)]) for k in data[(0, 0)]}
    recipe = make_recipe("classical", partner)
    torch.manual_seed(0)
    from mdflow_ros.models import FastFlowNet

    net = FastFlowNet().train()
    loss, terms = recipe(net, batch, Augmentor(AugmentConfig(), torch.Generator().manual_seed(0)), cfg["loss"], 0)
    assert {"unsupervised", "distillation_clean", "photometric", "smoothness"} <= set(terms)
    assert terms["loss"] == pytest.approx(terms["distillation"] + 0.5 * terms["unsupervised"], rel=1e-5)
    assert math.isfinite(terms["label_epe"]) and 0 < terms["selected"] <= 1


def test_a_pipeline_starts_from_the_classical_round_then_runs_stages_2_and_3(bag, tmp_path):
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({
        "first": "classical", "seed": 3, "partner": {"method": "dis-fast"},
        "data": {"crop": [64, 64], "synthetic_pairs": 2, "num_workers": 0},
        "train": {"batch_size": 2, "threads": 1, "log_every": 1, "checkpoint_every": 1, "val_every": 1000},
        "loss": {"occ_bias": 100.0}, "student": {"train_iters": 2}, "validation": {"synthetic_pairs": 0},
        "stages": {"classical": {"train": {"steps": 2}}, "stage2": {"train": {"steps": 1}},
                   "stage3": {"train": {"steps": 1}}}}))
    result = run_script("mdflow.py", config, bag, tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    metas = {name: load_model_file(tmp_path / "run" / name / model).meta for name, model in (
        ("1-classical", "teacher_fastflownet.pt"), ("1-stage2", "student_raft.pt"), ("1-stage3", "teacher_fastflownet.pt"))}
    assert [m["stage"] for m in metas.values()] == ["classical", "stage2", "stage3"]
    assert metas["1-classical"]["partner"]["method"] == "dis-fast"
    assert metas["1-stage2"]["frozen"]["path"] == str((tmp_path / "run" / "1-classical" / "teacher_fastflownet.pt").resolve())
    assert metas["1-stage3"]["init"]["sha256"] == metas["1-stage2"]["frozen"]["sha256"], "stage 3 continues it"
