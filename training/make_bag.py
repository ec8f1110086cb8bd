"""Write image sequences into real rosbags (rosbag2 sqlite3/mcap, or ROS 1 .bag) with ``rosbags``.

``write_sequence_bag`` stores RGB frames as sensor_msgs/Image or CompressedImage. Run as a
script it records known-motion pairs (real photographs under a known motion, from
``mdflow_ros.synthetic.held_out_pairs``) so tests and examples exercise the bag path end to
end: frames 2k and 2k+1 are pair k, 1 / rate_hz apart, and consecutive pairs are
``--pair-gap`` seconds apart, so a pair dataset with max_gap_s below that gap pairs exactly
the known-motion pairs. ``--flow-out`` saves their ground truth (.npz: flow (P, H, W, 2)
float32 pixels, valid (P, H, W) bool, frames (P, 2) frame numbers in the bag):

    python training/make_bag.py OUT --frames 20 --size 384 512 --storage mcap --encoding rgb8 --flow-out OUT.npz
"""
from __future__ import annotations

import argparse
import itertools
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np
from rosbags.rosbag1 import Writer as Ros1Writer
from rosbags.rosbag2 import StoragePlugin, Writer as Ros2Writer
from rosbags.typesys import Stores, get_typestore

from mdflow_ros.synthetic import held_out_pairs

STORAGES: tuple[str, ...] = ("sqlite3", "mcap", "ros1")
"""rosbag2 storage plugins, and "ros1" for a ROS 1 .bag file."""

ENCODINGS: tuple[str, ...] = ("rgb8", "bgr8", "mono8", "jpeg", "png")
"""Raw sensor_msgs/Image encodings, and "jpeg"/"png" for sensor_msgs/CompressedImage."""

DEFAULT_START_NS: int = 1_700_000_000_000_000_000
"""Bag time of the first frame unless told otherwise (2023-11-14, nanoseconds since the epoch)."""

JPEG_QUALITY: int = 95


def _check_frame(frame: np.ndarray, index: int) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame {index} must be an (H, W, 3) uint8 RGB array, got {frame.dtype} {frame.shape}")
    return np.ascontiguousarray(frame)


def _payload(typestore, frame: np.ndarray, encoding: str, header) -> tuple[str, object]:
    """(msgtype, message) holding ``frame`` (H, W, 3) uint8 RGB in ``encoding``."""
    if encoding in ("jpeg", "png"):
        params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if encoding == "jpeg" else []
        ok, buf = cv2.imencode("." + encoding[:3], cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), params)
        if not ok:
            raise RuntimeError(f"OpenCV could not encode a {frame.shape} frame as {encoding}")
        msgtype = "sensor_msgs/msg/CompressedImage"
        return msgtype, typestore.types[msgtype](header=header, format=encoding, data=buf.reshape(-1))
    if encoding == "mono8":
        pixels = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    elif encoding == "bgr8":
        pixels = np.ascontiguousarray(frame[:, :, ::-1])
    else:
        pixels = frame
    height, width = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else 3
    msgtype = "sensor_msgs/msg/Image"
    return msgtype, typestore.types[msgtype](
        header=header, height=height, width=width, encoding=encoding, is_bigendian=0,
        step=width * channels, data=pixels.reshape(-1))


