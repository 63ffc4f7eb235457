"""Training a downstream network: `train_downstream`.

Training (`train_downstream`): Adam, summed task losses (weights `task_weights`), the reference's
"skip incomplete batches". Losses, each a weighted mean with per-sample `weights`:
- segmentation: cross-entropy over pixels, `255` = ignore (the reference's plain CE); with
  `seg_loss="ce_dice"` plus a soft Dice loss over the classes present in the batch, which weighs a
  10-pixel part like a 2,000-pixel one (plain CE on 64 px toy faces never learns brows and ears);
- keypoints: per keypoint, sum over pixels of (heatmap - Gaussian(sigma))^2 divided by the Gaussian's
  own energy, so predicting zeros costs exactly 1 at any image size or sigma; keypoints with visibility
  below `keypoint_min_visibility` (default 2 = visible) are left out of the loss;
- depth: L1 between predicted and true log-depth on valid pixels (finite and > 0; NaN and 0 are the
  formats' "invalid"). L1 on logs is unit-free (metres or millimetres give the same loss); the head
  starts at the training set's mean log-depth (`log_depth_offset`, set when the model's offset is still 0).
The keypoint and depth heads' last convs start at zero (empty heatmaps, the mean depth).
`lr_schedule="cosine"` decays the rate to 0 over `max_steps` after a linear warm-up of 3 % of them;
`precision="bf16"` runs the forward pass under CPU/CUDA bf16 autocast (losses in fp32).
Everything random comes from one `torch.Generator(seed)`: the validation split, each epoch's shuffle,
the flips; so on CPU the same call gives bit-identical weights. `val_fraction` > 0 holds out that share
of the *training* data (never the test set) and keeps the epoch with the best validation mIoU (else PCK,
else -AbsRel), as the reference selects its DeepLab checkpoint.

Tests: `python -m pytest -q tests/evaluation/test_downstream.py`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from handsoff_ray.core.label_generator import render_heatmaps
from handsoff_ray.evaluation.data import IGNORE_INDEX, DownstreamData, mean_log_depth, valid_depth, images_to_input
from handsoff_ray.evaluation.models import DownstreamNet, check_pair
from handsoff_ray.evaluation.scoring import evaluate_downstream


@dataclass
class TrainSummary:
    """What `train_downstream` did. history: one record per epoch (mean losses, validation scores)."""

    steps: int
    epochs: int
    history: list[dict[str, float]]
    selected_on: str | None = None  # "val_miou" | "val_pck" | "val_neg_abs_rel"; None without validation
    best_epoch: int | None = None
    best_score: float | None = None
    val_indices: tuple[int, ...] = ()


SEG_LOSSES: tuple[str, ...] = ("ce", "ce_dice")
LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")


def _soft_dice(logits: torch.Tensor, target: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """1 - mean soft Dice over the classes present in the batch's (weighted, non-ignored) labels."""
    k = logits.shape[1]
    valid = (target != IGNORE_INDEX)
    prob = logits.float().softmax(1) * (valid * w[:, None, None])[:, None]  # [B, K, H, W], weighted
    onehot = F.one_hot(torch.where(valid, target, 0), k).permute(0, 3, 1, 2).float() * prob.new_ones(())
    onehot = onehot * (valid * w[:, None, None])[:, None]
    inter = (prob * onehot).sum((0, 2, 3))  # [K]
    size = prob.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    present = onehot.sum((0, 2, 3)) > 0
    if not bool(present.any()):
        return logits.sum() * 0.0
    dice = (2 * inter + 1.0) / (size + 1.0)
    return 1.0 - dice[present].mean()


def _losses(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], *, sigma: float,
            min_visibility: int, seg_loss: str = "ce") -> dict[str, torch.Tensor]:
    w = batch["weights"]  # [B]
    losses = {}
    out = {k: v.float() for k, v in out.items()}  # losses in fp32 whatever the forward ran in
    if "segmentation" in out:
        target = batch["segmentation"].long()
        ce = F.cross_entropy(out["segmentation"], target, ignore_index=IGNORE_INDEX, reduction="none")  # [B, H, W]
        valid = (target != IGNORE_INDEX).float()
        # Weighted pixel mean; with unit weights exactly the reference's batch-mean cross-entropy.
        losses["segmentation"] = (w * ce.sum((1, 2))).sum() / (w * valid.sum((1, 2))).sum().clamp_min(1.0)
        if seg_loss == "ce_dice":
            losses["segmentation"] = losses["segmentation"] + _soft_dice(out["segmentation"], target, w)
    if "keypoints" in out:
        kps = batch["keypoints"]
        pred = out["keypoints"]
        target = render_heatmaps(kps[..., :2], tuple(pred.shape[-2:]), sigma)  # [B, J, H, W]
        energy = target.pow(2).sum((2, 3)).clamp_min(1e-6)  # [B, J]: the loss of an all-zero prediction
        err = (pred - target).pow(2).sum((2, 3)) / energy
        keep = (kps[..., 2] >= min_visibility).float() * w[:, None]
        losses["keypoints"] = (keep * err).sum() / keep.sum().clamp_min(1e-6)
    if "depth" in out:
        depth = batch["depth"]
        valid = valid_depth(depth)
        log_true = torch.log(torch.where(valid, depth, torch.ones_like(depth)))
        l1 = torch.where(valid, (out["depth"][:, 0] - log_true).abs(), torch.zeros_like(depth))
        losses["depth"] = (w * l1.sum((1, 2))).sum() / (w * valid.float().sum((1, 2))).sum().clamp_min(1.0)
    return losses


