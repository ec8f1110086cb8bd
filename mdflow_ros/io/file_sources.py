"""Frame sources from plain files: a video file read with OpenCV, and a folder of images.

Both hand out (H, W, 3) uint8 RGB frames with random access (see ``FrameSource``). A video's
frames are counted exactly when it is opened and timed by its frame rate; a folder's images
are ordered by natural sort ("frame_2" before "frame_10") and carry no time.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import cv2
import numpy as np

from mdflow_ros.io.frames import (
    DataError,
    FrameDecodeError,
    FrameSource,
    decode_image_bytes,
    encoded_image_size,
)

VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".avi", ".mkv", ".mov")
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp")

MAX_FORWARD_GRAB: int = 64
"""A video read up to this many frames ahead of the decoder skips forward instead of seeking."""


def natural_key(name: str) -> tuple:
    """Sort key ordering digit runs by value: "f2.png" < "f10.png"; case-insensitive otherwise."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part.lower())
                 for part in re.split(r"(\d+)", name) if part)


def image_files(folder: Path) -> list[Path]:
    """The image files directly inside ``folder`` (by suffix), in natural order."""
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=lambda p: natural_key(p.name))


class VideoFrames(FrameSource):
    """Frames of a video file (.mp4, .avi, .mkv, .mov) decoded with OpenCV.

    Opening counts the frames by stepping through the whole stream (container frame counts
    can be wrong). Frame i has time i / fps seconds, or no time when the file gives no rate.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.name = str(self.path)
        if not self.path.is_file():
            raise FileNotFoundError(f"video file does not exist: {self.path}")
        capture = self._open()
        try:
            self.fps = float(capture.get(cv2.CAP_PROP_FPS))
            self.height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
            self.width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
            count = 0
            while capture.grab():
                count += 1
        finally:
            capture.release()
        if count == 0 or self.height <= 0 or self.width <= 0:
            raise DataError(f"video {self.path} has no readable frames")
        self.count = count
        self._capture: cv2.VideoCapture | None = None
        self._next = 0
        self._pid = os.getpid()

    def _open(self) -> cv2.VideoCapture:
        capture = cv2.VideoCapture(str(self.path))
        if not capture.isOpened():
            raise DataError(f"OpenCV cannot open video {self.path} (unsupported codec or damaged file)")
        return capture

    def __len__(self) -> int:
        return self.count

    def frame(self, index: int) -> np.ndarray:
        """Frame ``index`` as (H, W, 3) uint8 RGB; reading on from the last frame avoids a seek."""
        i = self.check_index(index)
        if self._capture is None or self._pid != os.getpid():
            self._capture, self._next, self._pid = self._open(), 0, os.getpid()
        capture = self._capture
        if not self._next <= i <= self._next + MAX_FORWARD_GRAB:
            capture.set(cv2.CAP_PROP_POS_FRAMES, i)
            self._next = i
        while self._next < i:
            if not capture.grab():
                break
            self._next += 1
        ok, bgr = capture.read()
        if not ok or bgr is None or self._next != i:
            self._capture = None
            raise FrameDecodeError(f"video {self.path}: frame {i} of {self.count} could not be decoded")
        self._next = i + 1
        return np.ascontiguousarray(bgr[:, :, ::-1])

    def frame_sizes(self) -> np.ndarray:
        """(N, 2) int64 (H, W): the stream's size for every frame."""
        return np.tile(np.array([[self.height, self.width]], dtype=np.int64), (self.count, 1))

    def timestamps(self) -> np.ndarray | None:
        """(N,) float64 seconds i / fps, or None when the video reports no frame rate."""
        if not (self.fps > 0 and np.isfinite(self.fps)):
            return None
        return np.arange(self.count, dtype=np.float64) / self.fps

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_capture"] = None
        return state


class ImageFolderFrames(FrameSource):
    """The images directly inside one folder, in natural order; no timestamps.

    Accepts 8- or 16-bit grey, colour or RGBA files of any suffix in IMAGE_SUFFIXES.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.name = str(self.folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"image folder does not exist: {self.folder}")
        self.files = image_files(self.folder)
        if not self.files:
            raise DataError(f"folder {self.folder} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        self._sizes: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.files)

    def frame(self, index: int) -> np.ndarray:
        """Image ``index`` as (H, W, 3) uint8 RGB; FrameDecodeError for an unreadable file."""
        path = self.files[self.check_index(index)]
        try:
            return decode_image_bytes(path.read_bytes())
        except (OSError, FrameDecodeError) as err:
            raise FrameDecodeError(f"image {path}: {err}") from None

    def frame_sizes(self) -> np.ndarray:
        """(N, 2) int64 (H, W) read from the file headers (once, then cached)."""
        if self._sizes is None:
            sizes = []
            for path in self.files:
                try:
                    sizes.append(encoded_image_size(path))
                except FrameDecodeError as err:
                    raise DataError(f"image {path} is unreadable: {err}") from None
            self._sizes = np.array(sizes, dtype=np.int64)
        return self._sizes
