"""Scoring a downstream network: `predict_downstream` (decoded labels) and `evaluate_downstream`.

Evaluation (`evaluate_downstream`), with core.metrics:
- "miou" and "iou" (per class, in class-id order): intersections and unions summed over the whole test
  set, every class including background averaged, a class absent from truth and prediction scores 0;
- "pck": visible keypoints (v >= keypoint_min_visibility) predicted within pck_alpha * max(H, W) pixels;
  prediction = heatmap arg-max with the sub-pixel parabola refinement of label_generator.decode_keypoints;
- "depth_rmse" and "depth_abs_rel": over all valid test pixels together, depth in the dataset's units.

Tests: `python -m pytest -q tests/evaluation/test_downstream.py`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from handsoff_ray.core.label_generator import decode_keypoints
from handsoff_ray.core.metrics import SegmentationMeter, pck
from handsoff_ray.evaluation.data import IGNORE_INDEX, DownstreamData, as_tensor, valid_depth, images_to_input
from handsoff_ray.evaluation.models import DownstreamNet, check_pair


@torch.no_grad()
def predict_downstream(model: DownstreamNet, images: torch.Tensor | np.ndarray, *, batch_size: int = 16,
                       device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Decoded labels for uint8 `[N, H, W, 3]` images, on the CPU: "segmentation" int64 `[N, H, W]`,
    "keypoints" `[N, J, 3]` (x, y, v from decode_keypoints), "depth" `[N, H, W]` in the training set's units."""
    images = as_tensor(images)
    if images.dim() != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 [N, H, W, 3], got {images.dtype} {tuple(images.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    was_training = model.training
    model.eval().to(device)
    parts: dict[str, list[torch.Tensor]] = {t: [] for t in model.tasks}
    for start in range(0, images.shape[0], batch_size):
        out = model(images_to_input(images[start:start + batch_size].to(device)))
        if "segmentation" in out:
            parts["segmentation"].append(out["segmentation"].argmax(1).cpu())
        if "keypoints" in out:
            parts["keypoints"].append(decode_keypoints(out["keypoints"]).cpu())
        if "depth" in out:
            parts["depth"].append(out["depth"][:, 0].exp().cpu())
    model.train(was_training)
    return {t: torch.cat(v) for t, v in parts.items()}


def evaluate_downstream(
    model: DownstreamNet,
    test: DownstreamData,
    *,
    num_classes: int | None = None,
    pck_alpha: float = 0.05,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    keypoint_min_visibility: int = 2,
) -> dict[str, Any]:
    """Scores on every task the model predicts (the test set must have its labels). Keys:

    "num_images"; segmentation: "miou" (dataset-level, background included), "iou" (list, per class id);
    keypoints: "pck" (NaN without visible keypoints), "num_keypoints" (how many were scored);
    depth: "depth_rmse", "depth_abs_rel" (over all valid pixels, the dataset's units), "num_depth_pixels".
    num_classes, when given, must equal the model's (a guard on the label space).
    """
    if num_classes is not None and num_classes != model.num_classes:
        raise ValueError(f"num_classes={num_classes} but the model was built with {model.num_classes} classes")
    if not 0.0 < pck_alpha <= 1.0:
        raise ValueError(f"pck_alpha must be in (0, 1], got {pck_alpha}")
    tasks = model.tasks
    check_pair(model, test, "test", tasks)
    result: dict[str, Any] = {"num_images": len(test)}
    meter = SegmentationMeter(model.num_classes, ignore_index=IGNORE_INDEX) if "segmentation" in tasks else None
    kp_pred: list[torch.Tensor] = []
    sq_err = abs_rel = 0.0
    count = 0
    for start in range(0, len(test), batch_size):
        sl = slice(start, start + batch_size)
        pred = predict_downstream(model, test.images[sl], batch_size=batch_size, device=device)
        if meter is not None:
            meter.update(pred["segmentation"], test.segmentation[sl])
        if "keypoints" in pred:
            kp_pred.append(pred["keypoints"])
        if "depth" in pred:
            # Summed over the whole set, so RMSE is over all valid pixels (as depth_errors on the concatenation).
            true = test.depth[sl]
            valid = valid_depth(true)
            p, t = pred["depth"][valid].double(), true[valid].double()
            sq_err += float(((p - t) ** 2).sum())
            abs_rel += float(((p - t).abs() / t).sum())
            count += int(valid.sum())
    if meter is not None:
        iou = meter.iou()
        result |= {"miou": float(iou.mean()), "iou": [float(v) for v in iou]}
    if "keypoints" in tasks:
        target = test.keypoints.clone()
        target[..., 2] = torch.where(target[..., 2] >= keypoint_min_visibility, target[..., 2], 0.0)
        result["pck"] = pck(torch.cat(kp_pred)[..., :2], target, image_size=test.image_size, alpha=pck_alpha)
        result["num_keypoints"] = int((target[..., 2] > 0).sum())
    if "depth" in tasks:
        result |= {"depth_rmse": math.sqrt(sq_err / count) if count else math.nan,
                   "depth_abs_rel": abs_rel / count if count else math.nan, "num_depth_pixels": count}
    return result
