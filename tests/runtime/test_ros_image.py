"""Image <-> numpy conversion of the node (mdflow_ros/io/ros_image.py) against independent decoders.

The numpy path must agree with rosbags-image on every encoding the node accepts (and with the
ROS 2 cv_bridge where one is installed), honour step padding and byte order, and reject bad
images with a clear reason.
"""
import io
import sys

import cv2
import numpy as np
import pytest

pytest.importorskip("rclpy")
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402

from mdflow_ros.io.ros_image import (CAMERA_ENCODINGS, PIXEL_LAYOUTS, ImageDecodeError, array_to_image,  # noqa: E402
                                     compressed_image_size, compressed_to_array, cv_bridge_available,
                                     estimator_input, image_to_array, image_to_array_cv_bridge)

RNG = np.random.default_rng(7)


def random_image(encoding: str, height: int = 37, width: int = 53) -> np.ndarray:
    dtype, channels = PIXEL_LAYOUTS[encoding]
    shape = (height, width) if channels == 1 else (height, width, channels)
    if dtype == np.float32:
        return RNG.standard_normal(shape).astype(np.float32)
    return RNG.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)


@pytest.mark.parametrize("encoding", list(PIXEL_LAYOUTS))
def test_numpy_path_round_trips_and_agrees_with_rosbags_image(encoding):
    from rosbags.image import message_to_cvimage

    pixels = random_image(encoding)
    msg = array_to_image(pixels, encoding)
    assert (msg.height, msg.width, msg.encoding) == (37, 53, encoding)
    assert msg.step == 53 * pixels.itemsize * (1 if pixels.ndim == 2 else pixels.shape[2])
    decoded = image_to_array(msg)
    assert decoded.dtype == pixels.dtype and np.array_equal(decoded, pixels)
    assert np.array_equal(np.asarray(message_to_cvimage(msg)), decoded)


@pytest.mark.skipif(not cv_bridge_available(), reason="the compiled ROS 2 cv_bridge is not installed here")
@pytest.mark.parametrize("encoding", list(PIXEL_LAYOUTS))
def test_cv_bridge_path_agrees_with_numpy_path(encoding):
    msg = array_to_image(random_image(encoding), encoding)
    assert np.array_equal(image_to_array_cv_bridge(msg), image_to_array(msg))


def test_cv_bridge_detection_rejects_missing_or_pure_python_ports(monkeypatch, tmp_path):
    fake = tmp_path / "cv_bridge"
    (fake / "boost").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "boost" / "__init__.py").write_text("")
    (fake / "boost" / "cv_bridge_boost.py").write_text("")  # PyPI's ROS 1 port is pure Python
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m.startswith("cv_bridge")]:
        monkeypatch.delitem(sys.modules, name)
    assert cv_bridge_available() is False


@pytest.mark.parametrize("encoding", CAMERA_ENCODINGS)
def test_rows_are_read_through_step_padding(encoding):
    pixels = random_image(encoding, 20, 30)
    tight = array_to_image(pixels, encoding)
    padded = Image(height=20, width=30, encoding=encoding, is_bigendian=tight.is_bigendian, step=tight.step + 6)
    rows = np.frombuffer(bytes(tight.data), np.uint8).reshape(20, tight.step)
    padded.data = np.concatenate([rows, np.full((20, 6), 0xAB, np.uint8)], axis=1).tobytes()
    assert np.array_equal(image_to_array(padded), pixels)


def test_big_endian_16_bit_is_read_in_native_order():
    from rosbags.image import message_to_cvimage

    pixels = random_image("mono16")
    msg = array_to_image(pixels.astype(">u2").view(np.uint16), "mono16")
    msg.is_bigendian = 1
    assert np.array_equal(image_to_array(msg), pixels)
    assert np.array_equal(np.asarray(message_to_cvimage(msg)), pixels)


@pytest.mark.parametrize("change, reason", [
    (dict(encoding="yuv422"), "unsupported encoding 'yuv422'"),
    (dict(encoding="bayer_rggb8"), "unsupported encoding"),
    (dict(height=0), "zero-size image"),
    (dict(width=0), "zero-size image"),
    (dict(step=10), "step 10 is smaller than one row"),
    (dict(data=bytes(100)), "data holds 100 bytes, less than step x height"),
])
def test_bad_images_are_rejected_with_the_reason(change, reason):
    msg = array_to_image(random_image("rgb8", 8, 9), "rgb8")
    for key, value in change.items():
        setattr(msg, key, value)
    with pytest.raises(ImageDecodeError, match=reason):
        image_to_array(msg, CAMERA_ENCODINGS)


def test_estimator_input_drops_alpha_and_scales_16_bit():
    rgba = random_image("rgba8")
    out, enc = estimator_input(rgba, "rgba8")
    assert enc == "rgb8" and np.array_equal(out, rgba[:, :, :3])
    out, enc = estimator_input(rgba, "bgra8")
    assert enc == "bgr8" and np.array_equal(out, rgba[:, :, :3])
    mono = random_image("mono16")
    out, enc = estimator_input(mono, "mono16")
    assert enc == "mono8" and out.dtype == np.float32
    np.testing.assert_allclose(out, mono / 65535.0, rtol=1e-6)
    for same in ("rgb8", "bgr8", "mono8"):
        assert estimator_input(rgba, same)[1] == same
    with pytest.raises(ImageDecodeError):
        estimator_input(rgba, "32FC1")


