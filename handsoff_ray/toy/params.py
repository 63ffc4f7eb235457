"""Every random draw of a toy face, in one place and one fixed order: `sample_params(seed)`.

One numpy Generator per seed, and nothing here depends on the output size, so a seed is the same face
at any resolution and on any worker. world.py renders the parameters; quality.py regresses some of them.

Tests: `python -m pytest -q tests/toy/test_world.py`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["sample_params"]

HEAD_HALF_WIDTH_M = 0.08  # a head is ~16 cm wide; sets metres per image unit at the head's depth

_SKIN_TONES = np.array(
    [[0.97, 0.82, 0.71], [0.92, 0.72, 0.59], [0.80, 0.59, 0.45], [0.67, 0.46, 0.33],
     [0.49, 0.32, 0.22], [0.31, 0.20, 0.14]]
)
_HAIR_COLOURS = {  # name: (rgb, weight)
    "black": ((0.05, 0.045, 0.045), 0.25),
    "dark_brown": ((0.17, 0.10, 0.06), 0.22),
    "brown": ((0.36, 0.22, 0.12), 0.16),
    "auburn": ((0.52, 0.20, 0.09), 0.07),
    "blonde": ((0.82, 0.66, 0.40), 0.12),
    "platinum": ((0.90, 0.86, 0.74), 0.04),
    "grey": ((0.58, 0.57, 0.56), 0.08),
    "dyed": ((0.0, 0.0, 0.0), 0.06),  # random saturated colour
}
_IRIS_COLOURS = np.array(
    [[0.30, 0.17, 0.08], [0.12, 0.08, 0.05], [0.28, 0.47, 0.72], [0.32, 0.48, 0.28],
     [0.48, 0.53, 0.58], [0.48, 0.37, 0.17]]
)
_HAIR_STYLES = ("bald", "buzz", "short", "medium", "long")
_HAIR_STYLE_WEIGHTS = (0.08, 0.10, 0.30, 0.24, 0.28)


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _colour(rgb: Any) -> list[float]:
    return [min(max(float(c), 0.0), 1.0) for c in rgb]


def _random_colour(rng: np.random.Generator, *, muted: bool) -> list[float]:
    """A random colour; muted ones (walls, clothes) are pulled towards grey."""
    rgb = rng.uniform(0.0, 1.0, 3)
    if muted:
        rgb = 0.45 * rgb + 0.55 * rng.uniform(0.15, 0.85)
    return _colour(rgb)


def _waves(rng: np.random.Generator, n: int, freq: tuple[float, float], amp: float) -> list[list[float]]:
    """Sinusoids (fx, fy, phase, amplitude) whose sum is a smooth texture evaluable at any point."""
    out = []
    for _ in range(n):
        f = rng.uniform(*freq)
        a = rng.uniform(0.0, 2.0 * math.pi)
        out.append([f * math.cos(a), f * math.sin(a), _u(rng, 0.0, 2.0 * math.pi), amp * _u(rng, 0.5, 1.0)])
    return out


def sample_params(seed: int) -> dict[str, Any]:
    """All random choices of the face `seed`, as a JSON-serialisable dict (nothing depends on size).

    Lengths are in head units (head half-width = 1, y down) unless named `_img` (image units, the image
    spanning [-1, 1]) or `_m` (metres). Angles are radians.
    """
    if not (isinstance(seed, (int, np.integer)) and 0 <= int(seed) < 2**63):
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    p: dict[str, Any] = {}

    # Pose and head shape.
    # Like aligned CelebA-HQ crops: the face fills the middle, eyes near mid-height, hair may be cut off.
    p["scale_img"] = _u(rng, 0.45, 0.62)
    p["center_img"] = [_u(rng, -0.12, 0.12), _u(rng, -0.05, 0.12)]
    p["roll"] = float(np.clip(rng.normal(0.0, 0.12), -0.35, 0.35))
    p["yaw"] = float(np.clip(rng.normal(0.0, 0.25), -0.6, 0.6))
    p["head_height"] = _u(rng, 1.2, 1.42)  # B: half-height over half-width
    p["jaw_taper"] = _u(rng, 0.05, 0.35)
    p["head_depth_m"] = HEAD_HALF_WIDTH_M * _u(rng, 1.0, 1.2)

    # Colours.
    t = _u(rng, 0.0, len(_SKIN_TONES) - 1.0)
    i = min(int(t), len(_SKIN_TONES) - 2)
    skin = (1 - (t - i)) * _SKIN_TONES[i] + (t - i) * _SKIN_TONES[i + 1]
    p["skin"] = _colour(skin * rng.uniform(0.94, 1.06, 3))
    p["blush"] = _u(rng, 0.0, 0.12) if rng.random() < 0.5 else 0.0
    p["skin_waves"] = _waves(rng, 3, (2.0, 5.0), 0.04)
    names = list(_HAIR_COLOURS)
    w = np.array([_HAIR_COLOURS[n][1] for n in names])
    hair_name = names[int(rng.choice(len(names), p=w / w.sum()))]
    if hair_name == "dyed":
        hair = _random_colour(rng, muted=False)
    else:
        hair = np.array(_HAIR_COLOURS[hair_name][0]) * rng.uniform(0.85, 1.15)
    p["hair_colour_name"] = hair_name
    p["hair_colour"] = _colour(hair)

    # Hair style.
    style = _HAIR_STYLES[int(rng.choice(len(_HAIR_STYLES), p=_HAIR_STYLE_WEIGHTS))]
    B = p["head_height"]
    p["hair_style"] = style
    p["hair_volume_side"] = _u(rng, 0.02, 0.05) if style == "buzz" else _u(rng, 0.06, 0.24)
    p["hair_volume_top"] = _u(rng, 0.02, 0.06) if style == "buzz" else _u(rng, 0.08, 0.3)
    p["hairline"] = -B * _u(rng, 0.5, 0.78)  # forehead top at the centre
    p["hairline_temple"] = _u(rng, 0.25, 0.8)  # how far the hairline comes down at the temples
    p["hair_part"] = _u(rng, -0.35, 0.35)
    p["hair_length"] = {
        "bald": 0.0,
        "buzz": _u(rng, -0.3, -0.05),
        "short": _u(rng, -0.2, 0.2),
        "medium": B * _u(rng, 0.45, 0.95),
        "long": B + _u(rng, 0.6, 2.2),
    }[style]
    p["hair_cover"] = _u(rng, 0.0, 0.14) if style in ("medium", "long") else 0.0
    p["hair_flare"] = _u(rng, 0.0, 0.5)
    p["fringe"] = style in ("short", "medium", "long") and rng.random() < 0.35
    p["fringe_center"] = _u(rng, -0.4, 0.4)
    p["fringe_half_width"] = _u(rng, 0.5, 1.0)
    p["fringe_depth"] = _u(rng, 0.0, 1.0)  # 0: to the brows' top, 1: over the eyes
    p["fringe_jag"] = [_u(rng, 0.02, 0.08), _u(rng, 8.0, 20.0), _u(rng, 0.0, 2 * math.pi)]
    p["hair_strands"] = [_u(rng, 25.0, 60.0), _u(rng, 0.0, 2 * math.pi), _u(rng, 0.1, 0.3)]

    # Eyes, brows.
    p["eye_v"] = _u(rng, -0.22, -0.02)
    p["eye_sep"] = _u(rng, 0.36, 0.46)
    p["eye_half_width"] = _u(rng, 0.15, 0.2)
    openness = _u(rng, 0.2, 0.4) if rng.random() < 0.1 else _u(rng, 0.55, 1.0)  # some nearly closed
    p["eye_half_height"] = p["eye_half_width"] * _u(rng, 0.42, 0.58) * openness
    p["eye_tilt"] = _u(rng, -0.12, 0.12)
    p["iris"] = _colour(_IRIS_COLOURS[int(rng.integers(len(_IRIS_COLOURS)))] * rng.uniform(0.85, 1.15, 3))
    p["iris_radius"] = _u(rng, 0.42, 0.55)  # of the eye half-width
    p["gaze"] = [_u(rng, -0.3, 0.3), _u(rng, -0.15, 0.15)]
    p["brow_gap"] = _u(rng, 0.15, 0.26)
    p["brow_half_width"] = _u(rng, 1.05, 1.4)  # of the eye half-width
    p["brow_thickness"] = _u(rng, 0.04, 0.085)
    p["brow_arch"] = _u(rng, 0.0, 1.2)
    p["brow_shift"] = _u(rng, -0.02, 0.06)
    brow = np.array(p["hair_colour"]) * _u(rng, 0.55, 0.9)
    if style == "bald" or hair_name in ("platinum", "grey", "dyed"):
        brow = np.array([0.25, 0.17, 0.11]) * _u(rng, 0.5, 1.2)
    p["brow_colour"] = _colour(brow)

    # Nose, mouth, ears.
    p["nose_length"] = _u(rng, 0.36, 0.5)
    p["nose_half_width"] = _u(rng, 0.12, 0.19)
    p["nose_protrusion"] = _u(rng, 0.15, 0.32)
    p["mouth_gap"] = _u(rng, 0.2, 0.3)  # nose tip to mouth line
    p["mouth_half_width"] = _u(rng, 0.22, 0.33)
    p["upper_lip"] = _u(rng, 0.035, 0.07)
    p["lower_lip"] = _u(rng, 0.045, 0.09)
    p["smile"] = _u(rng, -0.03, 0.07)
    p["mouth_open"] = _u(rng, 0.04, 0.13) if rng.random() < 0.3 else 0.0
    p["teeth"] = bool(rng.random() < 0.7)
    lipstick = rng.random() < 0.15
    lips = (np.array([0.72, 0.12, 0.2]) * _u(rng, 0.7, 1.1)) if lipstick else (
        np.array(p["skin"]) * np.array([0.92, 0.62, 0.62]) * _u(rng, 0.75, 0.95))
    p["lip_colour"] = _colour(lips)
    p["ear_v"] = p["eye_v"] + _u(rng, 0.06, 0.18)
    p["ear_half_height"] = _u(rng, 0.2, 0.3)
    p["ear_half_width"] = _u(rng, 0.1, 0.16)

    # Accessories.
    p["glasses"] = bool(rng.random() < 0.1)
    p["sunglasses"] = bool(rng.random() < 0.35)
    p["glasses_colour"] = _colour(rng.uniform(0.0, 0.5, 3))
    p["hat"] = bool(style != "long" and rng.random() < 0.07)
    p["hat_colour"] = _random_colour(rng, muted=False)
    p["hat_brim"] = -B * _u(rng, 0.45, 0.7)
    p["clothes_colour"] = _random_colour(rng, muted=rng.random() < 0.6)
    p["clothes_stripes"] = [_u(rng, 0.0, 1.0) < 0.3, _u(rng, 6.0, 20.0), _u(rng, 0.0, 0.3)]
    p["neck_half_width"] = _u(rng, 0.45, 0.6)

    # Background: gradient, smooth texture, clutter cards, maybe an occluder in front of the face.
    p["bg_colours"] = [_random_colour(rng, muted=True), _random_colour(rng, muted=True)]
    p["bg_gradient_angle"] = _u(rng, 0.0, 2 * math.pi)
    p["bg_waves"] = _waves(rng, 4, (1.5, 8.0), _u(rng, 0.0, 0.12))
    p["bg_depth_m"] = _u(rng, 1.8, 1.9)  # +- the tilt: 1.7..2.0 m
    p["bg_tilt_m"] = [_u(rng, -0.05, 0.05), _u(rng, -0.05, 0.05)]
    clutter = []
    for _ in range(int(rng.integers(0, 7))):
        kind = ["disc", "rect", "stripe", "ring"][int(rng.integers(4))]
        r = rng.random()
        if r < 0.25:  # skin- and hair-like distractors keep colour alone from giving the classes away
            colour = _colour(np.array(p["skin"]) * rng.uniform(0.85, 1.1, 3))
        elif r < 0.4:
            colour = _colour(np.array(p["hair_colour"]) * rng.uniform(0.85, 1.1, 3))
        else:
            colour = _random_colour(rng, muted=rng.random() < 0.5)
        clutter.append({
            "kind": kind,
            "center_img": [_u(rng, -1.0, 1.0), _u(rng, -1.0, 1.0)],
            "size_img": [_u(rng, 0.08, 0.5), _u(rng, 0.03, 0.4)],
            "angle": _u(rng, 0.0, math.pi),
            "colour": colour,
            "depth_m": p["bg_depth_m"] - _u(rng, 0.03, 0.15),
        })
    p["clutter"] = clutter
    occluder = None
    if rng.random() < 0.12:
        side = float(rng.choice([-1.0, 1.0]))
        occluder = {  # head units, relative to the head centre (not rolled)
            "offset": [side * _u(rng, 0.4, 1.4), _u(rng, -0.6, 1.4)],
            "size": [_u(rng, 0.5, 1.2), _u(rng, 0.15, 0.45)],
            "angle": _u(rng, -1.2, 1.2),
            "colour": (_colour(np.array(p["skin"]) * rng.uniform(0.9, 1.05, 3)) if rng.random() < 0.4
                       else _random_colour(rng, muted=False)),
        }
    p["occluder"] = occluder

    # Lighting and camera noise.
    theta, phi = _u(rng, 0.0, 1.05), _u(rng, 0.0, 2 * math.pi)
    p["light_dir"] = [math.sin(theta) * math.cos(phi), math.sin(theta) * math.sin(phi), -math.cos(theta)]
    p["ambient"] = _u(rng, 0.25, 0.5)
    p["light_colour"] = _colour(1.0 + rng.uniform(-0.08, 0.08, 3))
    p["noise_std"] = _u(rng, 0.004, 0.03)
    p["noise_seed"] = int(rng.integers(2**31))
    return p

