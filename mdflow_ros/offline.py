"""Offline flow: a recording in (a bag topic, a video, a folder of images), flow between consecutive frames out.

``flow_pairs`` is the loop the CLI and the Python API share: it pairs each frame with the
previous processed one by the node's own rules and code (mdflow_ros/ros/pairing.py: no pair
across a change of camera frame_id, size or encoding, a step back in time, a repeated stamp, or
a gap over max_frame_gap), runs a FlowEstimator on each pair and yields a ``PairFlow``, one at
a time: memory does not grow with the recording. ``open_output`` writes them to an MCAP file
(/optical_flow and /optical_flow/color, as the node publishes them), a video or a folder.
``flow_sequence`` is the notebook API:

    from mdflow_ros.offline import flow_sequence
    for stamp_ns, flow, confidence in flow_sequence("run.mcap", topic="/camera/image_raw"):
        ...

The gap check applies where stamps are capture times (bags); a video's frames are consecutive
by construction and a folder has no time, so their pairs are never broken by time.
"""
from __future__ import annotations

import random
import statistics
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mdflow_ros.files import OutputExistsError, PendingFile, model_identity
from mdflow_ros.inference import FlowEstimator, InputError
from mdflow_ros.io.colorwheel import flow_picture
from mdflow_ros.io.flow_mcap import FlowMcapWriter
from mdflow_ros.io.flow_video import VIDEO_CODECS, FlowFolderWriter, FlowVideoWriter
from mdflow_ros.io.frames import DataError
from mdflow_ros.io.recordings import RecordedFrame, Recording, open_recording
from mdflow_ros.ros.pairing import MAX_FRAME_GAP_S, FrameInfo, PairTracker

DEFAULT_VIDEO_FPS = 10.0
"""Frame rate of a flow video when the recording gives none (an image folder)."""
TIMING_SAMPLE = 10_000
"""Inference times kept for the median: all of them up to this many pairs, a uniform sample beyond."""


@dataclass(frozen=True)
class PairFlow:
    """The flow from ``previous`` to ``current``: flow (h, w, 2) float32 px and confidence (h, w) in [0, 1] or
    None, at output_scale of the frames; inference_s in the network, processing_s from having the newer
    frame decoded to having its flow."""

    previous: RecordedFrame
    current: RecordedFrame
    flow: np.ndarray
    confidence: np.ndarray | None
    inference_s: float
    processing_s: float


class SequenceFlow(NamedTuple):
    """What flow_sequence yields: the newer frame's stamp (ns; None for an image folder), flow (h, w, 2)
    float32 px from the previous frame to it, confidence (h, w) in [0, 1] or None."""

    stamp: int | None
    flow: np.ndarray
    confidence: np.ndarray | None


class Reservoir:
    """A uniform sample of at most ``capacity`` values of a stream (all of them while fewer arrived)."""

    def __init__(self, capacity: int = TIMING_SAMPLE, seed: int = 0):
        self.capacity, self.seen = capacity, 0
        self.values: list[float] = []
        self._rng = random.Random(seed)

    def add(self, value: float) -> None:
        self.seen += 1
        if len(self.values) < self.capacity:
            self.values.append(value)
        elif (j := self._rng.randrange(self.seen)) < self.capacity:
            self.values[j] = value

    def median(self) -> float:
        """The sample's median (nan when empty)."""
        return statistics.median(self.values) if self.values else float("nan")


