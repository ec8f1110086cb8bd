"""Training's command lines end to end, as a user runs them: ``torchrun training/train.py`` on 2 gloo processes
with validation during training, then ``training/evaluate.py`` on the model it wrote; ``training/mdflow.py``
for two rounds from a given stage-1 teacher."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mdflow_ros.files import file_sha256
from mdflow_ros.inference import FlowEstimator
from mdflow_ros.models.model_file import load_model_file
from training.evaluate import estimator_fn, evaluate, synthetic_set, zero_flow
from training.make_bag import write_known_motion_bag
from training_cli import REPO, child_env, run_script

CONFIG = {
    "stage": "stage1", "seed": 5,
    "data": {"crop": [64, 64], "synthetic_pairs": 6, "num_workers": 0, "max_gap_s": 0.5},
    "train": {"steps": 2, "batch_size": 2, "threads": 1, "log_every": 1, "checkpoint_every": 1, "val_every": 1},
    "loss": {"warmup_steps": 1},
    "validation": {"synthetic_pairs": 2, "synthetic_size": [64, 128]},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The run folder of ``torchrun --nproc_per_node 2 training/train.py`` (2 steps, validation every step)."""
    tmp = tmp_path_factory.mktemp("torchrun")
    bag = write_known_motion_bag(tmp / "cam", frames=6, size=(96, 128), storage="mcap")
    config = tmp / "tiny.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    out = tmp / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(29700 + os.getpid() % 1000), str(REPO / "training" / "train.py"), "--config", str(config),
           "--data", str(bag), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=child_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_torchrun_train_py_writes_a_model_and_validates_during_training(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = load_model_file(trained / "teacher_fastflownet.pt")
    assert model.arch == "fastflownet" and model.meta["step"] == 2 and model.meta["stage"] == "stage1"
    events = EventAccumulator(str(trained / "tb"))
    events.Reload()
    validated = [t for t in events.Tags()["scalars"] if t.startswith("val/")]
    assert "val/synthetic-2/epe" in validated, validated
    assert [e.step for e in events.Scalars("val/synthetic-2/epe")] == [1, 2], "validated at every val_every step"


def test_evaluate_py_measures_the_trained_model_against_zero_flow(trained):
    proc = subprocess.run([sys.executable, str(REPO / "training" / "evaluate.py"), str(trained / "teacher_fastflownet.pt"),
                           "--synthetic", "1", "--backend", "pytorch"], capture_output=True, text=True, timeout=300,
                          env=child_env())
    assert proc.returncode == 0, proc.stderr
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in proc.stdout.splitlines()
            if line.startswith("| synthetic-1 |")]
    model = trained / "teacher_fastflownet.pt"
    dataset = synthetic_set(1, (384, 512), 1234)
    expected = [evaluate(estimator_fn(FlowEstimator(backend="pytorch", model=model, confidence=False)), dataset),
                evaluate(zero_flow, dataset)]
    assert [r[1] for r in rows] == [str(model), "zero flow"]
    assert [r[2] for r in rows] == [f"{e['epe']:.3f}" for e in expected], "the CLI prints what the API measures"


def test_evaluate_py_refuses_a_missing_model_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "training" / "evaluate.py"), str(tmp_path / "none.pt"),
                           "--synthetic", "1"], capture_output=True, text=True, timeout=120, env=child_env())
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "does not exist" in proc.stderr


def test_two_mdflow_rounds_from_a_given_teacher_chain_each_stage_to_the_last(tmp_path):
    """``mdflow.py --stage1-model T`` with ``rounds: 2``: T is adopted as stage 1, then 2 -> 3 -> 2 -> 3, each
    stage starting from the previous model of its network and frozen on the latest of the other."""
    teacher = tmp_path / "stage1" / "teacher_fastflownet.pt"
    bag = write_known_motion_bag(tmp_path / "cam", frames=6, size=(96, 128), storage="mcap")
    stage1 = tmp_path / "stage1.yaml"
    stage1.write_text(yaml.safe_dump(dict(CONFIG, train=dict(CONFIG["train"], steps=1, val_every=1000),
                                          validation={"synthetic_pairs": 0})))
    assert run_script("train.py", stage1, bag, teacher.parent).returncode == 0
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump({
        "rounds": 2, "seed": 3, "data": {"crop": [64, 64], "synthetic_pairs": 2, "num_workers": 0},
        "train": {"steps": 1, "batch_size": 2, "threads": 1, "log_every": 1, "checkpoint_every": 1, "val_every": 1000},
        "loss": {"occ_bias": 100.0}, "student": {"train_iters": 2}, "validation": {"synthetic_pairs": 0}}))
    result = run_script("mdflow.py", pipeline, bag, tmp_path / "run", "--stage1-model", str(teacher))
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    assert sorted(d.name for d in run.iterdir() if d.is_dir()) == ["1-stage1", "1-stage2", "1-stage3", "2-stage2",
                                                                 "2-stage3"]
    assert not (run / "1-stage1" / "latest.pt").exists(), "the given teacher is adopted, not trained"
    meta = {name: load_model_file(run / name / model).meta for name, model in (
        ("1-stage2", "student_raft.pt"), ("1-stage3", "teacher_fastflownet.pt"),
        ("2-stage2", "student_raft.pt"), ("2-stage3", "teacher_fastflownet.pt"))}
    sha = {name: file_sha256(run / name / model) for name, model in (
        ("1-stage2", "student_raft.pt"), ("1-stage3", "teacher_fastflownet.pt"), ("2-stage2", "student_raft.pt"))}
    assert meta["1-stage2"]["frozen"]["sha256"] == file_sha256(teacher)
    assert meta["1-stage3"]["init"]["sha256"] == file_sha256(teacher)
    assert meta["1-stage3"]["frozen"]["sha256"] == sha["1-stage2"]
    assert meta["2-stage2"]["init"]["sha256"] == sha["1-stage2"]
    assert meta["2-stage2"]["frozen"]["sha256"] == sha["1-stage3"]
    assert meta["2-stage3"]["init"]["sha256"] == sha["1-stage3"]
    assert meta["2-stage3"]["frozen"]["sha256"] == sha["2-stage2"]
