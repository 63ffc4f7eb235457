"""Which images to label: image descriptors and budgeted selection over an unlabeled pool. Pure PyTorch.

    feats = image_descriptors(lp, images)                   # [N, D] from the offline ImageNet trunk (LPIPS')
    pick = select_typical(feats, budget=16, seed=0)         # round one: one typical image per pool mode
    pick = select_kcenter(feats, budget=16)                 # or: cover the pool's extremes (core-set)
    pick = select_after_fit(feats[short], labeled_feats, uncertainty, budget=8)   # a later round

Two ways to spend a small budget, and why both exist. k-center greedy (Sener & Savarese, ICLR 2018)
minimises the largest distance from any pool image to its nearest chosen one: it covers the pool, but at
16 of thousands it spends most picks on outliers. TypiClust (Hacohen et al., ICML 2022, "Active learning
on a budget") clusters the pool into `budget` groups and takes each group's most *typical* member (densest
neighbourhood): at budgets this small it beats coverage, and it is what the label generator needs -- the
parts as they usually look, every usual look once. `benchmarks/suggest.py` measures both on the toy world.

Descriptors: LPIPS' ImageNet trunk (VGG16 or AlexNet, read offline), each layer's channel-normalised
activations pooled to their spatial mean and standard deviation (appearance and layout statistics, the
same features LPIPS compares), each layer weighted equally, then PCA-whitened to `dims` on the pool.

Every function is deterministic for its inputs and seed; ties break to the lower index.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Selection", "image_descriptors", "project", "select_kcenter", "select_typical", "select_after_fit",
           "coverage_radius"]


@dataclass(frozen=True)
class Selection:
    """Chosen pool indices, best first, with each pick's score and a one-line reason."""

    indices: list[int]
    scores: list[float]
    why: list[str]


@torch.no_grad()
def image_descriptors(lpips_model, images: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] in [-1, 1] -> [N, D] float32: per LPIPS layer, mean and std of the unit-normalised
    activations over space, each layer's block scaled to unit norm so no layer dominates by width."""
    parts = []
    for f in lpips_model.target_features(images):
        block = torch.cat([f.mean((2, 3)), f.std((2, 3), unbiased=False)], 1)
        parts.append(block / block.shape[1] ** 0.5)
    return torch.cat(parts, 1).float()


