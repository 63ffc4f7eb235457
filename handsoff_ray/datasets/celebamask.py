"""CelebAMask-HQ, read in its public layout, with the HandsOff class merges.

    <root>/CelebA-HQ-img/<id>.jpg                                    1024x1024 RGB, id 0..29999
    <root>/CelebAMask-HQ-mask-anno/<id // 2000>/<id:05d>_<part>.png  512x512 binary mask per part

The per-part masks are combined as the dataset's own `g_mask.py` does: start from background (0) and
paint the parts in the order of `PARTS` (skin, nose, eye_g, ..., cloth), part k with id k + 1, so a
later part overwrites an earlier one where they overlap. A mask pixel belongs to a part when its first
channel is non-zero. That 19-class map (at 512, the masks' size) is then optionally merged:

    classes="19"          the combined map as is (the label set HandsOff trains its label generator on)
    classes="8"           the evaluation merge: background also takes hat, earring, necklace, neck and
                          cloth; eye = glasses + both eyes; brow, ear = both; mouth = mouth + both lips
    classes="9-hat"       "8" plus hat as its own class (long-tail variant)
    classes="9-glasses"   "8" with glasses as its own class instead of part of eye (long-tail variant)
    classes="10"          "8" plus hat and glasses (long-tail variant)

Samples keep the image at its stored size (1024) and the class map is resized to it with nearest
neighbours (an exact 2x duplication at 1024), so the pipeline's label alignment takes it back to 512
without loss. Ids are the image file stems; `limit` takes the numerically first ones. The HandsOff
train/test split is not public (it was a Drive json): pass the ids you use in `data.ids`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np

from handsoff_ray.datasets._common import (
    ReaderSet,
    apply_merge,
    check_image_size,
    class_table,
    decode_label_png,
    decode_rgb,
    resize_image,
    resize_nearest,
    select_ids,
)
from handsoff_ray.datasets.labeled_folder import LabeledSample, LabeledSetError

__all__ = ["PARTS", "CLASSES_19", "VARIANTS", "combine_parts", "merge", "mask_path", "open_celebamask"]

IMAGES = "CelebA-HQ-img"
MASKS = "CelebAMask-HQ-mask-anno"
MASK_SIZE = (512, 512)  # the public masks' size; any size works if an image's parts agree
PER_FOLDER = 2000  # mask folder k holds ids 2000k .. 2000k + 1999

# g_mask.py's label_list: the paint order, part k gets id k + 1.
PARTS: tuple[str, ...] = ("skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear", "mouth",
                          "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth")
CLASSES_19: tuple[str, ...] = ("background", *PARTS)
_ID = {name: i for i, name in enumerate(CLASSES_19)}


def _table(names: Sequence[str], assign: dict[str, str]) -> tuple[tuple[str, ...], np.ndarray]:
    return class_table(CLASSES_19, names, assign)


_8 = ("background", "skin", "nose", "eye", "brow", "ear", "mouth", "hair")
_BASE = {"skin": "skin", "nose": "nose", "l_eye": "eye", "r_eye": "eye", "l_brow": "brow", "r_brow": "brow",
         "l_ear": "ear", "r_ear": "ear", "mouth": "mouth", "u_lip": "mouth", "l_lip": "mouth", "hair": "hair"}
VARIANTS: dict[str, tuple[tuple[str, ...], np.ndarray]] = {
    "19": (CLASSES_19, np.arange(len(CLASSES_19), dtype=np.uint8)),
    "8": _table(_8, {**_BASE, "eye_g": "eye"}),
    "9-hat": _table((*_8, "hat"), {**_BASE, "eye_g": "eye", "hat": "hat"}),
    "9-glasses": _table((*_8, "glasses"), {**_BASE, "eye_g": "glasses"}),
    "10": _table((*_8, "hat", "glasses"), {**_BASE, "hat": "hat", "eye_g": "glasses"}),
}


def mask_path(image_id: int, part: str) -> str:
    """The part mask's path relative to the dataset root."""
    return f"{MASKS}/{image_id // PER_FOLDER}/{image_id:05d}_{part}.png"


def combine_parts(parts: dict[str, np.ndarray], size: tuple[int, int] = MASK_SIZE) -> np.ndarray:
    """The 19-class map from {part name: [H, W] mask}; later parts in PARTS order overwrite earlier ones."""
    out = np.zeros(size, np.uint8)
    for k, name in enumerate(PARTS):
        if name in parts:
            out[parts[name] != 0] = k + 1
    return out


