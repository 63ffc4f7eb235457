"""Does `handsoff suggest` pick better images to label than chance? The demo's protocol, per labeled set.

    python benchmarks/suggest.py --arms random0,random1,random2          # ~20 CPU-min per arm (Zen 4)
    python benchmarks/suggest.py --arms suggest,suggest_kcenter,round2_0
    python benchmarks/suggest.py --pool-seeds 5000000-5001999 --test-seeds 1000500-1000999   # other ranges

A pool of toy faces (`--pool-seeds`, 2,000 by default; their labels are read only for the faces an arm
chooses, as an annotator would label them). Each arm names 16 of them:
- `random<d>`: 16 drawn uniformly from the pool (numpy default_rng(d)),
- `suggest`: the 16 that `handsoff suggest` (pipeline.suggest.suggest) picks in round one (no labels, no fit);
  `suggest_<method>` with that `suggest.method` (e.g. suggest_kcenter),
- `round2_<d>`: 8 drawn at random (default_rng(1000 + d)), inverted and fitted, then 8 more that
  `suggest` picks with that fit (`after`): the second-round workflow, to compare with 16 random.
Each arm then runs the demo's protocol for the HandsOff arm: the demo spec (same invert, fit, synthesis,
downstream settings) with `data.seeds` = the arm's 16 faces, the downstream net trained
`--train-seeds` times and scored on `--test-seeds` (the demo's 500 test faces by default). Arms are kept
in `--out/<arm>/` (result.json; a rerun skips finished arms and resumes unfinished stages).

Output (stdout): {"config", "arms": {arm: {labeled, miou, iou{class}, pck, depth_rmse, spread, seconds}},
"summary": {random mean/worst, each other arm's gain over the random mean}}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

BUDGET = 16


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="handsoff-suggest", help="one folder per arm under it")
    p.add_argument("--pool-seeds", default="4000000-4001999", help="the unlabeled pool (toy seed range)")
    p.add_argument("--test-seeds", default="1000000-1000499", help="real test faces (the demo's by default)")
    p.add_argument("--arms", default="random0,random1,random2,suggest", help="comma list, see the docstring")
    p.add_argument("--feature", default=None, help="suggest.feature (default: the spec's default)")
    p.add_argument("--train-seeds", type=int, default=2, help="downstream networks per arm (the demo: 2)")
    p.add_argument("--quick", action="store_true", help="the demo's QUICK sizes (a smoke run, not a measurement)")
    return p.parse_args(argv)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _seed_list(seeds: Sequence[int]) -> str:
    return ",".join(str(s) for s in sorted(seeds))


def arm_spec(out: Path, labeled: Sequence[int], a: argparse.Namespace, *, n_labeled: int | None = None) -> dict:
    """The demo's spec with the arm's labeled faces, test faces and storage."""
    from handsoff_ray.demo import FULL, QUICK, demo_spec

    size = QUICK if a.quick else FULL
    raw = demo_spec(str(out), size)
    raw["data"] = {"format": "toy", "seeds": _seed_list(labeled), "limit": n_labeled or len(labeled)}
    raw["evaluation"] = {**raw["evaluation"], "test_seeds": a.test_seeds, "train_seeds": a.train_seeds}
    if a.feature:
        raw["suggest"] = {"feature": a.feature}
    return raw


def choose(arm: str, pool: list[int], a: argparse.Namespace, out: Path) -> list[int]:
    """The 16 pool seeds an arm labels."""
    if arm.startswith("random"):
        rng = np.random.default_rng(int(arm.removeprefix("random")))
        return sorted(int(s) for s in rng.choice(pool, size=BUDGET, replace=False))
    from handsoff_ray.config import parse_spec
    from handsoff_ray.pipeline.suggest import suggest

    pool_text = a.pool_seeds
    if arm == "suggest" or arm.startswith("suggest_"):  # suggest_<method>: that suggest.method, e.g. suggest_kcenter
        spec = parse_spec(arm_spec(out, pool[:1], a), source="benchmark")
        picked = suggest(spec, pool={"format": "toy", "seeds": pool_text}, budget=BUDGET, out=str(out / "suggested"),
                         method=arm.removeprefix("suggest").removeprefix("_") or None)
        return sorted(int(s) for s in picked.refs)  # a toy pool's refs are its seeds
    if arm.startswith("round2_"):
        d = int(arm.removeprefix("round2_"))
        first = sorted(int(s) for s in np.random.default_rng(1000 + d).choice(pool, size=BUDGET // 2, replace=False))
        spec = parse_spec(arm_spec(out / "round1", first, a), source="benchmark")
        from handsoff_ray.pipeline.context import RunContext
        from handsoff_ray.pipeline.run import run_stage

        ctx = RunContext(spec)
        for stage in ("invert", "fit"):
            run_stage(spec, stage, ctx=ctx)
        picked = suggest(spec, pool={"format": "toy", "seeds": pool_text}, budget=BUDGET // 2,
                         out=str(out / "suggested"), after=ctx.store.uri())
        return sorted(first + [int(s) for s in picked.refs])
    raise SystemExit(f"unknown arm {arm!r}: random<d>, suggest or round2_<d>")


def run_arm(arm: str, pool: list[int], a: argparse.Namespace) -> dict[str, Any]:
    from handsoff_ray.config import parse_seed_ranges, parse_spec
    from handsoff_ray.pipeline.context import RunContext
    from handsoff_ray.pipeline.run import run_stage
    from handsoff_ray.pipeline.stages.evaluate import load_real, load_synthetic, score_arms

    out = Path(a.out) / arm
    done = out / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    t0 = time.time()
    labeled = choose(arm, pool, a, out)
    assert len(set(labeled)) == BUDGET and set(labeled) <= set(pool), labeled
    spec = parse_spec(arm_spec(out, labeled, a), source="benchmark")
    ctx = RunContext(spec)
    stage_s = {}
    for stage in ("invert", "fit", "synthesize"):
        t1 = time.time()
        run_stage(spec, stage, ctx=ctx)
        stage_s[stage] = round(time.time() - t1, 1)
    t1 = time.time()
    synthetic, meta = load_synthetic(ctx.store, spec, apply_filter=spec.evaluation.use_uncertainty_filter)
    test = load_real(None, synthetic.image_size, meta["tasks"], format="toy", seeds=a.test_seeds)
    workers = max(1, min(spec.evaluation.train_seeds, len(os.sched_getaffinity(0))))
    scores = score_arms({"handsoff": synthetic}, test, spec, num_classes=len(meta["classes"]),
                        num_keypoints=len(meta["keypoint_names"]), depth=True, keypoint_names=meta["keypoint_names"],
                        workers=workers, label=arm)["handsoff"]
    stage_s["downstream"] = round(time.time() - t1, 1)
    result = {"labeled": labeled, "miou": round(scores["miou"], 4), "pck": round(scores["pck"], 4),
              "depth_rmse": round(scores["depth_rmse"], 4),
              "iou": {c: round(v, 4) for c, v in zip(meta["classes"], scores["iou"])},
              "spread": scores["spread"], "runs": [r["miou"] for r in scores["runs"]],
              "n_test": sum(len(r) for r in parse_seed_ranges(a.test_seeds)),
              "stage_s": stage_s, "seconds": round(time.time() - t0, 1)}
    done.write_text(json.dumps(result, indent=2, default=float))
    log(json.dumps({"arm": arm, "miou": result["miou"], "seconds": result["seconds"]}))
    return result


def summarise(arms: dict[str, dict]) -> dict[str, Any]:
    rand = [r["miou"] for k, r in arms.items() if k.startswith("random")]
    if not rand:
        return {}
    mean = float(np.mean(rand))
    out: dict[str, Any] = {"random_mean": round(mean, 4), "random_worst": round(min(rand), 4),
                           "random_best": round(max(rand), 4), "random_draws": len(rand)}
    classes = next(iter(arms.values()))["iou"]
    out["random_mean_iou"] = {c: round(float(np.mean([r["iou"][c] for k, r in arms.items() if k.startswith("random")])), 4)
                              for c in classes}
    for k, r in arms.items():
        if not k.startswith("random"):
            out[f"{k}_gain_over_mean"] = round(r["miou"] - mean, 4)
            out[f"{k}_gain_over_worst"] = round(r["miou"] - min(rand), 4)
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    a = _parse(argv)
    torch.set_num_threads(1)
    from handsoff_ray.config import parse_seeds
    from handsoff_ray.demo import _machine

    pool = parse_seeds(a.pool_seeds, what="--pool-seeds")
    arms = {arm: run_arm(arm, pool, a) for arm in a.arms.split(",") if arm}
    report = {"config": vars(a), "machine": _machine(), "arms": arms, "summary": summarise(arms)}
    print(json.dumps(report, default=float))
    return report


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    main()
