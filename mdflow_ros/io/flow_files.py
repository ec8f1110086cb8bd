"""Reading and writing ground-truth flow files: Middlebury .flo, KITTI 16-bit .png and .npy.

Every flow here is a numpy array (H, W, 2) float32 holding (u, v) in pixels, frame 1 -> 2
(the convention of ``mdflow_ros.conventions``). ``read_flow`` / ``write_flow`` pick the format from
the file suffix and carry a validity mask (H, W) bool alongside the flow.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

FLO_MAGIC: float = 202021.25
"""First four bytes of a Middlebury .flo file, as a little-endian float32 ("PIEH")."""

FLO_HEADER_BYTES: int = 12
"""Magic (float32), width (int32), height (int32)."""

UNKNOWN_FLOW_THRESH: float = 1e9
"""Middlebury marks an unknown flow vector by a component of magnitude >= this."""

UNKNOWN_FLOW: float = 1e10
"""The value ``write_flow`` stores in .flo files for invalid pixels."""

KITTI_SCALE: float = 64.0
KITTI_OFFSET: float = 2.0 ** 15
"""KITTI stores each component as uint16 value = flow * KITTI_SCALE + KITTI_OFFSET."""

KITTI_MIN_FLOW: float = (0 - KITTI_OFFSET) / KITTI_SCALE
KITTI_MAX_FLOW: float = (65535 - KITTI_OFFSET) / KITTI_SCALE
"""Representable range of a KITTI flow component, -512 to 511.984375 pixels."""

MAX_FLO_SIDE: int = 1 << 16
"""Largest width or height accepted from a .flo header (guards against garbage headers)."""

SUFFIXES: tuple[str, ...] = (".flo", ".png", ".npy")

PathLike = str | os.PathLike


def as_flow_array(flow: object, name: str = "flow") -> np.ndarray:
    """Check that ``flow`` is a real-valued (H, W, 2) array and return it as float32.

    Non-finite values are kept; H and W must be at least 1. Raises ValueError naming
    ``name``, the expected layout and what was given.
    """
    arr = np.asarray(flow)
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim != 3 or arr.shape[2] != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{name} must have shape (H, W, 2) holding (u, v), got shape {arr.shape}")
    return arr.astype(np.float32, copy=False)


def known_flow_mask(flow: np.ndarray) -> np.ndarray:
    """(H, W) bool: True where both components of ``flow`` (H, W, 2) are finite and known.

    A component is unknown when its magnitude is >= UNKNOWN_FLOW_THRESH (Middlebury's mark).
    """
    with np.errstate(invalid="ignore"):
        return np.all(np.abs(flow) < UNKNOWN_FLOW_THRESH, axis=2)


def as_valid_mask(valid: object, shape: tuple[int, int], name: str = "valid") -> np.ndarray:
    """Check that ``valid`` is an (H, W) mask of booleans or 0/1 values and return it as bool."""
    arr = np.asarray(valid)
    if arr.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} (H, W) to match the flow, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr
    if arr.dtype.kind not in "fiu" or not np.all((arr == 0) | (arr == 1)):
        raise ValueError(f"{name} must hold booleans or 0/1 values, got dtype {arr.dtype}")
    return arr.astype(bool)


def read_flo(path: PathLike) -> np.ndarray:
    """Read a Middlebury .flo file -> flow (H, W, 2) float32, in pixels, values as stored.

    Unknown vectors keep their stored value (magnitude >= 1e9); ``read_flow`` turns them
    into a validity mask. Raises ValueError for a wrong magic number, a bad size in the
    header, or a file whose length does not match its header (truncated or with extra bytes).
    """
    path = Path(path)
    data = path.read_bytes()
    if len(data) < FLO_HEADER_BYTES:
        raise ValueError(f"{path}: not a .flo file, {len(data)} bytes is shorter than the 12-byte header")
    magic = float(np.frombuffer(data, dtype="<f4", count=1)[0])
    if magic != FLO_MAGIC:
        raise ValueError(f"{path}: not a .flo file, magic number is {magic!r}, expected {FLO_MAGIC}")
    width, height = (int(x) for x in np.frombuffer(data, dtype="<i4", count=2, offset=4))
    if not (0 < width <= MAX_FLO_SIDE and 0 < height <= MAX_FLO_SIDE):
        raise ValueError(f"{path}: .flo header gives an invalid size width={width}, height={height} "
                         f"(each must be 1..{MAX_FLO_SIDE})")
    expected = FLO_HEADER_BYTES + width * height * 2 * 4
    if len(data) < expected:
        raise ValueError(f"{path}: truncated .flo file, {len(data)} bytes but its header "
                         f"({width} x {height}) needs {expected}")
    if len(data) > expected:
        raise ValueError(f"{path}: .flo file has {len(data) - expected} unexpected trailing bytes "
                         f"after {width} x {height} flow values")
    flow = np.frombuffer(data, dtype="<f4", offset=FLO_HEADER_BYTES).reshape(height, width, 2)
    return flow.astype(np.float32)


def write_flo(path: PathLike, flow: np.ndarray) -> None:
    """Write flow (H, W, 2), in pixels, as a Middlebury .flo file (float32 little-endian)."""
    flow = as_flow_array(flow)
    height, width = flow.shape[:2]
    header = np.array([FLO_MAGIC], dtype="<f4").tobytes() + np.array([width, height], dtype="<i4").tobytes()
    Path(path).write_bytes(header + np.ascontiguousarray(flow, dtype="<f4").tobytes())


def read_kitti_flow(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a KITTI 16-bit flow PNG -> (flow (H, W, 2) float32 in pixels, valid (H, W) bool).

    The file's channels are R = u, G = v, B = valid, each uint16 with
    value = flow * 64 + 2**15. Flow is set to 0 where the valid channel is 0.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such KITTI flow file")
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise ValueError(f"{path}: OpenCV cannot decode this file as an image")
    if raw.dtype != np.uint16 or raw.ndim != 3 or raw.shape[2] != 3:
        raise ValueError(f"{path}: expected a 3-channel 16-bit KITTI flow PNG, "
                         f"got dtype {raw.dtype} with shape {raw.shape}")
    valid = raw[:, :, 0] > 0
    flow = (raw[:, :, 2:0:-1].astype(np.float32) - KITTI_OFFSET) / KITTI_SCALE
    flow[~valid] = 0.0
    return flow, valid


def write_kitti_flow(path: PathLike, flow: np.ndarray, valid: np.ndarray | None = None) -> None:
    """Write flow (H, W, 2) in pixels as a KITTI 16-bit PNG (R = u, G = v, B = valid).

    valid: (H, W) bool, default all True; pixels with a non-finite or unknown component are
    always written as invalid. Components are clipped to [-512, 511.984375] pixels and
    rounded to 1/64 pixel.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: a KITTI flow file must have the suffix .png, got {path.suffix!r}")
    flow = as_flow_array(flow)
    ok = known_flow_mask(flow)
    if valid is not None:
        ok &= as_valid_mask(valid, flow.shape[:2])
    safe = np.where(ok[:, :, None], flow, 0.0)
    encoded = np.rint(np.clip(safe, KITTI_MIN_FLOW, KITTI_MAX_FLOW) * KITTI_SCALE + KITTI_OFFSET)
    raw = np.empty(flow.shape[:2] + (3,), dtype=np.uint16)
    raw[:, :, 0] = ok
    raw[:, :, 1] = encoded[:, :, 1]
    raw[:, :, 2] = encoded[:, :, 0]
    if not cv2.imwrite(str(path), raw):
        raise OSError(f"{path}: OpenCV could not write the KITTI flow PNG")


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{path}: unknown flow file suffix {path.suffix!r}, expected one of {', '.join(SUFFIXES)}")
    return suffix


def check_flow_path(path: PathLike) -> None:
    """ValueError naming the accepted suffixes unless ``path`` names a flow file format (.flo, .png, .npy)."""
    _suffix(Path(path))


def read_flow(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a .flo, KITTI .png or .npy flow file -> (flow (H, W, 2) float32, valid (H, W) bool).

    Flow is in pixels, frame 1 -> 2. valid is False where the vector is unknown (a component
    of magnitude >= 1e9), non-finite, or marked invalid (KITTI); flow is 0 there, so the
    returned flow is finite everywhere. A .npy file must hold an (H, W, 2) real array.
    """
    path = Path(path)
    suffix = _suffix(path)
    if suffix == ".png":
        return read_kitti_flow(path)
    if suffix == ".flo":
        flow = read_flo(path)
    else:
        try:
            loaded = np.load(path, allow_pickle=False)
        except ValueError as err:
            raise ValueError(f"{path}: not a plain .npy array ({err})") from err
        flow = as_flow_array(loaded, name=f"{path}: flow").copy()
    valid = known_flow_mask(flow)
    flow[~valid] = 0.0
    return flow, valid


def write_flow(path: PathLike, flow: np.ndarray, valid: np.ndarray | None = None) -> None:
    """Write flow (H, W, 2) in pixels to .flo, KITTI .png or .npy, chosen by the suffix.

    valid: optional (H, W) bool. Invalid pixels are stored the way each format marks them,
    so ``read_flow`` gives the same mask back: 1e10 in .flo, the valid channel in .png,
    NaN in .npy (saved as (H, W, 2) float32).
    """
    path = Path(path)
    suffix = _suffix(path)
    flow = as_flow_array(flow)
    if suffix == ".png":
        write_kitti_flow(path, flow, valid)
        return
    if valid is not None:
        valid = as_valid_mask(valid, flow.shape[:2])
        flow = np.where(valid[:, :, None], flow, UNKNOWN_FLOW if suffix == ".flo" else np.nan).astype(np.float32)
    if suffix == ".flo":
        write_flo(path, flow)
    else:
        with path.open("wb") as fh:
            np.save(fh, flow, allow_pickle=False)
