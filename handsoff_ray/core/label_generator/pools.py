"""Per task, what fitting a head samples from: pools of training / validation pixels and the loss on them.

Pools hold flat pixel indices `n*H*W + y*W + x` over all labeled images. `class_balanced=True` gives
one pool per present segmentation class (each drawn equally often); keypoint heads draw
`positive_fraction` of each batch from within 3 sigma of a trained keypoint (otherwise nearly every
sampled heatmap value is 0 and the head learns to predict zeros).

Tests: `python -m pytest -q tests/core/test_label_generator.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from handsoff_ray.core.label_generator.tasks import TaskSpec, derive_seed, clean_small_classes


@dataclass
class TaskData:
    """What training one head needs: sampling pools, a validation set, and a loss on sampled pixels."""

    spec: TaskSpec
    out_size: tuple[int, int]
    pools: list[torch.Tensor]  # flat pixel indices (n*H*W + y*W + x) to sample training batches from
    pool_weights: torch.Tensor  # [len(pools)] sampling probabilities
    val_pools: list[torch.Tensor]
    labels: torch.Tensor | None = None  # segmentation: [N*H*W] int64
    keypoints: torch.Tensor | None = None  # [N, J, 3]
    depth: torch.Tensor | None = None  # [N*H*W] normalised log-depth (valid pixels only are used)
    target_norm: tuple[float, float] = (0.0, 1.0)
    class_weights: torch.Tensor | None = field(default=None, repr=False)

    def loss(self, out: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
        """Mean loss of outputs `[P, K]` at flat pixel indices `[P]`."""
        kind = self.spec.kind
        if kind == "segmentation":
            weight = None if self.class_weights is None else self.class_weights.to(out.device)
            return F.cross_entropy(out, self.labels[flat].to(out.device), weight=weight)
        if kind == "depth":
            return F.mse_loss(out[:, 0], self.depth[flat].to(out.device))
        height, width = self.out_size
        n, y, x = flat // (height * width), (flat // width) % height, flat % width
        kp = self.keypoints[n].to(out.device)  # [P, J, 3]
        x, y = x.to(out.device, torch.float32)[:, None], y.to(out.device, torch.float32)[:, None]
        d2 = (kp[..., 0] - x) ** 2 + (kp[..., 1] - y) ** 2  # [P, J]
        target = torch.exp(-d2 / (2 * self.spec.sigma**2))
        mask = (kp[..., 2] >= self.spec.min_visibility).float()
        return (((out - target) ** 2) * mask).sum() / mask.sum().clamp_min(1.0)


def build_task_data(name: str, spec: TaskSpec, target: torch.Tensor, is_val: torch.Tensor, out_size: tuple[int, int],
                     *, class_balanced: bool, max_val_pixels: int, seed: int) -> TaskData:
    """Pools of valid training / validation pixels for one task; `is_val` is the fixed split `[N*H*W]`."""
    height, width = out_size
    n_images = is_val.numel() // (height * width)
    target = target.cpu()
    data = TaskData(spec=spec, out_size=out_size, pools=[], pool_weights=torch.ones(1), val_pools=[])
    if spec.kind == "segmentation":
        _expect_shape(target, (n_images, height, width), "segmentation", "[N, H, W] class ids")
        labels = clean_small_classes(target.long(), spec.min_pixels, ignore_index=spec.ignore_index).reshape(-1)
        valid = labels != spec.ignore_index
        bad = labels[valid & ((labels < 0) | (labels >= spec.num_outputs))]
        if bad.numel():
            raise ValueError(f"segmentation target has class id {int(bad[0])} outside [0, {spec.num_outputs}); "
                             f"raise num_outputs or map it to ignore_index={spec.ignore_index}")
        data.labels = labels
        if spec.class_weights is not None:
            data.class_weights = torch.tensor(spec.class_weights, dtype=torch.float32)
        if class_balanced:
            # One pool per present class, equally likely: rare classes are seen as often as background.
            classes = torch.unique(labels[valid & ~is_val]).tolist()
            pools = [valid & (labels == c) for c in classes]
        else:
            pools = [valid]
    elif spec.kind == "depth":
        _expect_shape(target, (n_images, height, width), "depth", "[N, H, W] depth, 0 = invalid")
        depth = target.float().reshape(-1)
        valid = depth > 0
        train_log = torch.log(depth[valid & ~is_val])
        if train_log.numel() < 2:
            raise ValueError("depth target has fewer than 2 valid training pixels (depth > 0); check the depth maps")
        mu, sd = float(train_log.mean()), max(float(train_log.std()), 1e-6)
        data.target_norm = (mu, sd)
        data.depth = torch.where(valid, (torch.log(depth.clamp_min(1e-12)) - mu) / sd, torch.zeros_like(depth))
        pools = [valid]
    else:
        _expect_shape(target, (n_images, spec.num_outputs, 3), "keypoints", "[N, J, 3] (x, y, v)")
        kp = target.float()
        trained = kp[..., 2] >= spec.min_visibility  # [N, J]
        if not trained.any():
            raise ValueError(f"no keypoint has v >= min_visibility={spec.min_visibility}; label some or lower it")
        data.keypoints = kp
        valid = trained.any(dim=1)[:, None].expand(n_images, height * width).reshape(-1)
        near = _near_keypoints(kp, trained, out_size, 3.0 * spec.sigma).reshape(-1)
        pools = [valid, near] if spec.positive_fraction > 0 and (near & ~is_val).any() else [valid]
    weights = [1.0] * len(pools)
    if spec.kind == "keypoints" and len(pools) == 2:
        weights = [1.0 - spec.positive_fraction, spec.positive_fraction]
    data.pool_weights = torch.tensor(weights) / sum(weights)
    data.pools = [torch.nonzero(p & ~is_val).squeeze(1) for p in pools]
    if any(p.numel() == 0 for p in data.pools):
        raise ValueError(f"a {spec.kind} task has no valid training pixels; check its targets and val_fraction")
    gen = torch.Generator().manual_seed(derive_seed(seed, "val", name))
    per_pool = max(1, max_val_pixels // len(pools))
    for p in pools:
        idx = torch.nonzero(p & is_val).squeeze(1)
        if idx.numel() > per_pool:
            idx = idx[torch.randperm(idx.numel(), generator=gen)[:per_pool]].sort().values
        data.val_pools.append(idx)
    return data


def _near_keypoints(kp: torch.Tensor, trained: torch.Tensor, out_size: tuple[int, int], radius: float) -> torch.Tensor:
    """Pixels within `radius` of a trained keypoint, `[N, H, W]` bool (one small window per keypoint,
    so 50 images x 68 keypoints never builds a [N, J, H, W] tensor)."""
    height, width = out_size
    near = torch.zeros(kp.shape[0], height, width, dtype=torch.bool)
    for n, j in trained.nonzero().tolist():
        x, y = kp[n, j, 0].item(), kp[n, j, 1].item()
        y0, y1 = max(0, math.ceil(y - radius)), min(height, math.floor(y + radius) + 1)
        x0, x1 = max(0, math.ceil(x - radius)), min(width, math.floor(x + radius) + 1)
        if y0 >= y1 or x0 >= x1:
            continue  # keypoint lies outside the image
        ys = torch.arange(y0, y1, dtype=torch.float32)[:, None]
        xs = torch.arange(x0, x1, dtype=torch.float32)[None, :]
        near[n, y0:y1, x0:x1] |= (ys - y) ** 2 + (xs - x) ** 2 <= radius**2
    return near


def _expect_shape(t: torch.Tensor, shape: tuple[int, ...], kind: str, what: str) -> None:
    if tuple(t.shape) != shape:
        raise ValueError(f"{kind} target has shape {tuple(t.shape)}, expected {shape}: {what} at out_size")


def sample_pixels(data: TaskData, batch: int, gen: torch.Generator) -> torch.Tensor:
    which = torch.multinomial(data.pool_weights, batch, replacement=True, generator=gen)
    counts = torch.bincount(which, minlength=len(data.pools)).tolist()
    return torch.cat([pool[torch.randint(pool.numel(), (cnt,), generator=gen)]
                      for pool, cnt in zip(data.pools, counts) if cnt])