def test_compressed_images_decode_like_rosbags_image():
    from rosbags.image import message_to_cvimage

    bgr = cv2.GaussianBlur(random_image("bgr8", 64, 80), (5, 5), 1.5)
    for fmt, ext in (("png", ".png"), ("jpeg", ".jpg")):
        msg = CompressedImage(format=fmt, data=cv2.imencode(ext, bgr)[1].tobytes())
        pixels, encoding = compressed_to_array(msg)
        assert encoding == "bgr8" and pixels.shape == bgr.shape
        assert np.array_equal(pixels, np.asarray(message_to_cvimage(msg)))
        if fmt == "png":
            assert np.array_equal(pixels, bgr)
    gray = CompressedImage(format="png", data=cv2.imencode(".png", bgr[:, :, 0])[1].tobytes())
    assert compressed_to_array(gray)[1] == "mono8"
    with pytest.raises(ImageDecodeError, match="neither a PNG nor a JPEG"):
        compressed_to_array(CompressedImage(format="jpeg", data=b"not an image"))


def test_compressed_sizes_come_from_the_header_and_agree_with_the_decoder():
    from PIL import Image as PILImage

    rgb = random_image("rgb8", 30, 41)
    cases = {"png rgb": cv2.imencode(".png", rgb)[1], "png mono16": cv2.imencode(".png", random_image("mono16", 30, 41))[1],
             "png rgba": cv2.imencode(".png", random_image("rgba8", 30, 41))[1],
             "jpeg": cv2.imencode(".jpg", rgb)[1], "jpeg mono": cv2.imencode(".jpg", rgb[:, :, 0])[1]}
    for name, data in cases.items():
        height, width, _ = compressed_image_size(data.tobytes())
        assert (height, width) == cv2.imdecode(data, cv2.IMREAD_UNCHANGED).shape[:2] == (30, 41), name
    with io.BytesIO() as progressive:  # JPEG with an EXIF segment and a progressive frame header
        PILImage.fromarray(rgb).save(progressive, "JPEG", progressive=True, exif=b"Exif\0\0" + bytes(2000))
        assert compressed_image_size(progressive.getvalue())[:2] == (30, 41)
    with io.BytesIO() as cmyk:
        PILImage.new("CMYK", (41, 30)).save(cmyk, "JPEG")
        with pytest.raises(ImageDecodeError, match="4 components is not a colour or mono image"):
            compressed_image_size(cmyk.getvalue())
    with pytest.raises(ImageDecodeError, match="JPEG header ends early"):
        compressed_image_size(cases["jpeg"].tobytes()[:20])


def test_an_oversized_compressed_image_is_refused_by_its_header_before_decoding():
    """A 0.02 MB PNG of 5000x5000 (a 75 MB decode) is refused; so is its raw counterpart, by its fields."""
    bomb = cv2.imencode(".png", np.zeros((5000, 5000, 3), np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9])[1].tobytes()
    assert len(bomb) < 200_000
    msg = CompressedImage(format="png", data=bomb)
    with pytest.raises(ImageDecodeError, match="5000x5000 image has 25000000 pixels, more than max_input_pixels") as err:
        compressed_to_array(msg, max_pixels=4096 * 4096)
    assert err.value.kind == "oversized"
    assert compressed_to_array(msg, max_pixels=5000 * 5000)[0].shape == (5000, 5000, 3)
    raw = Image(height=5000, width=5000, encoding="mono8", step=5000)
    with pytest.raises(ImageDecodeError, match="more than max_input_pixels"):
        image_to_array(raw, max_pixels=1000)


@pytest.mark.parametrize("fmt, message", [
    ("16UC1; compressedDepth png", "depth image"),
    ("32FC1; compressedDepth", "depth image"),
    ("16UC1; png compressed 16UC1", "encoding '16uc1' is not a colour or mono image"),
    ("bgr8; tiff compressed bgr8", "unsupported CompressedImage format"),
])
def test_compressed_formats_that_are_not_colour_or_mono_images_are_refused(fmt, message):
    png = cv2.imencode(".png", random_image("mono16"))[1].tobytes()
    with pytest.raises(ImageDecodeError, match=message) as err:
        compressed_to_array(CompressedImage(format=fmt, data=png))
    assert err.value.kind == "format"
    for accepted in ("png", "mono16; png compressed mono16", "bgr8; jpeg compressed bgr8", ""):
        assert compressed_to_array(CompressedImage(format=accepted, data=png))[1] == "mono8"


def test_array_to_image_refuses_mismatched_arrays():
    with pytest.raises(ValueError, match="32FC2 needs float32 with 2 channel"):
        array_to_image(np.zeros((4, 4, 3), np.float32), "32FC2")
    with pytest.raises(ValueError, match="cannot encode"):
        array_to_image(np.zeros((4, 4), np.uint8), "yuv422")
