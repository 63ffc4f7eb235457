"""KID against CPU-seconds for toy-GAN training recipes, side by side in one run; prints one JSON object.

    python benchmarks/gan_recipes.py --json                                   # ~2 x 20 CPU-min + KID
    python benchmarks/gan_recipes.py --json --budget 600 --points 3 --recipes stylegan2,projected-alex
    python benchmarks/gan_recipes.py --json --init toy --recipes stylegan2,projected-alex  # refining the shipped G

Each recipe trains the same toy StyleGAN2 generator (64 px, the shipped architecture) from the same seed
with `toy.train_gan` on one torch thread, and stops at `--points` evenly spaced CPU-second marks up to
`--budget` (train_gan's `max_cpu_s`: process CPU time, so the comparison holds on a machine shared with
other work). At each mark the EMA generator's KID is measured in the project's toy KID space
(`toy.quality.measure_kid`, 1,000 images, 50 subsets of 500; the real-vs-real floor is reported beside it).
Recipes:
  stylegan2        today's: residual D from scratch, logistic loss, lazy R1 (the shipped generator's)
  projected-alex   Projected GAN: small D's over frozen ImageNet AlexNet features, hinge loss, no R1
  projected-vgg    the same over VGG16 (3-5x the CPU cost per image of AlexNet here)
`--init toy` starts every recipe's G from the shipped 82-kimg generator instead of random weights.
`--channel-base 4096` measures generator capacity (64 instead of 32 channels at 64 px, 128 at 32 px).
State lives under --work/<recipe>; rerunning resumes and re-measures only marks not yet in the JSON.

`--states 'DIR/state_*.pt'` instead measures KID of training states saved along a long run (copies of
its state.pt), giving that run's KID curve against its CPU-seconds and images seen.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


RECIPES = {
    "stylegan2": {"discriminator": "stylegan2"},
    "projected-alex": {"discriminator": "projected", "projected_trunk": "alex"},
    "projected-vgg": {"discriminator": "projected", "projected_trunk": "vgg"},
}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true", help="print only the JSON result on stdout")
    p.add_argument("--recipes", default="stylegan2,projected-alex", help=f"comma-separated, of {sorted(RECIPES)}")
    p.add_argument("--budget", type=float, default=1200.0, help="CPU-seconds of training per recipe")
    p.add_argument("--points", type=int, default=4, help="KID measurements per recipe, evenly spaced in CPU-s")
    p.add_argument("--init", default=None, help="start G from this generator (e.g. toy) instead of random")
    p.add_argument("--channel-base", type=int, default=2048, help="generator/D channel base (capacity)")
    p.add_argument("--kid-n", type=int, default=1000, help="images per KID set")
    p.add_argument("--threads", type=int, default=1, help="torch threads for training")
    p.add_argument("--work", default=".toygan/recipes", help="state folders")
    p.add_argument("--states", default=None, help="glob of saved state.pt copies: measure their KID curve")
    a = p.parse_args(argv)
    from handsoff_ray.toy.quality import measure_kid
    from handsoff_ray.toy.train_gan import GanTrainConfig, load_state_generator, train_gan

    if a.states:
        return _state_curve(a, measure_kid)

    tag = f"init-{a.init}" if a.init else "scratch"
    result = {"budget_cpu_s": a.budget, "init": a.init, "channel_base": a.channel_base, "threads": a.threads,
              "kid_n": a.kid_n, "recipes": {}}
    for name in a.recipes.split(","):
        if name not in RECIPES:
            raise SystemExit(f"unknown recipe {name!r}; choose from {sorted(RECIPES)}")
        out = os.path.join(a.work, f"{name}-{tag}-c{a.channel_base}")
        points_file = os.path.join(out, "kid_points.json")
        points = json.load(open(points_file)) if os.path.exists(points_file) else []
        for k in range(1, a.points + 1):
            mark = a.budget * k / a.points
            if any(pt["mark_cpu_s"] == mark for pt in points):
                continue
            cfg = GanTrainConfig(out=out, init=a.init, channel_base=a.channel_base, threads=a.threads,
                                 max_cpu_s=mark, ckpt_every=1e9, grid_every=1e9, log_every=120,
                                 **RECIPES[name])
            train_gan(cfg, log=log)
            G, state = load_state_generator(out)
            t0 = time.time()
            q = measure_kid(G, n=a.kid_n, subset_size=min(500, a.kid_n), log=log)
            prog = state["progress"]
            pt = {"mark_cpu_s": mark, "cpu_s": round(prog["cpu_s"], 1), "kimg": round(prog["images_seen"] / 1000, 2),
                  "img_per_cpu_s": round(prog["images_seen"] / max(prog["cpu_s"], 1e-9), 2),
                  "kid": round(q["kid"], 5), "kid_std": round(q["kid_std"], 5),
                  "kid_real_vs_real": round(q["kid_real_vs_real"], 5), "kid_seconds": round(time.time() - t0, 1)}
            log(json.dumps({"recipe": name, **pt}))
            points.append(pt)
            with open(points_file, "w") as f:
                json.dump(points, f)
        result["recipes"][name] = sorted(points, key=lambda pt: pt["mark_cpu_s"])
    print(json.dumps(result, indent=None if a.json else 2))
    return result


def _state_curve(a, measure_kid) -> dict:
    import glob
    import shutil
    import tempfile

    from handsoff_ray.toy.train_gan import load_state_generator

    curve = []
    for path in sorted(glob.glob(a.states)):
        with tempfile.TemporaryDirectory() as d:  # load_state_generator reads DIR/state.pt
            shutil.copy(path, os.path.join(d, "state.pt"))
            G, state = load_state_generator(d)
        prog = state["progress"]
        q = measure_kid(G, n=a.kid_n, subset_size=min(500, a.kid_n), log=log)
        pt = {"state": os.path.basename(path), "cpu_s": round(prog["cpu_s"], 1),
              "kimg": round(prog["images_seen"] / 1000, 2), "kid": round(q["kid"], 5), "kid_std": round(q["kid_std"], 5),
              "kid_real_vs_real": round(q["kid_real_vs_real"], 5), "config": {k: state["config"].get(k) for k in (
                  "discriminator", "projected_trunk", "init", "channel_base")}}
        log(json.dumps(pt))
        curve.append(pt)
    result = {"states": a.states, "kid_n": a.kid_n, "curve": sorted(curve, key=lambda pt: pt["cpu_s"])}
    print(json.dumps(result, indent=None if a.json else 2))
    return result


if __name__ == "__main__":
    torch.backends.cudnn.benchmark = True
    main()
