"""sensor_msgs Image / CompressedImage <-> numpy, with the checks the flow node needs.

Where a ROS 2 install provides the compiled cv_bridge (vision_opencv), decoding goes through
it; otherwise (the pip/.venv set-up, where PyPI's ``cv-bridge`` is a broken ROS 1 port) a
few lines of numpy do the same: rows are read through ``step`` (padding allowed), 16-bit
data honours ``is_bigendian``, and the result is a view of the message's buffer. Encoding
numpy -> Image is always done here (one copy into the message).
"""
from __future__ import annotations

import array
import importlib.machinery
import importlib.util
import sys
from typing import Any

import cv2
import numpy as np

from mdflow_ros.conventions import FRAME_ENCODINGS

PIXEL_LAYOUTS: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4),
    "bgra8": (np.dtype(np.uint8), 4),
    "mono8": (np.dtype(np.uint8), 1),
    "mono16": (np.dtype(np.uint16), 1),
    "32FC1": (np.dtype(np.float32), 1),
    "32FC2": (np.dtype(np.float32), 2),
}
"""Image encodings this module reads and writes, with the numpy dtype and channel count of each."""

CAMERA_ENCODINGS: tuple[str, ...] = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16")
"""Camera encodings the flow node accepts."""


class ImageDecodeError(ValueError):
    """A message is not a usable image: the text says why (for a log line), ``kind`` names the problem."""

    def __init__(self, text: str, kind: str):
        super().__init__(text)
        self.kind = kind


def cv_bridge_available() -> bool:
    """True when the compiled ROS 2 cv_bridge is importable (not PyPI's pure-Python ROS 1 port)."""
    try:
        spec = importlib.util.find_spec("cv_bridge.boost.cv_bridge_boost")
    except (ImportError, ValueError, AttributeError):
        return False
    return spec is not None and str(spec.origin).endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def check_image(msg: Any, encodings: tuple[str, ...] = tuple(PIXEL_LAYOUTS)) -> tuple[np.dtype, int]:
    """Validate an Image's encoding and sizes; returns its (dtype, channels) or raises ImageDecodeError."""
    if msg.encoding not in encodings:
        raise ImageDecodeError(f"unsupported encoding {msg.encoding!r} (accepted: {', '.join(encodings)})", "encoding")
    dtype, channels = PIXEL_LAYOUTS[msg.encoding]
    if msg.height == 0 or msg.width == 0:
        raise ImageDecodeError(f"zero-size image ({msg.width}x{msg.height})", "size")
    row = msg.width * channels * dtype.itemsize
    if msg.step < row:
        raise ImageDecodeError(
            f"step {msg.step} is smaller than one row of {msg.width} {msg.encoding} pixels ({row} bytes)", "step")
    if len(msg.data) < msg.step * msg.height:
        raise ImageDecodeError(
            f"data holds {len(msg.data)} bytes, less than step x height = {msg.step} x {msg.height} = "
            f"{msg.step * msg.height}", "data")
    return dtype, channels


def image_to_array(msg: Any, encodings: tuple[str, ...] = tuple(PIXEL_LAYOUTS)) -> np.ndarray:
    """Decode a sensor_msgs/Image with numpy: (H, W) for one channel, else (H, W, C), native byte order.

    The result is a view of ``msg.data`` (no copy) unless the data is 16-bit in the other byte order.
    Raises ImageDecodeError for an encoding outside ``encodings`` or inconsistent sizes.
    """
    dtype, channels = check_image(msg, encodings)
    row = msg.width * channels * dtype.itemsize
    raw = np.frombuffer(msg.data, np.uint8, count=msg.step * msg.height).reshape(msg.height, msg.step)[:, :row]
    stored = dtype.newbyteorder(">" if msg.is_bigendian else "<") if dtype.itemsize > 1 else dtype
    pixels = raw.view(stored)
    if stored != dtype:
        pixels = pixels.astype(dtype)
    return pixels.reshape(msg.height, msg.width) if channels == 1 else pixels.reshape(msg.height, msg.width, channels)


def image_to_array_cv_bridge(msg: Any, encodings: tuple[str, ...] = tuple(PIXEL_LAYOUTS)) -> np.ndarray:
    """The same decoding as image_to_array, through the ROS 2 cv_bridge (needs cv_bridge_available())."""
    from cv_bridge import CvBridge

    check_image(msg, encodings)
    return np.asarray(CvBridge().imgmsg_to_cv2(msg, desired_encoding="passthrough"))


def compressed_to_array(msg: Any) -> tuple[np.ndarray, str]:
    """Decode a sensor_msgs/CompressedImage (JPEG, PNG, ...) -> (array, "bgr8" or "mono8")."""
    data = np.frombuffer(msg.data, np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise ImageDecodeError(f"compressed image ({msg.format!r}, {data.size} bytes) could not be decoded",
                               "compressed")
    if image.dtype != np.uint8:
        image = (image.astype(np.float32) * (255.0 / np.iinfo(image.dtype).max)).round().astype(np.uint8)
    if image.ndim == 2:
        return image, "mono8"
    if image.shape[2] == 4:
        return image[:, :, :3], "bgr8"
    return image, "bgr8"


def estimator_input(pixels: np.ndarray, encoding: str) -> tuple[np.ndarray, str]:
    """A decoded camera image as FlowEstimator takes it: (array, "rgb8" | "bgr8" | "mono8").

    Alpha is dropped (a view); mono16 becomes float32 in [0, 1] with encoding "mono8".
    """
    if encoding in FRAME_ENCODINGS:
        return pixels, encoding
    if encoding in ("rgba8", "bgra8"):
        return pixels[:, :, :3], encoding[:3] + "8"
    if encoding == "mono16":
        return pixels.astype(np.float32) * np.float32(1.0 / 65535.0), "mono8"
    raise ImageDecodeError(f"unsupported encoding {encoding!r} (accepted: {', '.join(CAMERA_ENCODINGS)})", "encoding")


def array_to_image(pixels: np.ndarray, encoding: str, header: Any = None) -> Any:
    """numpy (H, W) or (H, W, C) -> sensor_msgs/Image with a tight step, native byte order.

    ``pixels`` must have the dtype and channel count of ``encoding`` (see PIXEL_LAYOUTS); the
    data is copied once. ``header`` (std_msgs/Header) is set when given.
    """
    from sensor_msgs.msg import Image

    if encoding not in PIXEL_LAYOUTS:
        raise ValueError(f"cannot encode {encoding!r}; supported: {', '.join(PIXEL_LAYOUTS)}")
    dtype, channels = PIXEL_LAYOUTS[encoding]
    shape_ok = pixels.ndim == 2 if channels == 1 else (pixels.ndim == 3 and pixels.shape[2] == channels)
    if pixels.dtype != dtype or not shape_ok:
        raise ValueError(f"{encoding} needs {dtype} with {channels} channel(s), got {pixels.dtype} {pixels.shape}")
    pixels = np.ascontiguousarray(pixels)
    data = array.array("B")
    data.frombytes(pixels.reshape(-1).view(np.uint8))
    msg = Image(height=pixels.shape[0], width=pixels.shape[1], encoding=encoding,
                is_bigendian=int(sys.byteorder == "big"), step=pixels.shape[1] * channels * dtype.itemsize)
    msg.data = data
    if header is not None:
        msg.header = header
    return msg
