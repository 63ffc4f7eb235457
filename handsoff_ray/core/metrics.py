"""Dataset-quality metrics, computed the way the reference evaluation does.

- mIoU: intersections and unions are summed over the *whole* evaluated set before dividing, and the
  mean runs over every class including background; a class absent from both ground truth and
  prediction contributes IoU 0 (reference test_deeplab.py). Use `SegmentationMeter` to accumulate
  batch by batch without keeping predictions.
- PCK@alpha: a visible keypoint is correct when it lies within alpha * max(H, W) pixels of the truth.
- Depth: RMSE and AbsRel over valid pixels (ground truth > 0), as in the reference `depth_metrics`.

    >>> m = SegmentationMeter(num_classes=8); m.update(pred, target); m.miou()
"""

from __future__ import annotations

import math

import torch

__all__ = ["SegmentationMeter", "miou", "pck", "depth_errors", "psnr"]


class SegmentationMeter:
    """Accumulates a confusion matrix; `miou()` follows the reference's dataset-level definition."""

    def __init__(self, num_classes: int, *, ignore_index: int | None = None):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred, target: integer class maps of the same shape (any batch layout)."""
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        pred = pred.reshape(-1).long().cpu()
        target = target.reshape(-1).long().cpu()
        keep = (target >= 0) & (target < self.num_classes)
        if self.ignore_index is not None:
            keep &= target != self.ignore_index
        pred = pred[keep].clamp(0, self.num_classes - 1)
        target = target[keep]
        # rows = truth, cols = prediction
        self.confusion += torch.bincount(
            target * self.num_classes + pred, minlength=self.num_classes**2
        ).reshape(self.num_classes, self.num_classes)

    def iou(self) -> torch.Tensor:
        inter = self.confusion.diag().double()
        union = self.confusion.sum(0).double() + self.confusion.sum(1).double() - inter
        return inter / (union + 1e-8)  # the reference's epsilon: absent classes score 0

    def miou(self) -> float:
        return float(self.iou().mean())


def miou(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    meter = SegmentationMeter(num_classes)
    meter.update(pred, target)
    return meter.miou()


def pck(
    pred: torch.Tensor, target: torch.Tensor, *, image_size: tuple[int, int], alpha: float = 0.05
) -> float:
    """Fraction of visible ground-truth keypoints predicted within alpha * max(H, W) pixels.

    pred: [N, J, 2] (x, y); target: [N, J, 3] (x, y, visibility); visibility > 0 counts.
    Returns NaN when there is no visible keypoint at all.
    """
    if pred.shape[:2] != target.shape[:2]:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} disagree on [N, J]")
    visible = target[..., 2] > 0
    if not bool(visible.any()):
        return math.nan
    dist = torch.linalg.vector_norm(pred[..., :2].float() - target[..., :2].float(), dim=-1)
    threshold = alpha * max(image_size)
    return float((dist[visible] <= threshold).float().mean())


def depth_errors(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """RMSE and AbsRel over pixels whose ground truth is valid (> 0 and finite)."""
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    valid = torch.isfinite(target) & (target > 0)
    if not bool(valid.any()):
        return {"rmse": math.nan, "abs_rel": math.nan}
    p, t = pred[valid].double(), target[valid].double()
    return {
        "rmse": float(torch.sqrt(torch.mean((p - t) ** 2))),
        "abs_rel": float(torch.mean((p - t).abs() / t)),
    }


def psnr(a: torch.Tensor, b: torch.Tensor, *, data_range: float = 2.0) -> torch.Tensor:
    """Per-image PSNR in dB for [N, C, H, W] images; data_range 2.0 for images in [-1, 1]."""
    mse = ((a.float() - b.float()) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse.clamp_min(1e-12))
