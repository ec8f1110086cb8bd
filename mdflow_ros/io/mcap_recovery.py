"""Recover the messages of an MCAP bag that ends early (the recorder was killed before it wrote the footer).

rosbags opens an MCAP file from its footer, so a file cut short is unreadable as a whole though
its first chunks are intact. ``recover_truncated_mcap`` copies the complete records at the start
of such a file (up to the first record the cut damaged) into a new file in the cache, closes it
with a DataEnd record and a footer without a summary section, which rosbags then reads by
scanning, and says how much was lost. The damaged record itself is lost whole: a recording held
in a single chunk recovers nothing, and stays refused.
"""
from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

import yaml

from mdflow_ros.files import atomic_write
from mdflow_ros.inference.onnx_files import cache_dir

MAGIC = b"\x89MCAP0\r\n"
OP_HEADER, OP_FOOTER, OP_DATA_END = 0x01, 0x02, 0x0F
RECORD_HEAD = 9
"""Bytes before a record's content: opcode (1) and content length (8, little-endian)."""
CLOSING = (bytes([OP_DATA_END]) + struct.pack("<QI", 4, 0)
           + bytes([OP_FOOTER]) + struct.pack("<QQQI", 20, 0, 0, 0) + MAGIC)
"""DataEnd (no CRC), then a footer with no summary section, then the closing magic."""


@dataclass(frozen=True)
class Recovery:
    """A readable copy of a truncated MCAP file: where it is, and what of the original it keeps.

    expected_messages: the message count the bag's metadata.yaml recorded per topic, when it has one.
    """

    original: Path
    path: Path
    kept_bytes: int
    lost_bytes: int
    expected_messages: dict[str, int]


def intact_prefix(path: Path) -> int | None:
    """Length in bytes of the complete records at the start of an MCAP file that ends early.

    None when the file is not MCAP, is not cut short (it reaches its footer, so any damage is
    elsewhere), or holds nothing but its header record.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            return None
        pos, header_end = len(MAGIC), None
        while pos + RECORD_HEAD <= size:
            f.seek(pos)
            head = f.read(RECORD_HEAD)
            opcode, length = head[0], struct.unpack("<Q", head[1:])[0]
            if opcode == OP_FOOTER or (header_end is None and opcode != OP_HEADER):
                return None
            if opcode == OP_DATA_END or pos + RECORD_HEAD + length > size:
                break
            pos += RECORD_HEAD + length
            header_end = header_end or pos
    return pos if header_end is not None and pos > header_end else None


def recorded_counts(bag_dir: Path) -> dict[str, int]:
    """{topic: message count} from a rosbag2 directory's metadata.yaml ({} when it has none or it is unreadable)."""
    try:
        info = yaml.safe_load((bag_dir / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
        return {t["topic_metadata"]["name"]: int(t["message_count"]) for t in info["topics_with_message_count"]}
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return {}


def mcap_file(bag: Path) -> Path | None:
    """The .mcap file of a bag path: the file itself, or the only one in a rosbag2 directory."""
    if bag.is_file():
        return bag if bag.suffix.lower() == ".mcap" else None
    files = sorted(bag.glob("*.mcap"))
    return files[0] if len(files) == 1 else None


def recover_truncated_mcap(bag: Path) -> Recovery | None:
    """A readable copy (in $MDFLOW_CACHE/recovered_bags, reused while the bag is unchanged) of an MCAP bag
    (file or rosbag2 directory) that ends early; None when there is nothing to recover this way."""
    source = mcap_file(bag)
    if source is None:
        return None
    keep = intact_prefix(source)
    if keep is None:
        return None
    stat = source.stat()
    key = hashlib.sha256(f"{source.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:20]
    out = cache_dir() / "recovered_bags" / f"{key}-{source.name}"
    if not out.is_file():
        def write(f) -> None:
            with open(source, "rb") as src:
                left = keep
                while left:
                    block = src.read(min(left, 1 << 20))
                    f.write(block)
                    left -= len(block)
            f.write(CLOSING)

        atomic_write(out, write)
    counts = recorded_counts(bag) if bag.is_dir() else {}
    return Recovery(bag, out, keep, stat.st_size - keep, counts)
