"""Which descriptor space and method should `handsoff suggest` use? A cheap check on the toy world. One JSON object.

    python benchmarks/suggest_spaces.py                           # ~2 min on one core
    python benchmarks/suggest_spaces.py --pool-seeds 6000000-6001999

The full measure is benchmarks/suggest.py (the demo's protocol per labeled set, ~20 CPU-min per arm). This
one asks a question that needs no training: do the picks cover the pool's *labels*? For every pool face
the toy world knows its exact label summary (class pixel fractions + keypoint positions, standardised);
`coverage` is the mean distance from a pool face's summary to the nearest picked face's (lower: every
kind of face has a labeled look-alike). Labels are read here only to score; selection never sees them.
Rows: random draws (mean, min, max over --draws), an oracle (TypiClust on the label summaries
themselves: the best a descriptor could do), and each trunk (vgg, alex; plus raw 16x16 pixels) x
whitened dims x method (typical, kcenter).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pool-seeds", default="4000000-4001999")
    p.add_argument("--budget", type=int, default=16)
    p.add_argument("--draws", type=int, default=20)
    p.add_argument("--dims", default="8,32,64")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    from handsoff_ray.config import parse_seeds
    from handsoff_ray.core.inversion import prepare_images
    from handsoff_ray.core.lpips_offline import load_lpips
    from handsoff_ray.core.selection import image_descriptors, project, select_kcenter, select_typical
    from handsoff_ray.toy.world import render_batch

    seeds = parse_seeds(a.pool_seeds)
    b = render_batch(seeds, 64)
    n = len(seeds)
    seg = torch.from_numpy(b.segmentation).long()
    frac = torch.stack([(seg == c).float().mean((1, 2)) for c in range(int(seg.max()) + 1)], 1)
    y = torch.cat([frac, torch.from_numpy(b.keypoints).float().reshape(n, -1)], 1)
    y = (y - y.mean(0)) / (y.std(0) + 1e-6)

    def coverage(idx) -> float:
        return round(float(torch.cdist(y, y[list(idx)]).min(1).values.mean()), 4)

    imgs = prepare_images(b.images, 64)
    feats = {}
    for net in ("vgg", "alex"):
        lp = load_lpips(net)
        feats[net] = torch.cat([image_descriptors(lp, imgs[s : s + 100]) for s in range(0, n, 100)])
    feats["pixels"] = torch.nn.functional.interpolate(imgs, size=16, mode="area").flatten(1)
    rand = [coverage(np.random.default_rng(d).choice(n, a.budget, replace=False)) for d in range(a.draws)]
    rows = {"random": {"mean": round(float(np.mean(rand)), 4), "min": min(rand), "max": max(rand)},
            "oracle_typical_on_labels": coverage(select_typical(project(y, 32), a.budget).indices)}
    for name, f in feats.items():
        for dims in (int(d) for d in a.dims.split(",")):
            x = project(f, dims)
            rows[f"{name}-{dims}-typical"] = coverage(select_typical(x, a.budget, seed=0).indices)
            rows[f"{name}-{dims}-kcenter"] = coverage(select_kcenter(x, a.budget).indices)
    out = {"config": vars(a), "coverage": rows}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
