"""Offline flow (mdflow_ros/offline.py, mdflow-flow with one recording): real bags, videos and folders in, an MCAP
file (read back with the mcap library's ROS 2 decoder, not rosbags), a video or flow files out."""
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest

from mdflow_ros import cli
from mdflow_ros.inference import FlowEstimator
from mdflow_ros.io import read_flo
from mdflow_ros.io.flow_mcap import FlowMcapWriter
from mdflow_ros.offline import Summary, flow_sequence
from mdflow_ros.synthetic import photo_library
from support import (DEPLOYED_RUNTIMES, ROOT, SHIPPED_MODEL, deployed_estimator_as, image_array, no_torch_environment,
                     read_mcap, runs_deployed, write_video)
from training.make_bag import DEFAULT_START_NS, write_sequence_bag

pytestmark = pytest.mark.skipif(not SHIPPED_MODEL.with_suffix(".onnx").is_file(), reason="no shipped .onnx")

SIZE = (96, 128)
NET = ("64", "128")
"""Network input (H, W) of these tests: small, for speed."""
MS = 1_000_000
STAMPS = [0, 100, 200, 1200, 1300, 1400, 1500, 1600, 1700]
"""Frame stamps (ms after DEFAULT_START_NS): a 1 s gap after frame 2."""
FRAME_IDS = ["cam_a"] * 5 + ["cam_b"] * 4
"""The camera changes at frame 5."""
SMALL = 7
"""Frames from this one on are 64 x 96 (a size change)."""
EXPECTED_PAIRS = [(0, 1), (1, 2), (3, 4), (5, 6), (7, 8)]
"""What the node's rules pair: no pair across the gap (2, 3), the camera change (4, 5) or the size change (6, 7)."""


def panning(count: int, size: tuple[int, int] = SIZE) -> list[np.ndarray]:
    """``count`` (H, W, 3) uint8 RGB crops of a real photo panning 3 px per frame."""
    photo = cv2.resize(photo_library()[0], (200, 150), interpolation=cv2.INTER_AREA)
    return [np.ascontiguousarray(photo[10:10 + size[0], 3 * k:3 * k + size[1]]) for k in range(count)]


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    full = panning(len(STAMPS))
    return full[:SMALL] + [cv2.resize(f, (96, 64), interpolation=cv2.INTER_AREA) for f in full[SMALL:]]


@pytest.fixture(scope="module")
def bag(tmp_path_factory, frames) -> Path:
    return write_sequence_bag(tmp_path_factory.mktemp("bag") / "bag", frames, storage="sqlite3",
                              stamps_ns=[DEFAULT_START_NS + s * MS for s in STAMPS], frame_id=FRAME_IDS)


@pytest.fixture(scope="module")
def estimator() -> FlowEstimator:
    return FlowEstimator(backend="onnxruntime", input_size=tuple(map(int, NET)), threads=1)


