"""Stopping training with a signal, as Ctrl-C, systemd and docker stop do: the step in flight completes, its
checkpoint is written, the process exits in one line with status 128 + N, and --resume continues exactly."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from mdflow_ros.models.model_file import load_model
from training.checkpoint import load_checkpoint
from training.make_bag import write_known_motion_bag
from training.stop_signals import StopSignals
from training_cli import REPO, child_env

CONFIG = {
    "stage": "stage1", "seed": 4,
    "data": {"crop": [64, 64], "synthetic_pairs": 6, "num_workers": 1, "max_gap_s": 0.5},
    "train": {"steps": 400, "batch_size": 2, "threads": 1, "log_every": 1, "checkpoint_every": 1000,
              "val_every": 1000},
    "loss": {"warmup_steps": 2},
    "validation": {"synthetic_pairs": 0},
}
"""Periodic checkpoints never fall due: the only checkpoint before the end is the one the stop writes."""


@pytest.fixture(scope="module")
def bag(tmp_path_factory) -> Path:
    return write_known_motion_bag(tmp_path_factory.mktemp("bag") / "cam", frames=8, size=(96, 128), storage="mcap")


def write_config(path: Path, **train) -> Path:
    cfg = yaml.safe_load(yaml.safe_dump(CONFIG))
    cfg["train"].update(train)
    path.write_text(yaml.safe_dump(cfg))
    return path


def command(config: Path, bag: Path, out: Path, *extra: str) -> list[str]:
    return [str(REPO / "training" / "train.py"), "--config", str(config), "--data", str(bag), "--out", str(out), *extra]


def wait_for_steps(log: Path, proc: subprocess.Popen, steps: int = 2, timeout: float = 240) -> None:
    """Until the progress bar in ``log`` shows ``steps`` done steps (the loop is running)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        done = [int(n) for n in re.findall(r"(\d+)/400", log.read_text(errors="replace"))]
        if done and max(done) >= steps:
            return
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.1)
    raise AssertionError(f"training did not reach step {steps}: {log.read_text()[-3000:]}")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "systemd-stop"])
def test_a_signal_checkpoints_the_step_in_flight_and_resume_continues_exactly(bag, tmp_path, signum):
    """The signal to the whole process group (a terminal's Ctrl-C; systemd's stop of a service's control
    group), with a data-loader worker that must not die of it under the step in flight."""
    run, log = tmp_path / "stopped", tmp_path / "stopped.log"
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, *command(write_config(tmp_path / "long.yaml"), bag, run)],
                                stdout=subprocess.DEVNULL, stderr=err, env=child_env(), start_new_session=True)
    wait_for_steps(log, proc)
    os.killpg(proc.pid, signum)
    assert proc.wait(timeout=120) == 128 + signum
    text = log.read_text()
    stopped = load_checkpoint(run / "latest.pt")["step"]
    assert 2 <= stopped < 400
    assert f"train.py: stopped by {signum.name} at step {stopped}; checkpoint written to {run / 'latest.pt'}; continue with --resume" in text
    assert "Traceback" not in text and "exited unexpectedly" not in text, text[-3000:]
    assert not (run / "teacher_fastflownet.pt").exists(), "a stopped run writes no finished model file"

    extend = write_config(tmp_path / "short.yaml", steps=stopped + 2)
    resumed = subprocess.run([sys.executable, *command(extend, bag, run, "--resume")], capture_output=True, text=True,
                             timeout=300, env=child_env())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight = subprocess.run([sys.executable, *command(extend, bag, tmp_path / "straight")], capture_output=True,
                              text=True, timeout=300, env=child_env())
    assert straight.returncode == 0, straight.stderr[-3000:]
    a = load_model(tmp_path / "straight" / "teacher_fastflownet.pt").state_dict()
    b = load_model(run / "teacher_fastflownet.pt").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), f"stopped at step {stopped}: resumed weights differ from a straight run"


def _rank_pids(parent: int) -> dict[int, int]:
    """RANK -> pid of ``parent``'s child processes that run train.py (from /proc)."""
    ranks = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = dict(v.split("=", 1) for v in (entry / "environ").read_text().split("\0") if "=" in v)
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and "RANK" in environ:
            ranks[int(environ["RANK"])] = int(entry.name)
    return ranks


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the ranks' processes in /proc")
def test_a_sigterm_to_one_ddp_rank_stops_every_rank_at_the_same_step(bag, tmp_path):
    """Under torchrun (2 gloo processes) the signal reaches rank 1 only: rank 0 must stop at the same step and
    write the checkpoint there, instead of hanging in the next all-reduce."""
    run, log = tmp_path / "ddp", tmp_path / "ddp.log"
    config = write_config(tmp_path / "ddp.yaml")
    cfg = yaml.safe_load(config.read_text())
    cfg["data"]["num_workers"] = 0
    config.write_text(yaml.safe_dump(cfg))
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                                 str(29800 + os.getpid() % 100), *command(config, bag, run)],
                                stdout=subprocess.DEVNULL, stderr=err, env=child_env(), start_new_session=True)
    try:
        wait_for_steps(log, proc)
        ranks = _rank_pids(proc.pid)
        assert sorted(ranks) == [0, 1], ranks
        os.kill(ranks[1], signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    stopped = load_checkpoint(run / "latest.pt")["step"]
    assert 2 <= stopped < 400
    assert text.count(f"train.py: stopped by SIGTERM at step {stopped}") == 2, text[-3000:]
    assert proc.returncode != 0


def test_a_second_signal_ends_the_process_at_once():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.received == signal.SIGTERM
        with pytest.raises(SystemExit) as stop:
            os.kill(os.getpid(), signal.SIGINT)
        assert stop.value.code == 128 + signal.SIGINT
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before, "the handlers are restored"
