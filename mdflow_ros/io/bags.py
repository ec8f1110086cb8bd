"""Frames of one image topic from rosbags (rosbag2 sqlite3/mcap, ROS 1 .bag), read with ``rosbags``.

No ROS install is needed. ``BagStream`` (offline flow) reads a topic once, in bag-time order and
constant memory. ``RosbagFrames`` (training) indexes the image messages on opening (bag time, header
stamp, connection and image size per message, about 30 bytes each) in one streaming pass that
validates each message but keeps no pixels; ``frame(i)`` later re-reads message i by its
bag time (an indexed query in sqlite3, one chunk in mcap) and decodes it. Damaged input is
skipped and counted: messages that do not deserialize or hold inconsistent images, parts of
a file the reader fails on (reading resumes after them), and whole bags that cannot be
opened when other bags remain. An MCAP bag cut short before its footer (a killed recorder)
is read from a repaired copy of its intact start (mcap_recovery.py), with the
messages lost counted; only when nothing before the damage is readable is it refused.
"""
from __future__ import annotations

import array
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.highlevel import AnyReader
from rosbags.interfaces import Connection
from rosbags.typesys import Stores, get_typestore

from mdflow_ros.io.frames import (
    DataError,
    FrameDecodeError,
    FrameSource,
    check_compressed_format,
    check_raw_image,
    encoded_image_size,
    message_to_rgb,
)
from mdflow_ros.io.mcap_recovery import recover_truncated_mcap

log = logging.getLogger(__name__)

IMAGE_TYPES: tuple[str, ...] = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
"""Message types read as frames."""

BAG_SUFFIXES: tuple[str, ...] = (".bag", ".db3", ".mcap")
"""Single-file bags: ROS 1, rosbag2 sqlite3 and rosbag2 mcap."""

RESYNC_STEP_NS: int = 1_000_000
"""After a read error with no progress, reading resumes this much later, doubling each time (ns)."""

ROW_FIELDS: int = 6
"""Index values per message while indexing: bag time, stamp, connection, rank, height, width."""

FALLBACK_TYPESTORE = get_typestore(Stores.ROS2_KILTED)
"""Message definitions for rosbag2 files recorded without them (before ROS 2 Iron)."""


TRUNCATED_HINT: str = (" (the file ends early, e.g. the recorder was killed; 'ros2 bag reindex' or "
                       "'mcap recover' can rebuild it)")


class BagReadError(DataError):
    """A bag that cannot be opened or read at all."""


def is_bag_path(path: Path) -> bool:
    """True for a rosbag2 directory (holding metadata.yaml) or a .bag/.db3/.mcap file."""
    if path.is_dir():
        return (path / "metadata.yaml").is_file()
    return path.is_file() and path.suffix.lower() in BAG_SUFFIXES


def image_topics(connections: Sequence[Connection]) -> dict[str, str]:
    """{topic: message type} of the Image / CompressedImage topics among ``connections``."""
    return {c.topic: c.msgtype for c in connections if c.msgtype in IMAGE_TYPES}


def choose_topic(path: Path, connections: Sequence[Connection], topic: str | None) -> str:
    """The image topic to read from a bag: ``topic`` if given, else its only image topic.

    Raises DataError naming the bag and the candidates when the bag has no image topic, when
    the named topic is not an image topic of the bag, or when several exist and none was named.
    """
    images = image_topics(connections)
    if not images:
        listed = ", ".join(sorted(f"{c.topic} [{c.msgtype}]" for c in connections)) or "none"
        raise DataError(f"bag {path} has no image topics (topics: {listed})")
    if topic is None:
        if len(images) > 1:
            raise DataError(f"bag {path} has several image topics: {', '.join(sorted(images))}; "
                            "choose one with topic=... (--topic in mdflow-flow)")
        return next(iter(images))
    if topic not in images:
        other = next((c.msgtype for c in connections if c.topic == topic), None)
        what = f"is a {other} topic, not an image topic" if other else "does not exist"
        raise DataError(f"topic {topic!r} {what} in bag {path}; its image topics: {', '.join(sorted(images))}")
    return topic


