"""Bags written with training.make_bag (real rosbag2 sqlite3/mcap and ROS 1 files) read back as frames and pairs."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from mdflow_ros.synthetic import photo_library
from mdflow_ros.io.frames import DataError, UnsupportedEncodingError, array_to_rgb, image_to_rgb
from training.data.pairs import FramePairs, open_sources
from mdflow_ros.io.bags import BagReadError, RosbagFrames
from training.make_bag import DEFAULT_START_NS, write_sequence_bag

REPO = Path(__file__).resolve().parents[2]
SIZE = (96, 128)
KILTED = get_typestore(Stores.ROS2_KILTED)


class Hang(BaseException):
    """Raised by time_limit; a BaseException so that no `except Exception` in the code under test swallows it."""


@contextlib.contextmanager
def time_limit(seconds: int):
    """Fail the test instead of hanging: SIGALRM raises Hang after ``seconds``."""
    def expire(signum, frame):
        raise Hang(f"took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    """Eight (96, 128, 3) uint8 RGB frames: a real photo panning 3 px per frame."""
    photo = cv2.resize(photo_library()[0], (160, 120), interpolation=cv2.INTER_AREA)
    return [np.ascontiguousarray(photo[10:10 + SIZE[0], 3 * k:3 * k + SIZE[1]]) for k in range(8)]


def expected(frames: list[np.ndarray], encoding: str) -> list[np.ndarray]:
    if encoding == "mono8":
        return [np.repeat(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)[:, :, None], 3, axis=2) for f in frames]
    return frames


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "mono8", "jpeg", "png"])
def test_frames_read_back_equal_what_was_written(tmp_path, frames, storage, encoding):
    bag = write_sequence_bag(tmp_path / "bag", frames, storage=storage, encoding=encoding)
    source = RosbagFrames(bag)
    assert len(source) == len(frames) and source.bad_messages == 0
    assert source.bags[0].topic == "/camera/image_raw"
    assert source.frame_sizes().tolist() == [list(SIZE)] * len(frames)
    np.testing.assert_allclose(np.diff(source.timestamps()), 1 / 30, atol=1e-6)
    for index in (5, 0, 7, 2):
        got, want = source.frame(index), expected(frames, encoding)[index]
        assert got.dtype == np.uint8 and got.shape == SIZE + (3,)
        if encoding == "jpeg":
            assert np.abs(got.astype(int) - want).mean() < 5.0 < np.abs(got[:, :, ::-1].astype(int) - want).mean()
        else:
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_single_storage_file_is_a_bag(tmp_path, frames, storage):
    bag = write_sequence_bag(tmp_path / "bag", frames, storage=storage)
    single = next(p for p in bag.iterdir() if p.suffix in (".db3", ".mcap"))
    np.testing.assert_array_equal(RosbagFrames(single).frame(3), frames[3])


@pytest.mark.parametrize("encoding", ["rgb8", "jpeg"])
def test_ros1_bag(tmp_path, frames, encoding):
    bag = write_sequence_bag(tmp_path / "run.bag", frames, storage="ros1", encoding=encoding)
    source = RosbagFrames(bag)
    assert len(source) == len(frames)
    tolerance = 5.0 if encoding == "jpeg" else 0.0
    assert np.abs(source.frame(4).astype(int) - frames[4]).mean() <= tolerance


def _raw_bag(path: Path, topics: dict[str, str], messages: list[tuple[str, int, bytes]]) -> Path:
    """A rosbag2 (sqlite3) with the given {topic: msgtype} and raw (topic, time ns, CDR bytes) messages."""
    with Writer(path, version=9, storage_plugin=StoragePlugin.SQLITE3) as writer:
        conns = {t: writer.add_connection(t, msgtype, typestore=KILTED) for t, msgtype in topics.items()}
        for topic, t_ns, raw in messages:
            writer.write(conns[topic], t_ns, raw)
    return path


def _image_cdr(frame: np.ndarray, t_ns: int, encoding: str = "rgb8", step: int | None = None) -> bytes:
    image, header, stamp = (KILTED.types[n] for n in
                            ("sensor_msgs/msg/Image", "std_msgs/msg/Header", "builtin_interfaces/msg/Time"))
    msg = image(header=header(stamp=stamp(sec=t_ns // 10**9, nanosec=t_ns % 10**9), frame_id="cam"),
                height=frame.shape[0], width=frame.shape[1], encoding=encoding, is_bigendian=0,
                step=frame.shape[1] * 3 if step is None else step, data=frame.reshape(-1))
    return KILTED.serialize_cdr(msg, image.__msgtype__)


def test_bag_without_image_topics(tmp_path):
    string = KILTED.types["std_msgs/msg/String"]
    raw = KILTED.serialize_cdr(string(data="hello"), string.__msgtype__)
    bag = _raw_bag(tmp_path / "bag", {"/chatter": string.__msgtype__}, [("/chatter", 1, raw)])
    with pytest.raises(DataError, match=r"has no image topics \(topics: /chatter \[std_msgs/msg/String\]\)"):
        RosbagFrames(bag)


def test_topic_choice(tmp_path, frames):
    image = "sensor_msgs/msg/Image"
    msgs = [(t, k, _image_cdr(frames[k], k)) for k in range(3) for t in ("/left", "/right")]
    bag = _raw_bag(tmp_path / "bag", {"/left": image, "/right": image}, msgs)
    with pytest.raises(DataError, match="several image topics: /left, /right; choose one"):
        RosbagFrames(bag)
    with pytest.raises(DataError, match=r"topic '/front' does not exist .* its image topics: /left, /right"):
        RosbagFrames(bag, topic="/front")
    source = RosbagFrames(bag, topic="/right")
    assert len(source) == 3 and source.bags[0].topic == "/right"
    np.testing.assert_array_equal(source.frame(2), frames[2])


def test_unsupported_encoding_is_named(tmp_path, frames):
    msgs = [("/cam", k, _image_cdr(frames[k], k, encoding="yuv422", step=frames[k].shape[1] * 2)) for k in range(2)]
    bag = _raw_bag(tmp_path / "bag", {"/cam": "sensor_msgs/msg/Image"}, msgs)
    with pytest.raises(DataError, match="unsupported image encoding 'yuv422'"):
        RosbagFrames(bag)


def test_damaged_messages_are_skipped_and_counted(tmp_path, frames, caplog):
    msgs = [("/cam", k, _image_cdr(frames[k], k)) for k in range(len(frames))]
    msgs[2] = ("/cam", 2, msgs[2][2][:200])                             # truncated message
    msgs[5] = ("/cam", 5, _image_cdr(frames[5], 5, step=SIZE[1] * 4))   # rows longer than the data
    bag = _raw_bag(tmp_path / "bag", {"/cam": "sensor_msgs/msg/Image"}, msgs)
    with caplog.at_level(logging.WARNING), time_limit(30):
        source = RosbagFrames(bag)
    assert source.bad_messages == 2 and len(source) == len(frames) - 2
    assert "skipped 2 damaged or unusable message(s)" in caplog.text
    np.testing.assert_array_equal(source.frame(2), frames[3])


def test_messages_with_equal_bag_times(tmp_path, frames):
    msgs = [("/cam", 100, _image_cdr(frames[0], 100)), ("/cam", 200, _image_cdr(frames[1], 200)),
            ("/cam", 200, _image_cdr(frames[2], 200)), ("/cam", 300, _image_cdr(frames[3], 300))]
    source = RosbagFrames(_raw_bag(tmp_path / "bag", {"/cam": "sensor_msgs/msg/Image"}, msgs))
    assert source.bags[0].dup.tolist() == [0, 0, 1, 0]
    for index in (2, 1, 3):
        np.testing.assert_array_equal(source.frame(index), frames[index])


def test_truncated_mcap_bag_is_skipped(tmp_path, frames, caplog):
    """Eight small frames in one MCAP chunk, cut inside it: nothing before the damage is readable."""
    good = write_sequence_bag(tmp_path / "good", frames, storage="mcap")
    bad = write_sequence_bag(tmp_path / "bad", frames, storage="mcap")
    mcap = next(bad.glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size * 2 // 3])
    with time_limit(30):
        with pytest.raises(BagReadError, match="cannot read bag"):
            RosbagFrames(bad)
        with caplog.at_level(logging.WARNING):
            source = RosbagFrames([bad, good])
    assert len(source) == len(frames) and [p for p, _ in source.skipped_bags] == [bad]
    assert "skipping bag" in caplog.text


def test_truncated_mcap_bag_reads_the_chunks_before_the_cut(tmp_path, monkeypatch, caplog):
    """Eight 480x640 frames, two per 1 MiB chunk, cut at two thirds: the first two chunks read back exactly
    (from a repaired copy in the cache), the four messages lost are counted from metadata.yaml."""
    monkeypatch.setenv("MDFLOW_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(4)
    big = [rng.integers(0, 255, (480, 640, 3), dtype=np.uint8) for _ in range(8)]
    bag = write_sequence_bag(tmp_path / "cut", big, storage="mcap")
    mcap = next(bag.glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size * 2 // 3])
    with time_limit(30), caplog.at_level(logging.WARNING):
        source = RosbagFrames(bag)
    assert len(source) == 4 and source.bad_messages == 4 and not source.skipped_bags
    assert all(np.array_equal(source.frame(i), big[i]) for i in range(4))
    assert "ends early" in caplog.text and "lost: 4 of 8 message(s)" in caplog.text
    alone = tmp_path / "alone.mcap"
    alone.write_bytes(mcap.read_bytes())
    with caplog.at_level(logging.WARNING):
        assert len(RosbagFrames(alone)) == 4, "a bare .mcap file too"
    assert "an unknown number of messages" in caplog.text


def test_read_error_inside_a_bag_resumes_after_it(tmp_path, frames):
    bag = write_sequence_bag(tmp_path / "run.bag", frames, storage="ros1")
    data = bytearray(bag.read_bytes())
    records = [i for i in range(len(data)) if data[i:i + 4] == b"op=\x02"]   # ROS 1 message-data records
    assert len(records) == len(frames)
    data[records[3] + 3] = 0x07
    bag.write_bytes(bytes(data))
    with time_limit(30):
        source = RosbagFrames(bag)
    assert len(source) == len(frames) - 1 and source.bad_messages == 1
    np.testing.assert_array_equal(source.frame(3), frames[4])


def test_pairs_skip_time_gaps_and_use_stride(tmp_path, frames):
    period = 10**8                                                     # 10 Hz, then a 2 s gap after frame 3
    stamps = [DEFAULT_START_NS + k * period + (2 * 10**9 if k >= 4 else 0) for k in range(len(frames))]
    bag = write_sequence_bag(tmp_path / "bag", frames, stamps_ns=stamps)
    sources = open_sources([bag])
    pairs = FramePairs(sources, stride=1, max_gap_s=0.5)
    assert pairs.pairs[:, 1].tolist() == [0, 1, 2, 4, 5, 6] and pairs.gap_skipped == 1
    strided = FramePairs(sources, stride=2, max_gap_s=0.5)
    assert strided.pairs[:, 1].tolist() == [0, 1, 4, 5]
    assert len(FramePairs(sources, stride=2, max_gap_s=None)) == len(frames) - 2
    item = FramePairs(sources, stride=3)[0]
    np.testing.assert_allclose(item["img2"].permute(1, 2, 0).numpy() * 255, frames[3], atol=1e-3)


def test_two_bags_in_one_run(tmp_path, frames):
    first = write_sequence_bag(tmp_path / "a", frames[:5], storage="sqlite3")
    second = write_sequence_bag(tmp_path / "b", frames[5:], storage="mcap", encoding="bgr8")
    sources = open_sources([first, second])
    assert len(sources) == 1 and len(sources[0]) == len(frames)
    assert sources[0].segments().tolist() == [0] * 5 + [1] * 3
    np.testing.assert_array_equal(sources[0].frame(6), frames[6])
    pairs = FramePairs(sources, stride=1)
    assert pairs.pairs[:, 1].tolist() == [0, 1, 2, 3, 5, 6]           # never frame 4 with 5


def test_make_bag_cli_end_to_end(tmp_path):
    out, flows = tmp_path / "demo", tmp_path / "demo_flow.npz"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, "training/make_bag.py", str(out), "--frames", "6", "--size", "96", "128",
                    "--storage", "mcap", "--encoding", "rgb8", "--flow-out", str(flows)],
                   cwd=REPO, env=env, check=True, capture_output=True, timeout=120)
    truth = np.load(flows)
    assert truth["flow"].shape == (3, 96, 128, 2) and truth["valid"].shape == (3, 96, 128)
    assert truth["frames"].tolist() == [[0, 1], [2, 3], [4, 5]]
    source = RosbagFrames(out)
    pairs = FramePairs([source], max_gap_s=0.5)
    assert pairs.pairs[:, 1].tolist() == [0, 2, 4]
    img1, img2 = source.frame(2), source.frame(3)
    flow, valid = truth["flow"][1], truth["valid"][1]
    ys, xs = np.mgrid[0:96, 0:128].astype(np.float32)
    warped = cv2.remap(img2, xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR)
    warp_error = np.abs(warped.astype(float) - img1)[valid].mean()
    assert warp_error < 0.25 * np.abs(img2.astype(float) - img1)[valid].mean()


def test_raw_encodings_convert_to_rgb(frames):
    rgb = frames[0]

    def message(pixels: np.ndarray, encoding: str, step: int, bigendian: int = 0):
        class Msg:
            pass
        msg = Msg()
        msg.height, msg.width, msg.encoding, msg.step, msg.is_bigendian = *SIZE, encoding, step, bigendian
        msg.data = np.ascontiguousarray(pixels).reshape(-1).view(np.uint8)
        return msg

    padded = np.zeros((SIZE[0], 3 * SIZE[1] + 8), np.uint8)            # rows padded by 8 bytes
    padded[:, :3 * SIZE[1]] = rgb.reshape(SIZE[0], -1)
    np.testing.assert_array_equal(image_to_rgb(message(padded, "rgb8", 3 * SIZE[1] + 8)), rgb)
    rgba = np.dstack([rgb, np.full(SIZE, 7, np.uint8)])
    np.testing.assert_array_equal(image_to_rgb(message(rgba, "rgba8", 4 * SIZE[1])), rgb)
    np.testing.assert_array_equal(image_to_rgb(message(rgba[:, :, [2, 1, 0, 3]], "bgra8", 4 * SIZE[1])), rgb)
    grey16 = (rgb[:, :, 1].astype(np.uint16) * 257).astype(">u2")
    out = image_to_rgb(message(grey16, "mono16", 2 * SIZE[1], bigendian=1))
    np.testing.assert_array_equal(out, np.repeat(rgb[:, :, 1:2], 3, axis=2))
    mosaic = np.empty(SIZE, np.uint8)                                   # R G / G B
    mosaic[0::2, 0::2], mosaic[0::2, 1::2] = rgb[0::2, 0::2, 0], rgb[0::2, 1::2, 1]
    mosaic[1::2, 0::2], mosaic[1::2, 1::2] = rgb[1::2, 0::2, 1], rgb[1::2, 1::2, 2]
    demosaiced = image_to_rgb(message(mosaic, "bayer_rggb8", SIZE[1]))
    assert np.abs(demosaiced[4:-4, 4:-4].astype(int) - rgb[4:-4, 4:-4]).mean() < 8
    for swapped in ("bayer_bggr8", "bayer_gbrg8", "bayer_grbg8"):
        wrong = array_to_rgb(mosaic, swapped)
        assert np.abs(wrong[4:-4, 4:-4].astype(int) - rgb[4:-4, 4:-4]).mean() > \
            np.abs(demosaiced[4:-4, 4:-4].astype(int) - rgb[4:-4, 4:-4]).mean()
    with pytest.raises(UnsupportedEncodingError, match="'32FC1'"):
        image_to_rgb(message(rgb, "32FC1", 4 * SIZE[1]))
