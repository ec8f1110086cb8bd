"""The Middlebury colour wheel: white at rest, red for +u, black where invalid."""
import numpy as np
import pytest

from mdflow_ros.io import flow_to_color, make_colorwheel


def one_pixel(u, v, **kwargs):
    return flow_to_color(np.array([[[u, v]]], dtype=np.float32), **kwargs)[0, 0]


def test_wheel_has_55_steps_through_the_primaries():
    wheel = make_colorwheel()
    assert wheel.shape == (55, 3)
    np.testing.assert_array_equal(wheel[0], [255, 0, 0])       # red
    np.testing.assert_array_equal(wheel[15], [255, 255, 0])    # yellow after RY = 15
    np.testing.assert_array_equal(wheel[21], [0, 255, 0])      # green after YG = 6
    np.testing.assert_array_equal(wheel[25], [0, 255, 255])    # cyan after GC = 4
    np.testing.assert_array_equal(wheel[36], [0, 0, 255])      # blue after CB = 11
    np.testing.assert_array_equal(wheel[49], [255, 0, 255])    # magenta after BM = 13


def test_output_shape_and_dtype():
    image = flow_to_color(np.random.default_rng(0).normal(size=(6, 9, 2)))
    assert image.shape == (6, 9, 3) and image.dtype == np.uint8


def test_zero_flow_is_white():
    np.testing.assert_array_equal(flow_to_color(np.zeros((3, 4, 2))), 255)
    flow = np.zeros((1, 2, 2), dtype=np.float32)
    flow[0, 1] = (3.0, -4.0)
    np.testing.assert_array_equal(flow_to_color(flow)[0, 0], [255, 255, 255])


def test_positive_u_is_the_wheels_red():
    np.testing.assert_array_equal(one_pixel(5.0, 0.0), [255, 0, 0])
    np.testing.assert_array_equal(one_pixel(5.0, -0.0), [255, 0, 0])
    half = one_pixel(5.0, 0.0, max_flow=10.0)
    assert half[0] == 255 and half[1] == half[2] == 127


def test_other_directions_follow_the_middlebury_key():
    left, down, up = one_pixel(-1.0, 0.0), one_pixel(0.0, 1.0), one_pixel(0.0, -1.0)
    assert left[0] < 50 and left[1] > 150 and left[2] > 150          # cyan-ish
    assert down[0] == 255 and down[1] > 150 and down[2] == 0         # yellow-orange
    assert up[2] == 255 and up[0] < 128 and up[1] == 0               # blue-violet


def test_longer_than_max_flow_is_dimmed():
    np.testing.assert_array_equal(one_pixel(2.0, 0.0, max_flow=1.0), [191, 0, 0])


def test_invalid_pixels_are_black():
    flow = np.ones((2, 3, 2), dtype=np.float32)
    flow[0, 0] = (np.nan, 0.0)
    flow[0, 1] = (np.inf, 1.0)
    flow[0, 2] = (1e10, 1e10)
    valid = np.ones((2, 3), dtype=bool)
    valid[1, 0] = False
    image = flow_to_color(flow, valid=valid)
    np.testing.assert_array_equal(image[0], 0)
    np.testing.assert_array_equal(image[1, 0], 0)
    assert (image[1, 1:].max(axis=1) > 0).all()
    # the default normalisation ignores invalid values: (1, 1) is full strength
    np.testing.assert_array_equal(image[1, 1], image[1, 2])
    assert image[1, 1].min() < 255


@pytest.mark.parametrize("max_flow", [0.0, -1.0, np.nan, np.inf, "big"])
def test_bad_max_flow(max_flow):
    with pytest.raises(ValueError, match="max_flow"):
        flow_to_color(np.zeros((2, 2, 2)), max_flow=max_flow)


def test_bad_shape():
    with pytest.raises(ValueError, match=r"\(H, W, 2\)"):
        flow_to_color(np.zeros((2, 2)))
