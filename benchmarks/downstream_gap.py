"""How far apart are a few labeled images and plenty of them, on the toy world? Prints one JSON object.

The HandsOff measurement only means something when the downstream task is hard enough that the
baseline (a network trained on the few real labels) is clearly worse than an oracle trained on many real
labels: a generated dataset is then judged by where it lands between the two. This script trains the same
small UNet on `--baseline` and on `--oracle` toy faces (one network for segmentation + keypoints + depth,
or with `--networks per-task` one per task at three times the cost), for the same number of steps, and
scores both on `--test` held-out faces (disjoint seeds):

    python benchmarks/downstream_gap.py          # 16 vs 2000 at 64x64: ~2 CPU-minutes, 3 min on a busy shared core
    python benchmarks/downstream_gap.py --steps 100 --oracle 200 --test 50     # a quick look

Output: {"config": ..., "baseline": scores, "oracle": scores, "gap": {...}, "seconds": {...}}, where scores
are `evaluate_downstream`'s (mIoU with background over the whole test set, PCK@alpha, depth RMSE / AbsRel
in metres) and gap holds oracle - baseline for mIoU and PCK, baseline / oracle for the depth errors.
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

_TEST_SEED0 = 1_000_000  # test faces never overlap the training seeds 0..oracle-1


_NETWORKS = {  # build_downstream options of each network trained
    "shared": [{"num_classes": len(CLASSES), "num_keypoints": len(KEYPOINT_NAMES), "depth": True}],
    "per-task": [{"num_classes": len(CLASSES)}, {"num_classes": 0, "num_keypoints": len(KEYPOINT_NAMES)},
                 {"num_classes": 0, "depth": True}],
}


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=64, metavar="PX", help="image size, 32..128 (default 64)")
    p.add_argument("--baseline", type=int, default=16, metavar="N", help="labeled images of the baseline (default 16)")
    p.add_argument("--oracle", type=int, default=2000, metavar="N", help="labeled images of the oracle (default 2000)")
    p.add_argument("--test", type=int, default=200, metavar="N", help="held-out test images (default 200)")
    p.add_argument("--networks", choices=sorted(_NETWORKS), default="shared",
                   help="one network for all tasks, or one per task (default shared)")
    p.add_argument("--steps", type=int, default=800, metavar="N", help="optimiser steps per network (default 800)")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="images per step (default 8)")
    p.add_argument("--base-width", type=int, default=8, metavar="C", help="UNet width at full resolution (default 8)")
    p.add_argument("--lr", type=float, default=3e-3, metavar="LR", help="Adam learning rate (default 3e-3)")
    p.add_argument("--pck-alpha", type=float, default=0.05, metavar="A", help="PCK threshold / image size (default 0.05)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="init and shuffling seed (default 0)")
    p.add_argument("--threads", type=int, default=1, metavar="T", help="torch CPU threads (default 1: fastest on shared cores)")
    return p.parse_args(argv)


def _fit_and_score(train: DownstreamData, test: DownstreamData, a: argparse.Namespace) -> tuple[dict[str, Any], float]:
    """The networks of `--networks` trained on `train`; their scores on `test` merged, and the training seconds."""
    scores: dict[str, Any] = {}
    seconds = 0.0
    for options in _NETWORKS[a.networks]:
        start = time.perf_counter()
        model = build_downstream("unet", base_width=a.base_width, seed=a.seed, **options)
        train_downstream(model, train, epochs=10**9, max_steps=a.steps, batch_size=a.batch_size, lr=a.lr, seed=a.seed)
        seconds += time.perf_counter() - start
        scores |= evaluate_downstream(model, test, pck_alpha=a.pck_alpha)
    return {k: (round(v, 4) if isinstance(v, float) else [round(x, 3) for x in v] if isinstance(v, list) else v)
            for k, v in scores.items()}, seconds


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    a = _parse(argv)
    if not 0 < a.baseline <= a.oracle:
        raise SystemExit(f"--baseline must be in [1, --oracle={a.oracle}], got {a.baseline}")
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    pool = DownstreamData.from_batch(render_batch(range(a.oracle), a.size))
    test = DownstreamData.from_batch(render_batch(range(_TEST_SEED0, _TEST_SEED0 + a.test), a.size))
    render_s = time.perf_counter() - t0
    baseline, baseline_s = _fit_and_score(pool.subset(range(a.baseline)), test, a)  # the first seeds of the oracle's
    oracle, oracle_s = _fit_and_score(pool, test, a)
    report = {
        "config": vars(a) | {"model": "unet"},
        "baseline": baseline,
        "oracle": oracle,
        "gap": {
            "miou": round(oracle["miou"] - baseline["miou"], 4),
            "pck": round(oracle["pck"] - baseline["pck"], 4),
            "depth_rmse_ratio": round(baseline["depth_rmse"] / oracle["depth_rmse"], 4),
            "depth_abs_rel_ratio": round(baseline["depth_abs_rel"] / oracle["depth_abs_rel"], 4),
        },
        "seconds": {"render": round(render_s, 1), "baseline_train": round(baseline_s, 1),
                    "oracle_train": round(oracle_s, 1), "total": round(time.perf_counter() - t0, 1)},
    }
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
