"""Fitting the label generator: `fit_label_generator`, and `merge_label_generators` for parts fitted apart.

Training (`fit_label_generator`) samples pixel batches across all labeled images and gathers their
hypercolumn rows from the native maps (hypercolumn.gather_hypercolumn). Every (task, member) pair is
fitted on its own, seeded by a hash of (seed, task, member id) — so fitting members [3, 4] on one
worker gives bit-identical weights to fitting all ten together (same device type and library build);
`merge_label_generators` joins the parts. A fixed random `val_fraction` of pixels (drawn from `seed`
alone) is never trained on; each member keeps the weights of its best validation loss and stops after
`patience` evaluations without improvement. Batches sample pixels uniformly over all labeled images;
`class_balanced=True` draws every present segmentation class equally often, and keypoint heads draw
`positive_fraction` of each batch from within 3 sigma of a trained keypoint (otherwise nearly every
sampled heatmap value is 0 and the head learns to predict zeros).

Tests: `python -m pytest -q tests/core/test_label_generator.py`; speed: `python benchmarks/labelgen_fit.py`.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Literal, Mapping, Sequence

import torch
from torch import nn

from handsoff_ray.core.hypercolumn import PixelGatherer
from handsoff_ray.core.label_generator.model import LabelGenerator
from handsoff_ray.core.label_generator.pools import build_task_data, sample_pixels, TaskData
from handsoff_ray.core.label_generator.tasks import TaskSpec, derive_seed


def _gather(gatherer: PixelGatherer, flat: torch.Tensor) -> torch.Tensor:
    """Hypercolumn rows `[P, C]` at flat pixel indices n*H*W + y*W + x."""
    height, width = gatherer.out_size
    return gatherer(flat // (height * width), (flat // width) % height, flat % width)


class _ValSet:
    """Validation hypercolumn rows gathered once per task (shared by its members), in chunks."""

    def __init__(self, gatherer: PixelGatherer, data: TaskData, chunk: int = 4096):
        self.data = data
        self.parts = [[(flat[i:i + chunk], _gather(gatherer, flat[i:i + chunk]))
                       for i in range(0, flat.numel(), chunk)] for flat in data.val_pools]

    @torch.no_grad()
    def loss(self, member: nn.Module) -> float:
        """Pool-weighted mean validation loss, so it tracks the objective the batches sample."""
        member.eval()
        total = 0.0
        for weight, parts in zip(self.data.pool_weights.tolist(), self.parts):
            count = sum(int(f.numel()) for f, _ in parts)
            if count == 0:
                continue
            s = sum(float(self.data.loss(member(x), f)) * f.numel() for f, x in parts)
            total += weight * s / count
        member.train()
        return total


def _fit_member(member: nn.Module, gatherer: PixelGatherer, data: TaskData, val: _ValSet | None, *,
                gen: torch.Generator, max_steps: int, batch_pixels: int, lr: float, lr_schedule: str,
                eval_every: int, patience: int, report: Callable[[int, float, float | None], None]) -> dict[str, Any]:
    member.train()
    opt = torch.optim.Adam(member.parameters(), lr=lr)
    # cosine: the rate decays to 0 at max_steps, so the last steps settle into a minimum instead of
    # hopping around it at the full rate (small classes are where that noise shows).
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max_steps) if lr_schedule == "cosine" else None
    best, best_step, best_state, bad = math.inf, 0, None, 0
    steps, train_losses, val_losses, running, stopped_early = [], [], [], 0.0, False
    for step in range(1, max_steps + 1):
        flat = sample_pixels(data, batch_pixels, gen)
        loss = data.loss(member(_gather(gatherer, flat)), flat)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        running += loss.item()
        if step % eval_every and step != max_steps:
            continue
        train_loss = running / (step - (steps[-1] if steps else 0))
        running = 0.0
        val_loss = val.loss(member) if val is not None else None
        steps.append(step)
        train_losses.append(train_loss)
        val_losses.append(val_loss)
        report(step, train_loss, val_loss)
        if val_loss is None:
            continue
        if val_loss < best:
            best, best_step, bad = val_loss, step, 0
            best_state = copy.deepcopy(member.state_dict())
        else:
            bad += 1
            if bad >= patience:
                stopped_early = True
                break
    if best_state is not None:
        member.load_state_dict(best_state)
    member.eval()
    return {"steps": steps, "train_loss": train_losses, "val_loss": val_losses, "best_step": best_step or steps[-1],
            "best_val_loss": None if best_state is None else best, "stopped_early": stopped_early}


def _stack_features(features_per_image: Sequence[Sequence[torch.Tensor]],
                    device: torch.device | str | None) -> list[torch.Tensor]:
    """Per layer, one `[N, C_l, h_l, w_l]` tensor on `device`, channels-last so a pixel's C_l values are contiguous."""
    if not features_per_image:
        raise ValueError("features_per_image is empty: pass one feature list per labeled image")
    n_images, n_layers = len(features_per_image), len(features_per_image[0])
    for i, feats in enumerate(features_per_image):
        if len(feats) != n_layers:
            raise ValueError(f"image {i} has {len(feats)} feature maps, image 0 has {n_layers}; "
                             "use the same generator for every image")
    device = torch.device(device) if device is not None else features_per_image[0][0].device
    stacked = []
    for layer in range(n_layers):
        first = features_per_image[0][layer]
        shape = tuple(first.shape[-3:])  # accept [C, h, w] or [1, C, h, w]
        out = torch.empty((n_images, *shape), dtype=first.dtype, device=device, memory_format=torch.channels_last)
        for i, feats in enumerate(features_per_image):
            f = feats[layer]
            if tuple(f.shape[-3:]) != shape or f.dim() - 3 not in (0, 1) or (f.dim() == 4 and f.shape[0] != 1):
                raise ValueError(f"image {i} layer {layer} has shape {tuple(f.shape)}, expected {shape} "
                                 f"or {(1, *shape)} like image 0")
            out[i] = f.detach().reshape(shape)  # features are inputs here, never trained through
        stacked.append(out)
    return stacked


