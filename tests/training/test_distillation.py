"""Stages 2 and 3: stage-2 labels under augmentation, frozen networks, the three-stage pipeline on a
real rosbag2 file with exact resume after a kill, and the student as a deployable model."""
import copy
import math
import signal
import time
from pathlib import Path

import pytest
import torch
import yaml

from mdflow_ros.files import file_sha256
from mdflow_ros.flow import pixel_grid, warp
from mdflow_ros.inference import FlowEstimator
from mdflow_ros.inference.onnx_export import export_onnx
from mdflow_ros.inference.onnx_files import onnx_metadata
from mdflow_ros.models import RAFT, FastFlowNet
from mdflow_ros.models.model_file import load_model, load_model_file, save_model_file
from mdflow_ros.synthetic import fixed_demo_pair
from training import mdflow
from training.augment import AugmentConfig, Augmentor
from training.checkpoint import load_checkpoint
from training.config import DEFAULTS, ConfigError, load_pipeline_config, merge, resume_differences
from training.data.synthetic_pairs import SyntheticPairs
from training.losses import masked_l1
from training.make_bag import write_known_motion_bag
from training.selection import reliable_masks
from training.partners import NetworkPartner
from training.stages import augment_labels, augment_pair, make_recipe
from training.train import new_network
from training.trainer import Trainer
from training_cli import run_script

REPO = Path(__file__).resolve().parents[2]
TINY = {
    "seed": 3,
    "data": {"crop": [64, 64], "synthetic_pairs": 4, "num_workers": 0, "max_gap_s": 0.5},
    "train": {"batch_size": 2, "threads": 1, "log_every": 1, "checkpoint_every": 1, "val_every": 1000},
    # an untrained teacher fails the usual forward-backward check almost everywhere; a loose one
    # leaves stage 2 labels to learn from
    "loss": {"warmup_steps": 1, "occ_bias": 100.0},
    "student": {"train_iters": 2},
    "augment": {"cutout_prob": 0.5},
    "validation": {"synthetic_pairs": 0},
    "stages": {"stage1": {"train": {"steps": 2}}, "stage2": {"train": {"steps": 3}}, "stage3": {"train": {"steps": 2}}},
}
MODELS = {"1-stage1": "teacher_fastflownet.pt", "1-stage2": "student_raft.pt", "1-stage3": "teacher_fastflownet.pt"}


