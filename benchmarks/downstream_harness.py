"""Which downstream training sees every toy class, and how stable is it? Prints one JSON object.

The demo judges a generated dataset by a downstream network trained on it; that instrument is only as
good as what it can learn. This script trains the demo's UNet on real toy faces (an oracle set of many
faces and/or a baseline of a few) with the options of `train_downstream` (steps, width, loss, schedule,
precision, flips) for several training seeds, and scores each network per class on held-out faces.

Every seed range here is a *validation* range of this script's own (defaults below): none is the
demo's test range (1,000,000+), so choosing settings here never looks at the demo's test faces.

    python benchmarks/downstream_harness.py --arms oracle --steps 1200 --seg-loss ce_dice --schedule cosine
    python benchmarks/downstream_harness.py --arms oracle,baseline --train-seeds 0,1 --precision bf16

Output: {"config", "render_s", "arms": {arm: {"runs": [per seed: miou, iou, pck, depth_rmse, seconds,
s_per_step], "mean": {...}, "spread": {...}}}}; spread is max - min over the training seeds.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from typing import Any

import torch

from handsoff_ray.evaluation import DownstreamData, build_downstream, evaluate_downstream, train_downstream
from handsoff_ray.toy.world import CLASSES, KEYPOINT_NAMES, render_batch

# Validation ranges of this script (disjoint from the demo's labeled 0-15, test 1,000,000+ and oracle
# 2,000,000+, and below the toy GAN's 10,000,000+).
VAL_TEST0, VAL_ORACLE0, VAL_BASELINE0 = 3_000_000, 4_000_000, 5_000_000


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arms", default="oracle", help="comma list of oracle, baseline (default oracle)")
    p.add_argument("--n-oracle", type=int, default=2000, metavar="N")
    p.add_argument("--n-baseline", type=int, default=16, metavar="N")
    p.add_argument("--n-test", type=int, default=300, metavar="N")
    p.add_argument("--steps", type=int, default=600, metavar="N")
    p.add_argument("--batch-size", type=int, default=16, metavar="N")
    p.add_argument("--width", type=int, default=16, metavar="C")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seg-loss", default="ce", choices=("ce", "ce_dice"))
    p.add_argument("--schedule", default="constant", choices=("constant", "cosine"))
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--augment", action="store_true", help="random horizontal flips")
    p.add_argument("--train-seeds", default="0", help="comma list of init/shuffle seeds (default 0)")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def _summary(runs: list[dict[str, Any]]) -> tuple[dict, dict]:
    keys = ("miou", "pck", "depth_rmse")
    mean = {k: round(sum(r[k] for r in runs) / len(runs), 4) for k in keys}
    mean["iou"] = [round(sum(r["iou"][c] for r in runs) / len(runs), 3) for c in range(len(runs[0]["iou"]))]
    spread = {k: round(max(r[k] for r in runs) - min(r[k] for r in runs), 4) for k in keys}
    return mean, spread


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    a = _parse(argv)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    test = DownstreamData.from_batch(render_batch(range(VAL_TEST0, VAL_TEST0 + a.n_test), 64))
    sets = {"oracle": range(VAL_ORACLE0, VAL_ORACLE0 + a.n_oracle),
            "baseline": range(VAL_BASELINE0, VAL_BASELINE0 + a.n_baseline)}
    arms = [x for x in a.arms.split(",") if x]
    data = {arm: DownstreamData.from_batch(render_batch(sets[arm], 64)) for arm in arms}
    render_s = time.perf_counter() - t0
    flip_pairs = [(i, KEYPOINT_NAMES.index(n.replace("left", "right")))
                  for i, n in enumerate(KEYPOINT_NAMES) if "left" in n and n.replace("left", "right") in KEYPOINT_NAMES]
    out: dict[str, Any] = {"config": vars(a), "render_s": round(render_s, 1), "classes": list(CLASSES), "arms": {}}
    for arm in arms:
        runs = []
        for seed in (int(s) for s in a.train_seeds.split(",")):
            model = build_downstream("unet", num_classes=len(CLASSES), num_keypoints=len(KEYPOINT_NAMES),
                                     depth=True, base_width=a.width, seed=seed)
            start = time.perf_counter()
            train_downstream(model, data[arm], epochs=10**6, max_steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                             seed=seed, seg_loss=a.seg_loss, lr_schedule=a.schedule, precision=a.precision,
                             augment=a.augment, flip_pairs=flip_pairs, sigma=1.5)
            seconds = time.perf_counter() - start
            s = evaluate_downstream(model, test)
            runs.append({"seed": seed, "miou": round(s["miou"], 4), "iou": [round(v, 3) for v in s["iou"]],
                         "pck": round(s["pck"], 4), "depth_rmse": round(s["depth_rmse"], 4),
                         "seconds": round(seconds, 1), "s_per_step": round(seconds / a.steps, 4)})
            print(json.dumps({"arm": arm, **runs[-1]}), file=__import__("sys").stderr, flush=True)
        mean, spread = _summary(runs)
        out["arms"][arm] = {"runs": runs, "mean": mean, "spread": spread}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