def fit_label_generator(features_per_image: Sequence[Sequence[torch.Tensor]],
                        targets: Mapping[str, torch.Tensor], tasks: Mapping[str, TaskSpec], *,
                        out_size: tuple[int, int], ensemble_size: int = 10, members: Sequence[int] | None = None,
                        max_steps: int = 3000, batch_pixels: int = 2048, lr: float = 1e-3,
                        lr_schedule: Literal["constant", "cosine"] = "constant", class_balanced: bool = False, val_fraction: float = 0.1, max_val_pixels: int = 8192,
                        eval_every: int = 100, patience: int = 10, seed: int = 0,
                        callback: Callable[[dict[str, Any]], None] | None = None,
                        device: torch.device | str | None = None) -> tuple[LabelGenerator, dict[str, Any]]:
    """Fit the label generator's heads on labeled images; returns `(label_generator, history)`.

    features_per_image: per labeled image, its feature maps (`[C_l, h_l, w_l]` or `[1, C_l, h_l, w_l]`,
      HandsOff order; fp16 storage is fine, rows are gathered in fp32). targets: `{task: tensor}` as
      described in the module docstring, at `out_size`. members: member ids to fit (default all
      `range(ensemble_size)`); fit disjoint subsets on different workers and `merge_label_generators`.
    max_steps / batch_pixels: Adam steps and pixels per step, per member (reference: batch 64 for
      ~4 epochs; larger batches make the same pixel count far faster). lr_schedule: "constant" (the
      reference) or "cosine" (decays to 0 at max_steps). class_balanced: segmentation
      batches draw each present class equally often. val_fraction: share of all pixels held out
      (0 disables early stopping; the last weights are kept). eval_every / patience: validation
      cadence in steps and how many evaluations without improvement stop a member.
    callback: called with {"task", "member", "step", "train_loss", "val_loss"} after each evaluation.
    history: `{task: {member_id: {"steps", "train_loss", "val_loss", "best_step", "best_val_loss",
      "stopped_early"}}}`.
    """
    features = _stack_features(features_per_image, device)
    device = features[0].device
    n_images = features[0].shape[0]
    height, width = out_size
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"lr_schedule must be constant or cosine, got {lr_schedule!r}")
    if batch_pixels < 2:
        raise ValueError(f"batch_pixels must be >= 2 (BatchNorm needs a batch), got {batch_pixels}")
    if set(targets) != set(tasks):
        raise ValueError(f"targets has tasks {sorted(targets)} but tasks has {sorted(tasks)}; give one target per task")
    lg = LabelGenerator([f.shape[1] for f in features], tasks, out_size=out_size, ensemble_size=ensemble_size,
                        member_ids=members, seed=seed).to(device)
    gatherer = PixelGatherer(features, lg.out_size)
    split_gen = torch.Generator().manual_seed(derive_seed(seed, "split"))
    is_val = torch.rand(n_images * height * width, generator=split_gen) < val_fraction
    history: dict[str, Any] = {}
    for name, spec in tasks.items():
        data = build_task_data(name, spec, targets[name], is_val, lg.out_size, class_balanced=class_balanced,
                                max_val_pixels=max_val_pixels, seed=seed)
        head = lg.heads[name]
        head.target_norm.copy_(torch.tensor(data.target_norm))
        val = _ValSet(gatherer, data) if val_fraction > 0 else None
        history[name] = {}
        for pos, member_id in enumerate(lg.member_ids):
            def report(step: int, train_loss: float, val_loss: float | None, _m: int = member_id) -> None:
                if callback is not None:
                    callback({"task": name, "member": _m, "step": step, "train_loss": train_loss,
                              "val_loss": val_loss})
            history[name][member_id] = _fit_member(
                head.members[pos], gatherer, data, val,
                gen=torch.Generator().manual_seed(derive_seed(seed, name, member_id, "sample")),
                max_steps=max_steps, batch_pixels=batch_pixels, lr=lr, lr_schedule=lr_schedule, eval_every=eval_every,
                patience=patience, report=report)
    lg.eval()
    lg.history_summary = {name: {str(m): {k: h[k] for k in ("best_step", "best_val_loss", "stopped_early")}
                                 | {"last_step": h["steps"][-1]} for m, h in per.items()}
                          for name, per in history.items()}
    return lg, history


