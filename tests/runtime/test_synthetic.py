"""Synthetic pairs: the flow is exact, the masks are honest, and everything is reproducible."""
import math

import cv2
import numpy as np
import pytest

from mdflow_ros.synthetic import (
    PHOTO_NAMES,
    KnownMotionPair,
    camera_motion_pair,
    fixed_demo_pair,
    held_out_pairs,
    layered_pair,
    max_motion_flow,
    occluder_pair,
    photo_library,
    translated_pair,
)

SIZE = (96, 128)
HALF_DIAGONAL = math.hypot((SIZE[0] - 1) / 2, (SIZE[1] - 1) / 2)


def warp_back_error(pair: KnownMotionPair, flow: np.ndarray | None = None) -> float:
    """Mean |img2(p + flow) - img1(p)| over valid pixels, grey levels."""
    flow = pair.flow if flow is None else flow
    height, width = flow.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    back = cv2.remap(pair.img2, xs + flow[:, :, 0], ys + flow[:, :, 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REFLECT)
    diff = np.abs(back.astype(np.float64) - pair.img1.astype(np.float64)).mean(axis=2)
    return float(diff[pair.valid].mean())


def assert_well_formed(pair: KnownMotionPair, size=SIZE):
    assert pair.img1.shape == pair.img2.shape == size + (3,)
    assert pair.img1.dtype == pair.img2.dtype == np.uint8
    assert pair.flow.shape == size + (2,) and pair.flow.dtype == np.float32
    assert pair.valid.shape == size and pair.valid.dtype == np.bool_
    assert np.isfinite(pair.flow).all()
    assert pair.valid.mean() > 0.5
    ys, xs = np.nonzero(pair.valid)
    x2, y2 = xs + pair.flow[ys, xs, 0], ys + pair.flow[ys, xs, 1]
    assert x2.min() >= 0 and y2.min() >= 0 and x2.max() <= size[1] - 1 and y2.max() <= size[0] - 1


def test_photo_library():
    photos = photo_library()
    assert len(photos) == len(PHOTO_NAMES) >= 5
    for photo in photos:
        assert photo.ndim == 3 and photo.shape[2] == 3 and photo.dtype == np.uint8
        assert min(photo.shape[:2]) >= 256
        assert not photo.flags.writeable
    assert all(a is b for a, b in zip(photos, photo_library()))


def test_camera_pairs_are_exact():
    true_err, shifted_err = [], []
    for seed, photo in enumerate(photo_library()):
        pair = camera_motion_pair(photo, SIZE, np.random.default_rng(seed))
        assert_well_formed(pair)
        true_err.append(warp_back_error(pair))
        shifted_err.append(warp_back_error(pair, pair.flow + np.float32([0.5, 0.0])))
    assert max(true_err) < 3.0
    # half a pixel off is clearly worse: the flow is exact to well below a pixel
    assert sum(true_err) < 0.5 * sum(shifted_err)


def test_invalid_camera_pixels_really_have_no_match():
    pair = camera_motion_pair(photo_library()[0], SIZE, np.random.default_rng(3), max_shift=20.0)
    assert 0.05 < (~pair.valid).mean() < 0.5
    inverted = KnownMotionPair(pair.img1, pair.img2, pair.flow, ~pair.valid)
    assert warp_back_error(inverted) > 5 * warp_back_error(pair)


@pytest.mark.parametrize("seed", range(6))
def test_layered_pairs_are_exact_on_valid_pixels(seed):
    pair = layered_pair(photo_library(), SIZE, np.random.default_rng(seed))
    assert_well_formed(pair)
    assert warp_back_error(pair) < 3.0
    assert warp_back_error(pair) < 0.5 * warp_back_error(pair, pair.flow + np.float32([0.5, 0.0]))


def test_layers_move_independently_and_occlude():
    pair = layered_pair(photo_library(), SIZE, np.random.default_rng(11), n_layers=(3, 3), max_shift=2.0,
                        max_rot=0.0, max_zoom=0.0, max_perspective=0.0, max_layer_shift=15.0)
    assert_well_formed(pair)
    ys, xs = np.nonzero(pair.valid)
    # the background is a pure translation: several distinct motions mean the layers moved
    assert len(np.unique(np.round(pair.flow[ys, xs], 1), axis=0)) > 2
    interior = np.zeros(SIZE, dtype=bool)
    interior[16:-16, 16:-16] = True
    assert (~pair.valid & interior).any()


def test_pure_translation_gives_constant_flow():
    pair = camera_motion_pair(photo_library()[1], SIZE, np.random.default_rng(5), max_shift=7.0,
                              max_rot=0.0, max_zoom=0.0, max_perspective=0.0)
    shift = pair.flow[0, 0]
    np.testing.assert_allclose(pair.flow, np.broadcast_to(shift, pair.flow.shape), atol=1e-4)
    assert 0.0 < np.hypot(*shift) <= 7.0 + 1e-4
    assert warp_back_error(pair) < 3.0


@pytest.mark.parametrize("limits", [
    dict(max_shift=12.0, max_rot=2.0, max_zoom=0.04, max_perspective=0.01),
    dict(max_shift=3.0, max_rot=5.0, max_zoom=0.1, max_perspective=0.05),
    dict(max_shift=0.0, max_rot=0.0, max_zoom=0.0, max_perspective=0.0),
])
def test_camera_flow_stays_within_the_requested_magnitude(limits):
    bound = max_motion_flow(HALF_DIAGONAL, **limits)
    largest = 0.0
    for seed in range(8):
        pair = camera_motion_pair(photo_library()[seed], SIZE, np.random.default_rng(seed), **limits)
        largest = max(largest, float(np.hypot(pair.flow[:, :, 0], pair.flow[:, :, 1]).max()))
    assert largest <= bound + 1e-3
    assert largest > 0.3 * bound or bound == 0.0


def test_layered_flow_stays_within_the_requested_magnitude():
    limits = dict(max_shift=5.0, max_rot=1.0, max_zoom=0.02, max_perspective=0.01)
    layer_limits = dict(max_layer_shift=10.0, max_layer_rot=4.0, max_layer_zoom=0.05)
    layer_size = (0.2, 0.4)
    sprite_radius = 0.5 * math.hypot(layer_size[1] * SIZE[0] + 1, layer_size[1] * SIZE[1] + 1)
    bound = max(max_motion_flow(HALF_DIAGONAL, **limits),
                max_motion_flow(sprite_radius, *layer_limits.values()))
    for seed in range(5):
        pair = layered_pair(photo_library(), SIZE, np.random.default_rng(seed), layer_size=layer_size,
                            **limits, **layer_limits)
        assert np.hypot(pair.flow[:, :, 0], pair.flow[:, :, 1]).max() <= bound + 1e-3


def assert_same(a: KnownMotionPair, b: KnownMotionPair):
    for name in ("img1", "img2", "flow", "valid"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_generators_are_deterministic_and_use_only_the_given_rng():
    photos = photo_library()
    np.random.seed(0)
    global_state = np.random.get_state()[1].copy()
    assert_same(camera_motion_pair(photos[2], SIZE, np.random.default_rng(7)),
                camera_motion_pair(photos[2], SIZE, np.random.default_rng(7)))
    assert_same(layered_pair(photos, SIZE, np.random.default_rng(7)),
                layered_pair(photos, SIZE, np.random.default_rng(7)))
    np.testing.assert_array_equal(np.random.get_state()[1], global_state)
    a = camera_motion_pair(photos[2], SIZE, np.random.default_rng(7))
    b = camera_motion_pair(photos[2], SIZE, np.random.default_rng(8))
    assert not np.array_equal(a.flow, b.flow)


def test_fixed_demo_pair():
    pair = fixed_demo_pair()
    assert_well_formed(pair, (384, 512))
    assert_same(pair, fixed_demo_pair())
    magnitude = np.hypot(pair.flow[:, :, 0], pair.flow[:, :, 1])
    assert 3.0 < float(np.median(magnitude)) < 12.0
    assert float(magnitude.max()) < 20.0
    assert warp_back_error(pair) < 3.0


def test_held_out_pairs():
    pairs = held_out_pairs(3, SIZE, seed=1)
    assert len(pairs) == 3
    for pair in pairs:
        assert_well_formed(pair)
    again = held_out_pairs(4, SIZE, seed=1)
    for a, b in zip(pairs, again):
        assert_same(a, b)
    assert not np.array_equal(held_out_pairs(1, SIZE, seed=2)[0].flow, pairs[0].flow)
    assert held_out_pairs(0, SIZE) == []


@pytest.mark.parametrize("call, message", [
    (lambda p: camera_motion_pair(p[0], (10, 128), np.random.default_rng(0)), "size"),
    (lambda p: camera_motion_pair(p[0], (96.5, 128), np.random.default_rng(0)), "size"),
    (lambda p: camera_motion_pair(p[0], SIZE, 0), "numpy.random.Generator"),
    (lambda p: camera_motion_pair(p[0][:, :, 0], SIZE, np.random.default_rng(0)), r"\(h, w, 3\) uint8"),
    (lambda p: camera_motion_pair(p[0].astype(np.float32), SIZE, np.random.default_rng(0)), "uint8"),
    (lambda p: camera_motion_pair(p[0], SIZE, np.random.default_rng(0), max_zoom=1.5), "max_zoom"),
    (lambda p: camera_motion_pair(p[0], SIZE, np.random.default_rng(0), max_shift=-1.0), "max_shift"),
    (lambda p: layered_pair(p[:1], SIZE, np.random.default_rng(0)), "at least 2 photos"),
    (lambda p: layered_pair(p, SIZE, np.random.default_rng(0), n_layers=(3, 1)), "n_layers"),
    (lambda p: layered_pair(p, SIZE, np.random.default_rng(0), layer_size=(0.0, 0.5)), "layer_size"),
    (lambda p: held_out_pairs(-1, SIZE), "n must be"),
])
def test_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call(photo_library())


def _destination_pixels(pair: KnownMotionPair) -> tuple[np.ndarray, np.ndarray]:
    """img1's valid pixels and img2's pixels at their (integer) destinations."""
    ys, xs = np.nonzero(pair.valid)
    u, v = pair.flow[ys, xs, 0].astype(int), pair.flow[ys, xs, 1].astype(int)
    return pair.img1[ys, xs], pair.img2[ys + v, xs + u]


def test_a_translated_pair_moves_every_pixel_by_exactly_its_shift():
    photo = photo_library()[0]
    pair = translated_pair(photo, SIZE, (7, -4), (50, 60))
    assert (pair.flow == (7, -4)).all() and 0.9 < pair.valid.mean() < 1.0
    first, second = _destination_pixels(pair)
    np.testing.assert_array_equal(first, second)
    with pytest.raises(ValueError, match="leaves the"):
        translated_pair(photo, SIZE, (7, -4), (0, 0))


def test_an_occluder_pair_marks_exactly_the_background_it_hides():
    photos = photo_library()
    patch = photos[1][100:132, 100:132]
    pair, occluded = occluder_pair(photos[0], patch, SIZE, (50, 60), (2, 1), (30, 40), (10, 5))
    first, second = _destination_pixels(pair)
    np.testing.assert_array_equal(first, second)
    assert (pair.flow[30:62, 40:72] == (10, 5)).all() and (pair.flow[0, 0] == (2, 1)).all()
    assert occluded.sum() > 0 and not (occluded & pair.valid).any()
    ys, xs = np.nonzero(occluded)
    hidden_by = pair.img2[ys + 1, xs + 2]
    covered = np.zeros(SIZE, bool)
    covered[35:67, 50:82] = True
    assert covered[ys + 1, xs + 2].all(), "each occluded pixel lands on the patch in frame 2"
    assert (hidden_by != pair.img1[ys, xs]).any(axis=1).mean() > 0.9
    with pytest.raises(ValueError, match="stay inside the frame"):
        occluder_pair(photos[0], patch, SIZE, (50, 60), (2, 1), (80, 40), (10, 5))
