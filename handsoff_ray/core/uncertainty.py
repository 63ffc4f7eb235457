"""Ensemble disagreement: per-pixel uncertainty, per-image scores, and which samples to keep.

All functions take label-generator outputs `[E, N, K, H, W]` (E members, N images, K channels).
- Segmentation: per-pixel generalised Jensen-Shannon divergence (mutual information)
  `H(mean_e p_e) - mean_e H(p_e)` on softmax *probabilities* (not logits; DatasetGAN issue #27),
  in nats. Label = majority vote of the members' arg-max maps, ties to the smallest class id
  (as `scipy.stats.mode`).
- Regression (keypoint heatmaps, depth): per-pixel variance across members (population variance,
  i.e. divided by E), averaged over channels.
- Image score: mean of the top `top_fraction` (default 10%) pixel scores, at least one pixel
  (the reference takes `int(P / 10)` pixels).
- `filter_indices`: the reference policy (sort scores ascending, drop the `drop_most_certain` lowest and
  the `portion*N - drop_most_certain` highest; clamped for small N, see its docstring);
  `filter_by_threshold` keeps scores under a value or quantile.

    >>> js = segmentation_js(logits)                  # [N, H, W]
    >>> keep = filter_indices(image_scores(js), portion=0.1)
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = [
    "segmentation_js",
    "majority_vote",
    "ensemble_variance",
    "pixel_uncertainty",
    "image_scores",
    "filter_indices",
    "filter_by_threshold",
]


def _check_outputs(outputs: torch.Tensor) -> None:
    if outputs.dim() != 5:
        raise ValueError(f"expected label-generator outputs [E, N, K, H, W], got shape {tuple(outputs.shape)}")


def segmentation_js(logits: torch.Tensor) -> torch.Tensor:
    """Per-pixel JS divergence `[N, H, W]` across members from logits `[E, N, K, H, W]`."""
    _check_outputs(logits)
    log_p = torch.log_softmax(logits.float(), dim=2)
    p = log_p.exp()
    member_entropy = -(p * log_p).sum(dim=2).mean(dim=0)  # [N, H, W]
    p_mean = p.mean(dim=0)  # [N, K, H, W]
    mean_entropy = -torch.special.xlogy(p_mean, p_mean).sum(dim=1)
    # Concavity makes this >= 0; clamp the few -1e-7 rounding residues so scores stay non-negative.
    return (mean_entropy - member_entropy).clamp_min(0.0)


def majority_vote(logits: torch.Tensor) -> torch.Tensor:
    """Per-pixel class `[N, H, W]` voted by the members' arg-max maps; ties go to the smallest class id."""
    _check_outputs(logits)
    k = logits.shape[2]
    votes = torch.nn.functional.one_hot(logits.argmax(dim=2), k).sum(dim=0)  # [N, H, W, K]
    return votes.argmax(dim=-1)  # torch.argmax returns the first maximal index


def ensemble_variance(outputs: torch.Tensor) -> torch.Tensor:
    """Per-pixel variance across members, averaged over channels: `[E, N, K, H, W] -> [N, H, W]`."""
    _check_outputs(outputs)
    return outputs.float().var(dim=0, correction=0).mean(dim=1)


def pixel_uncertainty(kind: Literal["segmentation", "keypoints", "depth"], outputs: torch.Tensor) -> torch.Tensor:
    """The per-pixel score HandsOff uses for a task kind: JS for segmentation, variance otherwise."""
    if kind == "segmentation":
        return segmentation_js(outputs)
    if kind in ("keypoints", "depth"):
        return ensemble_variance(outputs)
    raise ValueError(f"unknown task kind {kind!r}; use 'segmentation', 'keypoints' or 'depth'")


def image_scores(pixel_scores: torch.Tensor, *, top_fraction: float = 0.1) -> torch.Tensor:
    """Per-image score `[N]`: mean of the highest `top_fraction` of each image's pixel scores `[N, H, W]`."""
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    flat = pixel_scores.reshape(pixel_scores.shape[0], -1).float()
    k = max(1, int(flat.shape[1] * top_fraction))
    return flat.topk(k, dim=1).values.mean(dim=1)


def filter_indices(scores: torch.Tensor, *, portion: float = 0.1, drop_most_certain: int = 30) -> torch.Tensor:
    """Indices (ascending) of the samples the reference keeps, from image scores `[N]` (higher = less certain).

    Removes `n_drop = int(portion * N)` samples: the `drop_most_certain` lowest scores and the rest from
    the top, i.e. the reference `sorted[30 : -n_drop + 30]`. That slice assumes N in the thousands: for
    n_drop < 30 it keeps nothing or the wrong range (N = 100 keeps nothing), and at N = 300 it drops no
    uncertain sample at all. Here the certain-side drop is clamped to `n_drop // 2`, so exactly n_drop
    samples are removed and at least half of them are the most uncertain; the result equals the
    reference whenever n_drop >= 2 * drop_most_certain (N >= 600 at the defaults). Ties keep index order.
    """
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D [N], got shape {tuple(scores.shape)}")
    if not 0.0 <= portion < 1.0:
        raise ValueError(f"portion must be in [0, 1), got {portion}")
    if drop_most_certain < 0:
        raise ValueError(f"drop_most_certain must be >= 0, got {drop_most_certain}")
    n = scores.numel()
    n_drop = int(n * portion)
    low = min(drop_most_certain, n_drop // 2)
    order = torch.sort(scores, stable=True).indices
    return order[low:n - (n_drop - low)].sort().values


def filter_by_threshold(scores: torch.Tensor, *, max_score: float | None = None,
                        keep_quantile: float | None = None) -> torch.Tensor:
    """Indices (ascending) with score <= max_score, or <= the keep_quantile quantile of the scores."""
    if (max_score is None) == (keep_quantile is None):
        raise ValueError("pass exactly one of max_score or keep_quantile")
    if keep_quantile is not None:
        if not 0.0 <= keep_quantile <= 1.0:
            raise ValueError(f"keep_quantile must be in [0, 1], got {keep_quantile}")
        max_score = float(torch.quantile(scores.float(), keep_quantile))
    return torch.nonzero(scores <= max_score).squeeze(1)
