"""Ground-truth flow benchmarks in their standard folder layouts, for evaluation.

Each benchmark is a list of (frame 1, frame 2, flow file) paths found when it is opened;
item i is read on demand as ``(img1, img2, flow, valid)``: (H, W, 3) uint8 RGB frames,
flow (H, W, 2) float32 (u, v) in pixels frame 1 -> 2, valid (H, W) bool. Layouts: MPI-Sintel,
KITTI 2012/2015, FlyingChairs, Middlebury, and a ``pairs.tsv`` listing (columns img1, img2,
ground truth; paths relative to the file). ``open_benchmark`` detects the layout.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mdflow_ros.io.flow_files import read_flow
from mdflow_ros.io.file_sources import natural_key
from mdflow_ros.io.frames import DataError, FrameDecodeError, decode_image_bytes

SINTEL_PASSES: tuple[str, ...] = ("clean", "final")
KITTI_IMAGE_DIRS: tuple[str, ...] = ("image_2", "colored_0", "image_0")
"""Frame folders of KITTI 2015 (image_2) and KITTI 2012 (colored_0, or grey image_0), first found wins."""
KITTI_FLOW_DIRS: tuple[str, ...] = ("flow_occ", "flow_noc")

Entry = tuple[Path, Path, Path]


def _sorted(paths) -> list[Path]:
    return sorted(paths, key=lambda p: natural_key(str(p)))


def read_rgb(path: Path) -> np.ndarray:
    """An image file -> (H, W, 3) uint8 RGB; DataError naming the file if it cannot be read."""
    try:
        return decode_image_bytes(path.read_bytes())
    except (OSError, FrameDecodeError) as err:
        raise DataError(f"cannot read image {path}: {err}") from None


@dataclass
class FlowBenchmark:
    """Pairs with ground-truth flow: ``len(b)`` items, ``b[i] -> (img1, img2, flow, valid)``."""

    name: str
    layout: str
    entries: list[Entry]

    def __post_init__(self) -> None:
        if not self.entries:
            raise DataError(f"{self.layout} benchmark {self.name} has no pairs")
        for entry in self.entries:
            for path in entry:
                if not path.is_file():
                    raise DataError(f"{self.layout} benchmark {self.name}: missing file {path}")

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Pair ``index``: img1, img2 (H, W, 3) uint8 RGB, flow (H, W, 2) float32 px, valid (H, W) bool."""
        first, second, gt = self.entries[index]
        img1, img2 = read_rgb(first), read_rgb(second)
        try:
            flow, valid = read_flow(gt)
        except (OSError, ValueError) as err:
            raise DataError(f"cannot read ground truth {gt}: {err}") from None
        if not img1.shape == img2.shape or img1.shape[:2] != flow.shape[:2]:
            raise DataError(f"sizes disagree: {first} is {img1.shape[:2]}, {second} is {img2.shape[:2]}, "
                            f"{gt} is {flow.shape[:2]}")
        return img1, img2, flow, valid


def sintel(root: Path, dstype: str = "final") -> FlowBenchmark:
    """MPI-Sintel: training/{clean,final}/SCENE/frame_XXXX.png with training/flow/SCENE/frame_XXXX.flo.

    root: the Sintel folder (holding training/) or its training/ folder; dstype: "clean" or "final".
    """
    if dstype not in SINTEL_PASSES:
        raise DataError(f"Sintel pass must be one of {', '.join(SINTEL_PASSES)}, got {dstype!r}")
    training = root / "training" if (root / "training").is_dir() else root
    entries = []
    for flo in _sorted(training.glob("flow/*/frame_*.flo")):
        number = int(flo.stem.split("_")[-1])
        scene = training / dstype / flo.parent.name
        entries.append((scene / f"frame_{number:04d}.png", scene / f"frame_{number + 1:04d}.png", flo))
    return FlowBenchmark(f"{root.name}-{dstype}", "Sintel", entries)


def kitti(root: Path, flow_dir: str = "flow_occ") -> FlowBenchmark:
    """KITTI 2012/2015: training/IMAGES/NNNNNN_10.png, _11.png with training/flow_occ/NNNNNN_10.png (16-bit).

    root: the KITTI folder (holding training/) or its training/ folder; IMAGES is the first of
    KITTI_IMAGE_DIRS present; flow_dir: "flow_occ" (all pixels) or "flow_noc" (non-occluded).
    """
    if flow_dir not in KITTI_FLOW_DIRS:
        raise DataError(f"KITTI flow folder must be one of {', '.join(KITTI_FLOW_DIRS)}, got {flow_dir!r}")
    training = root / "training" if (root / "training").is_dir() else root
    images = next((training / d for d in KITTI_IMAGE_DIRS if (training / d).is_dir()), None)
    if images is None:
        raise DataError(f"KITTI folder {training} has none of the image folders {', '.join(KITTI_IMAGE_DIRS)}")
    entries = []
    for gt in _sorted((training / flow_dir).glob("*_10.png")):
        stem = gt.name[:-len("_10.png")]
        entries.append((images / f"{stem}_10.png", images / f"{stem}_11.png", gt))
    return FlowBenchmark(root.name, "KITTI", entries)


