"""`LabelGenerator`: per task, an ensemble of per-pixel MLPs over hypercolumns; inference and decoding.

Each ensemble member is the reference MLP `Linear -> ReLU -> BatchNorm1d -> Linear -> ReLU ->
BatchNorm1d -> Linear` (ReLU *before* BatchNorm, weights ~ N(0, 0.02), zero biases). One spec may ask
for several tasks; they share the input features and each has its own ensemble (`TaskSpec.hidden`).

Inference (`LabelGenerator.predict`) never builds the hypercolumn: the first Linear of every member of
every head is stacked into one `[sum_t E*h1_t, C]` projection applied per feature map at its native
resolution and resized (see hypercolumn.iter_projected_rows); BatchNorm is folded into the next
Linear; the rest runs per block of output rows as batched matmuls over members. `predict_naive` is
the reference path (materialise the hypercolumn, run each member per pixel).

Tests: `python -m pytest -q tests/core/test_label_generator.py`; speed: `python benchmarks/labelgen.py`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from handsoff_ray.core.hypercolumn import iter_projected_rows, naive_hypercolumn
from handsoff_ray.core.label_generator.tasks import TaskSpec, derive_seed, decode_keypoints
from handsoff_ray.core.uncertainty import majority_vote


def _make_member(in_channels: int, hidden: tuple[int, int], out_channels: int,
                 generator: torch.Generator) -> nn.Sequential:
    h1, h2 = hidden
    mlp = nn.Sequential(
        nn.Linear(in_channels, h1), nn.ReLU(), nn.BatchNorm1d(h1),
        nn.Linear(h1, h2), nn.ReLU(), nn.BatchNorm1d(h2),
        nn.Linear(h2, out_channels),
    )
    for m in mlp:
        if isinstance(m, nn.Linear):
            with torch.no_grad():
                m.weight.normal_(0.0, 0.02, generator=generator)
                m.bias.zero_()
    return mlp


class TaskHead(nn.Module):
    """The E member MLPs of one task, plus the target normalisation (depth: log-depth mean, std)."""

    def __init__(self, in_channels: int, spec: TaskSpec, member_seeds: Sequence[int]):
        super().__init__()
        self.members = nn.ModuleList(
            _make_member(in_channels, spec.hidden, spec.num_outputs, torch.Generator().manual_seed(s))
            for s in member_seeds)
        self.register_buffer("target_norm", torch.tensor([0.0, 1.0]))

    def folded(self, positions: Sequence[int]) -> dict[str, Any]:
        """Eval-mode weights of the given members, with each BatchNorm folded into the next Linear.

        First layers stay per member (`w1`, `b1`: lists of `[h1, C]`, `[h1]`) so the caller stacks
        every head's members with one copy; later layers are stacked `[E, out, in]`, `[E, out]`.
        """
        w1, b1, w2, b2, w3, b3 = [], [], [], [], [], []
        for p in positions:
            lin1, _, bn1, lin2, _, bn2, lin3 = self.members[p]
            w1.append(lin1.weight)
            b1.append(lin1.bias)
            # BN(r) = a*r + c, so lin2(BN(r)) = (W2 * a) r + (W2 c + b2).
            for bn, lin, ws, bs in ((bn1, lin2, w2, b2), (bn2, lin3, w3, b3)):
                a = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                c = bn.bias - bn.running_mean * a
                ws.append(lin.weight * a[None, :])
                bs.append(lin.bias + lin.weight @ c)
        return {"w1": w1, "b1": b1, "w2": torch.stack(w2), "b2": torch.stack(b2), "w3": torch.stack(w3),
                "b3": torch.stack(b3)}


class LabelGenerator(nn.Module):
    """Ensembles of per-pixel MLPs, one per task, over hypercolumns of width sum(feature_channels)."""

    def __init__(self, feature_channels: Sequence[int], tasks: Mapping[str, TaskSpec], *,
                 out_size: tuple[int, int], ensemble_size: int = 10,
                 member_ids: Sequence[int] | None = None, seed: int = 0):
        super().__init__()
        if not tasks:
            raise ValueError("tasks is empty: pass at least one TaskSpec, e.g. {'seg': TaskSpec('segmentation', 8)}")
        ids = list(range(ensemble_size)) if member_ids is None else sorted(int(i) for i in member_ids)
        if not ids or len(set(ids)) != len(ids) or min(ids) < 0 or max(ids) >= ensemble_size:
            raise ValueError(f"member_ids must be distinct ids in [0, {ensemble_size}), got {member_ids}")
        self.feature_channels = [int(c) for c in feature_channels]
        self.tasks = dict(tasks)
        self.out_size = (int(out_size[0]), int(out_size[1]))
        self.ensemble_size = int(ensemble_size)
        self.member_ids = ids
        self.seed = int(seed)
        self.history_summary: dict[str, dict[str, Any]] = {}
        self._plan_cache: tuple[Any, Any] | None = None  # see _inference_plan
        in_channels = sum(self.feature_channels)
        self.heads = nn.ModuleDict({
            name: TaskHead(in_channels, spec, [derive_seed(seed, name, m, "init") for m in ids])
            for name, spec in self.tasks.items()})

    # ------------------------------------------------------------------ inference
    def _positions(self, members: Sequence[int] | None) -> list[int]:
        if members is None:
            return list(range(len(self.member_ids)))
        missing = [m for m in members if m not in self.member_ids]
        if missing:
            raise ValueError(f"members {missing} are not in this label generator (it holds {self.member_ids})")
        return [self.member_ids.index(m) for m in members]

    def forward_pixels(self, task: str, x: torch.Tensor, *, members: Sequence[int] | None = None) -> torch.Tensor:
        """Run each member's MLP on hypercolumn rows `[P, C]` -> `[E, P, K]` (uses the modules' train/eval mode)."""
        head = self.heads[task]
        return torch.stack([head.members[p](x) for p in self._positions(members)])

    @torch.no_grad()
    def predict(self, features: Sequence[torch.Tensor], *, members: Sequence[int] | None = None,
                chunk: int | None = None, block_bytes: int | None = None,
                cache_bytes: int | None = None) -> dict[str, torch.Tensor]:
        """Factorized eval-mode outputs `{task: [E, N, K, H, W]}` for feature maps `[N, C_l, h_l, w_l]`.

        Logits for segmentation, heatmaps for keypoints, normalised log-depth for depth (see `decode`).
        BatchNorm always uses its running statistics. `chunk` output rows are processed at a time; by
        default as many as keep the stacked first-layer block `[N, chunk, W, sum E*h1]` under
        `block_bytes`, and each resolution caches up to `cache_bytes` of projected native rows.
        Defaults: 8 MiB / 2 MiB on CPU (blocks stay in cache: ~100 MB peak for E=10 at 512x512,
        most of it the output), 256 MiB / 64 MiB on GPUs (fewer, larger kernels).
        """
        self._check_features(features)
        positions = self._positions(members)
        n = features[0].shape[0]
        height, width = self.out_size
        plans, w1, b1 = self._inference_plan(positions)
        on_cpu = w1.device.type == "cpu"
        block_bytes = block_bytes or (8 if on_cpu else 256) * 2**20
        cache_bytes = cache_bytes or (2 if on_cpu else 64) * 2**20
        # Images are processed in groups small enough that one output row of the group's block fits
        # `block_bytes`: with wide first layers (E*h1 = 5120 for the toy spec) a 32-image row block is
        # 42 MB and every resize-and-add pass streams it from DRAM; 6-image groups stay in cache and
        # measured 2.2x faster on CPU. Each pixel's arithmetic is unchanged, so outputs are identical.
        row_bytes = w1.shape[0] * width * w1.element_size()
        group = max(1, min(n, block_bytes // max(1, row_bytes)))
        if chunk is None:
            chunk = max(1, min(height, block_bytes // max(1, group * row_bytes)))
        e = len(positions)
        outputs = {name: torch.empty(e, n, spec.num_outputs, height, width, device=w1.device, dtype=w1.dtype)
                   for name, spec in self.tasks.items()}
        for i0 in range(0, n, group):
            i1 = min(n, i0 + group)
            self._predict_group([f[i0:i1] for f in features], plans, w1, b1, chunk, cache_bytes,
                                {name: out[:, i0:i1] for name, out in outputs.items()})
        return outputs

    def _predict_group(self, features, plans, w1, b1, chunk: int, cache_bytes: int,
                       outputs: dict[str, torch.Tensor]) -> None:
        """`predict` for one group of images, writing into `outputs` (views `[E, n, K, H, W]`)."""
        n, width = features[0].shape[0], self.out_size[1]
        e = next(iter(outputs.values())).shape[0]
        for r0, r1, block in iter_projected_rows(features, w1, b1, self.out_size, chunk_rows=chunk,
                                                 cache_bytes=cache_bytes):
            rows = r1 - r0
            pixels = block.view(-1, block.shape[-1]).relu_()  # [n, rows, W, O] -> [P, O], all heads' layer 1
            o0 = 0
            for name, spec in self.tasks.items():
                plan, h1 = plans[name], spec.hidden[0]
                # Members as the batch: [P, E*h1] -> [E, P, h1] (a strided view; bmm reads it in place).
                hidden1 = pixels[:, o0:o0 + e * h1].view(-1, e, h1).transpose(0, 1)
                hidden2 = torch.baddbmm(plan["b2"][:, None], hidden1, plan["w2"].transpose(1, 2)).relu_()
                y = torch.baddbmm(plan["b3"][:, None], hidden2, plan["w3"].transpose(1, 2))  # [E, P, K]
                # [E, n*rows*W, K] -> [E, n, K, rows, W]
                outputs[name][:, :, :, r0:r1] = y.view(e, n, rows, width, -1).permute(0, 1, 4, 2, 3)
                o0 += e * h1

    @torch.no_grad()
    def _inference_plan(self, positions: list[int]) -> tuple[dict[str, dict[str, Any]], torch.Tensor, torch.Tensor]:
        """Folded per-head weights plus every head's first layers stacked into `[sum E*h1, C]`, `[sum E*h1]`.

        The stack is a copy of all first-layer weights (61 MB for E=10, h1=256, C=6016), so it is kept
        between calls and rebuilt only when a parameter or buffer changes (in-place updates bump
        `_version`; `.to()` and `load_state_dict` change storage or version) or the members differ.
        """
        key = (tuple(positions), tuple((t.data_ptr(), t._version) for t in (*self.parameters(), *self.buffers())))
        if self._plan_cache is None or self._plan_cache[0] != key:
            self._plan_cache = None  # free the old stack before building the new one
            plans = {name: head.folded(positions) for name, head in self.heads.items()}
            w1 = torch.cat([w for plan in plans.values() for w in plan.pop("w1")])
            b1 = torch.cat([b for plan in plans.values() for b in plan.pop("b1")])
            self._plan_cache = (key, (plans, w1, b1))
        return self._plan_cache[1]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_plan_cache": None}  # never ship the stacked copy (pickling, deepcopy, Ray)

    def decode(self, task: str, outputs: torch.Tensor) -> torch.Tensor:
        """Labels from `[E, N, K, H, W]` outputs: class ids `[N, H, W]`, keypoints `[N, J, 3]` (x, y, v),
        or depth `[N, H, W]` in the dataset's units."""
        spec = self.tasks[task]
        if spec.kind == "segmentation":
            return majority_vote(outputs)
        if spec.kind == "keypoints":
            return decode_keypoints(outputs.mean(0), threshold=spec.visibility_threshold)
        mu, sd = self.heads[task].target_norm.tolist()
        return torch.exp(mu + sd * outputs.mean(0)[:, 0])

    def _check_features(self, features: Sequence[torch.Tensor]) -> None:
        got = [int(f.shape[1]) for f in features]
        if got != self.feature_channels:
            raise ValueError(f"feature maps have channels {got} but this label generator was fitted on "
                             f"{self.feature_channels}; pass the same generator's features in HandsOff order")

    def config(self) -> dict[str, Any]:
        return {"feature_channels": self.feature_channels, "out_size": list(self.out_size),
                "ensemble_size": self.ensemble_size, "member_ids": self.member_ids, "seed": self.seed,
                "tasks": {name: spec.to_dict() for name, spec in self.tasks.items()}}


@torch.no_grad()
def predict_naive(lg: LabelGenerator, features: Sequence[torch.Tensor], *, members: Sequence[int] | None = None,
                  chunk_pixels: int = 16384, hypercolumn: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Reference path: materialise `[N, C, H, W]` hypercolumns and run every member per pixel (eval mode).

    Pass `hypercolumn=naive_hypercolumn(features, lg.out_size)` to reuse one already built.
    """
    lg._check_features(features)
    was_training = lg.training
    lg.eval()
    height, width = lg.out_size
    hc = naive_hypercolumn(features, lg.out_size) if hypercolumn is None else hypercolumn
    n, c = hc.shape[:2]
    pixels = hc.view(n, c, height * width)
    outputs = {}
    for name, spec in lg.tasks.items():
        out = []
        for i in range(n):
            per_image = [lg.forward_pixels(name, pixels[i, :, p0:p0 + chunk_pixels].T, members=members)
                         for p0 in range(0, height * width, chunk_pixels)]  # each [E, P, K]
            out.append(torch.cat(per_image, dim=1).transpose(1, 2).reshape(-1, spec.num_outputs, height, width))
        outputs[name] = torch.stack(out, dim=1)  # [E, N, K, H, W]
    lg.train(was_training)
    return outputs