def open_reader(path: Path) -> AnyReader:
    """An opened AnyReader on one bag; BagReadError when the bag cannot be opened."""
    try:
        reader = AnyReader([path], default_typestore=FALLBACK_TYPESTORE)
        reader.open()
    except Exception as err:  # rosbags and its storage back ends raise many types on damaged files
        hint = TRUNCATED_HINT if "end magic" in str(err) else ""
        raise BagReadError(f"cannot read bag {path}: {type(err).__name__}: {err}{hint}") from None
    return reader


def message_size(msg: Any) -> tuple[int, int]:
    """(H, W) of a deserialized Image or CompressedImage after validating it, without decoding pixels."""
    if hasattr(msg, "format"):
        check_compressed_format(msg.format)
        return encoded_image_size(msg.data)
    return check_raw_image(msg)


def resilient_messages(reader: AnyReader, connections: Sequence[Connection],
                       read_errors: list[str]) -> Iterator[tuple[Connection, int, bytes]]:
    """Yield (connection, bag time ns, raw bytes) like ``reader.messages`` and survive read errors.

    When the reader fails part-way (a damaged chunk or page), the error text is appended to
    ``read_errors`` and reading resumes just after the last message read; if it fails again
    without progress, the resume point moves RESYNC_STEP_NS later, doubling each time, until
    it passes the end of the bag, so a damaged region is skipped and iteration always ends.
    """
    last: int | None = None
    resume: int | None = None
    skip = 0
    while resume is None or resume < reader.end_time:
        progressed = False
        try:
            for item in reader.messages(connections=connections, start=resume):
                progressed = True
                last = item[1]
                yield item
            return
        except Exception as err:  # rosbags and its storage back ends raise many types on damaged data
            read_errors.append(f"{type(err).__name__}: {err}")
            skip = 0 if progressed else max(2 * skip, RESYNC_STEP_NS)
            resume = (reader.start_time if last is None else last + 1) + skip


@dataclass
class MessageTally:
    """What reading one topic of one bag met: messages recorded (``expected``), returned by the
    reader (``seen``), unusable (did not deserialize or validate) and the reader's errors."""

    expected: int
    seen: int = 0
    unusable: int = 0
    first_problem: str = ""
    read_errors: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        """Messages never returned because the reader failed part-way (recorded count minus those seen)."""
        return max(0, self.expected - self.seen) if self.read_errors else 0

    @property
    def bad(self) -> int:
        """Messages skipped: unusable ones and those lost to read errors."""
        return self.unusable + self.lost

    def detail(self) -> str:
        """The first problem met, in words ("" when none)."""
        return self.first_problem or (self.read_errors[0] if self.read_errors else "")

    def report(self, path: Path, topic: str) -> str:
        """One line saying what was skipped in ``topic`` of bag ``path``."""
        return (f"bag {path} topic {topic}: skipped {self.bad} damaged or unusable message(s) of "
                f"{max(self.expected, self.seen)} ({len(self.read_errors)} read error(s)); first: {self.detail()}")


@dataclass(frozen=True)
class BagMessage:
    """One usable image message: its connection, bag (receive) time and header stamp (ns), (H, W) and
    the deserialized Image or CompressedImage."""

    conn: Connection
    log_ns: int
    stamp_ns: int
    height: int
    width: int
    msg: Any


def topic_connections(reader: AnyReader, topic: str) -> list[Connection]:
    """The image connections of ``topic`` in an opened reader."""
    return [c for c in reader.connections if c.topic == topic and c.msgtype in IMAGE_TYPES]


