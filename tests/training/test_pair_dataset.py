"""FramePairs over video files and image folders: pairing, sizes, crops, augmentation and errors."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mdflow_ros.synthetic import photo_library
from training.config import DEFAULTS
from mdflow_ros.io.file_sources import ImageFolderFrames, VideoFrames
from mdflow_ros.io.frames import DataError
from training.data.pairs import FramePairs, open_sources, recording_pairs
from support import write_video

SIZE = (96, 128)


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    """Twelve (96, 128, 3) uint8 RGB frames: a real photo panning 4 px per frame."""
    photo = cv2.resize(photo_library()[0], (200, 150), interpolation=cv2.INTER_AREA)
    return [np.ascontiguousarray(photo[10:10 + SIZE[0], 4 * k:4 * k + SIZE[1]]) for k in range(12)]


def write_folder(folder: Path, frames: list[np.ndarray], suffix: str = ".png") -> Path:
    folder.mkdir(parents=True)
    for k, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"frame_{k}{suffix}"), frame[:, :, ::-1])
    return folder


@pytest.mark.parametrize(("name", "fourcc"), [("clip.avi", "MJPG"), ("clip.mp4", "mp4v")])
def test_video_source(tmp_path, frames, name, fourcc):
    video = VideoFrames(write_video(tmp_path / name, frames, fourcc))
    assert len(video) == len(frames) and video.frame_sizes().tolist() == [list(SIZE)] * len(frames)
    np.testing.assert_allclose(video.timestamps(), np.arange(len(frames)) / 10.0)
    in_order = [video.frame(i) for i in range(len(video))]
    for i, frame in enumerate(in_order):
        assert frame.shape == SIZE + (3,) and frame.dtype == np.uint8
        assert np.abs(frame.astype(int) - frames[i]).mean() < 8                 # lossy codec, right order
    for i in (9, 2, 11, 0, 5):                                                    # seeks back and forth
        np.testing.assert_array_equal(video.frame(i), in_order[i])
    with pytest.raises(IndexError):
        video.frame(len(frames))


def test_video_pairs_respect_max_gap(tmp_path, frames):
    video = write_video(tmp_path / "clip.avi", frames, "MJPG", fps=10.0)
    assert len(FramePairs(open_sources(video), max_gap_s=0.15)) == len(frames) - 1
    with pytest.raises(DataError, match="no frame pairs"):
        FramePairs(open_sources(video), max_gap_s=0.05)


def test_image_folder_natural_order_and_formats(tmp_path, frames):
    folder = write_folder(tmp_path / "seq", frames)
    source = ImageFolderFrames(folder)
    assert [p.name for p in source.files[:3]] == ["frame_0.png", "frame_1.png", "frame_2.png"]
    assert source.files[-1].name == "frame_11.png" and source.timestamps() is None
    np.testing.assert_array_equal(source.frame(10), frames[10])
    extra = tmp_path / "formats"
    extra.mkdir()
    cv2.imwrite(str(extra / "a.png"), frames[0][:, :, 1].astype(np.uint16) * 257)   # 16-bit grey
    cv2.imwrite(str(extra / "b.ppm"), frames[1][:, :, ::-1])
    mixed = ImageFolderFrames(extra)
    np.testing.assert_array_equal(mixed.frame(0), np.repeat(frames[0][:, :, 1:2], 3, axis=2))
    np.testing.assert_array_equal(mixed.frame(1), frames[1])


def test_items_sizes_ranges_and_stride(tmp_path, frames):
    sources = open_sources([write_folder(tmp_path / "seq", frames)])
    pairs = FramePairs(sources, stride=2, crop=(64, 64))
    assert len(pairs) == len(frames) - 2
    item = pairs[3]
    assert set(item) == {"img1", "img2"}
    for tensor in item.values():
        assert tensor.shape == (3, 64, 64) and tensor.dtype == torch.float32
        assert 0.0 <= float(tensor.min()) and float(tensor.max()) <= 1.0
    full = FramePairs(sources, stride=2)[3]
    np.testing.assert_allclose(full["img1"].permute(1, 2, 0).numpy() * 255, frames[3], atol=1e-3)
    np.testing.assert_allclose(full["img2"].permute(1, 2, 0).numpy() * 255, frames[5], atol=1e-3)
    batch = next(iter(DataLoader(pairs, batch_size=4, shuffle=True)))
    assert batch["img1"].shape == (4, 3, 64, 64)


def test_crop_flip_swap_follow_the_seed(tmp_path, frames):
    sources = open_sources([write_folder(tmp_path / "seq", frames)])
    plain = FramePairs(sources, crop=(64, 128))
    augmented = FramePairs(sources, crop=(64, 128), hflip=True, swap=True)
    np.testing.assert_array_equal(augmented[(4, 123)]["img1"], augmented[(4, 123)]["img1"])
    full = {k: v.numpy() for k, v in FramePairs(sources)[4].items()}
    seen = set()
    for seed in range(24):
        img1, img2 = (t.numpy() for t in augmented[(4, seed)].values())
        match = None
        for name in ("img1", "img2"):
            for flip in (False, True):
                candidate = full[name][:, :, ::-1] if flip else full[name]
                for y0 in range(SIZE[0] - 64 + 1):
                    if np.array_equal(candidate[:, y0:y0 + 64], img1):
                        match = (name, flip, y0)
        assert match is not None, "img1 is not a crop of either frame"
        name, flip, y0 = match
        other = full["img2" if name == "img1" else "img1"]
        np.testing.assert_array_equal(img2, (other[:, :, ::-1] if flip else other)[:, y0:y0 + 64])
        seen.add((name, flip))
    assert seen == {("img1", False), ("img1", True), ("img2", False), ("img2", True)}
    assert torch.equal(plain[(4, 7)]["img1"], plain[(4, 7)]["img1"])


def test_mixed_resolutions_resize_or_reject(tmp_path, frames):
    small = [cv2.resize(f, (96, 72), interpolation=cv2.INTER_AREA) for f in frames[:4]]
    sources = open_sources([write_folder(tmp_path / "big", frames[:4]), write_folder(tmp_path / "small", small)])
    resized = FramePairs(sources, resolution_policy="resize")
    assert resized.size == SIZE
    assert all(resized[i]["img1"].shape == (3, *SIZE) for i in range(len(resized)))
    scaled = FramePairs(sources, resolution_policy="resize", resize=(128, 192), crop=(128, 128))
    assert scaled[5]["img2"].shape == (3, 128, 128)
    with pytest.raises(DataError, match=r"mixed resolutions: .*96x128 \(HxW\).* 72x96 \(HxW\)"):
        FramePairs(sources, resolution_policy="reject")


def test_bad_settings_and_paths(tmp_path, frames):
    folder = write_folder(tmp_path / "seq", frames[:3])
    sources = open_sources(folder)
    with pytest.raises(DataError, match="multiple of 64"):
        FramePairs(sources, crop=(60, 64))
    with pytest.raises(DataError, match=r"crop 128x128 \(HxW\) is larger than the frames, 96x128"):
        FramePairs(sources, crop=(128, 128))
    with pytest.raises(DataError, match="resolution_policy"):
        FramePairs(sources, resolution_policy="stretch")
    with pytest.raises(DataError, match="stride"):
        FramePairs(sources, stride=0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_sources(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("not data")
    with pytest.raises(DataError, match="is not a training source"):
        open_sources(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is not a training source"):
        open_sources(tmp_path / "empty")
    (folder / "frame_9.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="frame_9.png is unreadable"):
        FramePairs(open_sources(folder))


def test_directory_of_recordings_and_trainer_config(tmp_path, frames):
    root = tmp_path / "recordings"
    write_folder(root / "seq_10", frames[:4])
    write_folder(root / "seq_2", frames[4:8])
    write_video(root / "clip.avi", frames, "MJPG")
    sources = open_sources(root)
    assert [type(s).__name__ for s in sources] == ["VideoFrames", "ImageFolderFrames", "ImageFolderFrames"]
    assert [Path(s.name).name for s in sources[1:]] == ["seq_2", "seq_10"]
    config = dict(DEFAULTS["data"], crop=[64, 64])
    pairs = recording_pairs([root], config)
    assert len(pairs) == (len(frames) - 1) + 3 + 3
    assert pairs[(0, 1)]["img1"].shape == (3, 64, 64)
