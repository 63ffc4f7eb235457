"""Labels into the generator frame: the geometry inversion applies to images, applied to their labels.

    a = align_labels(sample, classes, (64, 64))      # segmentation, keypoints, depth at the label resolution
    a = align_labels_in_content(sample, classes, (64, 64), rows=slice(8, 56))   # generator.crop_rows

Inversion brings each image into the generator's frame with `inversion.prepare_images` (centre crop to
the generator's aspect, then resize). The labels must follow exactly the same geometry, at the
hypercolumn resolution: `align_labels` applies the same crop (`inversion.crop_box`), then
nearest-neighbour resizing for class ids and depth (no invented in-between classes or depths), and the
matching affine map for keypoints.

Tests: `python -m pytest -q tests/core/test_label_alignment.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from handsoff_ray.core.inversion import crop_box  # the window images are cut with

__all__ = ["AlignedLabels", "align_labels", "align_labels_in_content"]


@dataclass
class AlignedLabels:
    classes: tuple[str, ...]
    segmentation: np.ndarray | None  # uint8 [H, W]
    keypoints: np.ndarray | None  # float32 [J, 3] in output pixels (centres at integers)
    depth: np.ndarray | None  # float32 [H, W], 0 = invalid


def _nearest(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    t = torch.from_numpy(np.array(x, dtype=np.float32))[None, None]  # a writable copy
    return F.interpolate(t, size=size, mode="nearest-exact")[0, 0].numpy()


def align_labels(sample, classes, out_size: tuple[int, int]) -> AlignedLabels:
    """The labels of `sample` (a LabeledSample: image, segmentation, keypoints, depth; any may be None but the
    image) in the generator frame at `out_size`, named by the set's `classes` (see module docstring)."""
    h, w = sample.image.shape[:2]
    out_h, out_w = out_size
    top, left, ch, cw = crop_box(h, w, out_h, out_w)
    seg = depth = kps = None
    if sample.segmentation is not None:
        seg = _nearest(sample.segmentation[top : top + ch, left : left + cw], out_size).astype(np.uint8)
    if sample.depth is not None:
        d = np.nan_to_num(sample.depth[top : top + ch, left : left + cw].astype(np.float32), nan=0.0)
        depth = _nearest(d, out_size).astype(np.float32)
    if sample.keypoints is not None:
        kps = sample.keypoints.astype(np.float32).copy()
        # pixel centres sit at integer coordinates: x_out + 0.5 = (x_in - left + 0.5) * out_w / crop_w
        kps[:, 0] = (kps[:, 0] - left + 0.5) * (out_w / cw) - 0.5
        kps[:, 1] = (kps[:, 1] - top + 0.5) * (out_h / ch) - 0.5
        outside = (kps[:, 0] < -0.5) | (kps[:, 0] > out_w - 0.5) | (kps[:, 1] < -0.5) | (kps[:, 1] > out_h - 0.5)
        kps[outside, 2] = 0  # cropped away: unlabeled
    return AlignedLabels(tuple(classes or ()), seg, kps, depth)


def align_labels_in_content(sample, classes, out_size: tuple[int, int], rows: slice) -> AlignedLabels:
    """Labels on the full out_size label canvas when only `rows` hold content (generator.crop_rows).

    The sample is aligned to the content frame (rows.stop - rows.start, W); the padding rows get the
    values the label generator never trains on: class 255 (ignore_index), depth 0 (invalid), and
    keypoints move down by rows.start.
    """
    h, w = out_size
    a = align_labels(sample, classes, (rows.stop - rows.start, w))
    seg = depth = kps = None
    if a.segmentation is not None:
        seg = np.full((h, w), 255, np.uint8)
        seg[rows] = a.segmentation
    if a.depth is not None:
        depth = np.zeros((h, w), np.float32)
        depth[rows] = a.depth
    if a.keypoints is not None:
        kps = a.keypoints.copy()
        kps[:, 1] += rows.start
    return AlignedLabels(a.classes, seg, kps, depth)