def project(features: torch.Tensor, dims: int = 64, *, fit_on: torch.Tensor | None = None,
            max_fit: int = 20_000) -> torch.Tensor:
    """Centre on `fit_on` (default: features), keep the top `dims` principal directions and whiten them, so
    distances weigh every strong direction of variation alike. The directions are fitted on at most
    `max_fit` rows (every k-th: 10^5 pool images cost one 20,000-row fit); deterministic, sign-fixed."""
    ref = features if fit_on is None else fit_on
    if len(ref) > max_fit:
        ref = ref[:: -(-len(ref) // max_fit)]
    ref = ref.double()
    mean = ref.mean(0, keepdim=True)
    c = ref - mean
    n, d = c.shape
    k = min(dims, n - 1 if n > 1 else 1, d)
    if n < d:  # the Gram matrix is the smaller eigenproblem: c c^T = U L U^T, directions c^T U / sqrt(L)
        evals, u = torch.linalg.eigh(c @ c.T)
        evals, u = evals.flip(0)[:k].clamp_min(1e-24), u.flip(1)[:, :k]
        vh = (c.T @ u / evals.sqrt()).T
    else:
        evals, v = torch.linalg.eigh(c.T @ c)
        evals, vh = evals.flip(0)[:k].clamp_min(1e-24), v.flip(1)[:, :k].T
    vh = vh * torch.sign(vh[torch.arange(k), vh.abs().argmax(1)])[:, None]  # a fixed sign per direction
    scale = (evals / max(1, n - 1)).sqrt().clamp_min(1e-12)
    out = torch.empty(len(features), k)
    for s in range(0, len(features), 8192):  # bounded memory at 10^5 rows
        out[s : s + 8192] = (((features[s : s + 8192].double() - mean) @ vh.T) / scale).float()
    return out


def _min_dist(x: torch.Tensor, centres: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """[N] distance from each row of x to its nearest row of centres (chunked: bounded memory at 10^5 rows)."""
    out = torch.empty(x.shape[0])
    for s in range(0, x.shape[0], chunk):
        out[s : s + chunk] = torch.cdist(x[s : s + chunk], centres).min(1).values
    return out


def coverage_radius(x: torch.Tensor, chosen: list[int]) -> tuple[float, float]:
    """(max, mean) distance from a pool image to its nearest chosen image: what k-center minimises."""
    d = _min_dist(x, x[chosen])
    return float(d.max()), float(d.mean())


def select_kcenter(x: torch.Tensor, budget: int, *, already: torch.Tensor | None = None) -> Selection:
    """k-center greedy: repeatedly take the pool image farthest from everything chosen (and `already`,
    features of images labeled before). Starts at the image nearest the pool mean when nothing is chosen."""
    _check_budget(x, budget)
    if already is not None and len(already):
        dist = _min_dist(x, already)
    else:
        dist = torch.full((x.shape[0],), float("inf"))
    picks, scores = [], []
    for _ in range(budget):
        if torch.isinf(dist).all():
            i = int(torch.cdist(x, x.mean(0, keepdim=True))[:, 0].argmin())
            score = 0.0
        else:
            i = int(dist.argmax())
            score = float(dist[i])
        picks.append(i)
        scores.append(score)
        dist = torch.minimum(dist, torch.cdist(x, x[i : i + 1])[:, 0])
        dist[picks] = -1.0
    why = ["nearest the pool's centre" if s == 0.0 else f"farthest from the chosen set (distance {s:.2f})" for s in scores]
    return Selection(picks, scores, why)


def _kmeans(x: torch.Tensor, k: int, *, seed: int, iters: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means with k-means++ seeding from a seeded generator: (assignment [N], centres [k, D])."""
    g = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    centres = [int(torch.randint(n, (1,), generator=g))]
    d2 = torch.cdist(x, x[centres[-1:]])[:, 0].square()
    for _ in range(1, k):
        total = float(d2.sum())
        i = int(torch.multinomial(d2 / total, 1, generator=g)) if total > 0 else int(d2.argmax())
        centres.append(i)
        d2 = torch.minimum(d2, torch.cdist(x, x[i : i + 1])[:, 0].square())
    c = x[centres].clone()
    assign = torch.full((n,), -1, dtype=torch.long)
    for _ in range(iters):
        new = torch.cat([torch.cdist(x[s : s + 8192], c).argmin(1) for s in range(0, n, 8192)])
        if torch.equal(new, assign):
            break
        assign = new
        for j in range(k):
            members = x[assign == j]
            if len(members):
                c[j] = members.mean(0)
    return assign, c


def _typicality(x: torch.Tensor, members: torch.Tensor, candidates: torch.Tensor, k_nn: int) -> torch.Tensor:
    """1 / mean distance to the k nearest other members, for each candidate (TypiClust's density)."""
    k = min(k_nn, len(members) - 1)
    if k <= 0:
        return torch.ones(len(candidates))
    d = torch.cdist(x[candidates], x[members])
    nn = d.topk(k + 1, largest=False).values[:, 1:]  # drop the candidate itself (distance 0)
    return 1.0 / (nn.mean(1) + 1e-8)


def select_typical(x: torch.Tensor, budget: int, *, seed: int = 0, k_nn: int = 20, candidates: int = 512,
                   already: torch.Tensor | None = None) -> Selection:
    """TypiClust: k-means into budget + len(already) clusters; from each cluster no image of `already` falls
    in, its most typical member; the biggest uncovered clusters first. Typicality is computed for the
    `candidates` members nearest each centre (bounded cost at 10^5 pool images)."""
    _check_budget(x, budget)
    n_old = 0 if already is None else len(already)
    k = min(x.shape[0], budget + n_old)
    assign, centres = _kmeans(x, k, seed=seed)
    covered = set() if not n_old else set(torch.cdist(already, centres).argmin(1).tolist())
    sizes = torch.bincount(assign, minlength=k)
    order = sorted((j for j in range(k) if j not in covered and sizes[j] > 0), key=lambda j: (-int(sizes[j]), j))
    picks, scores, why = [], [], []
    for j in order[:budget]:
        members = torch.nonzero(assign == j)[:, 0]
        near = members[torch.cdist(x[members], centres[j : j + 1])[:, 0].argsort()[:candidates]]
        t = _typicality(x, members, near, k_nn)
        best = int(t.argmax())
        picks.append(int(near[best]))
        scores.append(float(sizes[j]) / x.shape[0])
        why.append(f"most typical of a group of {int(sizes[j])} pool images ({100 * float(sizes[j]) / x.shape[0]:.1f} %)")
    if len(picks) < budget:  # clusters ran out (duplicates or `already` covered them): cover what is left
        rest = select_kcenter(x, budget - len(picks), already=torch.cat([t for t in (already, x[picks]) if t is not None and len(t)]))
        picks += rest.indices
        scores += rest.scores
        why += rest.why
    return Selection(picks, scores, why)


def select_after_fit(x: torch.Tensor, labeled: torch.Tensor, uncertainty: torch.Tensor, budget: int) -> Selection:
    """A later round over a shortlist: greedily take the image with the best sum of two ranks, the label
    generator's disagreement on it and its distance to the labeled images and the picks so far (so the
    round does not spend its budget on near-duplicates of one hard image)."""
    _check_budget(x, budget)
    n = x.shape[0]
    u_rank = uncertainty.argsort().argsort().double() / max(1, n - 1)
    dist = _min_dist(x, labeled) if len(labeled) else torch.full((n,), float("inf"))
    picks, scores, why = [], [], []
    for _ in range(budget):
        finite = torch.where(torch.isinf(dist), torch.full_like(dist, 1e30), dist)
        d_rank = finite.argsort().argsort().double() / max(1, n - 1)
        score = u_rank + d_rank
        score[picks] = -1.0
        i = int(score.argmax())
        picks.append(i)
        scores.append(float(score[i]))
        why.append(f"label generator unsure (JS {float(uncertainty[i]):.4f}, rank {n - int(round(float(u_rank[i]) * (n - 1)))} "
                   f"of {n}) and far from the labeled images (distance {float(dist[i]):.2f})")
        dist = torch.minimum(dist, torch.cdist(x, x[i : i + 1])[:, 0])
    return Selection(picks, scores, why)


def _check_budget(x: torch.Tensor, budget: int) -> None:
    if x.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {tuple(x.shape)}")
    if not 1 <= budget <= x.shape[0]:
        raise ValueError(f"budget {budget} must be between 1 and the pool size {x.shape[0]}")
