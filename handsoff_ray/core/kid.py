"""KID, and a feature space for it that works for any domain: the ImageNet trunk of LPIPS.

    f = trunk_features(lpips_model, images)      # [N, 3, H, W] in [-1, 1] -> [N, d]
    kid(f_fake, f_real)                          # (mean, std over subsets)

KID (Binkowski et al. 2018) is the unbiased MMD^2 with the polynomial kernel k(x, y) = (x.y / d + 1)^3,
averaged over random subsets; unlike FID it has no bias at small sample sizes, so a few thousand images
(or a few hundred held-out images of a user's set) suffice.

Why the LPIPS trunk: a user's domain (slides, parts, tiles) has no Inception statistics of its own and
no labels to train an extractor on, but ImageNet trunks respond to texture and shape in any photograph.
The descriptor is `selection.image_descriptors`: per trunk layer, the mean and std of the unit-normalised
activations. It is a *proxy*: it ranks generators by how their images' texture statistics match held-out
images, not by whether the parts a label generator needs are drawn right. The training code measures it
in the trunk the discriminator does not use (VGG16 when a projected D looks through AlexNet, and the
reverse), so the generator is not scored by the features it was trained to match.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["kid", "trunk_features"]


@torch.no_grad()
def trunk_features(lpips_model, images: torch.Tensor, *, batch: int = 128) -> torch.Tensor:
    """[N, 3, H, W] in [-1, 1] -> [N, d] float32 descriptors in the LPIPS trunk (see module docstring)."""
    from handsoff_ray.core.selection import image_descriptors

    return torch.cat([image_descriptors(lpips_model, images[i:i + batch]) for i in range(0, len(images), batch)])


def kid(feats_a: torch.Tensor, feats_b: torch.Tensor, *, n_subsets: int = 50, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """Kernel inception distance of two embedding sets [Na, d], [Nb, d] -> (mean, std over subsets).

    Per subset of m rows from each set: unbiased MMD^2 = mean off-diagonal k(a, a') + mean off-diagonal
    k(b, b') - 2 mean k(a, b), with k(x, y) = (x.y / d + 1)^3.
    """
    m = min(subset_size, len(feats_a), len(feats_b))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(feats_a)} and {len(feats_b)}")
    d = feats_a.shape[1]
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_subsets):
        a = feats_a[torch.from_numpy(rng.choice(len(feats_a), m, replace=False))].double()
        b = feats_b[torch.from_numpy(rng.choice(len(feats_b), m, replace=False))].double()
        kaa, kbb, kab = ((a @ a.T) / d + 1) ** 3, ((b @ b.T) / d + 1) ** 3, ((a @ b.T) / d + 1) ** 3
        off = m * (m - 1)
        vals.append(float((kaa.sum() - kaa.diagonal().sum()) / off + (kbb.sum() - kbb.diagonal().sum()) / off
                          - 2 * kab.mean()))
    return float(np.mean(vals)), float(np.std(vals))