def merge_label_generators(parts: Sequence[LabelGenerator]) -> LabelGenerator:
    """Join label generators fitted on disjoint member subsets (same features, tasks, seed) into one."""
    if not parts:
        raise ValueError("merge_label_generators needs at least one part")
    first = parts[0]

    def shared(lg: LabelGenerator) -> dict[str, Any]:
        return {k: v for k, v in lg.config().items() if k != "member_ids"}

    for p in parts[1:]:
        if shared(p) != shared(first):
            raise ValueError("label generator parts differ in features, tasks, out_size, ensemble_size or seed; "
                             "fit every part from the same spec and seed")
        for name in first.tasks:
            if not torch.equal(p.heads[name].target_norm, first.heads[name].target_norm):
                raise ValueError(f"parts disagree on task {name!r}'s target normalisation; "
                                 "fit them on the same targets")
    ids = [m for p in parts for m in p.member_ids]
    if len(set(ids)) != len(ids):
        raise ValueError(f"parts share member ids {sorted({m for m in ids if ids.count(m) > 1})}; fit disjoint subsets")
    merged = LabelGenerator(first.feature_channels, first.tasks, out_size=first.out_size,
                            ensemble_size=first.ensemble_size, member_ids=ids, seed=first.seed)
    merged.to(next(first.parameters()).device)
    source = {m: (p, p.member_ids.index(m)) for p in parts for m in p.member_ids}
    for name in first.tasks:
        merged.heads[name].target_norm.copy_(first.heads[name].target_norm)
        for pos, m in enumerate(merged.member_ids):
            part, src = source[m]
            merged.heads[name].members[pos].load_state_dict(part.heads[name].members[src].state_dict())
        merged.history_summary[name] = {k: v for p in parts for k, v in p.history_summary.get(name, {}).items()}
    merged.eval()
    return merged