def merge(mask19: np.ndarray, variant: str) -> np.ndarray:
    """A 19-class map in one of VARIANTS' label sets."""
    return apply_merge(mask19, VARIANTS[variant][1])


def _part_files(root: Path) -> dict[int, dict[str, Path]]:
    """{image id: {part: path}} of every <id:05d>_<part>.png under the mask folders (one listing each)."""
    found: dict[int, dict[str, Path]] = {}
    pattern = re.compile(r"^(\d{5})_([a-z_]+)\.png$")
    for folder in sorted((root / MASKS).iterdir()):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            m = pattern.match(entry.name)
            if m and m.group(2) in _ID:
                found.setdefault(int(m.group(1)), {})[m.group(2)] = entry
    return found


def _load(root: Path, parts_by_id: dict[int, dict[str, Path]], variant: str, resize: tuple[int, int] | None,
          sid: str) -> LabeledSample:
    problems: list[str] = []
    image = decode_rgb(root / IMAGES / f"{sid}.jpg", f"{IMAGES}/{sid}.jpg", problems)
    parts = {}
    for part, path in parts_by_id[int(sid)].items():
        px = decode_label_png(path, str(path.relative_to(root)), problems)
        if px is not None:
            parts[part] = px
    if problems:  # the files changed since the set was opened
        raise LabeledSetError(root, problems)
    labels = merge(combine_parts(parts, next(iter(parts.values())).shape), variant)
    if resize is not None:
        image = resize_image(image, resize)
    return LabeledSample(id=sid, image=image, segmentation=resize_nearest(labels, image.shape[:2]))


def open_celebamask(root: str | Path, *, classes: str = "19", ids: Sequence[str] | None = None,
                    limit: int | None = None, resize: tuple[int, int] | None = None) -> ReaderSet:
    """Validate the selected CelebAMask-HQ images and their part masks; see the module docstring."""
    root = Path(root)
    if classes not in VARIANTS:
        raise LabeledSetError(root, [f"data.classes: {classes!r} is not a CelebAMask-HQ class map; "
                                     f"choose one of {', '.join(VARIANTS)}"])
    missing = [d for d in (IMAGES, MASKS) if not (root / d).is_dir()]
    if missing:
        raise LabeledSetError(root, [f"{d}/: missing; point data.path at the extracted CelebAMask-HQ folder "
                                     f"(it holds {IMAGES}/ and {MASKS}/)" for d in missing])
    problems: list[str] = []
    available = []
    for entry in (root / IMAGES).iterdir():
        if entry.suffix.lower() == ".jpg" and entry.stem.isdigit():
            available.append(entry.stem)
        elif not entry.name.startswith("."):
            problems.append(f"{IMAGES}/{entry.name}: not <id>.jpg; remove it")
    if not available:
        problems.append(f"{IMAGES}/: holds no <id>.jpg images")
    if problems:
        raise LabeledSetError(root, problems)
    chosen = select_ids(available, ids=ids, limit=limit, root=root, key=int)
    parts_by_id = _part_files(root)

    size = None
    for sid in chosen:
        rel = f"{IMAGES}/{sid}.jpg"
        image = decode_rgb(root / rel, rel, problems)
        parts = parts_by_id.get(int(sid), {})
        if not parts:
            problems.append(f"{rel}: no part masks; expected e.g. {mask_path(int(sid), 'skin')}")
        mask_hw = None
        for part, path in sorted(parts.items()):
            prel = str(path.relative_to(root))
            if path.parent.name != str(int(sid) // PER_FOLDER):
                problems.append(f"{prel}: in the wrong folder; expected {mask_path(int(sid), part)}")
            px = decode_label_png(path, prel, problems)
            if px is None:
                continue
            if mask_hw is None:
                mask_hw = px.shape
            elif px.shape != mask_hw:
                problems.append(f"{prel}: size {px.shape[0]}x{px.shape[1]}, expected {mask_hw[0]}x{mask_hw[1]} "
                                f"like the other part masks of image {sid}")
        if image is not None:
            size = check_image_size(rel, image.shape[:2] if resize is None else tuple(resize), size, problems)
    if problems:
        raise LabeledSetError(root, problems)
    names, _ = VARIANTS[classes]
    return ReaderSet(root=root, ids=tuple(chosen), image_size=(int(size[0]), int(size[1])), classes=names,
                     keypoint_names=None, depth_scale=None, format="celebamask", variant=classes,
                     _loader=partial(_load, root, {int(s): parts_by_id[int(s)] for s in chosen}, classes,
                                     tuple(resize) if resize else None))
