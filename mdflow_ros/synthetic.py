"""Real photos under known motion: image pairs with exact ground-truth flow.

Frames are rendered from the photos that ship inside scikit-image through homographies, so
the flow between them is known exactly. Two kinds of pair: a camera moving over one photo
(``camera_motion_pair``) and FlyingChairs-style layers cut from other photos moving over such
a background (``layered_pair``). Used by the demo, the node tests, the tests and training.
Images are (H, W, 3) uint8 RGB; flow is (H, W, 2) float32 (u, v) in pixels, frame 1 -> 2.
Every random choice comes from the ``np.random.Generator`` passed in.
"""
from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

PHOTO_NAMES: tuple[str, ...] = (
    "astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "motorcycle", "brick", "grass", "gravel",
)
"""scikit-image sample photos used (brick, grass and gravel are grey textures, made RGB)."""

DEMO_PHOTO: str = "motorcycle"
DEMO_SEED: int = 3

MIN_RENDERED_SIDE: int = 16
"""Smallest frame side the generators accept."""

SCALE_RANGE: tuple[float, float] = (0.7, 1.4)
"""Photo pixels per frame pixel of the frame-1 view, before fitting it into the photo."""

SOURCE_BLUR_SIGMA: float = 0.5
"""Gaussian blur (source pixels) applied before resampling, a lens-like band limit that keeps
bilinear rendering from aliasing fine texture (grass, gravel) differently in the two frames."""

SPRITE_CANDIDATES: int = 4
"""Random crops tried for each foreground layer (the one with the largest spread is kept)."""

MAX_MARGIN_FRACTION: float = 0.25
"""The margin kept around the frame-1 view for frame 2 is at most this share of the smaller side."""


@dataclass
class KnownMotionPair:
    """Two frames and their exact flow.

    img1, img2: (H, W, 3) uint8 RGB. flow: (H, W, 2) float32, (u, v) in pixels: pixel (x, y)
    of img1 shows the same scene point as (x + u, y + v) of img2. valid: (H, W) bool, False
    where that point leaves frame 2, is occluded there, or lies outside the source photo.
    """

    img1: np.ndarray
    img2: np.ndarray
    flow: np.ndarray
    valid: np.ndarray


def _load_photo(name: str) -> np.ndarray:
    try:
        import skimage.data
    except ImportError as err:
        raise ImportError("mdflow_ros.synthetic needs scikit-image for its photos: pip install scikit-image") from err
    img = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    img = np.ascontiguousarray(img[:, :, :3], dtype=np.uint8)
    img.flags.writeable = False
    return img


@functools.lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    return tuple(_load_photo(name) for name in PHOTO_NAMES)


def photo_library() -> list[np.ndarray]:
    """The photos of PHOTO_NAMES, in that order: read-only (h, w, 3) uint8 RGB arrays (loaded once)."""
    return list(_photos())


def max_motion_flow(radius: float, max_shift: float, max_rot: float, max_zoom: float,
                    max_perspective: float = 0.0) -> float:
    """Upper bound (pixels) of the flow of any motion sampled with these limits.

    Units as in ``camera_motion_pair``. For a camera motion it holds over the whole frame
    with ``radius`` the frame's half-diagonal; for a layer motion (no perspective) at every
    point within ``radius`` pixels of the layer's centre.
    """
    rot = math.radians(max_rot)
    persp = max_perspective / (1.0 - max_perspective)
    return max_shift + radius * ((1.0 + max_zoom) * (persp + rot) + max_zoom)


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_size(size: object) -> tuple[int, int]:
    if (not isinstance(size, (tuple, list)) or len(size) != 2 or not all(_is_int(s) for s in size)
            or min(size) < MIN_RENDERED_SIDE):
        raise ValueError(f"size must be (height, width), two integers >= {MIN_RENDERED_SIDE}, got {size!r}")
    return int(size[0]), int(size[1])


def _check_rng(rng: object) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    return rng


