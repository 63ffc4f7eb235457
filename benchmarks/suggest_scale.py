"""What `handsoff suggest` costs: describing one pool image, and selecting from 10^5 of them. One JSON object.

    python benchmarks/suggest_scale.py                      # ~3 min on one core
    python benchmarks/suggest_scale.py --pool 100000 --resolutions 64,256

- `describe`: seconds per pool image for the ImageNet-trunk descriptor (core.selection.image_descriptors)
  at each resolution, one torch thread, batches of 32 (what a features unit does after decoding).
- `select`: wall seconds on the driver for --pool synthetic descriptors of the trunk's width (random
  Gaussian mixtures: selection cost depends on the counts, not on what the images show): the whitened
  projection, then each method at --budget.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pool", type=int, default=100_000)
    p.add_argument("--budget", type=int, default=16)
    p.add_argument("--feature", default="vgg")
    p.add_argument("--resolutions", default="64,128,256")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from handsoff_ray.core.lpips_offline import load_lpips
    from handsoff_ray.core.selection import image_descriptors, project, select_kcenter, select_typical
    from handsoff_ray.demo import _machine

    lp = load_lpips(a.feature)
    out: dict = {"config": vars(a), "machine": _machine(), "describe_s_per_image": {}, "select_s": {}}
    width = None
    for res in (int(r) for r in a.resolutions.split(",")):
        x = torch.rand(32, 3, res, res) * 2 - 1
        image_descriptors(lp, x)  # warm-up
        t0 = time.perf_counter()
        for _ in range(3):
            width = image_descriptors(lp, x).shape[1]
        out["describe_s_per_image"][res] = round((time.perf_counter() - t0) / 96, 5)
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(64, width, generator=g)
    feats = centres[torch.randint(64, (a.pool,), generator=g)] + 0.3 * torch.randn(a.pool, width, generator=g)
    t0 = time.perf_counter()
    x = project(feats, 32)
    out["select_s"]["project"] = round(time.perf_counter() - t0, 2)
    for name, fn in (("typical", lambda: select_typical(x, a.budget, seed=0)), ("kcenter", lambda: select_kcenter(x, a.budget))):
        t0 = time.perf_counter()
        fn()
        out["select_s"][name] = round(time.perf_counter() - t0, 2)
    out["descriptor_width"] = width
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