def flying_chairs(root: Path) -> FlowBenchmark:
    """FlyingChairs: data/NNNNN_img1.ppm, NNNNN_img2.ppm, NNNNN_flow.flo (root: the release or its data/)."""
    data = root / "data" if (root / "data").is_dir() else root
    entries = []
    for flo in _sorted(data.glob("*_flow.flo")):
        prefix = flo.name[:-len("_flow.flo")]
        entries.append((data / f"{prefix}_img1.ppm", data / f"{prefix}_img2.ppm", flo))
    return FlowBenchmark(root.name, "FlyingChairs", entries)


def middlebury(root: Path) -> FlowBenchmark:
    """Middlebury: other-data/SCENE/frame10.png, frame11.png with other-gt-flow/SCENE/flow10.flo."""
    entries = [(root / "other-data" / flo.parent.name / "frame10.png",
                root / "other-data" / flo.parent.name / "frame11.png", flo)
               for flo in _sorted(root.glob("other-gt-flow/*/flow10.flo"))]
    return FlowBenchmark(root.name, "Middlebury", entries)


def pairs_tsv(path: Path) -> FlowBenchmark:
    """A ``pairs.tsv`` listing: tab-separated img1, img2, ground truth (.flo, KITTI .png or .npy).

    Paths are relative to the file's folder; blank lines and lines starting with '#' are
    skipped, as is a first row naming the columns (img1 ...). In .flo files, components
    of 1e9 or more mark unknown pixels (valid False).
    """
    tsv = path / "pairs.tsv" if path.is_dir() else path
    entries = []
    for number, line in enumerate(tsv.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        cells = [c.strip() for c in line.split("\t")]
        if not entries and cells[0].lower() == "img1":
            continue
        if len(cells) != 3 or not all(cells):
            raise DataError(f"{tsv} line {number}: expected 3 tab-separated columns (img1, img2, ground truth), "
                            f"got {line!r}")
        entries.append(tuple(tsv.parent / c for c in cells))
    return FlowBenchmark(tsv.parent.name, "pairs.tsv", entries)


def detect_layout(path: Path) -> str | None:
    """The layout name of a benchmark folder (see LAYOUTS), or None."""
    if path.is_file():
        return "pairs.tsv" if path.name == "pairs.tsv" else None
    if (path / "pairs.tsv").is_file():
        return "pairs.tsv"
    training = path / "training" if (path / "training").is_dir() else path
    if (training / "flow").is_dir() and any((training / p).is_dir() for p in SINTEL_PASSES):
        return "sintel"
    if any((training / d).is_dir() for d in KITTI_FLOW_DIRS):
        return "kitti"
    data = path / "data" if (path / "data").is_dir() else path
    if next(data.glob("*_flow.flo"), None) is not None:
        return "flyingchairs"
    if (path / "other-gt-flow").is_dir():
        return "middlebury"
    return None


LAYOUTS: dict[str, Callable[..., FlowBenchmark]] = {
    "pairs.tsv": pairs_tsv,
    "sintel": sintel,
    "kitti": kitti,
    "flyingchairs": flying_chairs,
    "middlebury": middlebury,
}

LAYOUT_OPTIONS: dict[str, set[str]] = {"sintel": {"dstype"}, "kitti": {"flow_dir"}}
"""Keyword options each layout's reader takes."""


def open_benchmark(path: str | Path, **options: str) -> FlowBenchmark:
    """The benchmark at ``path``, its layout detected from the folder structure.

    options go to the layout's reader: ``dstype`` for Sintel ("final" by default),
    ``flow_dir`` for KITTI ("flow_occ" by default). Raises FileNotFoundError for a missing
    path and DataError for an unrecognised layout or missing files.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"benchmark path does not exist: {path}")
    layout = detect_layout(path)
    if layout is None:
        raise DataError(
            f"{path} is not a known benchmark layout; expected one of: pairs.tsv; Sintel training/"
            f"{{clean,final}}/ + training/flow/; KITTI training/image_2/ + training/flow_occ/; FlyingChairs "
            f"data/*_flow.flo; Middlebury other-data/ + other-gt-flow/")
    unknown = set(options) - LAYOUT_OPTIONS.get(layout, set())
    if unknown:
        raise DataError(f"{layout} benchmark {path} does not take the option(s) {sorted(unknown)}")
    return LAYOUTS[layout](path, **options)