@dataclass
class Summary:
    """What a run met: frames read, pairs computed, pairs not formed (by cause, with the first text) and
    inference times."""

    frames: int = 0
    pairs: int = 0
    resets: Counter = field(default_factory=Counter)
    reset_examples: dict[str, str] = field(default_factory=dict)
    inference_s: Reservoir = field(default_factory=Reservoir)
    total_inference_s: float = 0.0

    def reset(self, cause: str, text: str) -> None:
        self.resets[cause] += 1
        self.reset_examples.setdefault(cause, text)

    def pair(self, inference_s: float) -> None:
        self.pairs += 1
        self.inference_s.add(inference_s)
        self.total_inference_s += inference_s

    def lines(self, recording: Recording, estimator: FlowEstimator) -> list[str]:
        """The end-of-run report: pairs, skipped pairs and input with reasons, median inference time, backend."""
        out = [f"{recording.name}: {self.frames} frames -> {self.pairs} flow pairs; "
               f"{model_identity(estimator.model_path)} on {estimator.backend.description}"]
        if self.pairs:
            out.append(f"inference: median {self.inference_s.median() * 1000:.1f} ms per pair, "
                       f"{self.total_inference_s:.1f} s in all")
        for cause, count in self.resets.most_common():
            out.append(f"skipped {count} pair(s): {cause} (first: {self.reset_examples[cause]})")
        for what, count, first in recording.skipped():
            out.append(f"skipped {count} {what} (first: {first})")
        return out


def flow_pairs(frames: Iterable[RecordedFrame], estimator: FlowEstimator, stamped: bool,
               max_frame_gap: float = MAX_FRAME_GAP_S, output_scale: float = 1.0,
               summary: Summary | None = None) -> Iterator[PairFlow]:
    """The flow of every consecutive pair of ``frames`` that the node's pairing rules let form.

    stamped: frame stamps are capture times, so a gap over ``max_frame_gap`` seconds (0: no
    limit) breaks the pair; otherwise (or for frames without a stamp) only a change of
    frame_id, size or encoding does. A pair the estimator refuses (InputError, e.g. frames under
    64 px) is counted as "frames the network cannot take" and its newer frame is forgotten, as
    in the node. ``summary`` (optional) collects the counts and timings.
    """
    summary = Summary() if summary is None else summary
    tracker = PairTracker()
    for frame in frames:
        summary.frames += 1
        started = time.perf_counter()
        height, width = frame.rgb.shape[:2]
        timed = stamped and frame.stamp_ns is not None
        info = FrameInfo(frame.stamp_ns if timed else frame.index, height, width, frame.encoding, frame.frame_id)
        step = tracker.advance(info, frame, max_frame_gap if timed else 0.0)
        if step.reset is not None:
            summary.reset(step.cause, step.reset)
        if step.previous is None:
            continue
        try:
            result = estimator.estimate(step.previous.rgb, frame.rgb, output_scale=output_scale)
        except InputError as err:
            tracker.forget()
            summary.reset("frames the network cannot take", str(err))
            continue
        summary.pair(estimator.last_inference_s)
        yield PairFlow(step.previous, frame, result.flow, result.confidence, estimator.last_inference_s,
                       time.perf_counter() - started)


def output_kind(path: str | Path) -> str:
    """"mcap" (.mcap), "video" (a VIDEO_CODECS suffix) or "folder" (a path ending in / or an existing folder)."""
    text = str(path)
    suffix = Path(text).suffix.lower()
    if suffix == ".mcap":
        return "mcap"
    if suffix in VIDEO_CODECS:
        return "video"
    if text.endswith(("/", "\\")) or Path(text).is_dir():
        return "folder"
    raise DataError(f"cannot tell what to write to {text}: give an .mcap file, a video "
                    f"({', '.join(VIDEO_CODECS)}) or a folder (ending in /)")


