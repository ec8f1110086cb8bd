"""sensor_msgs Image / CompressedImage <-> numpy, with the checks the flow node needs.

Where a ROS 2 install provides the compiled cv_bridge (vision_opencv), decoding goes through
it; otherwise (the pip/.venv set-up, where PyPI's ``cv-bridge`` is a broken ROS 1 port) a
few lines of numpy do the same: rows are read through ``step`` (padding allowed), 16-bit
data honours ``is_bigendian``, and the result is a view of the message's buffer. Encoding
numpy -> Image is always done here (one copy into the message).

Memory stays bounded by ``max_pixels``: a raw image is measured from its header fields, a
compressed one (PNG or JPEG only) from its file header (PNG IHDR, JPEG SOF), before anything
is decoded, so a small PNG that would inflate to gigabytes is refused without being decoded.
Compressed depth images (``compressedDepth``) and formats that are not colour or mono images
are refused by their ``format`` field.
"""
from __future__ import annotations

import array
import importlib.machinery
import importlib.util
import struct
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

COMPRESSED_CODECS: tuple[str, ...] = ("png", "jpeg", "jpg")
"""Codecs a CompressedImage ``format`` may name (e.g. "jpeg", or "bgr8; jpeg compressed bgr8")."""
COMPRESSED_SOURCES: tuple[str, ...] = (*CAMERA_ENCODINGS, "rgb16", "bgr16", "rgba16", "bgra16")
"""Image encodings image_transport's compressed format may name before the ';' (colour or mono images)."""

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}
"""PNG colour type -> channels: grey, RGB, palette, grey + alpha, RGBA."""
JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
"""JPEG start-of-frame markers (SOF0..SOF15 without DHT, JPG and DAC), which carry the image size."""
JPEG_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})
"""JPEG markers without a length field (TEM, RST0..RST7)."""


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


def check_pixel_count(height: int, width: int, max_pixels: int | None) -> None:
    """ImageDecodeError (kind "oversized") when a height x width image has more than ``max_pixels`` pixels."""
    if max_pixels is not None and height * width > max_pixels:
        raise ImageDecodeError(f"{width}x{height} image has {height * width} pixels, more than max_input_pixels "
                               f"{max_pixels}", "oversized")


def check_image(msg: Any, encodings: tuple[str, ...] = tuple(PIXEL_LAYOUTS),
                max_pixels: int | None = None) -> tuple[np.dtype, int]:
    """Validate an Image's encoding and sizes (at most ``max_pixels`` pixels when given); returns its
    (dtype, channels) or raises ImageDecodeError."""
    if msg.encoding not in encodings:
        raise ImageDecodeError(f"unsupported encoding {msg.encoding!r} (accepted: {', '.join(encodings)})", "encoding")
    dtype, channels = PIXEL_LAYOUTS[msg.encoding]
    if msg.height == 0 or msg.width == 0:
        raise ImageDecodeError(f"zero-size image ({msg.width}x{msg.height})", "size")
    check_pixel_count(msg.height, msg.width, max_pixels)
    row = msg.width * channels * dtype.itemsize
    if msg.step < row:
        raise ImageDecodeError(
            f"step {msg.step} is smaller than one row of {msg.width} {msg.encoding} pixels ({row} bytes)", "step")
    if len(msg.data) < msg.step * msg.height:
        raise ImageDecodeError(
            f"data holds {len(msg.data)} bytes, less than step x height = {msg.step} x {msg.height} = "
            f"{msg.step * msg.height}", "data")
    return dtype, channels


def image_to_array(msg: Any, encodings: tuple[str, ...] = tuple(PIXEL_LAYOUTS),
                   max_pixels: int | None = None) -> np.ndarray:
    """Decode a sensor_msgs/Image with numpy: (H, W) for one channel, else (H, W, C), native byte order.

    The result is a view of ``msg.data`` (no copy) unless the data is 16-bit in the other byte order.
    Raises ImageDecodeError for an encoding outside ``encodings``, inconsistent sizes, or more
    than ``max_pixels`` pixels.
    """
    dtype, channels = check_image(msg, encodings, max_pixels)
    row = msg.width * channels * dtype.itemsize
    raw = np.frombuffer(msg.data, np.uint8, count=msg.step * msg.height).reshape(msg.height, msg.step)[:, :row]
    stored = dtype.newbyteorder(">" if msg.is_bigendian else "<") if dtype.itemsize > 1 else dtype
    pixels = raw.view(stored)
    if stored != dtype:
        pixels = pixels.astype(dtype)
    return pixels.reshape(msg.height, msg.width) if channels == 1 else pixels.reshape(msg.height, msg.width, channels)


