"""Writing a labeled-set folder: `write_labeled_set` validates each sample before writing it and writes
every file atomically; the metadata files come last, so an interrupted set is missing them.

Tests: `python -m pytest -q tests/datasets/test_labeled_folder.py`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from handsoff_ray.core._files import atomic_write
from handsoff_ray.datasets.labeled_folder.parse import image_hw
from handsoff_ray.datasets.labeled_folder.samples import DEFAULT_DEPTH_SCALE, LabeledSample, LabeledSetError, encode_depth

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# Every file goes through atomic_write, so an interrupted write leaves no half-written PNG (its
# temporary is a dot-file, which the reader skips).
def _write_png(path: Path, array: np.ndarray) -> None:
    with atomic_write(path) as fh:
        Image.fromarray(array).save(fh, format="PNG")


def _write_text(path: Path, text: str) -> None:
    with atomic_write(path) as fh:
        fh.write(text.encode())


def _check_sample(s: Any, first: LabeledSample | None, classes: Sequence[str] | None,
                  keypoint_names: Sequence[str] | None, depth_scale: float) -> str | None:
    """Why sample s cannot be written, or None."""
    if not isinstance(s, LabeledSample):
        return f"expected a LabeledSample, got {type(s).__name__}"
    if not (isinstance(s.id, str) and _SAFE_ID.match(s.id)):
        return f"id {s.id!r} is not a safe file name; use letters, digits, '.', '_', '-' (not starting with '.')"
    img = np.asarray(s.image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        return f"sample {s.id!r}: image must be uint8 [H, W, 3], got {img.dtype} {list(img.shape)}"
    hw = img.shape[:2]
    if first is not None:
        if hw != first.image.shape[:2]:
            return f"sample {s.id!r}: image is {hw[0]}x{hw[1]}, but the first sample's is {image_hw(first.image)}"
        for part in ("segmentation", "keypoints", "depth"):
            if (getattr(s, part) is None) != (getattr(first, part) is None):
                return f"sample {s.id!r}: {part} is {'missing' if getattr(s, part) is None else 'present'}, " \
                       f"unlike the first sample; every sample must have the same parts"
    if s.segmentation is not None:
        seg = np.asarray(s.segmentation)
        if classes is None:
            return "samples have segmentation but classes is None; pass the class names"
        if seg.shape != hw or not np.issubdtype(seg.dtype, np.integer):
            return (f"sample {s.id!r}: segmentation must be integer [{hw[0]}, {hw[1]}], "
                    f"got {seg.dtype} {list(seg.shape)}")
        if seg.size and (seg.min() < 0 or seg.max() >= len(classes)):
            return f"sample {s.id!r}: segmentation ids span {int(seg.min())}..{int(seg.max())}, " \
                   f"outside 0..{len(classes) - 1} ({len(classes)} classes)"
    if s.keypoints is not None:
        kp = np.asarray(s.keypoints, dtype=np.float64)
        if keypoint_names is None:
            return "samples have keypoints but keypoint_names is None; pass the keypoint names"
        if kp.shape != (len(keypoint_names), 3):
            return f"sample {s.id!r}: keypoints must be [{len(keypoint_names)}, 3] (x, y, v), got {list(kp.shape)}"
        if not np.isfinite(kp).all() or not np.isin(kp[:, 2], (0, 1, 2)).all():
            return f"sample {s.id!r}: keypoints need finite x, y and visibility 0, 1 or 2"
    if s.depth is not None:
        d = np.asarray(s.depth, dtype=np.float64)
        if d.shape != hw:
            return f"sample {s.id!r}: depth must be [{hw[0]}, {hw[1]}], got {list(d.shape)}"
        valid = np.isfinite(d) & (d > 0)
        if valid.any():
            hi, lo = float(d[valid].max()), float(d[valid].min())
            if round(hi * depth_scale) > 65535:
                return (f"sample {s.id!r}: depth {hi:g} exceeds {65535 / depth_scale:g} (65535 / scale); "
                        "pass a smaller depth_scale")
            if round(lo * depth_scale) == 0:
                return (f"sample {s.id!r}: depth {lo:g} rounds to 0 (= invalid) at scale {depth_scale:g}; "
                        "pass a larger depth_scale")
    return None


def write_labeled_set(
    root: str | Path,
    samples: Iterable[LabeledSample],
    classes: Sequence[str] | None,
    *,
    keypoint_names: Sequence[str] | None = None,
    depth_scale: float = DEFAULT_DEPTH_SCALE,
) -> Path:
    """Write samples (any iterable, consumed once) as a labeled-set folder at root; returns root.

    root must not already hold images. Depth is stored as round(depth * depth_scale); NaN, inf and
    depths <= 0 are stored as 0 (invalid). Raises LabeledSetError, naming the sample, on the first
    sample that does not fit; the samples before it stay written, the metadata files do not.
    """
    root = Path(root)
    if not (isinstance(depth_scale, (int, float)) and math.isfinite(depth_scale) and depth_scale > 0):
        raise ValueError(f"depth_scale must be a positive number, got {depth_scale!r}")
    if (root / "images").is_dir() and any(p.suffix == ".png" for p in (root / "images").iterdir()):
        raise LabeledSetError(root, ["images/: already holds images; write into an empty folder or remove it first"])
    if classes is not None and (len(classes) == 0 or len(classes) > 256 or len(set(classes)) != len(classes)):
        raise ValueError(f"classes must be 1..256 unique names, got {list(classes)}")
    if keypoint_names is not None and (len(keypoint_names) == 0 or len(set(keypoint_names)) != len(keypoint_names)):
        raise ValueError(f"keypoint_names must be unique names, got {list(keypoint_names)}")

    first: LabeledSample | None = None
    seen: set[str] = set()
    points: dict[str, list[list[float]]] = {}
    for s in samples:
        why = _check_sample(s, first, classes, keypoint_names, depth_scale)
        if why is None and s.id in seen:
            why = f"id {s.id!r} appears twice"
        if why is not None:
            raise LabeledSetError(root, [why])
        if first is None:
            first = s
            for sub, on in (("images", True), ("masks", s.segmentation is not None), ("depth", s.depth is not None)):
                if on:
                    (root / sub).mkdir(parents=True, exist_ok=True)
        seen.add(s.id)
        _write_png(root / "images" / f"{s.id}.png", np.ascontiguousarray(s.image))
        if s.segmentation is not None:
            _write_png(root / "masks" / f"{s.id}.png", np.asarray(s.segmentation).astype(np.uint8))
        if s.depth is not None:
            _write_png(root / "depth" / f"{s.id}.png", encode_depth(s.depth, depth_scale))
        if s.keypoints is not None:
            points[s.id] = [[float(x), float(y), int(v)] for x, y, v in np.asarray(s.keypoints, np.float32)]
    if first is None:
        raise ValueError("samples is empty; nothing to write")

    # Metadata last: an interrupted write shows up as a missing classes.yaml / keypoints.json.
    if first.segmentation is not None:
        _write_text(root / "masks" / "classes.yaml", yaml.safe_dump({"classes": list(classes)}, sort_keys=False))
    if first.depth is not None:
        _write_text(root / "depth" / "depth.yaml", yaml.safe_dump({"scale": float(depth_scale)}))
    if first.keypoints is not None:
        _write_text(root / "keypoints.json", json.dumps({"names": list(keypoint_names), "points": points}))
    return root

