"""Reading a labeled-set folder: `open_labeled_set` validates every file up front and never writes.

Tests: `python -m pytest -q tests/datasets/test_labeled_folder.py`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from handsoff_ray.datasets.labeled_folder.parse import (
    check_visible_inside,
    decode_image_file,
    image_hw,
    list_pngs,
    read_classes,
    read_depth_scale,
    read_keypoints,
    scan_part,
)
from handsoff_ray.datasets.labeled_folder.samples import PARTS, LabeledSet, LabeledSetError

_PART_FILES = {"segmentation": "masks/", "keypoints": "keypoints.json", "depth": "depth/"}
_IMAGE_MODES = ("RGB", "RGBA", "L", "P")
_MASK_MODES = ("L", "P")
_DEPTH_MODES = ("I;16", "I;16B", "I;16L")


def open_labeled_set(root: str | Path, *, require: Sequence[str] = ("segmentation",)) -> LabeledSet:
    """Validate the labeled-set folder at root and return it; nothing is written.

    Every file is decoded once. All problems (missing pairs, undecodable files, wrong sizes, unknown
    class ids, malformed keypoints.json, missing parts listed in `require`) are collected and raised
    together as one LabeledSetError.
    """
    unknown = [r for r in require if r not in PARTS]
    if unknown:
        raise ValueError(f"require: unknown part(s) {unknown}; choose from {', '.join(PARTS)}")
    root = Path(root)
    if not root.is_dir():
        raise LabeledSetError(root, [f"{root} is not a folder; point at a folder holding images/<id>.png"])
    if not (root / "images").is_dir():
        raise LabeledSetError(root, ["images/: missing; put the RGB images at images/<id>.png"])
    problems: list[str] = []
    image_ids = list_pngs(root / "images", "images", problems)
    if not image_ids:
        problems.append("images/: holds no .png files")

    present = {"segmentation": (root / "masks").is_dir(), "keypoints": (root / "keypoints.json").is_file(),
               "depth": (root / "depth").is_dir()}
    for part in require:
        if not present[part]:
            problems.append(f"{_PART_FILES[part]}: missing, but {part} labels are required "
                            f"(add them, or leave '{part}' out of the required parts)")

    # Images: decodable, 8-bit, all one size (the most common one is taken as intended).
    images: dict[str, np.ndarray] = {}
    for sid in sorted(image_ids):
        got = decode_image_file(root / "images" / f"{sid}.png", f"images/{sid}.png", problems)
        if got is None:
            continue
        mode, px = got
        if mode not in _IMAGE_MODES:
            problems.append(f"images/{sid}.png: mode {mode} is not an 8-bit image; save it as 8-bit RGB")
            continue
        images[sid] = px
    sizes = Counter(px.shape[:2] for px in images.values())
    size = sizes.most_common(1)[0][0] if sizes else (0, 0)
    for sid, px in images.items():
        if px.shape[:2] != size:
            problems.append(f"images/{sid}.png: size {image_hw(px)}, expected {size[0]}x{size[1]} like the other images")

    def check_part_size(rel: str, sid: str, px: np.ndarray) -> bool:
        if sid in images and px.shape[:2] != images[sid].shape[:2]:
            problems.append(f"{rel}: size {image_hw(px)}, expected {image_hw(images[sid])} like images/{sid}.png")
            return False
        return True

    classes = None
    if present["segmentation"]:
        classes = read_classes(root, problems)
        masks = scan_part(root, "masks", "mask", _MASK_MODES, "single-channel class ids (mode L or P)",
                           image_ids, problems)
        for rel, sid, px in masks:
            if check_part_size(rel, sid, px) and classes is not None:
                ids = np.unique(px)
                bad = ids[ids >= len(classes)]
                if bad.size:
                    shown = ", ".join(str(int(b)) for b in bad[:10]) + (" ..." if bad.size > 10 else "")
                    problems.append(f"{rel}: class ids [{shown}] not in masks/classes.yaml "
                                    f"({len(classes)} classes, ids 0..{len(classes) - 1})")

    names, points = None, {}
    if present["keypoints"]:
        names, points = read_keypoints(root, image_ids, problems)
        for sid in sorted(set(points) & set(images)):
            check_visible_inside(sid, points[sid], names, images[sid].shape[:2], problems)

    scale = None
    if present["depth"]:
        scale = read_depth_scale(root, problems)
        for rel, sid, px in scan_part(root, "depth", "depth map", _DEPTH_MODES,
                                       "16-bit grayscale (stored value = depth * scale)", image_ids, problems):
            check_part_size(rel, sid, px)

    if problems:
        raise LabeledSetError(root, problems)
    return LabeledSet(root=root, ids=tuple(sorted(image_ids)), image_size=(int(size[0]), int(size[1])),
                      classes=classes, keypoint_names=names, depth_scale=scale, _points=points)

