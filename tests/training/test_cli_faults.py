"""The training command lines on bad input, as real processes: every bad path or argument is one
``<script>: ...`` line without a traceback (train.py, evaluate.py, quantize_onnx.py); a killed run's
temporary files are removed at the next start; a recording cut short trains on what came before the cut.

To keep the suite short, the bad-argument runs share one process (DRIVER), which runs each script
as ``__main__`` with its command line, as the interpreter would, and records its status and stderr.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from training.make_bag import write_known_motion_bag, write_sequence_bag
from training_cli import REPO, child_env

TINY = {
    "stage": "stage1", "seed": 3,
    "data": {"crop": [64, 64], "synthetic_pairs": 2, "num_workers": 0, "max_gap_s": 0.5},
    "train": {"steps": 1, "batch_size": 2, "threads": 1, "log_every": 1, "checkpoint_every": 1, "val_every": 1000},
    "loss": {"warmup_steps": 1},
    "validation": {"synthetic_pairs": 0},
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """A config, a bag, a garbage model file and a run whose checkpoint has one flipped bit in a weight."""
    folder = tmp_path_factory.mktemp("cli_faults")
    config = folder / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    bag = write_known_motion_bag(folder / "bag", frames=4, size=(96, 128), storage="mcap")
    garbage = folder / "notes.pt"
    garbage.write_text("not a model\n" * 10)
    run = folder / "damaged_run"
    done = subprocess.run([sys.executable, str(REPO / "training" / "train.py"), "--config", str(config), "--data",
                           str(bag), "--out", str(run)], capture_output=True, text=True, timeout=300, env=child_env())
    assert done.returncode == 0, done.stderr[-2000:]
    checkpoint = run / "latest.pt"
    data = bytearray(checkpoint.read_bytes())
    weight = max(torch.load(checkpoint, weights_only=True)["state_dict"].values(), key=lambda t: t.numel())
    offset = bytes(data).find(weight.numpy().tobytes()[:64])
    assert offset > 0
    data[offset + 5] ^= 0x04
    checkpoint.write_bytes(bytes(data))
    return {"config": config, "bag": bag, "garbage": garbage, "damaged_run": run, "folder": folder}


def script(name: str, *args: str) -> list[str]:
    return [sys.executable, str(REPO / "training" / name), *map(str, args)]


def bad_commands(inputs) -> dict[str, tuple[list[str], str]]:
    """name -> (command line, text its one error line must start with)."""
    c, bag, garbage, folder = inputs["config"], inputs["bag"], inputs["garbage"], inputs["folder"]
    out = str(folder / "out")
    return {
        "missing data": (script("train.py", "--config", c, "--data", "/nowhere/bag", "--out", out),
                         "train.py: data path does not exist: /nowhere/bag"),
        "missing config": (script("train.py", "--config", folder / "nope.yaml", "--out", out),
                           "train.py: cannot read config"),
        "no config": (script("train.py", "--out", out), "train.py: the following arguments are required: --config"),
        "max steps 0": (script("train.py", "--config", c, "--data", bag, "--out", out, "--max-steps", "0"),
                        "train.py: argument --max-steps: 0 is not at least 1"),
        "missing init": (script("train.py", "--config", c, "--data", bag, "--out", out, "--init", folder / "no.pt"),
                         f"train.py: {folder / 'no.pt'}: No such file or directory"),
        "garbage init": (script("train.py", "--config", c, "--data", bag, "--out", out, "--init", garbage),
                         f"train.py: {garbage} is not a readable PyTorch file"),
        "damaged resume": (script("train.py", "--config", c, "--data", bag, "--out", inputs["damaged_run"], "--resume"),
                           f"train.py: {inputs['damaged_run'] / 'latest.pt'} is damaged"),
        "evaluate garbage": (script("evaluate.py", garbage, "--synthetic", "1"),
                             f"evaluate.py: {garbage} is not a readable PyTorch file"),
        "evaluate missing data": (script("evaluate.py", "teacher", "--synthetic", "0", "--data", "/nowhere"),
                                  "evaluate.py: benchmark path does not exist: /nowhere"),
        "quantize garbage": (script("quantize_onnx.py", garbage, "--out", folder / "q.onnx"),
                             f"quantize_onnx.py: {garbage} is not a readable PyTorch file"),
        "quantize no out": (script("quantize_onnx.py", garbage), "quantize_onnx.py: the following arguments are required"),
    }


DRIVER = """
import contextlib, io, json, logging, runpy, sys, traceback
results = {}
for name, argv in json.loads(sys.argv[1]).items():
    logging.root.handlers.clear()
    err, code = io.StringIO(), 0
    sys.argv = argv
    with contextlib.redirect_stderr(err):
        try:
            runpy.run_path(argv[0], run_name="__main__")
        except SystemExit as end:
            if isinstance(end.code, str):
                print(end.code, file=sys.stderr)
            code = end.code if isinstance(end.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = -1
    results[name] = [code, err.getvalue()]
print(json.dumps(results))
"""
"""Runs each named command line (script first) in this one process; prints {name: [status, stderr]}."""


@pytest.fixture(scope="module")
def bad_runs(inputs) -> dict[str, tuple[int, str, str]]:
    """Every bad command: name -> (status, stderr, expected start of its error line)."""
    commands = bad_commands(inputs)
    argv = json.dumps({name: cmd[1:] for name, (cmd, _) in commands.items()})
    proc = subprocess.run([sys.executable, "-c", DRIVER, argv], capture_output=True, text=True, timeout=600,
                          env=child_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    ran = json.loads(proc.stdout.splitlines()[-1])
    return {name: (*ran[name], expected) for name, (_, expected) in commands.items()}


@pytest.mark.parametrize("name", ["missing data", "missing config", "no config", "max steps 0", "missing init",
                                  "garbage init", "damaged resume", "evaluate garbage", "evaluate missing data",
                                  "quantize garbage", "quantize no out"])
def test_a_bad_argument_or_input_is_one_line_naming_it(bad_runs, name):
    code, err, expected = bad_runs[name]
    prog = expected.split(":")[0]
    lines = [line for line in err.splitlines() if line.startswith(f"{prog}:")]
    assert code != 0 and len(lines) == 1, err[-3000:]
    assert lines[0].startswith(expected), lines[0]
    assert "Traceback" not in err and "usage:" not in err, err[-3000:]


@pytest.fixture(scope="module")
def run_on_a_cut_recording(inputs, tmp_path_factory):
    """train.py on an MCAP bag cut at two thirds (8 frames of 480x640 in four 1 MiB chunks), in a run
    directory that holds the temporary files of a killed run."""
    folder = tmp_path_factory.mktemp("cut")
    rng = np.random.default_rng(1)
    frames = [np.ascontiguousarray(np.roll(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8), 2 * k, axis=1))
              for k in range(8)]
    bag = write_sequence_bag(folder / "cut", frames, storage="mcap", rate_hz=10.0)
    mcap = next(bag.glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size * 2 // 3])
    out = folder / "run"
    stale = [out / ".latest.pt.k3j2x9.tmp", out / "snapshots" / ".teacher_fastflownet_step000002.pt.a1b2.tmp"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a checkpoint")
    config = folder / "cut.yaml"
    config.write_text(yaml.safe_dump({**TINY, "data": {**TINY["data"], "synthetic_pairs": 0, "max_gap_s": 0.5}}))
    proc = subprocess.run(script("train.py", "--config", config, "--data", bag, "--out", out), capture_output=True,
                          text=True, timeout=300, env={**child_env(), "MDFLOW_CACHE": str(folder / "cache")})
    return proc, out, stale


def test_a_cut_mcap_recording_trains_on_the_messages_before_the_cut_and_counts_the_lost(run_on_a_cut_recording):
    proc, out, _ = run_on_a_cut_recording
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ends early" in proc.stderr and "training on the 4 message(s)" in proc.stderr
    assert "lost: 4 of 8 message(s)" in proc.stderr
    assert (out / "teacher_fastflownet.pt").is_file()


def test_temporary_files_of_a_killed_run_are_removed_at_the_next_start(run_on_a_cut_recording):
    proc, out, stale = run_on_a_cut_recording
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not any(path.exists() for path in stale)
    assert "removed 2 temporary file(s) of a killed run" in proc.stderr
    assert (out / "latest.pt").is_file()
