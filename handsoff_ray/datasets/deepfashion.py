"""DeepFashion-MultiModal, read in its public layout: human parsing (24 classes) and 21 keypoints.

    <root>/image/<name>.jpg                 (or images/) 750x1101 (W x H) RGB
    <root>/segm/<name>_segm.png             parsing labels 0..23 (the 12,701 full-body images)
    <root>/keypoints/keypoints_loc.txt      <name>.jpg x_1 y_1 ... x_21 y_21     (-1 -1 = not present)
    <root>/keypoints/keypoints_vis.txt      <name>.jpg v_1 ... v_21   0 visible, 1 hidden, 2 not present

The samples are the images that have a parsing PNG (those are the full-body ones that also carry
keypoints). Keypoint visibility is mapped to the labeled-set convention: visible -> 2, hidden
(present but occluded) -> 1, not present -> 0 (unlabeled). The dataset names its keypoints only in a
figure (assets/keypoints_definition.png), so they are called keypoint_01 .. keypoint_21 here in file
order. Images are 1101 rows by 750 columns; a 1024x512 generator (const 4x2) takes the centred
2:1 window (550 columns), which `core.label_alignment.align_labels` applies to labels and keypoints alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np

from handsoff_ray.datasets._common import (
    ReaderSet,
    check_image_size,
    decode_label_png,
    decode_rgb,
    resize_image,
    resize_nearest,
    scale_keypoints,
    select_ids,
)
from handsoff_ray.datasets.labeled_folder import LabeledSample, LabeledSetError

__all__ = ["CLASSES", "KEYPOINT_NAMES", "VARIANTS", "open_deepfashion", "read_keypoint_files"]

CLASSES: tuple[str, ...] = (
    "background", "top", "outer", "skirt", "dress", "pants", "leggings", "headwear", "eyeglass", "neckwear",
    "belt", "footwear", "bag", "hair", "face", "skin", "ring", "wrist wearing", "socks", "gloves", "necklace",
    "rompers", "earrings", "tie",
)
VARIANTS = {"24": CLASSES}
N_KEYPOINTS = 21
KEYPOINT_NAMES: tuple[str, ...] = tuple(f"keypoint_{k:02d}" for k in range(1, N_KEYPOINTS + 1))
_VIS = {0: 2, 1: 1, 2: 0}  # dataset flag -> labeled-set visibility
LOC, VIS = "keypoints/keypoints_loc.txt", "keypoints/keypoints_vis.txt"


def _image_dir(root: Path) -> str | None:
    for name in ("image", "images"):
        if (root / name).is_dir():
            return name
    return None


def _read_table(path: Path, rel: str, columns: int, problems: list[str]) -> dict[str, list[float]]:
    """{image name without .jpg: numbers} of a keypoints txt file; bad lines become problems."""
    out: dict[str, list[float]] = {}
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        problems.append(f"{rel}: not readable ({e})")
        return out
    for n, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != columns + 1:
            problems.append(f"{rel}: line {n}: {len(fields) - 1} values after the name, expected {columns}")
            continue
        try:
            out[Path(fields[0]).stem] = [float(v) for v in fields[1:]]
        except ValueError:
            problems.append(f"{rel}: line {n}: values must be numbers: {line.strip()[:80]!r}")
    return out


def read_keypoint_files(root: str | Path, problems: list[str]) -> dict[str, np.ndarray]:
    """{image stem: float32 [21, 3] (x, y, v labeled-set convention)} from the two keypoints files."""
    root = Path(root)
    loc = _read_table(root / LOC, LOC, 2 * N_KEYPOINTS, problems)
    vis = _read_table(root / VIS, VIS, N_KEYPOINTS, problems)
    out = {}
    for stem in sorted(set(loc) | set(vis)):
        if stem not in vis or stem not in loc:
            problems.append(f"{LOC if stem not in loc else VIS}: no line for {stem}.jpg, which "
                            f"{VIS if stem not in loc else LOC} has")
            continue
        flags = vis[stem]
        bad = [f for f in flags if f not in _VIS]
        if bad:
            problems.append(f"{VIS}: {stem}.jpg has visibility {bad[0]:g}; the dataset uses 0, 1 or 2")
            continue
        xy = np.asarray(loc[stem], np.float32).reshape(N_KEYPOINTS, 2)
        v = np.asarray([_VIS[int(f)] for f in flags], np.float32)
        absent = (xy < 0).any(1)
        v[absent] = 0  # (-1, -1): not present, whatever the flag says
        out[stem] = np.concatenate([xy, v[:, None]], axis=1)
    return out


def _load(root: Path, image_dir: str, points: dict[str, np.ndarray], resize: tuple[int, int] | None,
          sid: str) -> LabeledSample:
    problems: list[str] = []
    image = decode_rgb(root / image_dir / f"{sid}.jpg", f"{image_dir}/{sid}.jpg", problems)
    seg = decode_label_png(root / "segm" / f"{sid}_segm.png", f"segm/{sid}_segm.png", problems)
    if problems:
        raise LabeledSetError(root, problems)
    kps = points.get(sid)
    if resize is not None:
        if kps is not None:
            kps = scale_keypoints(kps, image.shape[:2], resize)
        image, seg = resize_image(image, resize), resize_nearest(seg, resize)
    return LabeledSample(id=sid, image=image, segmentation=seg, keypoints=None if kps is None else kps.copy())


def open_deepfashion(root: str | Path, *, classes: str = "24", ids: Sequence[str] | None = None,
                     limit: int | None = None, resize: tuple[int, int] | None = None) -> ReaderSet:
    """Validate the selected parsed images, their parsing PNGs and keypoints; see the module docstring."""
    root = Path(root)
    if classes not in VARIANTS:
        raise LabeledSetError(root, [f"data.classes: {classes!r} is not a DeepFashion-MultiModal class map; "
                                     f"choose one of {', '.join(VARIANTS)}"])
    image_dir = _image_dir(root)
    problems: list[str] = []
    if image_dir is None:
        problems.append("image/: missing; point data.path at the DeepFashion-MultiModal folder (image/, segm/, keypoints/)")
    if not (root / "segm").is_dir():
        problems.append("segm/: missing; extract the parsing labels there as <name>_segm.png")
    if problems:
        raise LabeledSetError(root, problems)
    available = sorted(e.name[: -len("_segm.png")] for e in (root / "segm").iterdir() if e.name.endswith("_segm.png"))
    if not available:
        raise LabeledSetError(root, ["segm/: holds no <name>_segm.png parsing labels"])
    has_kp = (root / LOC).is_file() or (root / VIS).is_file()
    points = read_keypoint_files(root, problems) if has_kp else {}
    chosen = select_ids(available, ids=ids, limit=limit, root=root)
    size = None
    for sid in chosen:
        rel = f"{image_dir}/{sid}.jpg"
        image = decode_rgb(root / rel, rel, problems)
        seg = decode_label_png(root / "segm" / f"{sid}_segm.png", f"segm/{sid}_segm.png", problems)
        if image is None or seg is None:
            continue
        if seg.shape != image.shape[:2]:
            problems.append(f"segm/{sid}_segm.png: size {seg.shape[0]}x{seg.shape[1]}, expected "
                            f"{image.shape[0]}x{image.shape[1]} like {rel}")
        if seg.max() >= len(CLASSES):
            problems.append(f"segm/{sid}_segm.png: class id {int(seg.max())}, but the dataset has "
                            f"{len(CLASSES)} classes (0..{len(CLASSES) - 1})")
        if has_kp and sid not in points:
            problems.append(f"{LOC}: no line for {sid}.jpg")
        size = check_image_size(rel, image.shape[:2] if resize is None else tuple(resize), size, problems)
    if problems:
        raise LabeledSetError(root, problems)
    chosen_points = {s: points[s] for s in chosen if s in points}
    return ReaderSet(root=root, ids=tuple(chosen), image_size=(int(size[0]), int(size[1])), classes=VARIANTS[classes],
                     keypoint_names=KEYPOINT_NAMES if has_kp else None, depth_scale=None, format="deepfashion",
                     variant=classes, _points=chosen_points,
                     _loader=partial(_load, root, image_dir, chosen_points, tuple(resize) if resize else None))