def _check_photo(photo: object, name: str = "photo") -> np.ndarray:
    arr = np.asarray(photo)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) < 2:
        raise ValueError(f"{name} must be an (h, w, 3) uint8 RGB image with h, w >= 2, "
                         f"got dtype {arr.dtype} with shape {arr.shape}")
    return arr


def _check_limit(name: str, value: object, upper: float, inclusive: bool) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    below = number <= upper if inclusive else number < upper
    if not (math.isfinite(number) and number >= 0.0 and below):
        bracket = "]" if inclusive else ")"
        raise ValueError(f"{name} must be a number in [0, {upper}{bracket}, got {value!r}")
    return number


def _check_pair(name: str, value: object, check: Callable[[object], bool], what: str) -> tuple:
    if not (isinstance(value, (tuple, list)) and len(value) == 2 and all(check(v) for v in value)
            and value[0] <= value[1]):
        raise ValueError(f"{name} must be (min, max) with min <= max, {what}, got {value!r}")
    return tuple(value)


def _translation(tx: float, ty: float) -> np.ndarray:
    return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


def _rotation_scale(angle_deg: float, scale: float) -> np.ndarray:
    c, s = math.cos(math.radians(angle_deg)) * scale, math.sin(math.radians(angle_deg)) * scale
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _sample_motion(rng: np.random.Generator, center: tuple[float, float], max_shift: float, max_rot: float,
                   max_zoom: float, perspective: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Homography (3, 3) moving frame-1 pixels to frame 2 about ``center`` (x, y).

    Translation uniform in the disc of radius max_shift, rotation uniform in +-max_rot
    degrees, zoom log-uniform in [1 / (1 + max_zoom), 1 + max_zoom]; ``perspective`` holds
    the projective row's (h31, h32) in centred coordinates.
    """
    shift = max_shift * math.sqrt(rng.random())
    direction = rng.uniform(-math.pi, math.pi)
    angle = rng.uniform(-max_rot, max_rot)
    zoom = math.exp(rng.uniform(-math.log1p(max_zoom), math.log1p(max_zoom)))
    projective = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [perspective[0], perspective[1], 1.0]])
    cx, cy = center
    return (_translation(cx + shift * math.cos(direction), cy + shift * math.sin(direction))
            @ _rotation_scale(angle, zoom) @ projective @ _translation(-cx, -cy))


def _apply(h: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    w = h[2, 0] * xs + h[2, 1] * ys + h[2, 2]
    return (h[0, 0] * xs + h[0, 1] * ys + h[0, 2]) / w, (h[1, 0] * xs + h[1, 1] * ys + h[1, 2]) / w


def _pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    return xs, ys


def _motion_flow(motion: np.ndarray, height: int, width: int) -> np.ndarray:
    """Flow (H, W, 2) float64 of homography ``motion`` applied to every pixel."""
    xs, ys = _pixel_grid(height, width)
    x2, y2 = _apply(motion, xs, ys)
    return np.stack((x2 - xs, y2 - ys), axis=2)


def _render(image: np.ndarray, frame_to_image: np.ndarray, height: int, width: int,
            border: int = cv2.BORDER_REFLECT_101) -> np.ndarray:
    """Frame (H, W, ...) with out(p) = image(frame_to_image p), bilinear."""
    return cv2.warpPerspective(image, frame_to_image, (width, height),
                               flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=border)


def _camera(photo: np.ndarray, height: int, width: int, rng: np.random.Generator, max_shift: float,
            max_rot: float, max_zoom: float, max_perspective: float
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(img1, img2, motion (3, 3) frame 1 -> 2, in_photo (H, W) bool) of a camera over ``photo``."""
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    radius = math.hypot(cx, cy)
    margin = min(max_motion_flow(radius, max_shift, max_rot, max_zoom, max_perspective),
                 MAX_MARGIN_FRACTION * min(height, width))
    ph, pw = photo.shape[:2]
    fit = min((pw - 1) / (width - 1 + 2 * margin), (ph - 1) / (height - 1 + 2 * margin))
    scale = min(rng.uniform(*SCALE_RANGE), fit)
    if scale > 1.0:
        small = cv2.resize(photo, (max(2, round(pw / scale)), max(2, round(ph / scale))), interpolation=cv2.INTER_AREA)
        fx, fy = small.shape[1] / pw, small.shape[0] / ph
        to_small = np.array([[fx, 0.0, 0.5 * fx - 0.5], [0.0, fy, 0.5 * fy - 0.5], [0.0, 0.0, 1.0]])
    else:
        small, to_small = photo, np.eye(3)
    small = cv2.GaussianBlur(small, (0, 0), SOURCE_BLUR_SIGMA)
    half_x, half_y = scale * (cx + margin), scale * (cy + margin)
    center_x = rng.uniform(half_x, max(half_x, pw - 1 - half_x))
    center_y = rng.uniform(half_y, max(half_y, ph - 1 - half_y))
    view1 = to_small @ _translation(center_x, center_y) @ _rotation_scale(0.0, scale) @ _translation(-cx, -cy)

    kx, ky = rng.uniform(-0.5 * max_perspective, 0.5 * max_perspective, size=2)
    motion = _sample_motion(rng, (cx, cy), max_shift, max_rot, max_zoom, (kx / (width / 2.0), ky / (height / 2.0)))
    view2 = view1 @ np.linalg.inv(motion)

    xs, ys = _pixel_grid(height, width)
    sx, sy = _apply(view1, xs, ys)
    in_photo = (sx >= 0) & (sx <= small.shape[1] - 1) & (sy >= 0) & (sy <= small.shape[0] - 1)
    return _render(small, view1, height, width), _render(small, view2, height, width), motion, in_photo


def _in_frame(flow: np.ndarray) -> np.ndarray:
    """(H, W) bool: the destination p + flow lies inside the frame (between pixel centres)."""
    height, width = flow.shape[:2]
    xs, ys = _pixel_grid(height, width)
    x2, y2 = xs + flow[:, :, 0], ys + flow[:, :, 1]
    return (x2 >= 0) & (x2 <= width - 1) & (y2 >= 0) & (y2 <= height - 1)


def camera_motion_pair(photo: np.ndarray, size: tuple[int, int], rng: np.random.Generator, *,
                       max_shift: float = 12.0, max_rot: float = 2.0, max_zoom: float = 0.04,
                       max_perspective: float = 0.01) -> KnownMotionPair:
    """A camera moving over one photo: both frames are homographies of ``photo``.

    photo: (h, w, 3) uint8 RGB; size: (H, W) of the frames. Frame 1 views a random crop
    (0.7 to 1.4 photo pixels per frame pixel, smaller when the photo is small); frame 2 is
    frame 1 moved about the frame centre by a translation of at most ``max_shift`` pixels, a
    rotation of at most ``max_rot`` degrees, a zoom of at most ``max_zoom`` (relative) and a
    perspective tilt whose projective denominator varies by at most ``max_perspective``
    (relative) over the frame. The flow is at most ``max_motion_flow`` of these limits and
    the frame's half-diagonal.
    """
    photo = _check_photo(photo)
    height, width = _check_size(size)
    rng = _check_rng(rng)
    max_shift = _check_limit("max_shift (pixels)", max_shift, float("inf"), inclusive=False)
    max_rot = _check_limit("max_rot (degrees)", max_rot, 90.0, inclusive=True)
    max_zoom = _check_limit("max_zoom", max_zoom, 1.0, inclusive=False)
    max_perspective = _check_limit("max_perspective", max_perspective, 1.0, inclusive=False)
    img1, img2, motion, in_photo = _camera(photo, height, width, rng, max_shift, max_rot, max_zoom, max_perspective)
    flow = _motion_flow(motion, height, width)
    return KnownMotionPair(img1, img2, flow.astype(np.float32), in_photo & _in_frame(flow))


def _sprite(photo: np.ndarray, height: int, width: int, rng: np.random.Generator,
            layer_size: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """A patch of ``photo`` (h, w, 3) uint8 and its smooth random mask (h, w) float32 in [0, 1].

    The patch is the most contrasted of SPRITE_CANDIDATES random crops, so layers are rarely flat.
    """
    ph, pw = photo.shape[:2]
    hs = max(4, min(ph, round(rng.uniform(*layer_size) * height)))
    ws = max(4, min(pw, round(rng.uniform(*layer_size) * width)))
    tops = rng.integers(0, ph - hs + 1, size=SPRITE_CANDIDATES)
    lefts = rng.integers(0, pw - ws + 1, size=SPRITE_CANDIDATES)
    candidates = [photo[t:t + hs, x:x + ws] for t, x in zip(tops, lefts)]
    patch = cv2.GaussianBlur(max(candidates, key=lambda c: float(c.std())), (0, 0), SOURCE_BLUR_SIGMA)

    mask = np.zeros((hs, ws), dtype=np.float32)
    center = ((ws - 1) / 2.0, (hs - 1) / 2.0)
    if rng.random() < 0.5:
        axes = (rng.uniform(0.3, 0.47) * ws, rng.uniform(0.3, 0.47) * hs)
        cv2.ellipse(mask, (center, (2 * axes[0], 2 * axes[1]), 0.0), 1.0, thickness=-1)
    else:
        n = int(rng.integers(5, 10))
        angles = np.sort(rng.uniform(0.0, 2.0 * math.pi, size=n))
        radii = rng.uniform(0.5, 1.0, size=n) * 0.47
        points = np.stack((center[0] + radii * ws * np.cos(angles), center[1] + radii * hs * np.sin(angles)), axis=1)
        cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1.0)
    sigma = max(1.0, 0.04 * min(hs, ws))
    return patch, cv2.GaussianBlur(mask, (0, 0), sigma)


def layered_pair(photos: list[np.ndarray], size: tuple[int, int], rng: np.random.Generator, *,
                 n_layers: tuple[int, int] = (1, 3), max_shift: float = 12.0, max_rot: float = 2.0,
                 max_zoom: float = 0.04, max_perspective: float = 0.01, layer_size: tuple[float, float] = (0.2, 0.5),
                 max_layer_shift: float = 20.0, max_layer_rot: float = 8.0,
                 max_layer_zoom: float = 0.08) -> KnownMotionPair:
    """FlyingChairs-style pair: layers cut from photos moving over a camera-motion background.

    photos: at least two (h, w, 3) uint8 RGB images; the background is one of them under
    camera motion (limits as in ``camera_motion_pair``), each of n_layers[0]..n_layers[1]
    foreground layers a patch of another photo (sides ``layer_size`` times the frame's)
    with a smooth ellipse or polygon mask, placed at a random position and angle and moved
    about its centre by its own similarity motion (at most ``max_layer_shift`` pixels,
    ``max_layer_rot`` degrees, ``max_layer_zoom`` relative zoom). Layers are stacked in
    depth order, later ones in front. The flow is that of the front-most surface of frame 1;
    valid is False where that surface is hidden in frame 2 at the destination (nearest
    pixel), leaves the frame, or (background) lies outside its photo.
    """
    if len(photos) < 2:
        raise ValueError(f"layered_pair needs at least 2 photos (background and layers differ), got {len(photos)}")
    photos = [_check_photo(p, f"photos[{i}]") for i, p in enumerate(photos)]
    height, width = _check_size(size)
    rng = _check_rng(rng)
    lo, hi = _check_pair("n_layers", n_layers, lambda n: _is_int(n) and n >= 0, "integers >= 0")
    size_lo, size_hi = _check_pair("layer_size", layer_size,
                                   lambda f: isinstance(f, numbers.Real) and 0.0 < f <= 1.0,
                                   "fractions of the frame side in (0, 1]")
    max_shift = _check_limit("max_shift (pixels)", max_shift, float("inf"), inclusive=False)
    max_rot = _check_limit("max_rot (degrees)", max_rot, 90.0, inclusive=True)
    max_zoom = _check_limit("max_zoom", max_zoom, 1.0, inclusive=False)
    max_perspective = _check_limit("max_perspective", max_perspective, 1.0, inclusive=False)
    max_layer_shift = _check_limit("max_layer_shift (pixels)", max_layer_shift, float("inf"), inclusive=False)
    max_layer_rot = _check_limit("max_layer_rot (degrees)", max_layer_rot, 90.0, inclusive=True)
    max_layer_zoom = _check_limit("max_layer_zoom", max_layer_zoom, 1.0, inclusive=False)

    background = int(rng.integers(len(photos)))
    img1, img2, bg_motion, in_photo = _camera(photos[background], height, width, rng,
                                              max_shift, max_rot, max_zoom, max_perspective)
    img1, img2 = img1.copy(), img2.copy()
    flow = _motion_flow(bg_motion, height, width)
    owner1 = np.zeros((height, width), dtype=np.int64)
    owner2 = np.zeros((height, width), dtype=np.int64)
    others = [i for i in range(len(photos)) if i != background]
    for layer in range(1, int(rng.integers(int(lo), int(hi) + 1)) + 1):
        patch, alpha = _sprite(photos[int(rng.choice(others))], height, width, rng, (size_lo, size_hi))
        px, py = rng.uniform(0.1, 0.9) * (width - 1), rng.uniform(0.1, 0.9) * (height - 1)
        sprite_center = ((patch.shape[1] - 1) / 2.0, (patch.shape[0] - 1) / 2.0)
        place1 = (_translation(*sprite_center) @ _rotation_scale(rng.uniform(-180.0, 180.0), 1.0)
                  @ _translation(-px, -py))
        motion = _sample_motion(rng, (px, py), max_layer_shift, max_layer_rot, max_layer_zoom)
        place2 = place1 @ np.linalg.inv(motion)
        for img, owner, place in ((img1, owner1, place1), (img2, owner2, place2)):
            covered = _render(alpha, place, height, width, cv2.BORDER_CONSTANT) >= 0.5
            img[covered] = _render(patch, place, height, width)[covered]
            owner[covered] = layer
        front1 = owner1 == layer
        flow[front1] = _motion_flow(motion, height, width)[front1]

    inside = _in_frame(flow)
    xs, ys = _pixel_grid(height, width)
    qx = np.clip(np.rint(xs + flow[:, :, 0]), 0, width - 1).astype(np.int64)
    qy = np.clip(np.rint(ys + flow[:, :, 1]), 0, height - 1).astype(np.int64)
    visible = owner2[qy, qx] == owner1
    valid = inside & visible & ((owner1 > 0) | in_photo)
    return KnownMotionPair(img1, img2, flow.astype(np.float32), valid)


def fixed_demo_pair(size: tuple[int, int] = (384, 512)) -> KnownMotionPair:
    """The README demo's pair: the motorcycle photo under a fixed, moderate camera motion.

    Always the same for a given size (fixed seed); flow of a few to about 15 pixels.
    """
    photo = _photos()[PHOTO_NAMES.index(DEMO_PHOTO)]
    return camera_motion_pair(photo, size, np.random.default_rng(DEMO_SEED),
                              max_shift=10.0, max_rot=1.5, max_zoom=0.03, max_perspective=0.01)


def held_out_pairs(n: int, size: tuple[int, int] = (384, 512), seed: int = 0,
                   photos: list[np.ndarray] | None = None) -> list[KnownMotionPair]:
    """A deterministic evaluation set of ``n`` pairs: even ones camera motion, odd ones layered.

    Pair i depends only on (seed, i), so a longer set starts with the shorter one. The
    camera pairs cycle through the photos in order: ``photos`` ((h, w, 3) uint8 RGB, at
    least two), by default the photo library, which training draws from too (that set is held
    out by its seeds and motions, not by its photos).
    """
    if not _is_int(n) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    photos = photo_library() if photos is None else list(photos)
    pairs = []
    for i in range(int(n)):
        rng = np.random.default_rng((seed, i))
        if i % 2 == 0:
            pairs.append(camera_motion_pair(photos[(i // 2) % len(photos)], size, rng))
        else:
            pairs.append(layered_pair(photos, size, rng))
    return pairs


def translated_pair(photo: np.ndarray, size: tuple[int, int], shift: tuple[int, int],
                    origin: tuple[int, int]) -> KnownMotionPair:
    """Two crops of ``photo`` whose content moves by the integer ``shift`` (u, v) pixels, exactly.

    photo: (h, w, 3) uint8 RGB; size: (H, W) of the frames; origin: (top, left) of frame 1 in
    the photo. Frame 2 is the crop at (top - v, left - u), so pixel (x, y) of frame 1 is at
    (x + u, y + v) in frame 2: no resampling, flow (u, v) everywhere, valid where it stays in frame 2.
    """
    photo = _check_photo(photo)
    height, width = _check_size(size)
    (u, v), (top, left) = (int(s) for s in shift), (int(o) for o in origin)
    if not (0 <= top - max(v, 0) and top - min(v, 0) + height <= photo.shape[0]
            and 0 <= left - max(u, 0) and left - min(u, 0) + width <= photo.shape[1]):
        raise ValueError(f"a {width}x{height} crop at {origin} moved by {shift} leaves the "
                         f"{photo.shape[1]}x{photo.shape[0]} photo")
    img1 = photo[top:top + height, left:left + width].copy()
    img2 = photo[top - v:top - v + height, left - u:left - u + width].copy()
    flow = np.broadcast_to(np.array([u, v], np.float32), (height, width, 2)).copy()
    return KnownMotionPair(img1, img2, flow, _in_frame(flow))


def occluder_pair(background: np.ndarray, patch: np.ndarray, size: tuple[int, int], origin: tuple[int, int],
                  background_shift: tuple[int, int], corner: tuple[int, int],
                  patch_shift: tuple[int, int]) -> tuple[KnownMotionPair, np.ndarray]:
    """A translated background with an opaque square ``patch`` in front, moving by its own shift.

    background as in ``translated_pair`` (origin, background_shift); patch: (s, s, 3) uint8 RGB
    pasted at ``corner`` (top, left) in frame 1 and at corner + patch_shift in frame 2. Returns
    the pair (flow: the patch's shift on the patch, the background's elsewhere; valid: the
    destination in frame 2 shows the same surface) and ``occluded`` (H, W) bool: the background
    pixels of frame 1 that the patch covers in frame 2, the known occlusion.
    """
    pair = translated_pair(background, size, background_shift, origin)
    patch = _check_photo(patch, "patch")
    side = patch.shape[0]
    (top, left), (pu, pv) = corner, patch_shift
    height, width = pair.img1.shape[:2]
    if patch.shape[1] != side or not (0 <= min(top, top + pv) and max(top, top + pv) + side <= height
                                      and 0 <= min(left, left + pu) and max(left, left + pu) + side <= width):
        raise ValueError(f"the patch must be square and stay inside the frame in both frames, got {patch.shape[:2]} "
                         f"at {corner} moved by {patch_shift}")
    pair.img1[top:top + side, left:left + side] = patch
    pair.img2[top + pv:top + pv + side, left + pu:left + pu + side] = patch
    xs, ys = _pixel_grid(height, width)

    def on_patch(x: np.ndarray, y: np.ndarray, t: int, l: int) -> np.ndarray:
        return (y >= t) & (y < t + side) & (x >= l) & (x < l + side)

    front = on_patch(xs, ys, top, left)
    pair.flow[front] = (pu, pv)
    x2, y2 = xs + pair.flow[:, :, 0], ys + pair.flow[:, :, 1]
    covered_later = on_patch(x2, y2, top + pv, left + pu)
    occluded = ~front & covered_later
    pair.valid = _in_frame(pair.flow) & ~occluded
    return pair, occluded
