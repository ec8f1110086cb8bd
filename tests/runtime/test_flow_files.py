"""Flow file formats: .flo, KITTI .png and .npy round trips, hand-made files, bad files."""
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from mdflow_ros.io import read_flo, read_flow, read_kitti_flow, write_flo, write_flow, write_kitti_flow

GT_DEV = Path(__file__).resolve().parents[2].parent / "shared/data/gt-dev"


def random_flow(height=5, width=7, seed=0):
    return np.random.default_rng(seed).uniform(-40.0, 40.0, size=(height, width, 2)).astype(np.float32)


def test_flo_round_trip_is_exact(tmp_path):
    flow = random_flow()
    write_flo(tmp_path / "a.flo", flow)
    back = read_flo(tmp_path / "a.flo")
    assert back.dtype == np.float32 and back.shape == (5, 7, 2)
    np.testing.assert_array_equal(back, flow)


def test_npy_round_trip_is_exact(tmp_path):
    flow = random_flow()
    write_flow(tmp_path / "a.npy", flow)
    back, valid = read_flow(tmp_path / "a.npy")
    np.testing.assert_array_equal(back, flow)
    assert valid.all()


def test_kitti_round_trip_within_quantisation(tmp_path):
    flow = random_flow()
    write_kitti_flow(tmp_path / "a.png", flow)
    back, valid = read_kitti_flow(tmp_path / "a.png")
    assert back.dtype == np.float32 and valid.dtype == np.bool_ and valid.all()
    assert np.abs(back - flow).max() <= 1.0 / 128 + 1e-6


@pytest.mark.parametrize("suffix", [".flo", ".png", ".npy"])
def test_read_flow_gives_back_the_valid_mask(tmp_path, suffix):
    flow = random_flow()
    valid = np.ones(flow.shape[:2], dtype=bool)
    valid[1, 2] = valid[4, 0] = False
    write_flow(tmp_path / f"a{suffix}", flow, valid)
    back, back_valid = read_flow(tmp_path / f"a{suffix}")
    np.testing.assert_array_equal(back_valid, valid)
    assert np.all(back[~valid] == 0.0)
    np.testing.assert_allclose(back[valid], flow[valid], atol=1.0 / 128)


def test_read_flow_marks_unknown_and_non_finite_vectors(tmp_path):
    flow = random_flow()
    flow[0, 0] = (1e10, 0.0)
    flow[0, 1] = (0.0, -2e9)
    flow[2, 3] = (np.nan, 1.0)
    write_flo(tmp_path / "a.flo", flow)
    back, valid = read_flow(tmp_path / "a.flo")
    assert not valid[0, 0] and not valid[0, 1] and not valid[2, 3]
    assert valid.sum() == 5 * 7 - 3
    assert np.isfinite(back).all()


def test_hand_written_flo_bytes(tmp_path):
    # width 3, height 2, row-major, (u, v) interleaved per pixel
    values = [0.5, -1.0, 2.0, 3.0, 4.0, 5.0,
              -6.25, 7.0, 8.0, -9.0, 10.0, 11.5]
    data = struct.pack("<f", 202021.25) + struct.pack("<ii", 3, 2) + struct.pack("<12f", *values)
    path = tmp_path / "hand.flo"
    path.write_bytes(data)
    flow = read_flo(path)
    assert flow.shape == (2, 3, 2)
    np.testing.assert_array_equal(flow[0, 0], [0.5, -1.0])
    np.testing.assert_array_equal(flow[0, 2], [4.0, 5.0])
    np.testing.assert_array_equal(flow[1, 0], [-6.25, 7.0])
    np.testing.assert_array_equal(flow[1, 2], [10.0, 11.5])


def test_hand_made_kitti_png(tmp_path):
    # OpenCV channel order is B, G, R = valid, v, u
    raw = np.zeros((2, 2, 3), dtype=np.uint16)
    raw[0, 0] = (1, 32768 - 128, 32768 + 96)   # u = 1.5, v = -2, valid
    raw[0, 1] = (0, 40000, 40000)              # invalid
    raw[1, 0] = (1, 65535, 0)                  # u = -512, v = 511.984375
    raw[1, 1] = (1, 32768, 32768)              # zero flow
    assert cv2.imwrite(str(tmp_path / "k.png"), raw)
    flow, valid = read_kitti_flow(tmp_path / "k.png")
    np.testing.assert_array_equal(valid, [[True, False], [True, True]])
    np.testing.assert_array_equal(flow[0, 0], [1.5, -2.0])
    np.testing.assert_array_equal(flow[0, 1], [0.0, 0.0])
    np.testing.assert_array_equal(flow[1, 0], [-512.0, 511.984375])
    np.testing.assert_array_equal(flow[1, 1], [0.0, 0.0])