def image_to_array_cv_bridge(msg: Any, encodings: tuple[str, ...] = tuple(PIXEL_LAYOUTS),
                             max_pixels: int | None = None) -> np.ndarray:
    """The same decoding as image_to_array, through the ROS 2 cv_bridge (needs cv_bridge_available())."""
    from cv_bridge import CvBridge

    check_image(msg, encodings, max_pixels)
    return np.asarray(CvBridge().imgmsg_to_cv2(msg, desired_encoding="passthrough"))


def check_compressed_format(fmt: str) -> None:
    """ImageDecodeError (kind "format") unless a CompressedImage ``format`` names a PNG or JPEG colour or mono image.

    Accepts "png", "jpeg" and image_transport's "<encoding>; <codec> compressed <encoding>"
    (an empty format is left to the header check); refuses compressedDepth, other codecs, and
    source encodings that are not colour or mono images (16UC1, 32FC1, ...).
    """
    text = fmt.strip().lower()
    if not text:
        return
    words = text.replace(";", " ").split()
    if "compresseddepth" in words:
        raise ImageDecodeError(f"CompressedImage format {fmt!r} is a depth image (compressedDepth); only colour and "
                               "mono images give flow", "format")
    source = text.split(";")[0].strip() if ";" in text else ""
    if source and source not in COMPRESSED_SOURCES and not source.startswith("bayer_"):
        raise ImageDecodeError(f"CompressedImage format {fmt!r}: encoding {source!r} is not a colour or mono image",
                               "format")
    if not any(word in COMPRESSED_CODECS for word in words):
        raise ImageDecodeError(f"unsupported CompressedImage format {fmt!r} (accepted: png, jpeg)", "format")


def _jpeg_size(data: memoryview) -> tuple[int, int, int]:
    """(height, width, components) from a JPEG's first start-of-frame segment."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ImageDecodeError(f"JPEG header is corrupt (no marker at byte {pos})", "compressed")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker in JPEG_STANDALONE_MARKERS:
            pos += 2
        elif marker in JPEG_FRAME_MARKERS:
            if pos + 10 > len(data):
                break
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return height, width, data[pos + 9]
        elif marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header came first
            raise ImageDecodeError("JPEG has no frame header before its image data", "compressed")
        else:
            pos += 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]
    raise ImageDecodeError(f"JPEG header ends early ({len(data)} bytes)", "compressed")


def compressed_image_size(data: Any) -> tuple[int, int, int]:
    """(height, width, channels) of a PNG or JPEG image, read from its header only (no decoding).

    Raises ImageDecodeError for any other data, a damaged header, or an image that is neither
    colour nor mono (a 4-component, CMYK JPEG).
    """
    view = memoryview(data).cast("B")
    if bytes(view[:8]) == PNG_SIGNATURE:
        if len(view) < 26 or bytes(view[12:16]) != b"IHDR":
            raise ImageDecodeError("PNG has no IHDR header", "compressed")
        width, height = struct.unpack(">II", view[16:24])
        if view[25] not in PNG_CHANNELS:
            raise ImageDecodeError(f"PNG colour type {view[25]} is not a colour or mono image", "compressed")
        return height, width, PNG_CHANNELS[view[25]]
    if bytes(view[:2]) == b"\xff\xd8":
        height, width, components = _jpeg_size(view)
        if components not in (1, 3):
            raise ImageDecodeError(f"JPEG with {components} components is not a colour or mono image", "format")
        return height, width, components
    raise ImageDecodeError(f"compressed data ({len(view)} bytes) is neither a PNG nor a JPEG image", "compressed")


def compressed_to_array(msg: Any, max_pixels: int | None = None) -> tuple[np.ndarray, str]:
    """Decode a sensor_msgs/CompressedImage (PNG or JPEG) -> (array, "bgr8" or "mono8").

    The format field and the image header are checked first (check_compressed_format,
    compressed_image_size), the pixel count against ``max_pixels``, and only then the data is
    decoded; every refusal is an ImageDecodeError.
    """
    check_compressed_format(msg.format)
    height, width, _ = compressed_image_size(msg.data)
    if height == 0 or width == 0:
        raise ImageDecodeError(f"zero-size image ({width}x{height})", "size")
    check_pixel_count(height, width, max_pixels)
    data = np.frombuffer(msg.data, np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None or image.shape[:2] != (height, width):
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