def usable_messages(reader: AnyReader, connections: Sequence[Connection], tally: MessageTally) -> Iterator[BagMessage]:
    """The messages of ``connections`` in bag-time order that deserialize and validate as images.

    Read errors are survived (see resilient_messages); unusable messages are skipped; both are
    counted in ``tally``.
    """
    for conn, log_ns, raw in resilient_messages(reader, connections, tally.read_errors):
        tally.seen += 1
        try:
            msg = reader.deserialize(raw, conn.msgtype)
            height, width = message_size(msg)
            stamp_ns = int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)
        except Exception as err:  # deserializing damaged bytes can fail in many ways
            tally.unusable += 1
            tally.first_problem = tally.first_problem or f"message at bag time {log_ns} ns: {type(err).__name__}: {err}"
            continue
        yield BagMessage(conn, log_ns, stamp_ns, height, width, msg)


@dataclass
class BagIndex:
    """Where the frames of one bag are: one entry per usable message, in bag-time order.

    log_ns: (N,) int64 bag (receive) time, used to find the message again; stamp_ns: (N,)
    int64 header stamp; conn: (N,) int16 position in ``conn_ids``; dup: (N,) int32 rank
    among messages of the same connection and bag time; sizes: (N, 2) int32 (H, W).
    """

    path: Path
    topic: str
    conn_ids: list[int]
    log_ns: np.ndarray
    stamp_ns: np.ndarray
    conn: np.ndarray
    dup: np.ndarray
    sizes: np.ndarray
    bad_messages: int

    def times_s(self) -> np.ndarray:
        """(N,) float64 seconds: header stamps when all are set and non-decreasing, else bag times."""
        stamps = self.stamp_ns
        if stamps.size and np.all(stamps > 0) and np.all(np.diff(stamps) >= 0):
            return stamps / 1e9
        return self.log_ns / 1e9


def index_bag(path: Path, topic: str | None) -> BagIndex:
    """Index the image messages of ``topic`` (or the bag's only image topic) in one bag.

    Messages that fail to deserialize or validate, and messages lost to read errors (the
    topic's recorded count minus those seen), are counted in ``bad_messages`` and logged as
    one warning. Raises BagReadError if the bag cannot be opened, DataError for topic
    problems (see choose_topic) and when no message of the topic is usable.
    """
    reader = open_reader(path)
    try:
        chosen = choose_topic(path, reader.connections, topic)
        connections = topic_connections(reader, chosen)
        position = {c.id: k for k, c in enumerate(connections)}
        tally = MessageTally(sum(c.msgcount for c in connections))
        rows = array.array("q")                     # ROW_FIELDS int64 values per usable message
        last: dict[int, tuple[int, int]] = {}       # connection id -> (bag time, rank) of its latest message
        for m in usable_messages(reader, connections, tally):
            previous_time, previous_rank = last.get(m.conn.id, (None, -1))
            rank = previous_rank + 1 if previous_time == m.log_ns else 0
            last[m.conn.id] = (m.log_ns, rank)
            rows.extend((m.log_ns, m.stamp_ns, position[m.conn.id], rank, m.height, m.width))
    finally:
        reader.close()

    if tally.bad:
        log.warning("%s", tally.report(path, chosen))
    if not rows:
        raise DataError(f"bag {path} topic {chosen}: no usable image message "
                        f"({tally.detail() or 'the topic has no messages'})")
    table = np.frombuffer(rows, dtype=np.int64).reshape(-1, ROW_FIELDS)
    return BagIndex(path=path, topic=chosen, conn_ids=[c.id for c in connections],
                    log_ns=table[:, 0].copy(), stamp_ns=table[:, 1].copy(),
                    conn=table[:, 2].astype(np.int16), dup=table[:, 3].astype(np.int32),
                    sizes=table[:, 4:6].astype(np.int32), bad_messages=tally.bad)


