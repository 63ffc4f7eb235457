"""A procedural face world with exact labels: the project's stand-in for CelebAMask-HQ.

No pretrained StyleGAN2 and no labeled part dataset can be downloaded where this project is tested,
so it brings its own world in which every label is exact: faces rendered from a few dozen random
parameters, with the segmentation (the 8 merged CelebAMask-HQ classes), 5 keypoints and a depth map
computed from the same geometry as the pixels.

    python -m handsoff_ray.toy.world_cli --grid grid.png --n 16     # image | labels + keypoints | depth
    python -m handsoff_ray.toy.world_cli --bench                     # images/s on this core, as JSON

    from handsoff_ray.toy.world import render_face
    sample = render_face(seed=7, size=64)       # ToySample(image, segmentation, keypoints, depth, params)

How a face is made. All random draws happen in `params.sample_params(seed)`, from one numpy Generator per
seed and before anything depends on the output size, so a seed is the same face at 32, 64 or 128
pixels and a sample never depends on which batch or worker rendered it. `_render` then paints layers
back to front (background clutter, long hair, neck and clothes, ears, head, nose, glasses, eyes, brows,
mouth, hair, hat, a foreground occluder) onto a grid supersampled `supersample` times (odd, default 3).
Each layer writes a class id, an albedo and a depth; the image is the albedo lit by a Lambertian light
using normals derived from the depth map, box-averaged down to the output size. The labels and the
depth are the supersampled values at the output pixel centres (an odd supersample factor puts a
sample exactly there), so every label is the exact class of the surface seen at the pixel centre.

What varies, so that 16 labeled faces do not cover the world: head shape, size, position, roll and
yaw (features foreshorten and ears hide or show through a yaw warp of the head); skin tone and blush;
hair colour and style (bald, buzz, short, medium, long; fringes that may cover brows and eyes; strands
over the cheeks and ears); eye size, openness, gaze and iris colour; brows; nose; mouth (smile, open
with teeth, lipstick); glasses and sunglasses; hats; a hand-like occluder; clothes; background
gradients, textures and clutter (some in skin and hair colours); light direction and camera noise.
Render cost: about 5 ms of one core per 64 px image (up to 10 ms on a busy machine), 4x that at 128 px;
`world_cli --bench` measures yours.

Conventions:
- Segmentation: `CLASSES` = background, skin, nose, eye, brow, ear, mouth, hair (the CelebAMask-HQ
  8-class merge; like that merge, neck, clothes, hats and other objects are background and glasses
  count as eye, overwritten by brows as in the CelebAMask-HQ label order).
- Keypoints `[5, 3]` = (x, y, visibility) in `KEYPOINT_NAMES` order, pixels with pixel centres at
  integer coordinates. "left" means image-left for a frontal face. Visibility 2 when the point's own
  part is what the camera sees there (decided on the supersampled labels), 1 when hair, an object
  (a hand, a cup) or the head itself (yaw) hides it. The mouth corners are the tips of the lips, so
  the pixel nearest a visible corner may be skin; the mouth is within one pixel.
- Depth: metres along the optical axis, 1.0 to 2.0. Every pixel is valid: the background is a slightly
  tilted far plane (1.7 to 2.0 m) with clutter as flat cards in front of it. The head's distance is
  tied to its size in the image (a perspective cue a depth head can learn).

Tests: `python -m pytest -q tests/toy/test_world.py`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from handsoff_ray.toy.params import HEAD_HALF_WIDTH_M, sample_params

__all__ = [
    "CLASSES",
    "KEYPOINT_NAMES",
    "toy_ids",
    "ToySample",
    "ToyBatch",
    "render_face",
    "render_batch",
    "check_size",
]

CLASSES: tuple[str, ...] = ("background", "skin", "nose", "eye", "brow", "ear", "mouth", "hair")
KEYPOINT_NAMES: tuple[str, ...] = ("left_eye", "right_eye", "nose_tip", "mouth_left", "mouth_right")
BG, SKIN, NOSE, EYE, BROW, EAR, MOUTH, HAIR = range(len(CLASSES))
# The part each keypoint lies on: it is visible when the camera sees that part there.
_KEYPOINT_CLASS = (EYE, EYE, NOSE, MOUTH, MOUTH)

_DEPTH_AT_UNIT_SCALE = 0.75  # head distance = 0.75 m / (head half-width in image units): 1.2..1.67 m


@dataclass(frozen=True)
class ToySample:
    """One rendered face and its exact labels."""

    seed: int
    image: np.ndarray  # uint8 [H, W, 3]
    segmentation: np.ndarray  # uint8 [H, W], ids into CLASSES
    keypoints: np.ndarray  # float32 [5, 3]: x, y (pixels, centres at integers), visibility 1|2
    depth: np.ndarray  # float32 [H, W], metres, every pixel valid
    params: dict[str, Any]  # the sampled parameters (JSON-serialisable)


@dataclass(frozen=True)
class ToyBatch:
    """`render_batch` output: the fields of ToySample stacked along a leading batch axis."""

    seeds: tuple[int, ...]
    images: np.ndarray  # uint8 [N, H, W, 3]
    segmentation: np.ndarray  # uint8 [N, H, W]
    keypoints: np.ndarray  # float32 [N, 5, 3]
    depth: np.ndarray  # float32 [N, H, W]
    params: tuple[dict[str, Any], ...]


# ----------------------------------------------------------------------------------------------
# Rendering.


@lru_cache(maxsize=8)
def _grid(n: int) -> np.ndarray:
    """Image coordinate ([-1, 1], left/top edge to right/bottom edge) of each of n sample centres."""
    g = ((np.arange(n, dtype=np.float32) + 0.5) / n * 2.0 - 1.0).astype(np.float32)
    g.setflags(write=False)
    return g


def _texture(xs: np.ndarray, ys: np.ndarray, waves: list[list[float]]) -> np.ndarray:
    """Sum of image-frame sinusoids on the grid xs [w] x ys [h] -> [h, w].

    sin(fx*x + fy*y + ph) = sin(fx*x + ph) cos(fy*y) + cos(fx*x + ph) sin(fy*y): two outer products
    of 1-D arrays instead of a sine over every sample.
    """
    out = np.zeros((ys.size, xs.size), np.float32)
    for fx, fy, ph, amp in waves:
        ax = np.float32(fx) * xs + np.float32(ph)
        by = np.float32(fy) * ys
        out += np.float32(amp) * (np.cos(by)[:, None] * np.sin(ax)[None, :] + np.sin(by)[:, None] * np.cos(ax)[None, :])
    return out


class _Canvas:
    """Supersampled label, albedo and depth planes that layers are painted onto, back to front.

    Albedo is channel-first [3, n, n]: np.copyto with a 2-D mask is ~10x faster than boolean indexing
    of an [n, n, 3] array, and painting is most of the render time.
    """

    def __init__(self, n: int):
        self.n = n
        self.g = _grid(n)
        self.label = np.zeros((n, n), np.uint8)
        self.albedo = np.zeros((3, n, n), np.float32)
        self.depth = np.zeros((n, n), np.float32)

    def box(self, x: float, y: float, rx: float, ry: float | None = None) -> tuple[slice, slice]:
        """Rows and columns of the samples within [x-rx, x+rx] x [y-ry, y+ry] (image units, clipped)."""
        ry = rx if ry is None else ry
        n = self.n

        def span(c: float, r: float) -> slice:
            lo = int(math.floor((c - r + 1.0) / 2.0 * n - 0.5)) - 1
            hi = int(math.ceil((c + r + 1.0) / 2.0 * n - 0.5)) + 2
            return slice(min(max(lo, 0), n), min(max(hi, 0), n))

        return span(y, ry), span(x, rx)

    def rows_from(self, y: float) -> tuple[slice, slice]:
        """All samples at or below image height y."""
        lo = int(math.floor((y + 1.0) / 2.0 * self.n - 0.5)) - 1
        return slice(min(max(lo, 0), self.n), self.n), slice(0, self.n)

    def xy(self, box: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray]:
        """Image coordinates of the box's samples as broadcastable [1, w] and [h, 1] arrays."""
        return self.g[box[1]][None, :], self.g[box[0]][:, None]

    def paint(self, box: tuple[slice, slice], mask: np.ndarray, label: int, albedo: Any, depth: Any) -> None:
        """Where mask [h, w] is true inside box: set the label, the albedo ([3] or [3, h, w]) and the depth."""
        if not mask.any():
            return
        np.copyto(self.label[box], np.uint8(label), where=mask)
        albedo = np.asarray(albedo, np.float32)
        if albedo.ndim == 1:
            albedo = albedo[:, None, None]
        np.copyto(self.albedo[(slice(None), *box)], albedo, where=mask)
        if depth is not None:
            np.copyto(self.depth[box], np.asarray(depth, np.float32), where=mask)