def tex(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A smooth analytic RGB texture in [0.25, 0.75] at pixel coordinates x, y (same shapes) -> (1, 3, ...)."""
    return (torch.stack((torch.sin(x / 3) + torch.cos(y / 5), torch.sin((x + y) / 7) * 2, torch.cos(x / 4 - y / 6) * 2))
            [None] * 0.125 + 0.5)


def affine_scene(h: int = 96, w: int = 128) -> tuple[torch.Tensor, ...]:
    """Frames of a plane under a known similarity motion, rendered exactly, and both exact flows (B=1)."""
    grid = pixel_grid(1, h, w, torch.zeros(1, dtype=torch.float64))
    c = torch.tensor([(w - 1) / 2, (h - 1) / 2], dtype=torch.float64).view(1, 2, 1, 1)
    zoom, angle, shift = 1.03, 0.02, torch.tensor([3.0, -2.0], dtype=torch.float64).view(1, 2, 1, 1)
    rot = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]], dtype=torch.float64)

    def move(p, m):
        return torch.einsum("ij,bjhw->bihw", m, p - c) + c

    forward = move(grid, zoom * rot) + shift
    backward = move(grid - shift, torch.linalg.inv(zoom * rot))
    img1 = tex(grid[:, 0], grid[:, 1])[:, :, 0]
    img2 = tex(backward[:, 0], backward[:, 1])[:, :, 0]
    return img1.float(), img2.float(), (forward - grid).float(), (backward - grid).float()


def test_stage2_labels_take_augmented_frame_1_to_augmented_frame_2():
    img1, img2, flow_fw, flow_bw = affine_scene()
    ones = torch.ones_like(img1[:, :1])
    aug = Augmentor(AugmentConfig(noise_std=0.0, cutout_prob=1.0), torch.Generator().manual_seed(7))
    for _ in range(3):
        params, a1, a2 = augment_pair(aug, img1, img2)
        label_fw, label_bw, m_fw, m_bw = augment_labels(aug, params, flow_fw, flow_bw, ones, ones)
        kept2 = aug.cutout_kept(params, ones)
        assert (kept2 == 0).any(), "the cut-out hides part of frame 2"
        assert (m_bw[kept2 == 0] == 0).all(), "backward labels inside the cut-out are masked"
        inner = torch.zeros_like(ones, dtype=torch.bool)
        inner[..., 8:-8, 8:-8] = True
        in_view_fw = (warp(ones, label_fw) > 0.999) & (warp(kept2, label_fw) > 0.999) & inner & (m_fw > 0.999)
        in_view_bw = (warp(ones, label_bw) > 0.999) & inner & (m_bw > 0.999)
        assert in_view_fw.float().mean() > 0.4 and in_view_bw.float().mean() > 0.4
        assert (warp(a2, label_fw) - a1).abs().mean(1, keepdim=True)[in_view_fw].mean() < 0.01
        assert (warp(a1, label_bw) - a2).abs().mean(1, keepdim=True)[in_view_bw].mean() < 0.01
        assert (label_fw - flow_fw).abs().mean() > 0.5, "the augmentation changed the labels"


def stage_config(stage: str) -> dict:
    cfg = merge(DEFAULTS, {k: v for k, v in TINY.items() if k != "stages"})
    return merge(cfg, {"stage": stage, "train": {"steps": 2, "grad_clip": 1.0}})


def frozen_network(stage: str) -> torch.nn.Module:
    """Stage 2: a teacher that sees no motion (every match is consistent); stage 3: a random student."""
    torch.manual_seed(0)
    if stage == "stage3":
        return RAFT()
    teacher = FastFlowNet()
    with torch.no_grad():
        for p in teacher.parameters():
            p.zero_()
    return teacher


@pytest.mark.parametrize("stage", ["stage2", "stage3"])
def test_a_stage_trains_one_network_and_leaves_the_other_untouched(stage, tmp_path):
    cfg = stage_config(stage)
    frozen = frozen_network(stage).requires_grad_(True)
    trained = new_network(cfg)
    recipe = make_recipe(stage, NetworkPartner(frozen))
    data = SyntheticPairs(4, (64, 64))
    batch = {k: torch.stack([data[(i, i)][k] for i in range(2)]) for k in ("img1", "img2")}
    aug = Augmentor(AugmentConfig(), torch.Generator().manual_seed(0))
    loss, terms = recipe(trained.train(), batch, aug, cfg["loss"], 0)
    loss.backward()
    assert all(p.grad is None for p in frozen.parameters()), "a gradient reached the frozen network"
    assert sum(float(p.grad.abs().sum()) for p in trained.parameters() if p.grad is not None) > 0

    before = copy.deepcopy(frozen.state_dict())
    start = copy.deepcopy(trained.state_dict())
    trainer = Trainer(cfg, tmp_path, trained, recipe, data, {"arch": "raft" if stage == "stage2" else "fastflownet"})
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    trainer.run()
    assert all(torch.equal(before[k], v) for k, v in frozen.state_dict().items()), "the frozen network changed"
    assert any(not torch.equal(start[k], v) for k, v in trained.state_dict().items()), "the trained network did not"


def test_stage3_options_distil_on_the_original_pass_and_mask_by_the_students_reliable_matches():
    cfg = stage_config("stage3")
    student = frozen_network("stage3").eval()
    torch.manual_seed(1)
    teacher = FastFlowNet().train()
    data = SyntheticPairs(4, (64, 64))
    batch = {k: torch.stack([data[(i, i)][k] for i in range(2)]) for k in ("img1", "img2")}
    recipe = make_recipe("stage3", NetworkPartner(student))

    def terms_with(passes: str) -> dict[str, float]:
        loss_cfg = dict(cfg["loss"], distill_passes=passes)
        return recipe(teacher, batch, Augmentor(AugmentConfig(), torch.Generator().manual_seed(0)), loss_cfg, 0)[1]

    augmented, both = terms_with("augmented"), terms_with("both")
    assert "distillation_clean" not in augmented
    student_fw, student_bw = NetworkPartner(student).flows(batch)
    teacher_fw, teacher_bw = NetworkPartner(teacher).flows(batch)
    assert both["visible"] == 1.0, "the loose forward-backward check keeps every pixel"
    clean = float(((teacher_fw - student_fw).abs().mean() + (teacher_bw - student_bw).abs().mean()) / 2)
    assert both["distillation_clean"] == pytest.approx(clean, rel=1e-4)
    assert both["distillation"] == pytest.approx((augmented["distillation"] + clean) / 2, rel=1e-4)
    assert both["unsupervised"] == pytest.approx(augmented["unsupervised"], rel=1e-5)
    with pytest.raises(ValueError, match="distill_passes must be one of"):
        terms_with("original")

    reliable = recipe(teacher.train(), batch, Augmentor(AugmentConfig(), torch.Generator().manual_seed(0)),
                      dict(cfg["loss"], distill_passes="both", stage3_mask="reliable"), 0)[1]
    loss = cfg["loss"]
    m_fw, m_bw = reliable_masks(batch["img1"], batch["img2"], student_fw, student_bw, loss["reliable_tau"],
                                loss["census_radius"], loss["occ_scale"], loss["occ_bias"])
    assert 0.05 < reliable["selected"] < 0.95, "the student's census check keeps some labels, not all"
    assert reliable["selected"] == pytest.approx(float(m_fw.mean() + m_bw.mean()) / 2, rel=1e-5)
    clean = (masked_l1(teacher_fw, student_fw, m_fw) + masked_l1(teacher_bw, student_bw, m_bw)) / 2
    assert reliable["distillation_clean"] == pytest.approx(float(clean), rel=1e-4)
    with pytest.raises(ValueError, match="stage3_mask must be one of"):
        recipe(teacher.train(), batch, Augmentor(AugmentConfig(), torch.Generator()), dict(loss, stage3_mask="census"), 0)


def test_pipeline_config_per_stage_and_resume_of_older_checkpoints(tmp_path):
    rounds, cfgs = load_pipeline_config(REPO / "config" / "train" / "mdflow.yaml")
    assert rounds == 1 and [c["stage"] for c in cfgs.values()] == ["stage1", "stage2", "stage3"]
    assert cfgs["stage2"]["train"]["grad_clip"] == 1.0 and cfgs["stage1"]["train"]["grad_clip"] == 0.0
    assert cfgs["stage3"]["train"]["lr_schedule"] == "cosine" and cfgs["stage1"]["train"]["lr_schedule"] == "constant"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"stages": {"stage2": {"loss": {"tua": 0.2}}}}))
    with pytest.raises(ConfigError, match="stages.stage2.loss.tua"):
        load_pipeline_config(bad)
    bad.write_text(yaml.safe_dump({"stages": {"stage3": {"loss": {"stage3_mask": "relaible"}}}}))
    with pytest.raises(ConfigError, match=r"stages.stage3.loss.stage3_mask must be one of \('occlusion', 'reliable'\)"):
        load_pipeline_config(bad)
    older = copy.deepcopy(DEFAULTS)
    del older["student"], older["loss"]["census_radius"], older["loss"]["unsup_weight"]
    assert resume_differences(older, DEFAULTS) == [], "keys a checkpoint predates count as their defaults"


def pipeline(config: Path, bag: Path, out: Path, *extra: str, wait: bool = True):
    return run_script("mdflow.py", config, bag, out, *extra, wait=wait)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A real rosbag2 (mcap) of known-motion frames, a tiny pipeline config, and one uninterrupted run."""
    root = tmp_path_factory.mktemp("pipeline")
    bag = write_known_motion_bag(root / "cam", frames=8, size=(96, 128), storage="mcap")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    result = pipeline(config, bag, root / "straight")
    assert result.returncode == 0, result.stderr[-3000:]
    return {"bag": bag, "config": config, "straight": root / "straight"}


def test_three_stages_on_a_rosbag2_file_write_checkpoints_that_load(runs):
    run = runs["straight"]
    shas = {name: file_sha256(run / name / model) for name, model in MODELS.items()}
    for name, model in MODELS.items():
        stage = name.split("-")[1]
        for path in (run / name / model, run / name / "latest.pt"):
            net = load_model(path)
            assert type(net) is (RAFT if stage == "stage2" else FastFlowNet)
            meta = load_model_file(path).meta
            assert meta["stage"] == stage and meta["step"] == TINY["stages"][stage]["train"]["steps"]
        assert load_checkpoint(run / name / "latest.pt")["config"]["stage"] == stage
    meta = {name: load_model_file(run / name / model).meta for name, model in MODELS.items()}
    assert meta["1-stage1"]["parent"] is None
    assert meta["1-stage2"]["parent"]["sha256"] == meta["1-stage2"]["frozen"]["sha256"] == shas["1-stage1"]
    assert meta["1-stage3"]["parent"]["sha256"] == meta["1-stage3"]["frozen"]["sha256"] == shas["1-stage2"]
    assert meta["1-stage3"]["init"]["sha256"] == shas["1-stage1"], "stage 3 continues the stage-1 teacher"
    assert meta["1-stage2"]["parent"]["path"] == str((run / "1-stage1" / MODELS["1-stage1"]).resolve())
    first, last = (load_model(run / n / MODELS[n]).state_dict() for n in ("1-stage1", "1-stage3"))
    assert any(not torch.equal(first[k], last[k]) for k in first), "stage 3 trained the teacher"


def test_resume_mid_stage_after_a_kill_continues_exactly(runs, tmp_path):
    run = tmp_path / "killed"
    proc = pipeline(runs["config"], runs["bag"], run, wait=False)
    checkpoint = run / "1-stage2" / "latest.pt"
    deadline = time.time() + 240
    while time.time() < deadline and not checkpoint.exists() and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(checkpoint)["step"]
    assert 1 <= killed_at < TINY["stages"]["stage2"]["train"]["steps"], "killed in the middle of stage 2"
    assert not (run / "1-stage2" / "done.json").exists()

    with pytest.raises(SystemExit, match="--resume"):
        mdflow.main(["--config", str(runs["config"]), "--data", str(runs["bag"]), "--out", str(run)])
    resumed = pipeline(runs["config"], runs["bag"], run, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "round 1, stage1: complete" in resumed.stderr
    assert f"resumed {checkpoint} at step {killed_at}" in resumed.stderr
    for name, model in MODELS.items():
        a = load_model(runs["straight"] / name / model).state_dict()
        b = load_model(run / name / model).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name} differs from the uninterrupted run"


def test_student_exports_to_onnx_and_runs_on_both_backends(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "student_raft.pt"
    save_model_file(path, RAFT().eval())
    onnx_path = export_onnx(load_model(path), tmp_path / "student.onnx", with_confidence=True, sample_size=(64, 64),
                            source_sha256=file_sha256(path))
    assert onnx_metadata(onnx_path)["mdflow.arch"] == "raft"
    pair = fixed_demo_pair((64, 128))
    out = {backend: FlowEstimator(backend=backend, model=model, confidence=True, threads=1).estimate(pair.img1, pair.img2)
           for backend, model in (("pytorch", path), ("onnxruntime", onnx_path))}
    assert out["pytorch"].flow.shape == (64, 128, 2) and out["pytorch"].confidence.shape == (64, 128)
    torch.testing.assert_close(torch.from_numpy(out["onnxruntime"].flow), torch.from_numpy(out["pytorch"].flow),
                               atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(torch.from_numpy(out["onnxruntime"].confidence),
                               torch.from_numpy(out["pytorch"].confidence), atol=1e-3, rtol=1e-3)