def test_kitti_writer_channel_order_and_clipping(tmp_path):
    flow = np.array([[[1.0, -2.0], [1000.0, -1000.0]]], dtype=np.float32)
    write_kitti_flow(tmp_path / "k.png", flow, np.array([[True, True]]))
    raw = cv2.imread(str(tmp_path / "k.png"), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16
    np.testing.assert_array_equal(raw[0, 0], [1, 32768 - 128, 32768 + 64])
    np.testing.assert_array_equal(raw[0, 1], [1, 0, 65535])
    back, _ = read_kitti_flow(tmp_path / "k.png")
    np.testing.assert_array_equal(back[0, 1], [511.984375, -512.0])


def flo_bytes(width, height, n_values=None, magic=202021.25):
    n = width * height * 2 if n_values is None else n_values
    return struct.pack("<f", magic) + struct.pack("<ii", width, height) + struct.pack(f"<{n}f", *range(n))


@pytest.mark.parametrize("data, message", [
    (flo_bytes(3, 2, n_values=11), "truncated"),
    (flo_bytes(3, 2, n_values=13), "trailing"),
    (flo_bytes(3, 2, magic=1.0), "magic"),
    (b"PIEH\x03\x00", "header"),
    (flo_bytes(0, 2), "invalid size"),
    (flo_bytes(-3, 2, n_values=0), "invalid size"),
])
def test_bad_flo_files_give_clear_errors(tmp_path, data, message):
    path = tmp_path / "bad.flo"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=message) as info:
        read_flo(path)
    assert "bad.flo" in str(info.value)


def test_bad_kitti_and_npy_files(tmp_path):
    cv2.imwrite(str(tmp_path / "eight_bit.png"), np.zeros((4, 4, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="16-bit"):
        read_kitti_flow(tmp_path / "eight_bit.png")
    (tmp_path / "garbage.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="decode"):
        read_flow(tmp_path / "garbage.png")
    np.save(tmp_path / "wrong.npy", np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 2\)"):
        read_flow(tmp_path / "wrong.npy")
    with pytest.raises(FileNotFoundError):
        read_kitti_flow(tmp_path / "missing.png")


def test_bad_arguments_to_writers(tmp_path):
    with pytest.raises(ValueError, match=r"\(H, W, 2\)"):
        write_flo(tmp_path / "a.flo", np.zeros((2, 4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="suffix"):
        write_flow(tmp_path / "a.jpg", random_flow())
    with pytest.raises(ValueError, match="suffix"):
        read_flow(tmp_path / "a.txt")
    with pytest.raises(ValueError, match=".png"):
        write_kitti_flow(tmp_path / "a.tif", random_flow())
    with pytest.raises(ValueError, match="valid must have shape"):
        write_flow(tmp_path / "a.flo", random_flow(), np.ones((3, 3), dtype=bool))


MIDDLEBURY_FLOS = sorted((GT_DEV / "middlebury").glob("**/*.flo")) if (GT_DEV / "middlebury").is_dir() else []


@pytest.mark.skipif(not MIDDLEBURY_FLOS, reason="no shared/data/gt-dev/middlebury beside the repository")
@pytest.mark.parametrize("path", MIDDLEBURY_FLOS, ids=lambda p: p.parent.name + "/" + p.name)
def test_real_middlebury_flo(path):
    flow, valid = read_flow(path)
    assert flow.ndim == 3 and flow.shape[2] == 2 and flow.dtype == np.float32
    assert np.isfinite(flow).all()
    assert valid.mean() > 0.5
    assert np.abs(flow[valid]).max() < 1000.0
    frame = next(iter(sorted(path.parent.glob("frame*.png"))), None)
    if frame is not None:
        assert cv2.imread(str(frame)).shape[:2] == flow.shape[:2]
