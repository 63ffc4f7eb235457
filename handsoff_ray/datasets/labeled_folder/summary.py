"""Statistics of a labeled set for `handsoff data check`: `summarize`.

Tests: `python -m pytest -q tests/datasets/test_labeled_folder.py`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from handsoff_ray.datasets.labeled_folder.samples import LabeledSet


def summarize(ls: LabeledSet) -> dict[str, Any]:
    """Plain-Python statistics of a labeled set: sizes, class pixel frequencies, keypoint visibility,
    depth range. Decodes every sample once."""
    out: dict[str, Any] = {"root": str(ls.root), "images": len(ls), "image_size": list(ls.image_size),
                           "tasks": list(ls.tasks)}
    n_classes = len(ls.classes) if ls.classes else 0
    pixels = np.zeros(n_classes, np.int64)
    images_with = np.zeros(n_classes, np.int64)
    vis = np.zeros((len(ls.keypoint_names or ()), 3), np.int64)
    d_min, d_max, d_sum, d_valid, d_total = math.inf, -math.inf, 0.0, 0, 0
    for i in range(len(ls)):
        s = ls.load(i)
        if s.segmentation is not None:
            c = np.bincount(s.segmentation.ravel(), minlength=n_classes)[:n_classes]
            pixels += c
            images_with += c > 0
        if s.keypoints is not None:
            for j, v in enumerate(s.keypoints[:, 2].astype(int)):
                vis[j, v] += 1
        if s.depth is not None:
            valid = s.depth[np.isfinite(s.depth)]
            d_total += s.depth.size
            if valid.size:
                d_min, d_max = min(d_min, float(valid.min())), max(d_max, float(valid.max()))
                d_sum += float(valid.sum(dtype=np.float64))
                d_valid += valid.size
    if ls.has_masks:
        total = max(int(pixels.sum()), 1)
        out["segmentation"] = {
            "classes": list(ls.classes),
            "pixel_fraction": {c: round(int(p) / total, 6) for c, p in zip(ls.classes, pixels)},
            "images_with_class": {c: int(k) for c, k in zip(ls.classes, images_with)},
        }
    if ls.has_keypoints:
        out["keypoints"] = {
            "names": list(ls.keypoint_names),
            "visibility": {n: {"unlabeled": int(a), "occluded": int(b), "visible": int(c)}
                           for n, (a, b, c) in zip(ls.keypoint_names, vis)},
        }
    if ls.has_depth:
        out["depth"] = {
            "scale": ls.depth_scale,
            "valid_fraction": round(d_valid / max(d_total, 1), 6),
            "min": round(d_min, 6) if d_valid else None,
            "max": round(d_max, 6) if d_valid else None,
            "mean": round(d_sum / d_valid, 6) if d_valid else None,
        }
    return out