def recover_bag(path: Path, topic: str | None, error: BagReadError) -> BagIndex | None:
    """The index of a truncated MCAP bag's repaired copy, its lost messages counted in ``bad_messages``
    (from metadata.yaml when the bag has one), with a warning; None when nothing can be recovered."""
    recovery = recover_truncated_mcap(path)
    if recovery is None:
        return None
    try:
        index = index_bag(recovery.path, topic)
    except DataError:  # the intact part holds no usable image message of the topic
        return None
    recorded = recovery.expected_messages.get(index.topic)
    lost = max(0, recorded - len(index.log_ns)) if recorded is not None else None
    index.bad_messages += lost or 0
    log.warning("bag %s ends early (%s); training on the %d message(s) of %s before the damage, read from a "
                "repaired copy %s; lost: %s (the last %d bytes)", path, error, len(index.log_ns), index.topic,
                recovery.path, f"{lost} of {recorded} message(s)" if lost is not None else "an unknown number of "
                "messages", recovery.lost_bytes)
    return index


class RosbagFrames(FrameSource):
    """The frames of one image topic across one or more bags, with random access.

    paths: one bag or several (rosbag2 directory, .db3, .mcap or ROS 1 .bag); frames follow
    the order of ``paths``, then bag time. topic: the topic to read in every bag, or None to
    take each bag's only image topic. Each bag is its own segment, so no pair spans two bags.
    A bag that cannot be opened is skipped with a warning (listed in ``skipped_bags``) while
    others remain; ``bad_messages`` counts skipped messages over all bags. Decoded frames are
    (H, W, 3) uint8 RGB. Readers are opened lazily in each process (DataLoader workers).
    """

    def __init__(self, paths: str | Path | Sequence[str | Path], topic: str | None = None) -> None:
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        if not paths:
            raise DataError("RosbagFrames needs at least one bag path")
        self.bags: list[BagIndex] = []
        self.skipped_bags: list[tuple[Path, str]] = []
        for raw_path in paths:
            path = Path(raw_path)
            check_bag_path(path)
            try:
                self.bags.append(index_bag(path, topic))
            except BagReadError as err:
                recovered = recover_bag(path, topic, err)
                if recovered is None:
                    self.skipped_bags.append((path, str(err)))
                    log.warning("skipping bag: %s", err)
                else:
                    self.bags.append(recovered)
        if not self.bags:
            raise BagReadError("no readable bag: " + "; ".join(msg for _, msg in self.skipped_bags))
        self.topic = topic
        self.name = str(self.bags[0].path) if len(self.bags) == 1 else f"{len(self.bags)} bags"
        self._starts = np.cumsum([0] + [len(b.log_ns) for b in self.bags])
        self._readers: dict[int, tuple[AnyReader, dict[int, Connection]]] = {}
        self._pid = os.getpid()

    @property
    def bad_messages(self) -> int:
        """Messages skipped as damaged or unusable, over all indexed bags."""
        return sum(b.bad_messages for b in self.bags)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """(bag number, message number within that bag's index) of frame ``index``."""
        i = self.check_index(index)
        bag = int(np.searchsorted(self._starts, i, side="right")) - 1
        return bag, i - int(self._starts[bag])

    def _reader(self, bag: int) -> tuple[AnyReader, dict[int, Connection]]:
        if self._pid != os.getpid():
            self._readers = {}
            self._pid = os.getpid()
        if bag not in self._readers:
            index = self.bags[bag]
            reader = open_reader(index.path)
            by_id = {c.id: c for c in topic_connections(reader, index.topic)}
            self._readers[bag] = (reader, by_id)
        return self._readers[bag]

    def frame(self, index: int) -> np.ndarray:
        """Frame ``index`` as (H, W, 3) uint8 RGB; FrameDecodeError if the message cannot be decoded."""
        bag, k = self.locate(index)
        entry = self.bags[bag]
        reader, by_id = self._reader(bag)
        conn = by_id[entry.conn_ids[int(entry.conn[k])]]
        t = int(entry.log_ns[k])
        where = f"bag {entry.path} topic {entry.topic} message at bag time {t} ns"
        messages = reader.messages(connections=[conn], start=t, stop=t + 1)
        try:
            for rank, (_, _, raw) in enumerate(messages):
                if rank == int(entry.dup[k]):
                    return message_to_rgb(reader.deserialize(raw, conn.msgtype))
        except Exception as err:  # damaged data fails in rosbags, the deserializer or the decoder
            raise FrameDecodeError(f"{where}: {type(err).__name__}: {err}") from None
        finally:
            messages.close()
        raise FrameDecodeError(f"{where}: not found on re-reading the bag")

    def frame_sizes(self) -> np.ndarray:
        """(N, 2) int64 (H, W) of every frame, from the index."""
        return np.concatenate([b.sizes for b in self.bags]).astype(np.int64)

    def timestamps(self) -> np.ndarray:
        """(N,) float64 seconds per frame (header stamps where usable, else bag time; see BagIndex.times_s)."""
        return np.concatenate([b.times_s() for b in self.bags])

    def segments(self) -> np.ndarray:
        """(N,) int64 bag number per frame."""
        return np.repeat(np.arange(len(self.bags), dtype=np.int64), np.diff(self._starts))

    def close(self) -> None:
        """Close the open bag readers (they reopen on the next ``frame`` call)."""
        for reader, _ in self._readers.values():
            reader.close()
        self._readers = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_readers"] = {}
        return state


