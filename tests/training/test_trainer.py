"""The trainer on a real rosbag2 file: exact resume after a kill, refused resumes, and 2-process DDP."""
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from mdflow_ros.files import ModelFileError, file_sha256
from mdflow_ros.models import FastFlowNet
from mdflow_ros.models.model_file import load_model, save_model_file
from training.checkpoint import load_checkpoint
from training.config import DEFAULTS, ConfigError, load_config, merge
from training.make_bag import write_known_motion_bag
from training.trainer import scheduled_lr
from training_cli import child_env, run_script

REPO = Path(__file__).resolve().parents[2]
TINY = {
    "stage": "stage1", "seed": 3,
    "data": {"crop": [64, 64], "synthetic_pairs": 6, "num_workers": 0, "max_gap_s": 0.5},
    "train": {"steps": 4, "batch_size": 2, "threads": 1, "log_every": 1, "checkpoint_every": 1, "val_every": 1000},
    "loss": {"warmup_steps": 2},
    "validation": {"synthetic_pairs": 0},
}


@pytest.fixture(scope="module")
def bag(tmp_path_factory) -> Path:
    """A real rosbag2 (mcap) of known-motion frames."""
    return write_known_motion_bag(tmp_path_factory.mktemp("bag") / "cam", frames=8, size=(96, 128), storage="mcap")


def write_config(path: Path, **overrides) -> Path:
    cfg = yaml.safe_load(yaml.safe_dump(TINY))
    for section, values in overrides.items():
        cfg[section].update(values)
    path.write_text(yaml.safe_dump(cfg))
    return path


def train(config: Path, bag: Path, out: Path, *extra: str, wait: bool = True):
    return run_script("train.py", config, bag, out, *extra, wait=wait)


def test_learning_rate_schedules():
    constant = merge(DEFAULTS["train"], {"lr": 1e-3, "steps": 10})
    assert [scheduled_lr(s, constant) for s in (0, 9)] == [1e-3, 1e-3]
    warm = dict(constant, lr_warmup_steps=4)
    assert [scheduled_lr(s, warm) for s in range(5)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3])
    cosine = dict(warm, lr_schedule="cosine")
    lrs = [scheduled_lr(s, cosine) for s in range(10)]
    assert lrs[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3]), "warm-up first"
    assert lrs[4] == pytest.approx(1e-3) and lrs[7] == pytest.approx(5e-4), "then a half cosine over the other 6 steps"
    assert all(a > b for a, b in zip(lrs[4:], lrs[5:])) and lrs[9] == pytest.approx(1e-3 * (1 + math.cos(5 * math.pi / 6)) / 2)


def test_resume_after_a_kill_continues_exactly(bag, tmp_path):
    """With a warm-up and a cosine schedule, so that the learning rate must resume at the right step too."""
    config = write_config(tmp_path / "tiny.yaml", train={"steps": 5, "lr_schedule": "cosine", "lr_warmup_steps": 2})
    straight = train(config, bag, tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-2000:]

    run = tmp_path / "killed"
    proc = train(config, bag, run, wait=False)
    deadline = time.time() + 240
    while time.time() < deadline and not (run / "latest.pt").exists():
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(run / "latest.pt")["step"]
    assert 1 <= killed_at <= 5

    refused = train(config, bag, run)
    assert refused.returncode != 0 and "--resume" in refused.stderr

    resumed = train(config, bag, run, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_model(straight_path := tmp_path / "straight" / "teacher_fastflownet.pt").state_dict()
    b = load_model(run / "teacher_fastflownet.pt").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), f"killed at step {killed_at}, resumed weights differ from {straight_path}"
    assert load_checkpoint(run / "latest.pt")["step"] == 5
    last_lr = load_checkpoint(run / "latest.pt")["optimizer"]["param_groups"][0]["lr"]
    assert last_lr == pytest.approx(scheduled_lr(4, load_config(config)["train"])) and last_lr < 1e-4 / 2


