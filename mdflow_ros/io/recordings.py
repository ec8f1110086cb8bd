"""One recording as a stream of frames, whatever it is: an image topic of a bag, a video file or a folder of images.

``open_recording(path, topic)`` tells the kind from the path and returns a ``Recording`` whose
``frames()`` hands out one ``RecordedFrame`` at a time in recording order (nothing accumulates,
so memory does not grow with the recording's length). What cannot be read is skipped and
counted in ``skipped()``: damaged or unusable bag messages by the rules training reads bags
with (mdflow_ros/io/bags.py), and frames whose bytes do not decode.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mdflow_ros.io.bags import BAG_SUFFIXES, BagStream, is_bag_path
from mdflow_ros.io.file_sources import IMAGE_SUFFIXES, VIDEO_SUFFIXES, ImageFolderFrames, VideoFrames, image_files
from mdflow_ros.io.frames import DataError, FrameDecodeError, FrameSource, message_to_rgb

@dataclass(frozen=True)
class RecordedFrame:
    """One frame of a recording.

    index: its number in the recording (message number on the topic, video frame, file number).
    stamp_ns: capture time in ns: the header stamp (bag), index / frame rate (video), or None
    (an image folder, a video without a rate). log_ns: when a bag recorded it (ns; else stamp_ns).
    frame_id: header.frame_id ("" outside bags). encoding: as recorded (the Image encoding or the
    CompressedImage format; "file" outside bags). rgb: (H, W, 3) uint8 RGB.
    """

    index: int
    stamp_ns: int | None
    log_ns: int | None
    frame_id: str
    encoding: str
    rgb: np.ndarray


class Recording(ABC):
    """Frames of one bag topic, video or image folder (see open_recording); close() when done."""

    kind: str
    name: str
    total: int
    """Frames the recording holds (a bag: messages recorded on the topic), for progress bars."""
    fps: float | None = None
    """Frame rate: a video's, a bag topic's average; None for an image folder."""
    stamped: bool = False
    """True when stamps are capture times (a bag's header stamps), so a gap between them means lost frames."""
    topic: str | None = None

    def __init__(self) -> None:
        self.undecodable = 0
        self.first_undecodable = ""

    @abstractmethod
    def frames(self) -> Iterator[RecordedFrame]:
        """Every readable frame, in recording order."""

    def skipped(self) -> list[tuple[str, int, str]]:
        """(what, count, the first case in words) of each kind of input skipped so far."""
        if not self.undecodable:
            return []
        return [("frames that could not be decoded", self.undecodable, self.first_undecodable)]

    def _undecodable(self, err: Exception) -> None:
        self.undecodable += 1
        self.first_undecodable = self.first_undecodable or str(err)

    def close(self) -> None:
        """Release the open file or reader."""

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BagRecording(Recording):
    """One image topic of one bag, streamed (BagStream); stamps are the header stamps, or the bag
    time where a message's header stamp is not set (zero)."""

    kind = "bag"
    stamped = True

    def __init__(self, path: Path, topic: str | None):
        super().__init__()
        self._stream = BagStream(path, topic)
        self.topic = self._stream.topic
        self.name = f"{self.topic} in bag {path}"
        self.total = len(self._stream)
        span_s = self._stream.duration_ns / 1e9
        self.fps = (self.total - 1) / span_s if self.total > 1 and span_s > 0 else None

    def frames(self) -> Iterator[RecordedFrame]:
        for number, message in enumerate(self._stream):
            try:
                rgb = message_to_rgb(message.msg)
            except DataError as err:
                self._undecodable(f"message at bag time {message.log_ns} ns: {err}")
                continue
            msg = message.msg
            yield RecordedFrame(index=number, stamp_ns=message.stamp_ns or message.log_ns, log_ns=message.log_ns,
                                frame_id=str(msg.header.frame_id),
                                encoding=str(msg.format if hasattr(msg, "format") else msg.encoding), rgb=rgb)

    def skipped(self) -> list[tuple[str, int, str]]:
        tally = self._stream.tally
        damaged = [("damaged or unusable bag messages", tally.bad, tally.detail())] if tally.bad else []
        return damaged + super().skipped()

    def close(self) -> None:
        self._stream.close()


class FrameSourceRecording(Recording):
    """A video or an image folder, read frame by frame in order through its FrameSource."""

    def __init__(self, kind: str, source: FrameSource, fps: float | None = None):
        super().__init__()
        self.kind, self.name, self.total, self.fps = kind, f"{kind} {source.name}", len(source), fps
        self._source = source

    def frames(self) -> Iterator[RecordedFrame]:
        for i in range(len(self._source)):
            try:
                rgb = self._source.frame(i)
            except FrameDecodeError as err:
                self._undecodable(err)
                continue
            stamp = round(i * 1e9 / self.fps) if self.fps else None
            yield RecordedFrame(index=i, stamp_ns=stamp, log_ns=stamp, frame_id="", encoding="file", rgb=rgb)


def recording_kind(path: Path) -> str | None:
    """"bag", "video" or "images" (a folder holding images) for a path that is one, else None."""
    if is_bag_path(path):
        return "bag"
    if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
        return "video"
    if path.is_dir() and image_files(path):
        return "images"
    return None


def open_recording(path: str | Path, topic: str | None = None) -> Recording:
    """The recording at ``path``: a rosbag2 directory (with metadata.yaml) or a .db3 / .mcap / ROS 1 .bag
    file, a video file (.mp4, .avi, .mkv, .mov), or a folder of images (natural order).

    topic: the image topic of a bag, or None for its only one. Raises FileNotFoundError for a
    missing path, BagReadError for a bag that cannot be opened, and DataError for anything else
    (not a recording, no image topic or a topic that is not there, listing the topics; no frames).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"recording does not exist: {path}")
    kind = recording_kind(path)
    if kind is None:
        raise DataError(f"{path} is not a recording: expected a bag (rosbag2 directory with metadata.yaml, "
                        f"{', '.join(BAG_SUFFIXES)}), a video ({', '.join(VIDEO_SUFFIXES)}) or a folder of "
                        f"images ({', '.join(IMAGE_SUFFIXES)})")
    if topic is not None and kind != "bag":
        raise DataError(f"a topic ({topic}) was given, but {path} is a {'video' if kind == 'video' else 'folder'}, "
                        f"not a bag")
    if kind == "bag":
        return BagRecording(path, topic)
    if kind == "video":
        video = VideoFrames(path)
        fps = video.fps if video.fps > 0 and np.isfinite(video.fps) else None
        return FrameSourceRecording("video", video, fps)
    return FrameSourceRecording("images", ImageFolderFrames(path))