def check_bag_path(path: Path) -> None:
    """FileNotFoundError for a missing path, DataError for one that is not a bag."""
    if not path.exists():
        raise FileNotFoundError(f"bag path does not exist: {path}")
    if not is_bag_path(path):
        raise DataError(f"{path} is not a bag (expected a rosbag2 directory with metadata.yaml, "
                        f"or a {'/'.join(BAG_SUFFIXES)} file)")


class BagStream:
    """The usable image messages of one topic of one bag, read once in bag-time order (constant memory).

    topic: the topic to read, or None for the bag's only image topic (DataError otherwise, see
    choose_topic). Damaged and unusable messages are skipped while iterating and counted in
    ``tally``; an MCAP bag cut short before its footer is read from a repaired copy of its intact
    start, as training reads it (recover_bag), the messages its metadata.yaml recorded beyond
    that counted as lost. Opening raises BagReadError for a bag that cannot be opened at all.
    ``len`` is the number of messages the bag recorded on the topic, ``duration_ns`` the time
    span it covers. Use as a context manager, or call close().
    """

    def __init__(self, path: str | Path, topic: str | None = None) -> None:
        self.path = Path(path)
        check_bag_path(self.path)
        recorded, cut_short = None, ""
        try:
            self._reader = open_reader(self.path)
        except BagReadError as err:
            recovery = recover_truncated_mcap(self.path)
            if recovery is None:
                raise
            self._reader = open_reader(recovery.path)
            recorded = recovery.expected_messages
            cut_short = f"{err}; read from a repaired copy of its first {recovery.kept_bytes} bytes"
            log.warning("bag %s ends early: %s", self.path, cut_short)
        try:
            self.topic = choose_topic(self.path, self._reader.connections, topic)
        except DataError:
            self._reader.close()
            raise
        self._connections = topic_connections(self._reader, self.topic)
        found = sum(c.msgcount for c in self._connections)
        self.tally = MessageTally(max(found, (recorded or {}).get(self.topic, found)))
        if cut_short:
            self.tally.read_errors.append(cut_short)
        self.duration_ns = int(self._reader.duration)

    def __len__(self) -> int:
        return self.tally.expected

    def __iter__(self) -> Iterator[BagMessage]:
        return usable_messages(self._reader, self._connections, self.tally)

    def close(self) -> None:
        """Close the bag reader."""
        self._reader.close()

    def __enter__(self) -> BagStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