def _flip(batch: dict[str, torch.Tensor], flip: torch.Tensor, keypoint_perm: torch.Tensor | None,
          class_lut: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Mirror the samples where `flip` [B] is True; left/right keypoints and classes swap places."""
    if not bool(flip.any()):
        return batch
    out = dict(batch)
    width = batch["images"].shape[2]
    out["images"] = torch.where(flip[:, None, None, None], batch["images"].flip(2), batch["images"])
    if "segmentation" in batch:
        mirrored = batch["segmentation"].flip(2)
        if class_lut is not None:
            mirrored = class_lut[mirrored.long()].to(mirrored.dtype)
        out["segmentation"] = torch.where(flip[:, None, None], mirrored, batch["segmentation"])
    if "depth" in batch:
        out["depth"] = torch.where(flip[:, None, None], batch["depth"].flip(2), batch["depth"])
    if "keypoints" in batch:
        kps = batch["keypoints"]
        mirrored = kps[:, keypoint_perm] if keypoint_perm is not None else kps.clone()
        mirrored[..., 0] = (width - 1) - mirrored[..., 0]  # pixel centres at integers
        out["keypoints"] = torch.where(flip[:, None, None], mirrored, kps)
    return out


def _pair_permutation(pairs: Sequence[tuple[int, int]], size: int, what: str) -> torch.Tensor:
    perm = torch.arange(size)
    for a, b in pairs:
        if not (0 <= a < size and 0 <= b < size):
            raise ValueError(f"{what} pair ({a}, {b}) is out of range [0, {size})")
        perm[a], perm[b] = b, a
    return perm


def _selection(tasks: Sequence[str]) -> tuple[str, Callable[[dict[str, Any]], float]]:
    if "segmentation" in tasks:
        return "val_miou", lambda s: s["miou"]
    if "keypoints" in tasks:
        return "val_pck", lambda s: s["pck"]
    return "val_neg_abs_rel", lambda s: -s["depth_abs_rel"]


def batches_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimiser steps in one pass over n_train samples: the reference skips incomplete batches, and a set
    smaller than one batch trains as one batch."""
    return max(1, n_train // batch_size)


def planned_steps(n_train: int, *, epochs: int, batch_size: int, max_steps: int | None) -> int:
    """The optimiser steps `train_downstream` takes on n_train samples (without a validation split)."""
    steps = epochs * batches_per_epoch(n_train, batch_size)
    return steps if max_steps is None else min(steps, max_steps)


def train_downstream(
    model: DownstreamNet,
    data: DownstreamData,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    lr: float = 1e-3,
    max_steps: int | None = None,
    device: torch.device | str = "cpu",
    augment: bool = False,
    flip_pairs: Sequence[tuple[int, int]] | None = None,
    flip_class_pairs: Sequence[tuple[int, int]] = (),
    sigma: float = 2.0,
    keypoint_min_visibility: int = 2,
    task_weights: Mapping[str, float] | None = None,
    val_fraction: float = 0.0,
    seg_loss: str = "ce",
    lr_schedule: str = "constant",
    precision: str = "fp32",
    callback: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainSummary:
    """Fit `model` (in place, moved to `device`) on `data`; see the module docstring for losses and determinism.

    epochs: passes over the training samples (reference: 20); max_steps caps the optimiser steps.
    augment: random horizontal flips; flip_pairs lists keypoint indices that swap under a mirror (required
    with keypoints, () when none), flip_class_pairs the class ids that do (e.g. left/right eye).
    sigma: heatmap Gaussian std in pixels. task_weights: loss weight per task (default 1 each).
    val_fraction: share of `data` held out (chosen by seed) to select the best epoch; 0 keeps the last.
    seg_loss: "ce" (the reference) or "ce_dice"; lr_schedule: "constant" (the reference) or "cosine"
    (needs max_steps: the decay ends there); precision: "fp32" or "bf16" (autocast forward).
    callback(step, logs): after every step with "loss" and "loss_<task>"; after each epoch with "epoch"
    and, when validating, the validation scores as "val_<metric>".
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1 or None, got {max_steps}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0 pixels, got {sigma}")
    for name, value, allowed in (("seg_loss", seg_loss, SEG_LOSSES), ("lr_schedule", lr_schedule, LR_SCHEDULES),
                                 ("precision", precision, PRECISIONS)):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    if lr_schedule == "cosine" and max_steps is None:
        raise ValueError("lr_schedule='cosine' decays to 0 at max_steps; pass max_steps")
    tasks = model.tasks
    check_pair(model, data, "training", tasks)
    weights = dict.fromkeys(tasks, 1.0) | dict(task_weights or {})
    unknown = sorted(set(weights) - set(tasks))
    if unknown:
        raise ValueError(f"task_weights names {unknown}, which the model does not predict (it has {list(tasks)})")
    keypoint_perm = class_lut = None
    if augment:
        if "keypoints" in tasks:
            if flip_pairs is None:
                raise ValueError("augment=True with keypoints needs flip_pairs: the keypoint indices that swap "
                                 "under a horizontal flip, e.g. [(0, 1), (3, 4)], or () if none")
            keypoint_perm = _pair_permutation(flip_pairs, model.num_keypoints, "flip_pairs")
        if "segmentation" in tasks and flip_class_pairs:
            class_lut = _pair_permutation(flip_class_pairs, 256, "flip_class_pairs")

    gen = torch.Generator().manual_seed(seed)
    n = len(data)
    order = torch.randperm(n, generator=gen) if val_fraction > 0 else torch.arange(n)
    n_val = max(1, round(val_fraction * n)) if val_fraction > 0 else 0
    if n - n_val < 1:
        raise ValueError(f"val_fraction={val_fraction} leaves no training sample out of {n}; lower it")
    val_idx = order[:n_val].sort().values
    train_idx = order[n_val:].sort().values
    sample_w = data.weights if data.weights is not None else torch.ones(n)
    pool = train_idx[sample_w[train_idx] > 0]
    if pool.numel() == 0:
        raise ValueError("every training sample has weight 0; give some samples a positive weight")
    if model.config["kind"] == "deeplabv3" and min(batch_size, pool.numel()) < 2:
        raise ValueError("DeepLabV3 trains BatchNorm and needs batches of >= 2 images; raise batch_size or add data")

    device = torch.device(device)
    model.to(device)
    if "depth" in tasks and float(model.log_depth_offset) == 0.0:
        offset = mean_log_depth(data.depth, pool)
        if offset is not None:
            model.log_depth_offset.fill_(offset)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = None
    if lr_schedule == "cosine":
        warmup = max(1, round(0.03 * max_steps))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
            1.0 + math.cos(math.pi * min(s, max_steps) / max_steps)))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    selected_on, score_of = _selection(tasks) if n_val else (None, None)
    val_data = data.subset(val_idx) if n_val else None
    best_score, best_epoch, best_state = None, None, None
    history: list[dict[str, float]] = []
    step = 0
    per_epoch = batches_per_epoch(pool.numel(), batch_size)
    for epoch in range(1, epochs + 1):
        model.train()
        perm = pool[torch.randperm(pool.numel(), generator=gen)]
        sums: dict[str, torch.Tensor] = {}  # summed on the device: no host sync per step without a callback
        done = 0
        for b in range(per_epoch):
            idx = perm[b * batch_size:(b + 1) * batch_size]
            batch = {"images": data.images[idx], "weights": sample_w[idx]}
            batch |= {t: getattr(data, t)[idx] for t in tasks}
            if augment:
                batch = _flip(batch, torch.rand(idx.numel(), generator=gen) < 0.5, keypoint_perm, class_lut)
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast:
                out = model(images_to_input(batch["images"]))
            losses = _losses(out, batch, sigma=sigma, min_visibility=keypoint_min_visibility, seg_loss=seg_loss)
            total = sum(weights[t] * losses[t] for t in tasks)
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            if sched is not None:
                sched.step()
            step += 1
            done += 1
            logs = {"loss": total.detach(), **{f"loss_{t}": v.detach() for t, v in losses.items()}}
            sums = {k: sums.get(k, 0.0) + v for k, v in logs.items()}
            if callback is not None:
                callback(step, {k: float(v) for k, v in logs.items()})
            if max_steps is not None and step >= max_steps:
                break
        record = {"epoch": float(epoch), "step": float(step), **{k: float(v) / done for k, v in sums.items()}}
        if val_data is not None:
            scores = evaluate_downstream(model, val_data, batch_size=batch_size, device=device,
                                         keypoint_min_visibility=keypoint_min_visibility)
            record |= {f"val_{k}": v for k, v in scores.items() if isinstance(v, float)}
            score = score_of(scores)
            if best_score is None or score > best_score:
                best_score, best_epoch = score, epoch
                best_state = copy.deepcopy(model.state_dict())
        history.append(record)
        if callback is not None:
            callback(step, record)
        if max_steps is not None and step >= max_steps:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainSummary(steps=step, epochs=len(history), history=history, selected_on=selected_on,
                        best_epoch=best_epoch, best_score=best_score,
                        val_indices=tuple(int(i) for i in val_idx))