class _Face:
    """The head frame of one face: image <-> head units, the yaw warp and the head silhouette."""

    def __init__(self, p: dict[str, Any]):
        self.p = p
        self.s = p["scale_img"]
        self.cx, self.cy = p["center_img"]
        self.cos, self.sin = math.cos(p["roll"]), math.sin(p["roll"])
        self.B = p["head_height"]
        self.taper = p["jaw_taper"]
        self.yaw = p["yaw"]
        self.z = _DEPTH_AT_UNIT_SCALE / self.s  # head centre depth, metres
        self.m_per_img = HEAD_HALF_WIDTH_M / self.s

    def to_head(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dx, dy = x - np.float32(self.cx), y - np.float32(self.cy)
        c, s, k = np.float32(self.cos), np.float32(self.sin), np.float32(1.0 / self.s)
        return (c * dx + s * dy) * k, (-s * dx + c * dy) * k

    def to_image(self, u: float, v: float) -> tuple[float, float]:
        return (self.cx + self.s * (self.cos * u - self.sin * v), self.cy + self.s * (self.sin * u + self.cos * v))

    def extent(self, ru: float, rv: float) -> tuple[float, float]:
        """Image half-extents (x, y) of a head-frame ellipse with half-axes ru, rv, after the roll."""
        c2, s2 = self.cos**2, self.sin**2
        return self.s * math.sqrt(ru * ru * c2 + rv * rv * s2), self.s * math.sqrt(ru * ru * s2 + rv * rv * c2)

    def feature_box(self, cv: _Canvas, u0: float, v: float, ru: float, rv: float) -> tuple[slice, slice]:
        """Canvas box around the image of the frontal rectangle [u0 - ru, u0 + ru] x [v - rv, v + rv].

        The yaw warp is monotone in u0 but can stretch a feature turning towards the camera, so both
        ends are warped rather than the centre alone.
        """
        lo, _ = self.from_frontal(u0 - ru, v)
        hi, _ = self.from_frontal(u0 + ru, v)
        hu, hv = (hi - lo) / 2 + 0.05, rv + 0.05
        ac, as_ = abs(self.cos), abs(self.sin)
        return cv.box(*self.to_image((lo + hi) / 2, v), self.s * (hu * ac + hv * as_), self.s * (hu * as_ + hv * ac))

    def image_waves(self, waves: list[list[float]]) -> list[list[float]]:
        """Head-frame sinusoids rewritten in image coordinates (u, v are linear in x, y)."""
        k, c, s = 1.0 / self.s, self.cos, self.sin
        out = []
        for fu, fv, ph, amp in waves:
            gx, gy = k * (fu * c - fv * s), k * (fu * s + fv * c)
            out.append([gx, gy, ph - gx * self.cx - gy * self.cy, amp])
        return out

    def half_width(self, v: Any) -> Any:
        """Half-width of the head outline at height v: an egg, narrower towards the chin."""
        return 1.0 - self.taper * np.minimum(np.maximum(v / self.B, 0.0), 1.0) ** 2

    def radius(self, v: Any) -> Any:
        """Half-width of the head's horizontal cross-section at v (the silhouette), floored for the warp."""
        return np.maximum(self.half_width(v) * np.sqrt(np.maximum(1.0 - (v / self.B) ** 2, 0.0)), 0.3)

    def inside(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return (u / self.half_width(v)) ** 2 + (v / self.B) ** 2 <= 1.0

    def frontal(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Backward yaw warp: where on the frontal face the surface seen at (u, v) lies.

        The head's cross-section at height v is a circle of radius r turned by `yaw`; the visible point
        at angle asin(u/r) came from angle asin(u/r) - yaw on the unturned face. Features are drawn in
        these frontal coordinates, so they foreshorten and hide behind the head on their own.
        """
        r = self.radius(v).astype(np.float32)
        return r * np.sin(np.arcsin(np.clip(u / r, -1.0, 1.0)) - np.float32(self.yaw))

    def from_frontal(self, u0: float, v: float) -> tuple[float, bool]:
        """Forward yaw warp of one frontal point: (u in head units, whether it faces the camera)."""
        r = float(self.radius(v))
        a = math.asin(max(-1.0, min(1.0, u0 / r))) + self.yaw
        return r * math.sin(a), math.cos(a) > 0.15

    def surface_depth(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Depth (m) of the head ellipsoid, clamped to the rim outside the outline."""
        rho2 = np.minimum((u / self.half_width(v)) ** 2 + (v / self.B) ** 2, 1.0)
        return np.float32(self.z) - np.float32(self.p["head_depth_m"]) * np.sqrt(1.0 - rho2)


def _ellipse(
    u: np.ndarray, v: np.ndarray, cu: float, cv: float, ru: float, rv: float, angle: float = 0.0
) -> np.ndarray:
    """Normalised squared radius of (u, v) in an ellipse rotated by angle: <= 1 inside."""
    du, dv = u - np.float32(cu), v - np.float32(cv)
    if angle:
        c, s = np.float32(math.cos(angle)), np.float32(math.sin(angle))
        du, dv = c * du + s * dv, -s * du + c * dv
    return (du / np.float32(ru)) ** 2 + (dv / np.float32(rv)) ** 2


def _capsule(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, half_len: float, radius: float, angle: float
) -> np.ndarray:
    """Inside a rounded bar (a hand, a microphone, a cup) of total half-length half_len."""
    ca, sa = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    du, dv = (x - cx) * ca + (y - cy) * sa, -(x - cx) * sa + (y - cy) * ca
    return (np.maximum(np.abs(du) - np.float32(max(half_len - radius, 0.0)), 0.0) ** 2 + dv**2) <= radius**2


def _paint_background(cv: _Canvas, p: dict[str, Any]) -> None:
    g = cv.g
    a = p["bg_gradient_angle"]
    t = np.float32(0.5) + np.float32(0.35 * math.cos(a)) * g[None, :] + np.float32(0.35 * math.sin(a)) * g[:, None]
    c0, c1 = (np.array(c, np.float32)[:, None, None] for c in p["bg_colours"])
    tex = 1.0 + _texture(g, g, p["bg_waves"])
    cv.albedo[:] = (c0 + (c1 - c0) * t) * tex  # [3, n, n]
    tx, ty = p["bg_tilt_m"]
    cv.depth[:] = np.float32(p["bg_depth_m"]) + np.float32(tx) * g[None, :] + np.float32(ty) * g[:, None]
    for c in p["clutter"]:
        (x, y), (w, h), ang = c["center_img"], c["size_img"], c["angle"]
        kind = c["kind"]
        if kind == "stripe":  # runs across the whole image
            box = (slice(0, cv.n), slice(0, cv.n))
        else:
            box = cv.box(x, y, max(w, h) * (1.5 if kind == "rect" else 1.0))
        X, Y = cv.xy(box)
        if kind == "disc":
            m = _ellipse(X, Y, x, y, w, w * 0.6 + h * 0.4) <= 1.0
        elif kind == "ring":
            r = _ellipse(X, Y, x, y, w, w)
            m = (r <= 1.0) & (r >= (1.0 - min(h, 0.8 * w) / w) ** 2)
        else:
            w = 3.0 if kind == "stripe" else w
            ca, sa = math.cos(ang), math.sin(ang)
            du, dv = (X - x) * ca + (Y - y) * sa, -(X - x) * sa + (Y - y) * ca
            m = (np.abs(du) <= w) & (np.abs(dv) <= h)
        cv.paint(box, m, BG, c["colour"], c["depth_m"])


def _paint_person(cv: _Canvas, p: dict[str, Any], f: _Face) -> None:
    """Everything but the background, back to front, each layer inside its own bounding box."""
    B = f.B
    skin = np.array(p["skin"], np.float32)
    style = p["hair_style"]
    hair_len = p["hair_length"]
    side, top = 1.0 + p["hair_volume_side"], B + p["hair_volume_top"]
    freq, phase, contrast = p["hair_strands"]
    hair_rgb = np.array(p["hair_colour"], np.float32)[:, None, None]

    def hair_albedo(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        # Strands fan out from the crown: a sinusoid across the angle around it, wavy down its length.
        strands = np.sin(np.float32(freq) * u / (np.abs(v + B) + 0.6) + np.float32(phase) + 0.8 * np.sin(4.0 * v))
        return hair_rgb * (1.0 + np.float32(contrast) * strands)

    def long_hair(u: np.ndarray, v: np.ndarray, *, front: bool) -> np.ndarray:
        flare = side * (1.0 + p["hair_flare"] * np.clip(v / B, 0.0, None) * 0.5)
        m = (v <= hair_len + 0.08 * np.sin(17.0 * u + phase)) & (np.abs(u) <= flare)
        if not front:
            return m & (v >= -0.1)
        vc = np.minimum(v, B)
        cheek = f.half_width(vc) * np.sqrt(np.clip(1 - (vc / B) ** 2, 0, 1))  # head outline at v
        return m & (v >= 0.0) & (np.abs(u) >= cheek + 0.02 - p["hair_cover"])

    # The lower body: neck, clothes and long hair, in every row below the highest point of the
    # region v >= v_top, |u| <= 2.6 (the shoulders' half-width) after the roll.
    nw = p["neck_half_width"]
    v_top = -0.1 if style == "long" else 0.3 * B
    lbox = cv.rows_from(f.cy + f.s * (v_top * f.cos - 2.6 * abs(f.sin)))
    ul, vl = f.to_head(*cv.xy(lbox))
    if style == "long":
        cv.paint(lbox, long_hair(ul, vl, front=False), HAIR, hair_albedo(ul, vl), f.z + 0.04)
    neck = (vl >= 0.3 * B) & (np.abs(ul) <= nw)
    neck_z = np.float32(f.z + 0.03) - np.float32(0.05) * np.sqrt(np.maximum(1.0 - (ul / nw) ** 2, 0.0))
    cv.paint(lbox, neck, BG, skin * np.float32(0.85), neck_z)  # background, as in the CelebAMask-HQ merge
    shoulders = _ellipse(ul, vl, 0.0, B + 1.35, 2.6, 0.95) <= 1.0
    on, sfreq, sshift = p["clothes_stripes"]
    cloth = np.array(p["clothes_colour"], np.float32)[:, None, None]
    if on:
        cloth = cloth * (0.75 + 0.25 * np.sign(np.sin(np.float32(sfreq) * (ul + vl * sshift))))
    cv.paint(lbox, shoulders, BG, cloth, f.z + 0.06)

    # Ears: on the far side of the yaw they go before the head, which hides most of them.
    ev, eh, ew = p["ear_v"], p["ear_half_height"], p["ear_half_width"]
    ears = []
    for sign in (-1.0, 1.0):
        a = sign * (math.pi / 2 + 0.12) + f.yaw
        ears.append((math.cos(a) > 0.0, float(f.radius(ev)) * math.sin(a) + sign * ew * 0.35,
                     ew * (0.55 + 0.45 * abs(math.cos(a))), sign))

    def paint_ear(cu: float, width: float, sign: float) -> None:
        box = cv.box(*f.to_image(cu, ev), (max(width, eh) + 0.05) * f.s)
        u, v = f.to_head(*cv.xy(box))
        m = _ellipse(u, v, cu, ev, width, eh, -sign * 0.15) <= 1.0
        concha = _ellipse(u, v, cu - sign * width * 0.1, ev, width * 0.55, eh * 0.6) <= 1.0
        alb = np.where(concha, skin[:, None, None] * np.float32(0.78), skin[:, None, None] * np.float32(0.95))
        cv.paint(box, m, EAR, alb, f.z + 0.01)

    for front, cu, width, sign in ears:
        if not front:
            paint_ear(cu, width, sign)

    # The head: skin with a soft blotchy texture and optional blush.
    hx, hy = f.extent(side + 0.1, top + 0.15)
    if p["hat"]:  # the brim is a bar wider than the hair; bound its corners too
        corners = [f.to_image(su * (side + 0.4), p["hat_brim"] + sv * 0.1) for su in (-1, 1) for sv in (-1, 1)]
        hx = max([hx] + [abs(x - f.cx) for x, _ in corners])
        hy = max([hy] + [abs(y - f.cy) for _, y in corners])
    hbox = cv.box(f.cx, f.cy, hx, hy)
    xs, ys = cv.xy(hbox)
    u, v = f.to_head(xs, ys)
    inside = f.inside(u, v)
    tex = 1.0 + _texture(xs[0], ys[:, 0], f.image_waves(p["skin_waves"]))
    skin_albedo = skin[:, None, None] * tex
    if p["blush"] > 0:
        u0 = f.frontal(u, v)
        cheeks = np.exp(-(((np.abs(u0) - 0.55) / 0.2) ** 2 + ((v - p["eye_v"] - 0.35) / 0.18) ** 2))
        skin_albedo = skin_albedo * (1.0 - p["blush"] * cheeks * np.array([0.0, 0.45, 0.4], np.float32)[:, None, None])
    cv.paint(hbox, inside, SKIN, skin_albedo, f.surface_depth(u, v))

    # The nose is also a bump on the head's depth, so the light shades it like a nose.
    nose_top = p["eye_v"] + 0.02
    nose_tip = nose_top + p["nose_length"]
    prot, nhw = p["nose_protrusion"], p["nose_half_width"]
    sin_yaw = math.sin(f.yaw)
    nbox = f.feature_box(cv, (0.05 + prot / 2) * sin_yaw, (nose_top + nose_tip + nhw * 0.45) / 2,
                         nhw + prot / 2 * abs(sin_yaw), (nose_tip + nhw * 0.45 - nose_top) / 2)
    un, vn = f.to_head(*cv.xy(nbox))
    u0n = f.frontal(un, vn)
    t = np.clip((vn - nose_top) / (nose_tip - nose_top), 0.0, 1.0)
    shift = (0.05 + prot * t) * sin_yaw  # the tip sticks out, so yaw moves it further
    nose_w = 0.05 + (nhw - 0.05) * t**1.5
    cap = np.sqrt(np.clip(1.0 - ((vn - nose_tip) / (nhw * 0.45)) ** 2, 0.0, 1.0))
    nose_w = np.where(vn > nose_tip, nhw * cap, nose_w)
    across = (u0n - shift) / np.maximum(nose_w, 1e-3)
    nose = (vn >= nose_top) & (np.abs(across) <= 1.0) & (nose_w > 1e-3) & f.inside(un, vn)
    bump = np.float32(prot * HEAD_HALF_WIDTH_M) * t**1.3 * np.clip(1.0 - across**2, 0.0, 1.0)
    np.subtract(cv.depth[nbox], bump.astype(np.float32), out=cv.depth[nbox], where=nose)
    tip_shift = (0.05 + prot) * sin_yaw
    nostrils = np.zeros(nose.shape, bool)
    for sgn in (-1.0, 1.0):
        nostrils |= _ellipse(u0n, vn, tip_shift + sgn * nhw * 0.45, nose_tip + nhw * 0.12, nhw * 0.22, nhw * 0.1) <= 1.0
    nose_alb = cv.albedo[(slice(None), *nbox)] * np.float32(0.97)
    nose_alb = np.where(nostrils, skin[:, None, None] * np.float32(0.35), nose_alb)
    # A faint darker rim along the nose sides keeps its outline visible under flat light.
    nose_alb = np.where(np.abs(across) > 0.8, nose_alb * np.float32(0.9), nose_alb)
    cv.paint(nbox, nose, NOSE, nose_alb, None)

    for front, cu, width, sign in ears:
        if front:
            paint_ear(cu, width, sign)

    # Glasses (the eye class, like CelebAMask-HQ's merged eye_g), then eyes and brows over them.
    ew_, eh_ = p["eye_half_width"], p["eye_half_height"]
    eye_v, sep = p["eye_v"], p["eye_sep"]
    brow_top = eye_v - eh_ - p["brow_gap"] - p["brow_arch"] * 0.05 - p["brow_thickness"] - 0.03
    eye_bottom = eye_v + max(eh_, ew_ * 1.15 if p["glasses"] else 0.0)
    half_span = sep + max(ew_ * 1.55, ew_ * p["brow_half_width"] + p["brow_shift"])
    ebox = f.feature_box(cv, 0.0, (brow_top + eye_bottom) / 2, half_span, (eye_bottom - brow_top) / 2)
    ue, ve = f.to_head(*cv.xy(ebox))
    u0e = f.frontal(ue, ve)
    in_e = f.inside(ue, ve)
    if p["glasses"]:
        frames = np.zeros(u0e.shape, bool)
        lens = np.zeros(u0e.shape, bool)
        for sgn in (-1.0, 1.0):
            r2 = _ellipse(u0e, ve, sgn * sep, eye_v, ew_ * 1.55, ew_ * 1.15)
            lens |= r2 <= 1.0
            frames |= (r2 <= 1.0) & (r2 >= 0.72)
        frames |= (np.abs(u0e) <= sep - ew_ * 1.3) & (np.abs(ve - (eye_v - ew_ * 0.4)) <= 0.025)  # bridge
        under = cv.albedo[(slice(None), *ebox)] * np.float32(0.25 if p["sunglasses"] else 0.85)
        alb = np.where(frames, np.array(p["glasses_colour"], np.float32)[:, None, None], under)
        cv.paint(ebox, (lens | frames) & in_e, EYE, alb, None)
    if not (p["glasses"] and p["sunglasses"]):
        iris = np.array(p["iris"], np.float32)[:, None, None]
        sclera = np.array([0.93, 0.91, 0.88], np.float32)[:, None, None]
        gx, gy = p["gaze"]
        ri = ew_ * p["iris_radius"]
        for sgn in (-1.0, 1.0):
            cu = sgn * sep
            r2 = _ellipse(u0e, ve, cu, eye_v, ew_, eh_, sgn * p["eye_tilt"])
            iu, iv = cu + gx * ew_ * 0.5, eye_v + gy * eh_
            d2 = ((u0e - iu) ** 2 + (ve - iv) ** 2) / ri**2
            alb = np.where(d2 <= 1.0, iris, sclera)
            alb = np.where(d2 <= 0.2, np.float32(0.03), alb)  # pupil
            # Catchlight: a bright dot that survives the shading.
            glint = (u0e - iu + ri * 0.3) ** 2 + (ve - iv + ri * 0.3) ** 2 <= (ri * 0.28) ** 2
            alb = np.where(glint, np.float32(1.8), alb)
            alb = np.where((r2 >= 0.55) & (ve <= eye_v + 0.3 * eh_), np.float32(0.06), alb)  # upper lid line
            cv.paint(ebox, (r2 <= 1.0) & in_e, EYE, alb, None)
    for sgn in (-1.0, 1.0):
        bu = sgn * (sep + p["brow_shift"])
        bw = ew_ * p["brow_half_width"]
        x = (u0e - bu) / bw
        centre = eye_v - eh_ - p["brow_gap"] - p["brow_arch"] * 0.05 * (1.0 - x**2) + 0.03 * sgn * x
        thick = p["brow_thickness"] * (1.0 - 0.45 * np.clip(sgn * x, 0.0, 1.0))  # thinner outwards
        brow = (np.abs(x) <= 1.0) & (np.abs(ve - centre) <= thick / 2) & in_e
        cv.paint(ebox, brow, BROW, p["brow_colour"], None)

    # Mouth: lips between two curves through the corners; open mouths show a dark inside and teeth.
    mv, mw = nose_tip + p["mouth_gap"], p["mouth_half_width"]
    mbox = f.feature_box(cv, 0.0, mv, mw, 0.2)
    um, vm = f.to_head(*cv.xy(mbox))
    x2 = (f.frontal(um, vm) / mw) ** 2
    t = np.clip(1.0 - x2, 0.0, 1.0)
    line = mv - p["smile"] * x2
    half_open = p["mouth_open"] / 2 * t**0.7
    upper = line - half_open - p["upper_lip"] * t**0.6
    lower = line + half_open + p["lower_lip"] * t**0.6
    mouth = (x2 <= 1.0) & (vm >= upper) & (vm <= lower) & f.inside(um, vm)
    lips = np.array(p["lip_colour"], np.float32)[:, None, None]
    alb = np.broadcast_to(lips, (3, *um.shape))
    if p["mouth_open"] > 0:
        gap = (vm >= line - half_open) & (vm <= line + half_open)
        alb = np.where(gap, np.array([0.12, 0.03, 0.04], np.float32)[:, None, None], alb)
        if p["teeth"]:
            teeth = gap & (vm <= line - half_open * 0.1) & (x2 <= 0.55)
            alb = np.where(teeth, np.array([0.92, 0.9, 0.84], np.float32)[:, None, None], alb)
    else:
        alb = np.where(np.abs(vm - line) <= 0.012, lips * np.float32(0.45), alb)
    cv.paint(mbox, mouth, MOUTH, alb, None)

    # Hair over the head: the cap above the hairline, the volume around the skull, sides, fringe.
    if style != "bald":
        outer = (u / side) ** 2 + ((v + 0.03) / top) ** 2
        outer_z = np.float32(f.z) - np.float32(p["head_depth_m"] * side) * np.sqrt(np.maximum(1.0 - outer, 0.0))
        uh = u - p["hair_part"] * 0.15 - 0.3 * math.sin(f.yaw)
        hairline = p["hairline"] + p["hairline_temple"] * np.abs(uh) ** 3
        hair = (inside & (v <= hairline) & (v <= max(hair_len, 0.0))) | ((outer <= 1.0) & ~inside & (v <= hair_len))
        if p["hair_cover"] > 0:  # strands over the cheeks and ears
            hair |= inside & (np.abs(u) >= f.radius(v) - p["hair_cover"]) & (v <= hair_len)
        if p["fringe"]:
            amp, jf, jph = p["fringe_jag"]
            top_of_brows = eye_v - eh_ - p["brow_gap"] - p["brow_thickness"]
            level = top_of_brows + p["fringe_depth"] * (eye_v + eh_ - top_of_brows)
            edge = level - amp * np.abs(np.sin(np.float32(jf) * u + np.float32(jph)))
            in_band = np.abs(u - p["fringe_center"]) <= p["fringe_half_width"]
            hair |= inside & in_band & (v <= edge) & (v >= hairline - 0.5)
        hair_z = np.minimum(outer_z, f.surface_depth(u, v) - np.float32(0.008))
        cv.paint(hbox, hair, HAIR, hair_albedo(u, v), hair_z)
        if style == "long":  # front strands down over the shoulders
            cv.paint(lbox, long_hair(ul, vl, front=True), HAIR, hair_albedo(ul, vl), f.z - 0.02)

    if p["hat"]:
        crown = (_ellipse(u, v, 0.0, -0.05, side + 0.06, top + 0.06) <= 1.0) & (v <= p["hat_brim"])
        brim = (np.abs(u) <= side + 0.35) & (np.abs(v - p["hat_brim"]) <= 0.06)
        hat_z = np.minimum(f.surface_depth(u, v), f.z) - np.float32(0.03)
        cv.paint(hbox, crown | brim, BG, p["hat_colour"], hat_z)

    o = p["occluder"]
    if o is not None:
        (ox, oy), (ol, orad), ang = o["offset"], o["size"], o["angle"]
        x, y = f.cx + f.s * ox, f.cy + f.s * oy
        box = cv.box(x, y, f.s * max(ol, orad))
        m = _capsule(*cv.xy(box), x, y, f.s * ol, f.s * orad, ang)
        cv.paint(box, m, BG, o["colour"], f.z - p["head_depth_m"] - 0.06)


def _shade(depth: np.ndarray, p: dict[str, Any], m_per_sample: float) -> np.ndarray:
    """Lambertian shading [n, n] from normals of the depth map.

    Each slope is the smaller of the forward and backward differences (minmod), so a depth jump at an
    occlusion boundary does not become a dark outline.
    """

    def slope(d: np.ndarray) -> np.ndarray:
        # d: differences along the last axis, [n, n-1] -> slopes [n, n]; image borders are flat.
        back, fwd = d[:, :-1], d[:, 1:]
        out = np.zeros((d.shape[0], d.shape[1] + 1), np.float32)
        out[:, 1:-1] = np.where(back * fwd > 0, np.where(np.abs(back) < np.abs(fwd), back, fwd), np.float32(0.0))
        return out * np.float32(1.0 / m_per_sample)

    gx, gy = slope(np.diff(depth, axis=1)), slope(np.diff(depth, axis=0).T).T
    lx, ly, lz = (np.float32(c) for c in p["light_dir"])
    # Normal (gx, gy, -1) / |.| faces the camera; the light direction points towards the light.
    ndotl = (gx * lx + gy * ly - lz) / np.sqrt(gx * gx + gy * gy + np.float32(1.0))
    a = np.float32(p["ambient"])
    return a + (1 - a) * np.clip(ndotl, 0.0, None)


def _keypoints(p: dict[str, Any], f: _Face) -> list[tuple[tuple[float, float], bool, tuple[float, float]]]:
    """Per keypoint: its image position, whether it faces the camera, and where to look for its part.

    The probe is the keypoint itself, except for the mouth corners (the tips of the lips) whose probe
    sits a little inside the mouth.
    """
    eye_v = p["eye_v"]
    nose_tip = eye_v + 0.02 + p["nose_length"]
    mv, mw, smile = nose_tip + p["mouth_gap"], p["mouth_half_width"], p["smile"]
    nose_u0 = (0.05 + p["nose_protrusion"]) * math.sin(f.yaw)  # the tip's own yaw shift, as drawn
    frontal = [  # (point, probe) in frontal head coordinates
        ((-p["eye_sep"], eye_v), (-p["eye_sep"], eye_v)),
        ((p["eye_sep"], eye_v), (p["eye_sep"], eye_v)),
        ((nose_u0, nose_tip), (nose_u0, nose_tip)),
        ((-mw, mv - smile), (-0.85 * mw, mv - smile * 0.72)),
        ((mw, mv - smile), (0.85 * mw, mv - smile * 0.72)),
    ]
    out = []
    for (u0, v), (pu0, pv) in frontal:
        u, facing = f.from_frontal(u0, v)
        pu, _ = f.from_frontal(pu0, pv)
        out.append((f.to_image(u, v), facing, f.to_image(pu, pv)))
    return out


def _render(p: dict[str, Any], size: int, supersample: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    n = size * supersample
    cv = _Canvas(n)
    f = _Face(p)
    _paint_background(cv, p)
    _paint_person(cv, p, f)

    shade = _shade(cv.depth, p, 2.0 / n * f.m_per_img)
    rgb = cv.albedo * shade * np.array(p["light_colour"], np.float32)[:, None, None]
    # Box average [3, n, n] -> [3, size, size] as a sum of ss*ss strided views (10x faster than a
    # reshape + mean over two non-contiguous axes), then -> [size, size, 3].
    acc = np.zeros((3, size, size), np.float32)
    for i in range(supersample):
        for j in range(supersample):
            acc += rgb[:, i::supersample, j::supersample]
    rgb = (acc * np.float32(1.0 / supersample**2)).transpose(1, 2, 0)
    noise = np.random.default_rng(p["noise_seed"]).standard_normal(rgb.shape, dtype=np.float32)
    image = np.clip(np.rint((rgb + np.float32(p["noise_std"]) * noise) * 255.0), 0, 255).astype(np.uint8)

    c = supersample // 2  # the sample at each output pixel centre
    seg = np.ascontiguousarray(cv.label[c::supersample, c::supersample])
    depth = np.ascontiguousarray(cv.depth[c::supersample, c::supersample])

    kps = np.zeros((len(KEYPOINT_NAMES), 3), np.float32)
    for j, ((x, y), facing, (qx, qy)) in enumerate(_keypoints(p, f)):
        qi = min(max(int(round((qy + 1) / 2 * n - 0.5)), 0), n - 1)
        qj = min(max(int(round((qx + 1) / 2 * n - 0.5)), 0), n - 1)
        seen = facing and int(cv.label[qi, qj]) == _KEYPOINT_CLASS[j]
        # image units -> pixels, pixel centres at integers
        kps[j] = ((x + 1) / 2 * size - 0.5, (y + 1) / 2 * size - 0.5, 2.0 if seen else 1.0)
    return image, seg, kps, depth


def check_size(size: int, supersample: int) -> None:
    # Designed for 32..128; 16 still renders (eyes and brows shrink to about a pixel), 256 is slow.
    if not (isinstance(size, (int, np.integer)) and 16 <= size <= 256):
        raise ValueError(f"size must be an integer in [16, 256], got {size!r}")
    if not (isinstance(supersample, (int, np.integer)) and supersample >= 1 and supersample % 2 == 1):
        raise ValueError(
            f"supersample must be an odd positive integer (a sample at each pixel centre), got {supersample!r}")


def render_face(seed: int, size: int = 64, *, supersample: int = 3) -> ToySample:
    """Render face `seed` at size x size with exact labels (see the module docstring)."""
    check_size(size, supersample)
    p = sample_params(seed)
    image, seg, kps, depth = _render(p, int(size), int(supersample))
    return ToySample(seed=int(seed), image=image, segmentation=seg, keypoints=kps, depth=depth, params=p)


def render_batch(seeds: Sequence[int], size: int = 64, *, supersample: int = 3) -> ToyBatch:
    """Render many faces; identical to stacking `render_face` of each seed."""
    check_size(size, supersample)
    if len(seeds) == 0:
        raise ValueError("seeds is empty; pass at least one seed")
    samples = [render_face(s, size, supersample=supersample) for s in seeds]
    return ToyBatch(
        seeds=tuple(int(s) for s in seeds),
        images=np.stack([s.image for s in samples]),
        segmentation=np.stack([s.segmentation for s in samples]),
        keypoints=np.stack([s.keypoints for s in samples]),
        depth=np.stack([s.depth for s in samples]),
        params=tuple(s.params for s in samples),
    )


def toy_ids(seeds: Sequence[int]) -> list[str]:
    """Image ids of toy faces: the seeds zero-padded to one width (at least 6), so they sort by seed."""
    width = max(6, len(str(max(seeds)))) if len(seeds) else 6
    return [f"{int(s):0{width}d}" for s in seeds]
