"""Which frames form a flow pair: the previous processed frame and the newest one, unless the stream broke.

A pair is reset (no flow is published across it) when the camera (``header.frame_id``: two
cameras publishing on one topic), the frame size or the encoding changes, when time goes backwards or stands still (a bag restarting its loop, a duplicate)
or when the gap between the two stamps exceeds the limit. Each reset is reported, but only
the first of a run of resets with the same cause is meant for the log.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

NS_PER_S = 1_000_000_000

MAX_FRAME_GAP_S = 0.5
"""Default largest stamp difference (s) of two frames that still pair (the node's max_frame_gap, offline flow)."""


def stamp_ns(stamp: Any) -> int:
    """A builtin_interfaces/Time as integer nanoseconds."""
    return stamp.sec * NS_PER_S + stamp.nanosec


@dataclass(frozen=True)
class FrameInfo:
    """What decides whether two frames can pair: stamp (ns), size (px), encoding and camera frame."""

    stamp_ns: int
    height: int
    width: int
    encoding: str
    frame_id: str = ""


@dataclass(frozen=True)
class PairStep:
    """The outcome for one new frame.

    previous: payload of the frame to compute flow from, or None (first frame, or a reset).
    reset: why the pair was reset, or None. log: True for the first reset of a run with this cause.
    cause: the reset's cause in one word (see pair_break), or None.
    """

    previous: Any
    reset: str | None
    log: bool
    cause: str | None = None


def pair_break(previous: FrameInfo, current: FrameInfo, max_gap_s: float) -> tuple[str, str] | None:
    """(cause, explanation) when ``current`` must not pair with ``previous``, else None.

    max_gap_s: largest allowed stamp difference in seconds; 0 disables the gap check.
    """
    if previous.frame_id != current.frame_id:
        return "frame_id", (f"frame_id changed from {previous.frame_id!r} to {current.frame_id!r} "
                            "(another camera on this topic?)")
    if (previous.height, previous.width) != (current.height, current.width):
        return "size", (f"frame size changed from {previous.width}x{previous.height} "
                        f"to {current.width}x{current.height}")
    if previous.encoding != current.encoding:
        return "encoding", f"encoding changed from {previous.encoding} to {current.encoding}"
    gap_s = (current.stamp_ns - previous.stamp_ns) / NS_PER_S
    if gap_s < 0:
        return "backwards", f"time jumped back by {-gap_s:.3f} s (a bag loop or a clock reset)"
    if gap_s == 0:
        return "still", "the stamp did not advance (a duplicate frame?)"
    if max_gap_s > 0 and gap_s > max_gap_s:
        return "gap", f"gap of {gap_s:.3f} s between frames exceeds max_frame_gap {max_gap_s:g} s"
    return None


class PairTracker:
    """Keeps the previous processed frame and decides, frame by frame, what to pair."""

    def __init__(self):
        self._previous: tuple[FrameInfo, Any] | None = None
        self._last_cause: str | None = None
        self.resets = 0

    def advance(self, info: FrameInfo, payload: Any, max_gap_s: float) -> PairStep:
        """Make ``info``/``payload`` the previous frame and say what it pairs with."""
        previous, self._previous = self._previous, (info, payload)
        if previous is None:
            return PairStep(None, None, False)
        broken = pair_break(previous[0], info, max_gap_s)
        if broken is None:
            self._last_cause = None
            return PairStep(previous[1], None, False)
        cause, text = broken
        self.resets += 1
        log, self._last_cause = cause != self._last_cause, cause
        return PairStep(None, text, log, cause)

    def forget(self) -> None:
        """Drop the previous frame (after a frame that could not be processed)."""
        self._previous = None
