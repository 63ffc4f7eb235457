"""KID against CPU-seconds for GAN training recipes, side by side in one run; prints one JSON object.

    python benchmarks/gan_recipes.py --json                                         # finite 2,000 faces: none vs DiffAugment
    python benchmarks/gan_recipes.py --json --marks 3,6 --recipes stylegan2,projected-alex --data stream

Each recipe trains the same 64 px StyleGAN2 generator (the shipped toy architecture) from the same seed
with `handsoff train-gan`'s trainer (pipeline/gan, local engine, one torch thread), and stops at each
`--marks` kimg; there the EMA generator's KID is measured twice:
  kid        in the toy KID space (toy/quality.py, a CNN trained on the world's exact parameters; 1,000
             images, subsets of 500; real vs real is about 0 +- 0.0001): the truth on the toy world
  kid_proxy  in the ImageNet-trunk space train-gan reports for any domain (core/kid.py), against the
             500 held-out faces of the set: what a user without a toy world sees
Data (`--data`):
  finite  2,000 training faces, toy seeds 10,000,000-10,002,499 minus 500 held out by a seeded draw (labels
          never read): the small-set case DiffAugment is for. An epoch is 2 kimg.
  stream  fresh faces forever from seed 10,000,000 (the shipped generator's recipe); no proxy KID
Recipes:
  stylegan2         residual D from scratch, logistic loss, lazy R1 (the shipped generator's stage 1)
  stylegan2-da      the same with DiffAugment (color, translation, cutout) on every image D sees
  projected-alex    Projected GAN: small D's over frozen ImageNet AlexNet features, hinge loss, no R1
  projected-alex-da the same with DiffAugment (Projected GAN's own default)
State lives in --work/<data>/<recipe>/ (train-gan's checkpoints); rerunning resumes and measures only marks
not yet in its points.json. CPU-seconds are the training process's (KID time excluded), so the comparison
holds on a machine shared with other work.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

RECIPES = {
    "stylegan2": {"discriminator": "stylegan2"},
    "stylegan2-da": {"discriminator": "stylegan2", "augment": "diffaugment"},
    "projected-alex": {"discriminator": "projected", "projected_trunk": "alex"},
    "projected-alex-da": {"discriminator": "projected", "projected_trunk": "alex", "augment": "diffaugment"},
}
DATA = {
    "finite": {"format": "toy", "seeds": "10000000-10002499", "holdout": 500},
    "stream": {"format": "toy", "seeds": "10000000-10000000", "stream": True, "holdout": 0},
}


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def spec_for(recipe: str, data: str, work: str, kimg: float, threads: int, **extra):
    from handsoff_ray.config import parse_spec

    return parse_spec({
        "name": recipe, "storage": {"output": os.path.join(work, data)}, "resources": {"torch_threads": threads},
        "gan": {"data": DATA[data], "kimg": kimg, "checkpoint_kimg": 2.0, "log_kimg": 2.0, "kid": {"images": 500},
                **RECIPES[recipe], **extra},
    }, source="gan_recipes")


def measure(spec, kid_n: int) -> dict:
    """Toy KID and proxy KID of the newest checkpoint's EMA generator."""
    from handsoff_ray.core.gan_step import generator_config
    from handsoff_ray.core.stylegan2 import Generator
    from handsoff_ray.pipeline.context import open_run
    from handsoff_ray.pipeline.gan import TrainImages, latest_state
    from handsoff_ray.pipeline.gan.card import KidProxy
    from handsoff_ray.toy.quality import measure_kid

    state = latest_state(open_run(spec))
    G = Generator(generator_config(spec.gan))
    G.load_state_dict(state["nets"]["G_ema"])
    G.eval().requires_grad_(False)
    t0 = time.time()
    q = measure_kid(G, n=kid_n, subset_size=min(500, kid_n), log=lambda s: None)
    prog = state["progress"]
    pt = {"kimg": round(prog["images_seen"] / 1000, 2), "cpu_s": round(prog["cpu_s"], 1),
          "img_per_cpu_s": round(prog["images_seen"] / max(prog["cpu_s"], 1e-9), 2),
          "kid": round(q["kid"], 5), "kid_std": round(q["kid_std"], 5), "kid_real_vs_real": round(q["kid_real_vs_real"], 5)}
    data = TrainImages.open(spec.gan, storage=spec.storage)
    if data.holdout:
        proxy = KidProxy(spec, data, torch.device("cpu"))
        pt.update(proxy.measure(G), **proxy.floor())
    pt["kid_seconds"] = round(time.time() - t0, 1)
    return pt


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true", help="print only the JSON result on stdout")
    p.add_argument("--recipes", default="stylegan2,stylegan2-da", help=f"comma-separated, of {sorted(RECIPES)}")
    p.add_argument("--data", choices=sorted(DATA), default="finite")
    p.add_argument("--marks", default="10,20,30,40", help="kimg at which KID is measured (comma-separated)")
    p.add_argument("--kid-n", type=int, default=1000, help="images per toy-KID set")
    p.add_argument("--threads", type=int, default=1, help="torch threads for training")
    p.add_argument("--work", default=".toygan/recipes", help="train-gan storage.output root")
    a = p.parse_args(argv)
    from handsoff_ray.pipeline.gan import train_gan

    marks = [float(m) for m in a.marks.split(",")]
    result = {"data": a.data, "marks_kimg": marks, "threads": a.threads, "kid_n": a.kid_n,
              "torch": torch.__version__, "recipes": {}}
    for name in a.recipes.split(","):
        if name not in RECIPES:
            raise SystemExit(f"unknown recipe {name!r}; choose from {sorted(RECIPES)}")
        points_file = os.path.join(a.work, a.data, name, "points.json")
        points = json.load(open(points_file)) if os.path.exists(points_file) else []
        for mark in marks:
            if any(pt["mark_kimg"] == mark for pt in points):
                continue
            spec = spec_for(name, a.data, a.work, mark, a.threads)
            train_gan(spec, engine="local", export=False, log=log)
            pt = {"mark_kimg": mark, **measure(spec, a.kid_n)}
            log(json.dumps({"recipe": name, **pt}))
            points.append(pt)
            os.makedirs(os.path.dirname(points_file), exist_ok=True)
            with open(points_file, "w") as f:
                json.dump(points, f)
        result["recipes"][name] = sorted(points, key=lambda pt: pt["mark_kimg"])
    print(json.dumps(result, indent=None if a.json else 2))
    return result


if __name__ == "__main__":
    main()