def estimator_of(printed: str) -> FlowEstimator:
    """The estimator the CLI reports it ran (``... on <backend description>``), at these tests' network size
    and thread count: its default "auto" may choose another runtime in another process on a busy machine."""
    return deployed_estimator_as(printed, input_size=tuple(map(int, NET)), threads=1)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mdflow_ros.cli", *args, "--input-size", *NET, "--threads", "1"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_a_bag_becomes_an_mcap_with_one_flow_per_pair_that_a_ros2_mcap_reader_decodes(tmp_path, bag, frames):
    torch_log = tmp_path / "torch_imports.log"
    out = tmp_path / "flow.mcap"
    proc = run_cli(str(bag), "--out", str(out), "--output-scale", "0.5",
                   env=no_torch_environment(dict(os.environ), torch_log))
    assert proc.returncode == 0, proc.stderr
    assert not torch_log.exists(), f"offline flow tried to import {torch_log.read_text().split()}"
    assert "9 frames -> 5 flow pairs" in proc.stdout and any(r in proc.stdout for r in DEPLOYED_RUNTIMES)
    estimator = estimator_of(proc.stdout)
    for cause in ("gap", "frame_id", "size"):
        assert f"skipped 1 pair(s): {cause} (first: " in proc.stdout, proc.stdout
    assert "median" in proc.stdout and "ms per pair" in proc.stdout
    assert "frame/s" in proc.stderr, "a tqdm progress bar"

    schemas, messages = read_mcap(out)
    assert schemas["/optical_flow"][:2] == ("mdflow_ros/msg/OpticalFlow", "ros2msg")
    assert schemas["/optical_flow"][2].startswith((ROOT / "msg" / "OpticalFlow.msg").read_text().rstrip("\n"))
    assert "MSG: sensor_msgs/Image" in schemas["/optical_flow"][2] and "MSG: std_msgs/Header" in schemas["/optical_flow"][2]
    assert schemas["/optical_flow/color"][:2] == ("sensor_msgs/msg/Image", "ros2msg")
    flows, colors = messages["/optical_flow"], messages["/optical_flow/color"]
    assert len(flows) == len(colors) == len(EXPECTED_PAIRS)
    for (log_time, msg), (color_time, color), (i, j) in zip(flows, colors, EXPECTED_PAIRS):
        stamp = DEFAULT_START_NS + STAMPS[j] * MS
        assert log_time == color_time == stamp, "logged at the newer frame's bag time"
        assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == stamp
        assert msg.previous_stamp.sec * 10**9 + msg.previous_stamp.nanosec == DEFAULT_START_NS + STAMPS[i] * MS
        assert msg.header.frame_id == FRAME_IDS[j] == msg.flow.header.frame_id == color.header.frame_id
        height, width = (s // 2 for s in frames[j].shape[:2])
        assert (msg.flow.encoding, msg.flow.height, msg.flow.width) == ("32FC2", height, width)
        assert (msg.confidence.encoding, msg.confidence.height, msg.confidence.width) == ("32FC1", height, width)
        assert (color.encoding, color.height, color.width) == ("rgb8", height, width)
        assert msg.output_scale == 0.5 and msg.model.startswith("teacher_fastflownet.pt@")
        assert runs_deployed(msg.backend) and 0 < msg.inference_time <= msg.processing_time
        expected = estimator.estimate(frames[i], frames[j], output_scale=0.5)
        np.testing.assert_allclose(image_array(msg.flow, np.float32, 2), expected.flow, atol=1e-3)
        np.testing.assert_allclose(image_array(msg.confidence, np.float32, 1)[:, :, 0], expected.confidence, atol=1e-3)
        assert image_array(color, np.uint8, 3).std() > 0

    before = out.read_bytes()
    refused = run_cli(str(bag), "--out", str(out))
    assert refused.returncode == 2 and refused.stderr.strip() == f"mdflow-flow: {out} exists already (pass --force to overwrite it)"
    assert out.read_bytes() == before
    assert run_cli(str(bag), "--out", str(out), "--force").returncode == 0
    _, again = read_mcap(out)
    assert len(again["/optical_flow"]) == len(EXPECTED_PAIRS) and again["/optical_flow"][0][1].flow.height == SIZE[0]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "no temporary file left"


def test_without_confidence_the_message_holds_an_empty_confidence_image(tmp_path):
    out = tmp_path / "flow.mcap"
    with open(out, "wb") as stream:
        writer = FlowMcapWriter(stream, "model.pt@0123456789abcdef", "a backend")
        writer.write(5, 7_000_000_001, 6_000_000_002, "cam", np.full((4, 6, 2), 1.5, np.float32), None, 1.0, 0.01, 0.02)
        writer.finish()
    _, messages = read_mcap(out)
    (log_time, msg), = messages["/optical_flow"]
    assert log_time == 5 and (msg.header.stamp.sec, msg.header.stamp.nanosec) == (7, 1)
    assert (msg.previous_stamp.sec, msg.previous_stamp.nanosec) == (6, 2)
    empty = msg.confidence
    assert (empty.encoding, empty.height, empty.width, empty.step, len(empty.data)) == ("32FC1", 0, 0, 0, 0)
    assert empty.header.frame_id == "cam" and (empty.header.stamp.sec, empty.header.stamp.nanosec) == (7, 1)
    assert np.all(image_array(msg.flow, np.float32, 2) == 1.5)
    assert (msg.model, msg.backend, msg.inference_time, msg.processing_time) == (
        "model.pt@0123456789abcdef", "a backend", pytest.approx(0.01), pytest.approx(0.02))


def test_the_offline_runtime_imports_neither_training_nor_torch():
    code = ("import sys, mdflow_ros.offline, mdflow_ros.cli; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'training', 'torch'}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def video_frames(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, frame = capture.read()
        if not ok:
            return out
        out.append(frame)


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_a_video_becomes_a_flow_video_with_one_frame_per_pair(tmp_path, capsys, suffix):
    source = write_video(tmp_path / "in.mp4", panning(6), fps=15.0)
    out = tmp_path / f"flow{suffix}"
    assert cli.main([str(source), "--out", str(out), "--input-size", *NET, "--threads", "1"]) == 0
    assert "video " in capsys.readouterr().out
    pictures = video_frames(out)
    assert len(pictures) == 5 and pictures[0].shape == (SIZE[0], 3 * SIZE[1], 3), "frame | flow | confidence"
    grey = pictures[0][:, 2 * SIZE[1]:].astype(int)
    assert np.abs(grey[:, :, 0] - grey[:, :, 2]).mean() < 8, "the confidence panel is grey"


def test_without_confidence_the_flow_video_has_the_frame_and_the_flow_only(tmp_path, capsys):
    source = write_video(tmp_path / "in.mp4", panning(4), fps=15.0)
    out = tmp_path / "flow.mp4"
    assert cli.main([str(source), "--out", str(out), "--input-size", *NET, "--threads", "1", "--no-confidence"]) == 0
    assert "video " in capsys.readouterr().out
    pictures = video_frames(out)
    assert len(pictures) == 3 and pictures[0].shape == (SIZE[0], 2 * SIZE[1], 3), "frame | flow"


def test_a_folder_of_images_becomes_flow_files_equal_to_the_python_api(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    images = panning(4)
    for k, img in enumerate(images):
        cv2.imwrite(str(folder / f"frame_{k * 5}.png"), img[:, :, ::-1])   # natural order: 0, 5, 10, 15
    out = tmp_path / "flows"
    assert cli.main([str(folder), "--out", f"{out}/", "--input-size", *NET, "--threads", "1"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["000001.flo", "000001.png", "000002.flo", "000002.png", "000003.flo", "000003.png", "pairs.csv"]
    rows = (out / "pairs.csv").read_text().splitlines()
    assert rows[0].startswith("file,previous_frame,frame") and rows[1].startswith("000001,0,1,,,")
    assert cv2.imread(str(out / "000002.png")).shape == (SIZE[0], 3 * SIZE[1], 3)

    estimator = estimator_of(capsys.readouterr().out)
    results = list(flow_sequence(folder, estimator=estimator))
    assert len(results) == 3 and all(stamp is None for stamp, _, _ in results)
    for k, (_, flow, confidence) in enumerate(results, start=1):
        np.testing.assert_allclose(read_flo(out / f"{k:06d}.flo"), flow, atol=1e-5)
        assert confidence.shape == SIZE and 0 <= confidence.min() <= confidence.max() <= 1
        assert np.median(flow[..., 0]) < -1.0, "the photo pans left"
    assert cli.main([str(folder), "--out", f"{out}/"]) == 2
    assert "is not empty (pass --force" in capsys.readouterr().err


def test_flow_sequence_streams_a_bag_with_its_stamps_and_counts(bag, estimator):
    summary = Summary()
    results = flow_sequence(bag, "/camera/image_raw", estimator=estimator, summary=summary)
    first = next(results)
    assert summary.frames == 2 and first.stamp == DEFAULT_START_NS + STAMPS[1] * MS, "read as consumed"
    rest = list(results)
    assert [r.stamp for r in [first, *rest]] == [DEFAULT_START_NS + STAMPS[j] * MS for _, j in EXPECTED_PAIRS]
    assert summary.pairs == 5 and dict(summary.resets) == {"gap": 1, "frame_id": 1, "size": 1}


def test_memory_does_not_grow_with_the_recording(tmp_path, estimator):
    def peak(frames: int) -> int:
        video = write_video(tmp_path / f"{frames}.mp4", panning(frames, (64, 64)))
        tracemalloc.start()
        try:
            for _ in flow_sequence(video, estimator=estimator):
                pass
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    short, long = peak(6), peak(36)
    print(f"peak traced memory: {short / 1e6:.2f} MB for 5 pairs, {long / 1e6:.2f} MB for 35 pairs")
    assert long - short < 300_000, "30 more pairs of 64x64 flow and confidence would hold about 1.5 MB"


def test_bad_recordings_and_outputs_give_one_clear_line(tmp_path, capsys, bag, frames):
    def error(*args: str) -> str:
        assert cli.main([*args, "--input-size", *NET]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mdflow-flow: "), lines
        return lines[0]

    assert "topic '/front' does not exist in bag" in error(str(bag), "--topic", "/front", "--out", str(tmp_path / "a.mcap"))
    assert "its image topics: /camera/image_raw" in error(str(bag), "--topic", "/front")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert error(str(bag), "--out", str(blocker / "flow.mcap")) == (
        f"mdflow-flow: cannot write {blocker / 'flow.mcap'}: {blocker} is a file, not a folder")
    assert "cannot tell what to write" in error(str(bag), "--out", str(tmp_path / "flow.txt"))
    assert "is not a recording" in error(str(blocker))
    assert "recording does not exist" in error(str(tmp_path / "missing.mcap"))

    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    string = store.types["std_msgs/msg/String"]
    with Writer(tmp_path / "chatter", version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connection = writer.add_connection("/chatter", string.__msgtype__, typestore=store)
        writer.write(connection, 1, store.serialize_cdr(string(data="hello"), string.__msgtype__))
    assert "has no image topics (topics: /chatter [std_msgs/msg/String])" in error(str(tmp_path / "chatter"))
    assert not list(tmp_path.glob("*.mcap")), "no output written"


def test_a_damaged_bag_is_read_past_with_the_losses_counted(tmp_path, capsys):
    images = panning(6)
    bag = write_sequence_bag(tmp_path / "run.bag", images, storage="ros1")
    data = bytearray(bag.read_bytes())
    records = [i for i in range(len(data)) if data[i:i + 4] == b"op=\x02"]   # ROS 1 message-data records
    data[records[2] + 3] = 0x07                                              # frame 2's record is damaged
    bag.write_bytes(bytes(data))
    out = tmp_path / "flow.mcap"
    assert cli.main([str(bag), "--out", str(out), "--input-size", *NET, "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "5 frames -> 4 flow pairs" in printed and "skipped 1 damaged or unusable bag messages" in printed
    _, messages = read_mcap(out)
    assert len(messages["/optical_flow"]) == 4, "frames 1 and 3 pair across the lost one (1 / 30 s apart)"


def test_an_mcap_bag_cut_short_is_read_up_to_the_cut_with_the_losses_counted(tmp_path, monkeypatch, capsys):
    """Eight 480x640 frames, two per 1 MiB chunk, cut at two thirds: training's rule (a repaired copy of the
    intact start) gives four frames, three pairs, and four messages counted as lost from metadata.yaml."""
    monkeypatch.setenv("MDFLOW_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(4)
    bag = write_sequence_bag(tmp_path / "cut", [rng.integers(0, 255, (480, 640, 3), dtype=np.uint8) for _ in range(8)],
                             storage="mcap")
    mcap = next(bag.glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size * 2 // 3])
    out = tmp_path / "flow.mp4"
    assert cli.main([str(bag), "--out", str(out), "--input-size", *NET, "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "4 frames -> 3 flow pairs" in printed and "skipped 4 damaged or unusable bag messages" in printed
    assert "ends early" in printed
    assert len(video_frames(out)) == 3
