"""Tiny copies of the paper's datasets in their exact public on-disk layouts (no data is downloaded).

Each writer returns what it drew, so tests can compare a reader's output with the truth:

    write_celebamask(root, ids=[0, 1, 2, 10])      CelebA-HQ-img/<id>.jpg, CelebAMask-HQ-mask-anno/<id//2000>/<id:05d>_<part>.png
    write_car_parts(root, split="trainingset")     <split>/annotations.json (COCO) + <split>/JPEGImages/*.jpg
    write_deepfashion(root, names=[...])           image/<name>.jpg, segm/<name>_segm.png, keypoints/keypoints_{loc,vis}.txt

Sizes are scaled down but keep the public ratios: CelebA-HQ images are twice the masks' size
(1024 vs 512), DeepFashion images are 1101x750 (H x W) and car photos vary in size.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

CELEBA_PARTS = ("skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear", "mouth",
                "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth")


def _disk(hw, cy, cx, r):
    yy, xx = np.mgrid[: hw[0], : hw[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _box(hw, y0, y1, x0, x1):
    m = np.zeros(hw, bool)
    m[y0:y1, x0:x1] = True
    return m


def celeba_parts(k: int, mask_size: int = 16) -> dict[str, np.ndarray]:
    """Binary part masks of face k: overlapping on purpose (hair over skin, eyes over glasses)."""
    s, hw = mask_size, (mask_size, mask_size)
    parts = {
        "skin": _disk(hw, s // 2, s // 2, s // 3),
        "hair": _box(hw, 0, s // 4 + 1, 2, s - 2),
        "eye_g": _box(hw, 6, 8, 3, 13),
        "l_eye": _box(hw, 6, 8, 4, 6),
        "r_eye": _box(hw, 6, 8, 10, 12),
        "nose": _box(hw, 8, 10, 7, 9),
        "u_lip": _box(hw, 11, 12, 6, 10),
        "l_lip": _box(hw, 12, 13, 6, 10),
        "cloth": _box(hw, s - 2, s, 0, s),
    }
    if k % 2 == 0:
        parts["hat"] = _box(hw, 0, 3, 3, 13)  # the rare part, on even faces only
    if k % 3 == 0:
        parts["l_brow"] = _box(hw, 5, 6, 4, 6)
    return parts


def expected_celeba_19(parts: dict[str, np.ndarray]) -> np.ndarray:
    out = np.zeros(next(iter(parts.values())).shape, np.uint8)
    for i, name in enumerate(CELEBA_PARTS):
        if name in parts:
            out[parts[name]] = i + 1
    return out


def write_celebamask(root, ids=(0, 1, 2, 3), *, mask_size: int = 16, rgb_masks: bool = True) -> dict:
    """{id: part masks}; images are 2x the mask size like the real 1024 vs 512."""
    root = Path(root)
    (root / "CelebA-HQ-img").mkdir(parents=True, exist_ok=True)
    out = {}
    rng = np.random.default_rng(0)
    for k in ids:
        parts = celeba_parts(k, mask_size)
        out[k] = parts
        seg = expected_celeba_19(parts)
        # An image that follows its labels, so inversion has something to reproduce.
        palette = rng.integers(0, 256, (19, 3), dtype=np.uint8)
        img = np.kron(palette[seg], np.ones((2, 2, 1), np.uint8))
        Image.fromarray(img).save(root / "CelebA-HQ-img" / f"{k}.jpg", quality=95)
        folder = root / "CelebAMask-HQ-mask-anno" / str(k // 2000)
        folder.mkdir(parents=True, exist_ok=True)
        for name, m in parts.items():
            px = (m * 255).astype(np.uint8)
            if rgb_masks:  # the public masks are read with cv2.imread(...)[..., 0]
                px = np.repeat(px[..., None], 3, axis=2)
            Image.fromarray(px).save(folder / f"{k:05d}_{name}.png")
    return out


CAR_PARTS = ("back_bumper", "back_glass", "back_left_door", "back_left_light", "back_right_door",
             "back_right_light", "front_bumper", "front_glass", "front_left_door", "front_left_light",
             "front_right_door", "front_right_light", "hood", "left_mirror", "right_mirror", "tailgate", "trunk",
             "wheel")
CAR_CATEGORIES = [{"id": 1, "name": "_background_", "supercategory": ""}] + [
    {"id": i + 2, "name": n, "supercategory": ""} for i, n in enumerate(CAR_PARTS)]


def _rect(x0, y0, x1, y1):
    return [float(x0), float(y0), float(x1), float(y0), float(x1), float(y1), float(x0), float(y1)]


def write_car_parts(root, split: str = "trainingset", *, sizes=((30, 40), (48, 64), (24, 32), (36, 48))) -> dict:
    """COCO annotations as the public release writes them (COCO Annotator export); returns the json.

    Image k (H x W = sizes[k]) has a back bumper (bottom band), a wheel painted over it, a hood, and on
    image 0 a front bumper; rectangles are in the image's own pixel coordinates.
    """
    folder = Path(root) / split
    (folder / "JPEGImages").mkdir(parents=True, exist_ok=True)
    cid = {c["name"]: c["id"] for c in CAR_CATEGORIES}
    images, anns = [], []
    for k, (h, w) in enumerate(sizes):
        name = f"car{k + 1}.jpg"
        img = np.full((h, w, 3), 90 + 20 * k, np.uint8)
        Image.fromarray(img).save(folder / "JPEGImages" / name, quality=95)
        iid = 100 + k
        images.append({"id": iid, "dataset_id": 1, "category_ids": [], "path": f"JPEGImages/{name}", "width": w,
                       "height": h, "file_name": name, "annotated": False, "num_annotations": 0, "metadata": {}})
        shapes = [("back_bumper", _rect(0, h * 3 // 4, w, h)), ("wheel", _rect(w // 4, h // 2, w // 2, h)),
                  ("hood", _rect(0, 0, w // 2, h // 4))]
        if k == 0:
            shapes.append(("front_bumper", _rect(w // 2, 0, w, h // 4)))
        for part, poly in shapes:
            anns.append({"id": len(anns) + 1, "image_id": iid, "category_id": cid[part], "segmentation": [poly],
                         "area": 0, "bbox": [0, 0, 0, 0], "iscrowd": False, "isbbox": False, "metadata": {}})
    doc = {"images": images, "categories": [dict(c) for c in CAR_CATEGORIES], "annotations": anns}
    (folder / "annotations.json").write_text(json.dumps(doc, indent=4))
    return doc


DF_SIZE = (44, 30)  # H x W, the 1101 x 750 ratio


def write_deepfashion(root, names=("MEN-Denim-id_00000080-01_7_additional", "WOMEN-Dresses-id_00000002-02_1_front",
                                   "WOMEN-Skirts-id_00000012-01_4_full"), *, size=DF_SIZE) -> dict:
    """{name: (segm [H, W], loc [21, 2], vis [21])}; also one image without parsing (as in the real set)."""
    root = Path(root)
    for d in ("image", "segm", "keypoints"):
        (root / d).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    out, loc_lines, vis_lines = {}, [], []
    h, w = size
    for k, name in enumerate(names):
        seg = np.zeros(size, np.uint8)
        seg[4:12, 10:20] = 14  # face
        seg[2:6, 9:21] = 13  # hair
        seg[12:26, 6:24] = 1 + k  # top / outer / skirt
        seg[26:40, 8:22] = 5  # pants
        seg[40:44, 8:22] = 11  # footwear
        img = (rng.integers(0, 40, (h, w, 3)) + seg[..., None] * 9).astype(np.uint8)
        Image.fromarray(img).save(root / "image" / f"{name}.jpg", quality=95)
        Image.fromarray(seg).save(root / "segm" / f"{name}_segm.png")
        loc = np.stack([rng.integers(2, w - 2, 21), rng.integers(2, h - 2, 21)], 1).astype(float)
        vis = np.zeros(21, int)
        vis[3] = 1  # present, hidden
        vis[5] = 2  # not present
        loc[5] = -1
        out[name] = (seg, loc, vis)
        loc_lines.append(f"{name}.jpg " + " ".join(str(int(v)) for v in loc.reshape(-1)))
        vis_lines.append(f"{name}.jpg " + " ".join(str(v) for v in vis))
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(root / "image" / "MEN-Pants-id_00000001-01_1_front.jpg")
    (root / "keypoints" / "keypoints_loc.txt").write_text("\n".join(loc_lines) + "\n")
    (root / "keypoints" / "keypoints_vis.txt").write_text("\n".join(vis_lines) + "\n")
    return out
