"""Labeled sets as the stages see them: selection by the spec, and labels aligned to the generator frame.

Inversion brings each image into the generator's frame with `core.inversion.prepare_images` (centre
crop to the generator's aspect, then resize). The labels must follow exactly the same geometry, at the
hypercolumn resolution: `align_labels` applies the same crop, then nearest-neighbour resizing for class
ids and depth (no invented in-between classes or depths), and the matching affine map for keypoints.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from handsoff_ray.config import JobSpec
from handsoff_ray.datasets.labeled_folder import DEFAULT_DEPTH_SCALE
from handsoff_ray.core.inversion import crop_box  # the window images are cut with
from handsoff_ray.pipeline.errors import UserError

__all__ = ["data_facts", "AlignedLabels", "align_labels", "align_labels_in_content", "crop_box", "open_spec_labeled_set",
           "check_labeled_set"]

_REQUIRES = {"segmentation": "segmentation", "keypoints": "keypoints", "depth": "depth"}


def open_spec_labeled_set(spec: JobSpec, *, tasks: list[str] | None = None):
    """Open and validate `spec.data.path`; return (labeled_set, selected ids).

    Public layouts (data.format celebamask, car_parts, deepfashion, or auto) are read by their readers
    in handsoff_ray/datasets/, which select before decoding: only the chosen images are checked.
    data.format toy renders the toy faces of data.seeds (datasets/toy.py) and reads nothing.
    """
    from handsoff_ray.datasets.labeled_folder import open_labeled_set

    require = tuple(_REQUIRES[t] for t in (tasks or []))
    d = spec.data
    if d.format != "folder":
        from handsoff_ray.datasets.public import open_public_set

        labeled = open_public_set(d.path, d.format, classes=d.classes, ids=d.ids, limit=d.limit, split=d.split,
                                  resize=d.resize, require=require, seeds=d.seeds)
        return labeled, list(labeled.ids)
    if d.classes is not None or d.resize is not None or d.split is not None:
        raise UserError("data.classes, data.split and data.resize apply to the public formats; set data.format "
                        "(celebamask, car_parts, deepfashion or auto), or leave them out for a labeled-set folder")
    labeled = open_labeled_set(spec.data.path, require=require)
    from handsoff_ray.datasets._common import chosen_ids

    if spec.data.ids is not None:
        unknown = [i for i in spec.data.ids if i not in set(labeled.ids)]
        if unknown:
            raise UserError(f"data.ids: {len(unknown)} id(s) not in {spec.data.path} (first: {unknown[0]!r})")
    ids = chosen_ids(labeled.ids, ids=spec.data.ids, limit=spec.data.limit)
    if not ids:
        raise UserError(f"data.path: {spec.data.path} holds no labeled images")
    return labeled, ids


def check_labeled_set(path: str, *, format: str = "auto", limit: int | None = None, split: str | None = None) -> dict:
    """`handsoff data check`: validate eagerly (raises with every problem), then summarise.

    format 'auto' recognises a labeled-set folder and the public CelebAMask-HQ, Car-Parts-Segmentation
    and DeepFashion-MultiModal layouts; limit checks only the first N images of a big public set.
    """
    from handsoff_ray.datasets.labeled_folder import summarize
    from handsoff_ray.datasets.public import detect_format, open_public_set

    fmt = detect_format(path) if format == "auto" else format
    labeled = open_public_set(path, fmt, limit=limit, split=split)
    return {"format": fmt, **summarize(labeled)}


@dataclass
class AlignedLabels:
    classes: tuple[str, ...]
    segmentation: np.ndarray | None  # uint8 [H, W]
    keypoints: np.ndarray | None  # float32 [J, 3] in output pixels (centres at integers)
    depth: np.ndarray | None  # float32 [H, W], 0 = invalid


def _nearest(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    t = torch.from_numpy(np.array(x, dtype=np.float32))[None, None]  # a writable copy
    return F.interpolate(t, size=size, mode="nearest-exact")[0, 0].numpy()


def align_labels(sample, labeled, out_size: tuple[int, int]) -> AlignedLabels:
    """The labels of `sample` in the generator frame at `out_size` (see module docstring)."""
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
    return AlignedLabels(tuple(labeled.classes or ()), seg, kps, depth)


def align_labels_in_content(sample, labeled, out_size: tuple[int, int], rows: slice) -> AlignedLabels:
    """Labels on the full out_size label canvas when only `rows` hold content (generator.crop_rows).

    The sample is aligned to the content frame (rows.stop - rows.start, W); the padding rows get the
    values the label generator never trains on: class 255 (ignore_index), depth 0 (invalid), and
    keypoints move down by rows.start.
    """
    h, w = out_size
    a = align_labels(sample, labeled, (rows.stop - rows.start, w))
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


def data_facts(ctx) -> dict:
    """What the rest of the run needs to know about the labeled data, recorded once in fit.json: class and
    keypoint names, depth scale, and the size of a synthetic pair (the content rows when crop_rows is set).
    Fit records them; synthesize reads fit.json (and recomputes them only for a run fitted before it had them).
    `ctx` is the run's RunContext."""
    labeled, ids = ctx.labeled()
    G = ctx.generator(torch.device("cpu"))
    h, w = ctx.feature_size(G)
    rows = ctx.content_rows(G)
    classes = list(labeled.classes or [])
    class_pixels = np.zeros(len(classes), np.int64)  # the labeled images' class prior (synthesis.prior_tau)
    for seg in (labeled.load(i).segmentation for i in (ids if classes else [])):
        if seg is not None:  # a set may label only some tasks
            class_pixels += np.bincount(seg[seg < len(classes)], minlength=len(classes))
    return {"classes": classes, "keypoint_names": list(labeled.keypoint_names or []),
            "depth_scale": float(labeled.depth_scale or DEFAULT_DEPTH_SCALE),
            "image_size": [h if rows is None else rows.stop - rows.start, w], "class_pixels": class_pixels.tolist()}
