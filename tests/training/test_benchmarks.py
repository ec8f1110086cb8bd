"""Ground-truth benchmarks: tiny Sintel / KITTI / FlyingChairs / Middlebury / pairs.tsv layouts built in tmp_path."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from mdflow_ros.io.flow_files import write_flo, write_kitti_flow
from training.data.benchmarks import open_benchmark
from mdflow_ros.io.frames import DataError

GT_DEV = Path(__file__).resolve().parents[2].parent / "shared/data/gt-dev"
SIZE = (24, 32)


def image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, SIZE + (3,), dtype=np.uint8)


def flow(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-20, 20, SIZE + (2,)).astype(np.float32)


def save(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), rgb[:, :, ::-1])


def check(bench, index: int, img1: np.ndarray, img2: np.ndarray, gt: np.ndarray, valid=None) -> None:
    got1, got2, got_flow, got_valid = bench[index]
    np.testing.assert_array_equal(got1, img1)
    np.testing.assert_array_equal(got2, img2)
    assert got_flow.dtype == np.float32 and got_flow.shape == SIZE + (2,)
    assert got_valid.dtype == np.bool_ and got_valid.shape == SIZE
    expected_valid = np.ones(SIZE, bool) if valid is None else valid
    np.testing.assert_array_equal(got_valid, expected_valid)
    np.testing.assert_allclose(got_flow[expected_valid], gt[expected_valid], atol=1 / 64)


def test_sintel(tmp_path):
    training = tmp_path / "MPI-Sintel" / "training"
    for dstype in ("clean", "final"):
        for k in range(1, 4):
            save(training / dstype / "alley_1" / f"frame_{k:04d}.png", image(k + (10 if dstype == "final" else 0)))
    (training / "flow" / "alley_1").mkdir(parents=True)
    for k in (1, 2):
        write_flo(training / "flow" / "alley_1" / f"frame_{k:04d}.flo", flow(k))
    final = open_benchmark(tmp_path / "MPI-Sintel")
    assert final.layout == "Sintel" and len(final) == 2
    check(final, 1, image(12), image(13), flow(2))
    clean = open_benchmark(training, dstype="clean")
    check(clean, 0, image(1), image(2), flow(1))


@pytest.mark.parametrize("image_dir", ["image_2", "colored_0"])
def test_kitti(tmp_path, image_dir):
    training = tmp_path / "kitti" / "training"
    valid = np.random.default_rng(5).random(SIZE) > 0.3
    for k in range(2):
        save(training / image_dir / f"{k:06d}_10.png", image(2 * k))
        save(training / image_dir / f"{k:06d}_11.png", image(2 * k + 1))
        (training / "flow_occ").mkdir(exist_ok=True)
        write_kitti_flow(training / "flow_occ" / f"{k:06d}_10.png", flow(k), valid)
    bench = open_benchmark(tmp_path / "kitti")
    assert bench.layout == "KITTI" and len(bench) == 2
    check(bench, 1, image(2), image(3), flow(1), valid)


def test_flying_chairs(tmp_path):
    data = tmp_path / "FlyingChairs_release" / "data"
    for k in (1, 2, 10):
        save(data / f"{k:05d}_img1.ppm", image(2 * k))
        save(data / f"{k:05d}_img2.ppm", image(2 * k + 1))
        write_flo(data / f"{k:05d}_flow.flo", flow(k))
    bench = open_benchmark(tmp_path / "FlyingChairs_release")
    assert bench.layout == "FlyingChairs" and len(bench) == 3
    check(bench, 2, image(20), image(21), flow(10))


def test_middlebury(tmp_path):
    root = tmp_path / "middlebury"
    for k, scene in enumerate(("Dimetrodon", "RubberWhale")):
        save(root / "other-data" / scene / "frame10.png", image(2 * k))
        save(root / "other-data" / scene / "frame11.png", image(2 * k + 1))
        (root / "other-gt-flow" / scene).mkdir(parents=True)
        write_flo(root / "other-gt-flow" / scene / "flow10.flo", flow(k))
    save(root / "other-data" / "Army" / "frame10.png", image(9))      # a scene without ground truth
    bench = open_benchmark(root)
    assert bench.layout == "Middlebury" and len(bench) == 2
    check(bench, 1, image(2), image(3), flow(1))


def test_pairs_tsv_with_unknown_values(tmp_path):
    gt = flow(3)
    gt[:4, :5] = 1e10
    save(tmp_path / "a" / "f1.png", image(1))
    save(tmp_path / "a" / "f2.png", image(2))
    write_flo(tmp_path / "a" / "gt.flo", gt)
    (tmp_path / "pairs.tsv").write_text("# img1\timg2\tground truth\n\na/f1.png\ta/f2.png\ta/gt.flo\n")
    bench = open_benchmark(tmp_path)
    assert bench.layout == "pairs.tsv" and len(bench) == 1
    valid = np.ones(SIZE, bool)
    valid[:4, :5] = False
    check(bench, 0, image(1), image(2), gt, valid)
    assert not bench[0][2][~valid].any()


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_benchmark(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a known benchmark layout"):
        open_benchmark(tmp_path / "empty")
    data = tmp_path / "chairs" / "data"
    data.mkdir(parents=True)
    write_flo(data / "00001_flow.flo", flow(1))
    save(data / "00001_img1.ppm", image(1))
    with pytest.raises(DataError, match="missing file .*00001_img2.ppm"):
        open_benchmark(tmp_path / "chairs")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "pairs.tsv").write_text("only\ttwo\n")
    with pytest.raises(DataError, match="line 1: expected 3 tab-separated columns"):
        open_benchmark(tmp_path / "bad")
    save(data / "00001_img2.ppm", image(2)[:12])
    with pytest.raises(DataError, match="sizes disagree"):
        open_benchmark(tmp_path / "chairs")[0]
    with pytest.raises(DataError, match="does not take the option"):
        open_benchmark(tmp_path / "chairs", dstype="clean")


@pytest.mark.skipif(not GT_DEV.is_dir(), reason="shared gt-dev data not present")
def test_shared_gt_dev_sets():
    sets = sorted(p for p in GT_DEV.iterdir() if (p / "pairs.tsv").is_file())
    assert sets
    for folder in sets:
        bench = open_benchmark(folder)
        assert len(bench) >= 1
        for i in range(len(bench)):
            img1, img2, gt, valid = bench[i]
            assert img1.dtype == np.uint8 and img1.shape == img2.shape and img1.shape[2] == 3
            assert gt.shape == img1.shape[:2] + (2,) and gt.dtype == np.float32
            assert valid.mean() > 0.5 and np.isfinite(gt).all() and np.abs(gt[valid]).max() < 1e3
