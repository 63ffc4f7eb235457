"""Car-Parts-Segmentation (dsmlr), read in its public COCO layout, with the HandsOff class merges.

    <root>/trainingset/annotations.json   COCO: images, categories, annotations (polygons or RLE)
    <root>/trainingset/JPEGImages/<name>.jpg
    <root>/testset/...                     the same for the 100 test images

`root` is the repository folder (pick the split with `split`) or a split folder itself. Categories
are matched by name: `_background_` plus the 18 parts in PARTS. Each image's annotations are painted
in file order (a later one overwrites an earlier one where they overlap) into a 19-class map, then
merged:

    classes="10"              the HandsOff label set: background, bumper (front + back), back window,
                              door (4 doors), light (4 lights), windshield, hood, mirror (2), trunk
                              (tailgate + trunk), wheel
    classes="11-back-bumper"  "10" with the back bumper as its own, rare class (the long-tail variant)
    classes="19"              the 18 parts unmerged

Images come in many sizes; every sample is brought to `resize` (H, W), default 384x512, by stretching,
as the reference does (polygons are scaled, so masks are drawn at the output size). That is the
content frame of the LSUN-car 512 generator, whose rows 64..448 hold the car (`generator.crop_rows`).
Ids are the image file stems, in file-name order. A pixel belongs to a polygon when its centre
(COCO coordinates i + 0.5) is inside; pycocotools' rasteriser may differ by a pixel along edges.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from handsoff_ray.datasets._common import ReaderSet, apply_merge, class_table, decode_rgb, resize_nearest, select_ids
from handsoff_ray.datasets.labeled_folder import LabeledSample, LabeledSetError

__all__ = ["PARTS", "CLASSES_19", "VARIANTS", "DEFAULT_SIZE", "fill_polygon", "rasterize", "rle_decode", "open_car_parts"]

DEFAULT_SIZE = (384, 512)
BACKGROUND = "_background_"
PARTS: tuple[str, ...] = (
    "back_bumper", "back_glass", "back_left_door", "back_left_light", "back_right_door", "back_right_light",
    "front_bumper", "front_glass", "front_left_door", "front_left_light", "front_right_door", "front_right_light",
    "hood", "left_mirror", "right_mirror", "tailgate", "trunk", "wheel",
)
CLASSES_19: tuple[str, ...] = ("background", *PARTS)

_10 = ("background", "bumper", "back window", "door", "light", "windshield", "hood", "mirror", "trunk", "wheel")
_MERGE_10 = {
    "back_bumper": "bumper", "front_bumper": "bumper", "back_glass": "back window",
    "back_left_door": "door", "back_right_door": "door", "front_left_door": "door", "front_right_door": "door",
    "back_left_light": "light", "back_right_light": "light", "front_left_light": "light",
    "front_right_light": "light", "front_glass": "windshield", "hood": "hood", "left_mirror": "mirror",
    "right_mirror": "mirror", "tailgate": "trunk", "trunk": "trunk", "wheel": "wheel",
}


def _table(names: Sequence[str], assign: dict[str, str]) -> tuple[tuple[str, ...], np.ndarray]:
    return class_table(CLASSES_19, names, assign)


_11 = ("background", "front bumper", *_10[2:], "back bumper")
VARIANTS: dict[str, tuple[tuple[str, ...], np.ndarray]] = {
    "10": _table(_10, _MERGE_10),
    "11-back-bumper": _table(_11, {**_MERGE_10, "front_bumper": "front bumper", "back_bumper": "back bumper"}),
    "19": (CLASSES_19, np.arange(len(CLASSES_19), dtype=np.uint8)),
}


def rle_decode(rle: dict[str, Any], height: int, width: int) -> np.ndarray:
    """A COCO RLE (uncompressed list or compressed string counts) as uint8 [H, W] of 0/1."""
    counts = rle["counts"]
    if isinstance(counts, str):
        # pycocotools' compressed form: 5-bit groups in chars from 48, a continuation bit, sign extension
        # on the last group, and counts after the second stored as differences to the count two back.
        values, p = [], 0
        while p < len(counts):
            x, k, more = 0, 0, True
            while more:
                c = ord(counts[p]) - 48
                x |= (c & 0x1F) << (5 * k)
                more = bool(c & 0x20)
                p += 1
                k += 1
                if not more and (c & 0x10):
                    x |= -1 << (5 * k)
            if len(values) > 2:
                x += values[-2]
            values.append(x)
        counts = values
    flat = np.zeros(height * width, np.uint8)
    pos, value = 0, 0
    for c in counts:
        if c < 0 or pos + c > flat.size:
            raise ValueError(f"RLE counts run past a {height}x{width} image")
        flat[pos : pos + c] = value
        pos, value = pos + c, 1 - value
    return flat.reshape(width, height).T  # COCO RLE runs down columns (Fortran order)


def fill_polygon(xs: np.ndarray, ys: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """bool [H, W]: pixels whose centre (i + 0.5, j + 0.5) lies inside the polygon (even-odd rule,
    half-open at edges), scanning one row of centres at a time."""
    h, w = hw
    mask = np.zeros(hw, bool)
    x0, y0, x1, y1 = xs, ys, np.roll(xs, -1), np.roll(ys, -1)
    lo, hi = max(int(np.floor(ys.min())), 0), min(int(np.ceil(ys.max())), h)
    for r in range(lo, hi):
        yc = r + 0.5
        cross = (y0 <= yc) != (y1 <= yc)  # edges that straddle this row of centres
        if not cross.any():
            continue
        xi = np.sort(x0[cross] + (yc - y0[cross]) * (x1[cross] - x0[cross]) / (y1[cross] - y0[cross]))
        for a, b in zip(xi[0::2], xi[1::2]):
            c0, c1 = max(int(np.ceil(a - 0.5)), 0), min(int(np.ceil(b - 0.5)), w)
            mask[r, c0:c1] = True
    return mask


def rasterize(annotations: Sequence[dict], class_of: dict[int, int], src_hw: tuple[int, int],
              out_hw: tuple[int, int]) -> np.ndarray:
    """19-class uint8 [out H, out W] from one image's COCO annotations, in order (later overwrite earlier).

    Polygons are scaled to the output size and filled there (sharper than filling at the source size
    and resizing); RLE masks are decoded at the source size and resized with nearest neighbours.
    """
    sy, sx = out_hw[0] / src_hw[0], out_hw[1] / src_hw[1]
    labels = np.zeros(out_hw, np.uint8)
    for ann in annotations:
        cls = class_of[ann["category_id"]]
        seg = ann["segmentation"]
        if isinstance(seg, dict):
            labels[resize_nearest(rle_decode(seg, *src_hw), out_hw) != 0] = cls
            continue
        for poly in seg:
            xy = np.asarray(poly, np.float64).reshape(-1, 2)
            labels[fill_polygon(xy[:, 0] * sx, xy[:, 1] * sy, out_hw)] = cls
    return labels


def _bad_annotation(ann: Any) -> str | None:
    if not isinstance(ann, dict) or not {"image_id", "category_id", "segmentation"} <= set(ann):
        return "needs image_id, category_id and segmentation"
    seg = ann["segmentation"]
    if isinstance(seg, dict):
        return None if {"counts", "size"} <= set(seg) else "RLE segmentation needs counts and size"
    if not isinstance(seg, list) or not seg:
        return "segmentation must be a list of polygons or an RLE dict"
    for poly in seg:
        if not (isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in poly)):
            return "each polygon must be [x1, y1, x2, y2, ...] with at least 3 points"
    return None


def _split_dir(root: Path, split: str) -> Path:
    if (root / "annotations.json").is_file():
        return root
    if split not in ("trainingset", "testset"):
        raise LabeledSetError(root, [f"data.split: {split!r}; Car-Parts-Segmentation has trainingset and testset"])
    if not (root / split / "annotations.json").is_file():
        raise LabeledSetError(root, [f"{split}/annotations.json: missing; point data.path at the "
                                     "Car-Parts-Segmentation folder (it holds trainingset/ and testset/)"])
    return root / split


def _load(folder: Path, image: dict, anns: list[dict], class_of: dict[int, int], table: np.ndarray,
          size: tuple[int, int], sid: str) -> LabeledSample:
    problems: list[str] = []
    px = decode_rgb(folder / image["_rel"], image["_rel"], problems)
    if problems:
        raise LabeledSetError(folder, problems)
    src = px.shape[:2]
    rgb = np.asarray(Image.fromarray(px).resize((size[1], size[0]), Image.BILINEAR)) if src != size else px
    labels = apply_merge(rasterize(anns, class_of, src, size), table)
    return LabeledSample(id=sid, image=rgb, segmentation=labels)


def open_car_parts(root: str | Path, *, split: str = "trainingset", classes: str = "10",
                   ids: Sequence[str] | None = None, limit: int | None = None,
                   resize: tuple[int, int] | None = None) -> ReaderSet:
    """Validate the selected images of one split and their annotations; see the module docstring."""
    root = Path(root)
    if classes not in VARIANTS:
        raise LabeledSetError(root, [f"data.classes: {classes!r} is not a Car-Parts class map; "
                                     f"choose one of {', '.join(VARIANTS)}"])
    folder = _split_dir(root, split)
    rel_json = str((folder / "annotations.json").relative_to(root)) if folder != root else "annotations.json"
    try:
        doc = json.loads((folder / "annotations.json").read_text())
    except json.JSONDecodeError as e:
        raise LabeledSetError(root, [f"{rel_json}: not valid JSON (line {e.lineno} column {e.colno}: {e.msg})"]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise LabeledSetError(root, [f"{rel_json}: not readable ({e})"]) from None
    if not (isinstance(doc, dict) and all(isinstance(doc.get(k), list) for k in ("images", "categories", "annotations"))):
        raise LabeledSetError(root, [f'{rel_json}: expected COCO with "images", "categories" and "annotations" lists'])

    problems: list[str] = []
    class_of: dict[int, int] = {}
    for cat in doc["categories"]:
        name = cat.get("name") if isinstance(cat, dict) else None
        if name == BACKGROUND:
            class_of[cat["id"]] = 0
        elif name in PARTS:
            class_of[cat["id"]] = CLASSES_19.index(name)
        else:
            problems.append(f"{rel_json}: category {name!r} is not one of the dataset's 18 parts or {BACKGROUND}")
    images: dict[Any, dict] = {}
    by_stem: dict[str, Any] = {}
    for im in doc["images"]:
        if not (isinstance(im, dict) and "id" in im and isinstance(im.get("file_name"), str)):
            problems.append(f"{rel_json}: image entry {im!r:.80} needs id and file_name")
            continue
        rel = im.get("path") or f"JPEGImages/{im['file_name']}"
        stem = Path(im["file_name"]).stem
        if stem in by_stem:
            problems.append(f"{rel_json}: file name stem {stem!r} appears twice (image ids {by_stem[stem]}, {im['id']})")
            continue
        images[im["id"]] = {**im, "_rel": rel}
        by_stem[stem] = im["id"]
    anns_of: dict[Any, list[dict]] = {}
    for k, ann in enumerate(doc["annotations"]):
        why = _bad_annotation(ann)
        name = f"annotation {ann.get('id', k) if isinstance(ann, dict) else k}"
        if why is None and ann["image_id"] not in images:
            why = f"image_id {ann['image_id']} is not in images"
        if why is None and ann["category_id"] not in class_of:
            why = f"category_id {ann['category_id']} is not in categories"
        if why is not None:
            problems.append(f"{rel_json}: {name}: {why}")
            continue
        anns_of.setdefault(ann["image_id"], []).append(ann)
    if problems:
        raise LabeledSetError(root, problems)

    chosen = select_ids(list(by_stem), ids=ids, limit=limit, root=root)
    size = tuple(resize) if resize else DEFAULT_SIZE
    for sid in chosen:
        im = images[by_stem[sid]]
        rel = str((folder / im["_rel"]).relative_to(root))
        px = decode_rgb(folder / im["_rel"], rel, problems)
        if px is not None and (im.get("height"), im.get("width")) not in ((None, None), px.shape[:2]):
            problems.append(f"{rel}: size {px.shape[0]}x{px.shape[1]}, but {rel_json} says "
                            f"{im.get('height')}x{im.get('width')}; re-download the image or fix the json")
        if not anns_of.get(im["id"]):
            problems.append(f"{rel}: no annotations in {rel_json}; leave it out with data.ids")
    if problems:
        raise LabeledSetError(root, problems)
    names, table = VARIANTS[classes]
    loaders = {sid: (images[by_stem[sid]], anns_of[by_stem[sid]]) for sid in chosen}

    def load(sid: str) -> LabeledSample:
        image, anns = loaders[sid]
        return _load(folder, image, anns, class_of, table, size, sid)

    return ReaderSet(root=root, ids=tuple(chosen), image_size=size, classes=names, keypoint_names=None,
                     depth_scale=None, format="car_parts", variant=classes, _loader=load)