def write_sequence_bag(path: str | Path, frames: Iterable[np.ndarray], topic: str = "/camera/image_raw",
                       storage: str = "sqlite3", encoding: str = "rgb8", rate_hz: float = 30.0,
                       start_ns: int = DEFAULT_START_NS, frame_id: str | Sequence[str] = "camera",
                       stamps_ns: Sequence[int] | None = None) -> Path:
    """Write frames (each (H, W, 3) uint8 RGB) as one image topic of a new bag; returns the bag's path.

    storage: "sqlite3" or "mcap" write a rosbag2 directory ``path`` (format version 9, Kilted
    message definitions); "ros1" writes a ROS 1 file ``path`` (must end in ".bag", Noetic
    definitions). encoding: "rgb8", "bgr8", "mono8" (sensor_msgs/Image; mono8 stores the
    grey conversion) or "jpeg"/"png" (sensor_msgs/CompressedImage). Frame i gets the header
    stamp and bag time ``start_ns + i * 1e9 / rate_hz`` nanoseconds, or ``stamps_ns[i]``
    when given (for recordings with gaps). frame_id: the header frame_id of every frame, or one
    per frame (a topic two cameras publish on). ``path`` must not exist.
    """
    path = Path(path)
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise ValueError(f"no frames given for {path}")
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
    if not rate_hz > 0:
        raise ValueError(f"rate_hz must be positive, got {rate_hz}")
    if path.exists():
        raise FileExistsError(f"{path} exists already; a bag is always written to a new path")
    if storage == "ros1" and path.suffix != ".bag":
        raise ValueError(f"a ROS 1 bag path must end in '.bag', got {path}")

    typestore = get_typestore(Stores.ROS1_NOETIC if storage == "ros1" else Stores.ROS2_KILTED)
    header_type, time_type = typestore.types["std_msgs/msg/Header"], typestore.types["builtin_interfaces/msg/Time"]
    if storage == "ros1":
        writer = Ros1Writer(path)
        serialize = typestore.serialize_ros1
    else:
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        writer = Ros2Writer(path, version=9, storage_plugin=plugin)
        serialize = typestore.serialize_cdr

    connection = None
    with writer:
        for index, frame in enumerate(itertools.chain([first], frames)):
            frame = _check_frame(frame, index)
            if stamps_ns is not None:
                if index >= len(stamps_ns):
                    raise ValueError(f"stamps_ns has {len(stamps_ns)} entries, fewer than the frames")
                t_ns = int(stamps_ns[index])
            else:
                t_ns = int(start_ns + round(index * 1e9 / rate_hz))
            stamp = time_type(sec=t_ns // 1_000_000_000, nanosec=t_ns % 1_000_000_000)
            fields = {"seq": index} if storage == "ros1" else {}
            header = header_type(**fields, stamp=stamp,
                                 frame_id=frame_id if isinstance(frame_id, str) else frame_id[index])
            msgtype, msg = _payload(typestore, frame, encoding, header)
            if connection is None:
                connection = writer.add_connection(topic, msgtype, typestore=typestore)
            writer.write(connection, t_ns, serialize(msg, msgtype))
    return path


def write_known_motion_bag(path: str | Path, frames: int, size: tuple[int, int], seed: int = 0,
                           rate_hz: float = 30.0, pair_gap_s: float = 1.0, start_ns: int = DEFAULT_START_NS,
                           flow_out: str | Path | None = None, **bag_options: str) -> Path:
    """Write ``frames`` frames of known-motion pairs (see the module docstring) as a bag.

    size: (H, W) of the frames; the two frames of a pair are 1 / rate_hz seconds apart, pairs
    start pair_gap_s seconds apart from ``start_ns``. bag_options go to ``write_sequence_bag``
    (topic, storage, encoding, frame_id). flow_out: optional .npz path for the ground truth
    of the complete pairs (an odd last frame has no partner and no flow).
    """
    if frames < 2:
        raise ValueError(f"frames must be at least 2 (one pair), got {frames}")
    if not rate_hz > 0 or not pair_gap_s > 1.0 / rate_hz:
        raise ValueError(f"pair_gap_s ({pair_gap_s} s) must exceed the frame interval 1 / rate_hz ({rate_hz} Hz)")
    pairs = held_out_pairs((frames + 1) // 2, tuple(size), seed)
    images = [img for p in pairs for img in (p.img1, p.img2)][:frames]
    stamps = [start_ns + round((k // 2) * pair_gap_s * 1e9 + (k % 2) * 1e9 / rate_hz) for k in range(frames)]
    out = write_sequence_bag(path, images, stamps_ns=stamps, **bag_options)
    if flow_out is not None:
        complete = pairs[:frames // 2]
        np.savez_compressed(flow_out, flow=np.stack([p.flow for p in complete]),
                            valid=np.stack([p.valid for p in complete]),
                            frames=np.array([[2 * k, 2 * k + 1] for k in range(len(complete))], dtype=np.int64))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="bag to create: a rosbag2 directory, or a .bag file with --storage ros1")
    parser.add_argument("--frames", type=int, default=20, help="number of frames (pairs of two)")
    parser.add_argument("--size", type=int, nargs=2, default=[384, 512], metavar=("H", "W"))
    parser.add_argument("--storage", choices=STORAGES, default="sqlite3")
    parser.add_argument("--encoding", choices=ENCODINGS, default="rgb8")
    parser.add_argument("--topic", default="/camera/image_raw")
    parser.add_argument("--rate-hz", type=float, default=30.0, help="frame rate within a pair")
    parser.add_argument("--pair-gap", type=float, default=1.0, help="seconds between the starts of two pairs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flow-out", help="write the pairs' ground-truth flow to this .npz file")
    args = parser.parse_args(argv)
    try:
        path = write_known_motion_bag(args.out, args.frames, tuple(args.size), seed=args.seed,
                                      pair_gap_s=args.pair_gap, flow_out=args.flow_out, topic=args.topic,
                                      storage=args.storage, encoding=args.encoding, rate_hz=args.rate_hz)
    except (ValueError, OSError) as err:
        parser.error(str(err))
    print(f"wrote {args.frames} frames to {path} ({args.storage}, {args.encoding}, topic {args.topic})"
          + (f"; ground truth in {args.flow_out}" if args.flow_out else ""))


if __name__ == "__main__":
    main()
