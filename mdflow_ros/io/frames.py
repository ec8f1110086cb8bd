"""The common frame representation of recordings, and conversions into it.

Every frame source (rosbag, video, image folder) hands out frames as numpy arrays
(H, W, 3) uint8 holding RGB. This module converts ROS image encodings and compressed
images into that form, defines the errors that bad input raises, and the ``FrameSource``
interface that training's pair dataset builds on. Offline flow (mdflow_ros/offline.py) and
training read recordings through it alike.
"""
from __future__ import annotations

import io
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image as PILImage, UnidentifiedImageError

from mdflow_ros.io import ros_image
from mdflow_ros.io.ros_image import ImageDecodeError, image_to_array


class DataError(ValueError):
    """A recording (bag, video, image folder) that cannot be used; the message says which input and why."""


class UnsupportedEncodingError(DataError):
    """An image encoding or compressed format this module does not convert."""


class FrameDecodeError(DataError):
    """One frame (a message or a file) whose bytes cannot be decoded into an image."""


BAYER_CODES: dict[str, int] = {
    "bayer_rggb8": cv2.COLOR_BayerRGGB2RGB,
    "bayer_bggr8": cv2.COLOR_BayerBGGR2RGB,
    "bayer_gbrg8": cv2.COLOR_BayerGBRG2RGB,
    "bayer_grbg8": cv2.COLOR_BayerGRBG2RGB,
}
"""ROS Bayer encodings (named by the 2x2 pattern at the top-left pixel) -> OpenCV demosaic codes."""

PLAIN_ENCODINGS: tuple[str, ...] = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16")
"""Non-Bayer sensor_msgs/Image encodings converted to RGB."""

RAW_ENCODINGS: tuple[str, ...] = PLAIN_ENCODINGS + tuple(BAYER_CODES)
"""Every sensor_msgs/Image encoding ``image_to_rgb`` accepts."""


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """uint8 or uint16 pixels -> uint8; 16-bit values are scaled by 255/65535 and rounded."""
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype == np.uint16:
        return ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    raise UnsupportedEncodingError(f"pixel type {pixels.dtype} is not supported (uint8 or uint16 only)")


def array_to_rgb(pixels: np.ndarray, layout: str) -> np.ndarray:
    """Decoded pixels -> (H, W, 3) uint8 RGB, a new writable array.

    layout: channel order of ``pixels`` with its bit depth, as in ROS encodings: "rgb8",
    "bgr8", "rgba8", "bgra8", "mono8" for (H, W) or (H, W, 3/4) uint8; the same names ending
    in "16" for uint16 data (scaled to 8 bit); or a Bayer encoding for an (H, W) uint8 mosaic.
    """
    if layout in BAYER_CODES:
        return cv2.cvtColor(np.ascontiguousarray(pixels), BAYER_CODES[layout])
    order = layout.rstrip("0123456789")
    channels = {"mono": 1, "rgb": 3, "bgr": 3, "rgba": 4, "bgra": 4}.get(order)
    if channels is None:
        raise UnsupportedEncodingError(f"unsupported pixel layout {layout!r}; supported: "
                                       f"{', '.join(RAW_ENCODINGS)} (and 16-bit rgb/bgr/rgba/bgra)")
    shape_ok = pixels.ndim == 2 if channels == 1 else pixels.ndim == 3 and pixels.shape[2] == channels
    if not shape_ok:
        raise DataError(f"{layout} pixels need {channels} channel(s), got an array of shape {pixels.shape}")
    pixels = to_uint8(pixels)
    if order == "mono":
        return np.repeat(pixels[:, :, None], 3, axis=2)
    if order.startswith("bgr"):
        return np.ascontiguousarray(pixels[:, :, 2::-1])
    return np.array(pixels[:, :, :3], order="C", copy=True)


def _bayer_plane(msg: Any) -> np.ndarray:
    """The (H, W) uint8 mosaic of an 8-bit Bayer Image, read through ``step``."""
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise FrameDecodeError(f"zero-size image ({width}x{height})")
    if step < width:
        raise FrameDecodeError(f"step {step} is smaller than one row of {width} {msg.encoding} pixels")
    if len(msg.data) < step * height:
        raise FrameDecodeError(f"data holds {len(msg.data)} bytes, less than step x height = {step * height}")
    return np.frombuffer(msg.data, np.uint8, count=step * height).reshape(height, step)[:, :width]


