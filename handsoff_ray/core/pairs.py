"""Synthesis: new latents -> image + labels + uncertainty, one deterministic sample per sample id.

    pairs = synthesize(G, lg, sample_ids=range(64), run_seed=0, truncation_psi=0.7)
    pairs.images        # uint8 [N, H, W, 3] at the label generator's resolution
    pairs.labels        # {"segmentation": uint8 [N, H, W], "keypoints": float32 [N, J, 3], "depth": ...}
    pairs.uncertainty   # {task: float32 [N]} image scores (mean of the top 10 % pixel scores)

Each sample's z comes from its own seed, derived from (run seed, sample id) by a hash: a sample is
the same whichever batch, worker or shard produces it, so a dataset can be regenerated, extended or
repaired piecewise. As in the reference, w = mapping(z) is truncated towards the average latent
(psi 0.7) and broadcast to every layer, with the checkpoint's constant noise. Images are brought to
the label resolution with an antialiased resize (the reference's plain bilinear 1024 -> 512 aliases).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from handsoff_ray.core.images import to_uint8
from handsoff_ray.core.inversion import resize_antialiased
from handsoff_ray.core.stylegan2 import Generator, z_from_seeds
from handsoff_ray.core.uncertainty import image_scores, pixel_uncertainty

__all__ = ["SyntheticPairs", "class_prior_shift", "content_rows", "sample_seed", "synthesize"]


def content_rows(crop_rows: tuple[int, int], canvas_height: int, out_height: int) -> slice:
    """The rows of an out_height-row label map that crop_rows (canvas rows) cover; they must land on
    whole rows, e.g. (64, 448) of 512 -> 32..224 at 256, but not at 100 rows."""
    r0, r1 = crop_rows
    if not 0 <= r0 < r1 <= canvas_height:
        raise ValueError(f"crop_rows must satisfy 0 <= start < stop <= {canvas_height}, got {tuple(crop_rows)}")
    if (r0 * out_height) % canvas_height or (r1 * out_height) % canvas_height:
        raise ValueError(f"crop_rows {tuple(crop_rows)} of a {canvas_height}-row canvas do not fall on whole rows "
                         f"of the {out_height}-row label map; choose a feature_resolution that divides them")
    return slice(r0 * out_height // canvas_height, r1 * out_height // canvas_height)


def class_prior_shift(class_pixels, tau: float) -> torch.Tensor:
    """tau * log(class frequency), centred: the logit adjustment (Menon et al., ICLR 2021) that moves a
    class-balanced fit, which learns as if every class were equally likely, towards the labeled images'
    class prior. tau 1 is the full Bayes correction; benchmarks/README.md measures tau on the toy demo."""
    counts = torch.as_tensor(class_pixels, dtype=torch.float64).clamp_min(1)
    log_prior = torch.log(counts / counts.sum())
    return (tau * (log_prior - log_prior.mean())).float()


def sample_seed(run_seed: int, sample_id: int) -> int:
    """A 63-bit seed for one sample, independent of batch layout and worker count."""
    digest = hashlib.blake2b(f"{run_seed}:{sample_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass
class SyntheticPairs:
    sample_ids: np.ndarray  # int64 [N]
    seeds: np.ndarray  # int64 [N]
    images: np.ndarray  # uint8 [N, H, W, 3]
    labels: dict[str, np.ndarray]
    uncertainty: dict[str, np.ndarray]  # image scores, float32 [N] per task
    uncertainty_maps: dict[str, np.ndarray] | None  # float32 [N, H, W] per task, when asked for
    latents: np.ndarray | None  # float32 [N, D] (w before broadcasting), when asked for


@torch.no_grad()
def synthesize(
    G: Generator,
    label_generator,
    *,
    sample_ids: Iterable[int],
    run_seed: int,
    truncation_psi: float = 0.7,
    top_fraction: float = 0.1,
    return_maps: bool = False,
    return_latents: bool = False,
    crop_rows: tuple[int, int] | None = None,
    logit_shift: torch.Tensor | None = None,
) -> SyntheticPairs:
    """Generate one batch of pairs; the batch size is len(sample_ids).

    logit_shift: `[K]` added to every member's segmentation logits before the vote and the uncertainty
    (`class_prior_shift`: a logit adjustment towards the labeled images' class prior).

    crop_rows: (start, stop) content rows of the generator canvas (LSUN-car 512: (64, 448)); images,
    labels and uncertainty then cover only those rows (at the label generator's scale), so the pairs
    are the content frame, e.g. 384x512, and padding rows never count towards an image's score.
    """
    ids = np.asarray(list(sample_ids), dtype=np.int64)
    seeds = np.array([sample_seed(run_seed, int(i)) for i in ids], dtype=np.int64)
    device = G.latent_avg.device
    z = z_from_seeds(seeds.tolist(), G.style_dim).to(device)
    ws = G.mapping(z, truncation_psi=truncation_psi)  # [N, L, D], the same w at every layer
    img, feats = G.synthesis(ws, noise_mode="const", return_features=True)
    out_h, out_w = label_generator.out_size
    rows = slice(0, out_h)
    if crop_rows is not None:
        rows = content_rows(crop_rows, img.shape[-2], out_h)
        img = img[:, :, crop_rows[0] : crop_rows[1]]
    size = (rows.stop - rows.start, out_w)
    img = resize_antialiased(img, size)
    images = to_uint8(img)

    outputs = label_generator.predict(feats)  # {task: [E, N, K, H, W]}
    if logit_shift is not None and "segmentation" in outputs:
        outputs["segmentation"] = outputs["segmentation"] + logit_shift.to(outputs["segmentation"]).view(1, 1, -1, 1, 1)
    if crop_rows is not None:
        outputs = {task: out[..., rows, :] for task, out in outputs.items()}  # -> [E, N, K, content rows, W]
    labels, scores, maps = {}, {}, {}
    for task, out in outputs.items():
        kind = label_generator.tasks[task].kind
        decoded = label_generator.decode(task, out)
        labels[task] = decoded.to(torch.uint8 if kind == "segmentation" else torch.float32).cpu().numpy()
        pix = pixel_uncertainty(kind, out)  # [N, H, W]
        scores[task] = image_scores(pix, top_fraction=top_fraction).float().cpu().numpy()
        if return_maps:
            maps[task] = pix.float().cpu().numpy()
    return SyntheticPairs(
        sample_ids=ids, seeds=seeds, images=images, labels=labels, uncertainty=scores,
        uncertainty_maps=maps if return_maps else None,
        latents=ws[:, 0].float().cpu().numpy() if return_latents else None,
    )
