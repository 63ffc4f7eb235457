"""The run's labeled set: opened as data.* selects it (`open_spec_labeled_set`), and the facts fit records
about it for the rest of the run (`data_facts`: class and keypoint names, depth scale, pair size, class prior).

Label geometry (labels into the generator frame) is core/label_alignment.py's; `handsoff data check` is
datasets/public.py's `check_labeled_set`.
"""

from __future__ import annotations

import numpy as np
import torch

from handsoff_ray.config import JobSpec
from handsoff_ray.datasets.labeled_folder import DEFAULT_DEPTH_SCALE
from handsoff_ray.pipeline.errors import UserError

__all__ = ["data_facts", "open_spec_labeled_set"]

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
