"""Flow as pictures for everyone: a video with one picture per frame pair, or a folder of files per pair.

``FlowVideoWriter`` writes pictures (e.g. colorwheel.flow_picture: the frame, its colour-wheel
flow and the confidence side by side) as the frames of a video with OpenCV: MPEG-4 part 2
("mp4v") in .mp4, .mov and .mkv, Motion JPEG in .avi. ``FlowFolderWriter`` writes each pair's
flow as Middlebury .flo and its picture as .png, with one line per pair in pairs.csv.
"""
from __future__ import annotations

import csv
import tempfile
from pathlib import Path

import cv2
import numpy as np

from mdflow_ros.files import OutputExistsError, make_folder
from mdflow_ros.io.flow_files import write_flo

VIDEO_CODECS: dict[str, str] = {".mp4": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}
"""Video suffix -> the FourCC OpenCV writes it with (codecs every OpenCV build with FFmpeg has)."""
PAIR_COLUMNS: tuple[str, ...] = ("file", "previous_frame", "frame", "previous_stamp_ns", "stamp_ns", "inference_ms")
"""Columns of a flow folder's pairs.csv (frames by their number in the recording; stamps empty where unknown)."""


def even_size(picture: np.ndarray) -> np.ndarray:
    """``picture`` padded with black to an even height and width (the video codecs need both even)."""
    height, width = picture.shape[:2]
    if height % 2 == 0 and width % 2 == 0:
        return picture
    return np.pad(picture, ((0, height % 2), (0, width % 2), (0, 0)))


class FlowVideoWriter:
    """A video at ``path`` (its suffix picks the codec, see VIDEO_CODECS; the file name OpenCV opens may be a
    temporary one with the same suffix) at ``fps`` frames per second.

    The first picture fixes the video's size; later pictures of another size are resized to it.
    """

    def __init__(self, path: str | Path, fps: float):
        self.path = Path(path)
        codec = VIDEO_CODECS.get(self.path.suffix.lower())
        if codec is None:
            raise ValueError(f"{self.path}: a flow video must end in one of {', '.join(VIDEO_CODECS)}")
        self.codec, self.fps = codec, float(fps)
        self.frames = 0
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None

    def write(self, picture: np.ndarray) -> None:
        """Append one (H, W, 3) uint8 RGB picture; OSError when OpenCV cannot write the video."""
        if self._size is None:
            picture = even_size(picture)
            self._size = (picture.shape[1], picture.shape[0])
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*self.codec), self.fps, self._size)
            if not self._writer.isOpened():
                raise OSError(f"OpenCV cannot write a {self.codec} video to {self.path}")
        elif (picture.shape[1], picture.shape[0]) != self._size:
            picture = cv2.resize(picture, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(np.ascontiguousarray(picture[:, :, ::-1]))
        self.frames += 1

    def close(self) -> None:
        """Finish the file."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None


class FlowFolderWriter:
    """Per pair ``<name>.flo`` (the flow) and ``<name>.png`` (its picture) in ``folder``, and a line of pairs.csv.

    A folder that exists and is not empty is refused (OutputExistsError) unless ``force``, which
    overwrites the files of the same names; one that cannot be written is refused at once (OSError).
    """

    def __init__(self, folder: str | Path, force: bool = False):
        self.folder = Path(folder)
        if self.folder.is_dir() and any(self.folder.iterdir()) and not force:
            raise OutputExistsError(f"folder {self.folder} is not empty (pass --force to write into it)")
        make_folder(self.folder)
        with tempfile.TemporaryFile(dir=self.folder):
            pass
        self._csv_file = open(self.folder / "pairs.csv", "w", newline="")
        self._csv = csv.writer(self._csv_file)
        self._csv.writerow(PAIR_COLUMNS)
        self.pairs = 0

    def write(self, name: str, flow: np.ndarray, picture: np.ndarray, previous_frame: int, frame: int,
              previous_stamp_ns: int | None, stamp_ns: int | None, inference_s: float) -> None:
        """One pair: flow (H, W, 2) float32 px, picture (h, w, 3) uint8 RGB; frames by number, stamps in ns."""
        write_flo(self.folder / f"{name}.flo", flow)
        if not cv2.imwrite(str(self.folder / f"{name}.png"), np.ascontiguousarray(picture[:, :, ::-1])):
            raise OSError(f"OpenCV cannot write {self.folder / f'{name}.png'}")
        self._csv.writerow((name, previous_frame, frame, "" if previous_stamp_ns is None else previous_stamp_ns,
                            "" if stamp_ns is None else stamp_ns, f"{inference_s * 1000:.2f}"))
        self.pairs += 1

    def close(self) -> None:
        """Close pairs.csv."""
        self._csv_file.close()