def test_resume_with_another_config_or_model_is_refused(bag, tmp_path):
    run = tmp_path / "run"
    first = train(write_config(tmp_path / "a.yaml", train={"steps": 1}), bag, run)
    assert first.returncode == 0, first.stderr[-2000:]
    other = train(write_config(tmp_path / "b.yaml", train={"steps": 2, "lr": 5e-4}), bag, run, "--resume")
    assert other.returncode != 0 and "train.lr: checkpoint has 0.0001, config has 0.0005" in other.stderr
    longer = train(write_config(tmp_path / "c.yaml", train={"steps": 2}), bag, run, "--resume")
    assert longer.returncode == 0, "changing the step count is allowed"
    cosine = tmp_path / "cosine"
    assert train(write_config(tmp_path / "d.yaml", train={"steps": 1, "lr_schedule": "cosine"}), bag, cosine).returncode == 0
    stretched = train(write_config(tmp_path / "e.yaml", train={"steps": 2, "lr_schedule": "cosine"}), bag, cosine, "--resume")
    assert stretched.returncode != 0 and "schedule spans train.steps" in stretched.stderr
    unknown = train(write_config(tmp_path / "f.yaml", train={"lr_schedule": "step"}), bag, tmp_path / "unknown")
    assert unknown.returncode != 0 and "train.lr_schedule must be one of ('constant', 'cosine'), got 'step'" in unknown.stderr
    assert "Traceback" not in unknown.stderr


def test_resume_keeps_the_init_weights_and_refuses_other_ones(bag, tmp_path):
    inits = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        inits.append(tmp_path / f"init{seed}.pt")
        save_model_file(inits[-1], FastFlowNet())
    run = tmp_path / "run"
    assert train(write_config(tmp_path / "a.yaml", train={"steps": 1}), bag, run, "--init", str(inits[0])).returncode == 0
    config = write_config(tmp_path / "b.yaml", train={"steps": 2})
    other = train(config, bag, run, "--resume", "--init", str(inits[1]))
    assert other.returncode != 0 and "refusing to resume" in other.stderr
    plain = train(config, bag, run, "--resume")
    assert plain.returncode == 0, plain.stderr[-2000:]
    assert load_checkpoint(run / "latest.pt")["meta"]["init"]["sha256"] == file_sha256(inits[0])


def test_checkpoints_hold_only_plain_data_and_load_safely(bag, tmp_path):
    run = tmp_path / "run"
    assert train(write_config(tmp_path / "a.yaml", train={"steps": 1}), bag, run).returncode == 0
    ckpt = torch.load(run / "latest.pt", weights_only=True)
    assert ckpt["step"] == 1 and ckpt["config"]["stage"] == "stage1" and "numpy" in ckpt["rng"]
    assert ckpt["meta"]["data"] == [str(bag)]
    (run / "latest.pt").write_bytes((run / "latest.pt").read_bytes()[:1000])
    with pytest.raises(ModelFileError, match="corrupt, truncated"):
        load_checkpoint(run / "latest.pt")


def test_unknown_config_keys_are_errors(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  stesp: 3\n")
    with pytest.raises(ConfigError, match="train.stesp"):
        load_config(path)


def test_two_gloo_processes_hold_identical_weights(bag, tmp_path):
    config = write_config(tmp_path / "ddp.yaml", train={"steps": 2}, loss={"warmup_steps": 1})
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(29500 + os.getpid() % 1000), str(Path(__file__).with_name("ddp_worker.py")), str(config), str(bag), str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=child_env())
    assert result.returncode == 0, result.stderr[-3000:]
    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    start = torch.load(out / "latest.pt", weights_only=True)
    assert start["step"] == 2


def test_the_weight_average_follows_every_step_and_is_what_deploys(tmp_path):
    from training.data.training_set import build_training_set
    from training.stages import STAGES
    from training.trainer import Trainer

    cfg = merge(DEFAULTS, dict(TINY, train=dict(TINY["train"], steps=3, ema_decay=0.5)))
    torch.manual_seed(0)
    model = FastFlowNet()
    trainer = Trainer(cfg, tmp_path, model, STAGES["stage1"].recipe, build_training_set(cfg, []), {"arch": "fastflownet"})
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(3):
        trainer.run(max_steps=1)
        expected = {k: 0.5 * expected[k] + 0.5 * v for k, v in model.state_dict().items()}
    average = trainer.deployed_state()
    assert all(torch.allclose(average[k], expected[k], atol=1e-7) for k in expected)
    assert any(not torch.equal(average[k], v) for k, v in model.state_dict().items()), "the average lags the weights"
    assert all(torch.equal(load_checkpoint(tmp_path / "latest.pt")["ema"][k], average[k]) for k in average)