def check_raw_image(msg: Any) -> tuple[int, int]:
    """Validate a sensor_msgs/Image without converting it; returns its (H, W).

    Raises UnsupportedEncodingError for an encoding outside RAW_ENCODINGS and
    FrameDecodeError when sizes, step and data length disagree.
    """
    if msg.encoding not in RAW_ENCODINGS:
        raise UnsupportedEncodingError(f"unsupported image encoding {msg.encoding!r}; "
                                       f"supported: {', '.join(RAW_ENCODINGS)}")
    if msg.encoding in BAYER_CODES:
        _bayer_plane(msg)
    else:
        try:
            image_to_array(msg, PLAIN_ENCODINGS)
        except ImageDecodeError as err:
            raise FrameDecodeError(str(err)) from None
    return int(msg.height), int(msg.width)


def image_to_rgb(msg: Any) -> np.ndarray:
    """sensor_msgs/Image (any of RAW_ENCODINGS, row padding and big-endian allowed) -> (H, W, 3) uint8 RGB."""
    check_raw_image(msg)
    if msg.encoding in BAYER_CODES:
        return array_to_rgb(_bayer_plane(msg), msg.encoding)
    return array_to_rgb(image_to_array(msg, PLAIN_ENCODINGS), msg.encoding)


def check_compressed_format(fmt: str) -> None:
    """Raise UnsupportedEncodingError unless a CompressedImage ``format`` names a JPEG or PNG colour or mono
    image (the node's rule, mdflow_ros.io.ros_image.check_compressed_format: compressedDepth is refused)."""
    try:
        ros_image.check_compressed_format(fmt)
    except ImageDecodeError as err:
        raise UnsupportedEncodingError(str(err)) from None


def encoded_image_size(source: bytes | memoryview | np.ndarray | Path) -> tuple[int, int]:
    """(H, W) of an encoded image (JPEG/PNG/PPM/...: bytes, or a file) read from its header only.

    Raises FrameDecodeError when the header is not a readable image header.
    """
    fp = source if isinstance(source, Path) else io.BytesIO(bytes(source))
    try:
        with PILImage.open(fp) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise FrameDecodeError(f"not a readable image: {err}") from None
    return int(height), int(width)


def decode_image_bytes(data: bytes | memoryview | np.ndarray) -> np.ndarray:
    """Encoded image bytes (JPEG, PNG, PPM, ...; 8 or 16 bit; grey, colour or with alpha) -> (H, W, 3) uint8 RGB."""
    buffer = np.frombuffer(data, np.uint8)
    image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED) if buffer.size else None
    if image is None:
        raise FrameDecodeError(f"OpenCV cannot decode these {buffer.size} bytes as an image")
    if image.ndim == 2:
        return array_to_rgb(image, "mono16" if image.dtype == np.uint16 else "mono8")
    layout = {3: "bgr", 4: "bgra"}.get(image.shape[2])
    if layout is None:
        raise FrameDecodeError(f"decoded image has {image.shape[2]} channels (1, 3 or 4 expected)")
    return array_to_rgb(image, layout + ("16" if image.dtype == np.uint16 else "8"))


def compressed_to_rgb(msg: Any) -> np.ndarray:
    """sensor_msgs/CompressedImage (JPEG or PNG) -> (H, W, 3) uint8 RGB."""
    check_compressed_format(msg.format)
    return decode_image_bytes(msg.data)


def message_to_rgb(msg: Any) -> np.ndarray:
    """sensor_msgs/Image or CompressedImage (told apart by the ``format`` field) -> (H, W, 3) uint8 RGB."""
    return compressed_to_rgb(msg) if hasattr(msg, "format") else image_to_rgb(msg)


class FrameSource(ABC):
    """An ordered sequence of frames with random access, e.g. one bag topic, one video or one folder.

    Frames are (H, W, 3) uint8 RGB. ``timestamps`` (seconds, non-decreasing, or None when the
    source has no time) and ``segments`` (frames in different segments are never paired, e.g.
    two bags) let the pair dataset avoid pairing across gaps and boundaries.
    """

    name: str

    @abstractmethod
    def __len__(self) -> int:
        """Number of frames."""

    @abstractmethod
    def frame(self, index: int) -> np.ndarray:
        """Frame ``index`` as (H, W, 3) uint8 RGB; FrameDecodeError if its data is corrupt."""

    @abstractmethod
    def frame_sizes(self) -> np.ndarray:
        """(N, 2) int64 array of every frame's (H, W), known without decoding the frames."""

    def timestamps(self) -> np.ndarray | None:
        """(N,) float64 capture times in seconds, or None when the source has no time."""
        return None

    def segments(self) -> np.ndarray:
        """(N,) int64 segment id per frame; frames of different segments are never paired."""
        return np.zeros(len(self), dtype=np.int64)

    def check_index(self, index: int) -> int:
        """``index`` as an int in [0, len), negative indices counted from the end; IndexError otherwise."""
        n = len(self)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"{self.name}: frame index {index} out of range for {n} frames")
        return i
