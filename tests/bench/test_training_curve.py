"""bench/training_curve.py: validation curves read back from TensorBoard logs and chained across runs."""
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from bench import training_curve


def _run(path: Path, points: dict[int, float]) -> Path:
    writer = SummaryWriter(str(path / "tb"))
    for step, value in points.items():
        writer.add_scalar("val/chairs/epe", value, step)
        writer.add_scalar("train/loss", 1.0, step)
    writer.close()
    return path


def test_runs_are_chained_on_one_step_axis_with_zero_flow_in_the_header(tmp_path):
    first = _run(tmp_path / "pretrain", {250: 9.0, 500: 6.0})
    second = _run(tmp_path / "stage1", {250: 5.5})
    png, md = tmp_path / "c.png", tmp_path / "c.md"
    training_curve.main([str(first), str(second), "--zero", "chairs=10.5", "--png", str(png), "--md", str(md)])
    lines = md.read_text().splitlines()
    assert lines[0] == "| run | step | chairs (zero 10.50) |"
    assert lines[2:] == ["| pretrain | 250 | 9.00 |", "| pretrain | 500 | 6.00 |", "| stage1 | 750 | 5.50 |"]
    assert png.read_bytes()[:4] == b"\x89PNG"