class FlowOutput:
    """Where a run's pairs go: write(pair) each, then close(keep=True) to finish the output, or
    close(keep=False) to remove what was written to a new file."""

    def __init__(self, path: str | Path, recording: Recording, estimator: FlowEstimator, output_scale: float,
                 force: bool = False, fps: float | None = None, confidence_panel: bool = True):
        self.kind = output_kind(path)
        self.path = Path(path)
        self._output_scale = output_scale
        self._panel = confidence_panel
        self._pending: PendingFile | None = None
        try:
            self._open(recording, estimator, force, fps)
        except OutputExistsError:
            raise
        except OSError as err:
            raise OSError(f"cannot write {self.path}: {err.strerror or err}") from None
        self.written = 0

    def _open(self, recording: Recording, estimator: FlowEstimator, force: bool, fps: float | None) -> None:
        if self.kind == "mcap":
            if not recording.stamped and recording.fps is None:
                raise DataError(f"an MCAP file needs time stamps and {recording.name} has none: write a video "
                                f"or a folder instead")
            self._pending = PendingFile(self.path, force)
            self._stream = open(self._pending.tmp, "wb")
            self._mcap = FlowMcapWriter(self._stream, model_identity(estimator.model_path),
                                        estimator.backend.description)
        elif self.kind == "video":
            self._pending = PendingFile(self.path, force)
            self._video = FlowVideoWriter(self._pending.tmp, fps or recording.fps or DEFAULT_VIDEO_FPS)
        else:
            self._folder = FlowFolderWriter(self.path, force)

    def picture(self, pair: PairFlow) -> np.ndarray:
        """The pair's picture: the newer frame, the colour-wheel flow and (when computed) the confidence."""
        return flow_picture(pair.flow, pair.confidence if self._panel else None, pair.current.rgb)

    def write(self, pair: PairFlow) -> None:
        """Add one pair to the output."""
        previous, current = pair.previous, pair.current
        if self.kind == "mcap":
            self._mcap.write(current.log_ns, current.stamp_ns, previous.stamp_ns, current.frame_id, pair.flow,
                             pair.confidence, self._output_scale, pair.inference_s, pair.processing_s)
        elif self.kind == "video":
            self._video.write(self.picture(pair))
        else:
            self._folder.write(f"{current.index:06d}", pair.flow, self.picture(pair), previous.index, current.index,
                               previous.stamp_ns, current.stamp_ns, pair.inference_s)
        self.written += 1

    def close(self, keep: bool = True) -> None:
        """Finish the output (keep) or discard a new file's partial content."""
        if self.kind == "mcap":
            if keep:
                self._mcap.finish()
            self._stream.close()
        elif self.kind == "video":
            self._video.close()
        else:
            self._folder.close()
        if self._pending is not None:
            if keep:
                self._pending.commit()
            else:
                self._pending.discard()


def flow_sequence(path: str | Path, topic: str | None = None, *, model: str | Path | None = None,
                  backend: str = "auto", input_size: tuple[int, int] | None = None, confidence: bool = True,
                  output_scale: float = 1.0, max_frame_gap: float = MAX_FRAME_GAP_S, threads: int | None = None,
                  precision: str = "auto", estimator: FlowEstimator | None = None, summary: Summary | None = None) -> Iterator[SequenceFlow]:
    """Flow between the consecutive frames of a recording, one pair at a time: (stamp, flow, confidence).

    path: a bag (rosbag2 directory, .mcap, .db3, ROS 1 .bag; ``topic`` names its image topic,
    None takes the only one), a video or a folder of images. model, backend, input_size,
    confidence, threads and precision are FlowEstimator's (or pass a ready ``estimator``); output_scale
    and max_frame_gap the node's parameters. The recording is opened (and errors raised) at
    once; frames are read as the iterator is consumed. ``summary`` collects what was skipped.
    """
    recording = open_recording(path, topic)
    try:
        if estimator is None:
            estimator = FlowEstimator(backend=backend, model=model, input_size=input_size, confidence=confidence,
                                      threads=threads, precision=precision)
    except BaseException:
        recording.close()
        raise
    pairs = flow_pairs(recording.frames(), estimator, recording.stamped, max_frame_gap, output_scale, summary)

    def results() -> Iterator[SequenceFlow]:
        with recording:
            for pair in pairs:
                yield SequenceFlow(pair.current.stamp_ns, pair.flow, pair.confidence)

    return results()
