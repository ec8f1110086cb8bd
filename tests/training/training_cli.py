"""Runs training/ command-line scripts as real subprocesses, for the trainer and pipeline tests."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def child_env() -> dict[str, str]:
    """This environment on one thread, with REPO first on PYTHONPATH: a script's sys.path starts with its
    own folder, so without it the child would import an installed (e.g. editable) mdflow_ros and training."""
    return dict(os.environ, OMP_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


def run_script(script: str, config: Path, bag: Path, out: Path, *extra: str, wait: bool = True):
    """``training/<script> --config --data --out ...`` on one thread: the finished run, or the running process."""
    cmd = [sys.executable, str(REPO / "training" / script), "--config", str(config), "--data", str(bag),
           "--out", str(out), *extra]
    env = child_env()
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
