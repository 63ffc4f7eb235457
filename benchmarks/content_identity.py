"""What the labeling loop and a scheduled regeneration cost now that stages are identified by content.

    python benchmarks/content_identity.py --json                         # ~1-2 min on 2 cores
    python benchmarks/content_identity.py --json --inversion-steps 40 --members 4 --samples 400

The toy spec (jobs/specs/toy.yaml: the shipped toy StyleGAN2) with small step counts, on the local engine,
reading a labeled-set folder of toy faces written by `write_toy_labeled_set` (so that adding an image and
correcting a mask are real file changes). Five `handsoff run`s (invert, fit, synthesize) in one run folder:

  first      the first run: every stage computes
  unchanged  the same command again: nothing changed
  added      one labeled face written into the folder: invert that face, refit, resynthesise
  corrected  one mask corrected in place (same file name): refit, resynthesise, no inversion
  scheduled  a scheduled regeneration (synthesis.version set, as the chart's ticks do) with nothing changed:
             a new batch of pairs, nothing inverted or fitted
  scheduled_before  for scale, what a tick cost before this version: the chart added the offset to `seed`
             (a new run id too), which changes every stage's hash, so everything was computed again

Reported per case: seconds per stage and in all, and what each stage did (images inverted, members fitted,
shards written) with its one-line reason. With --json only the JSON goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=8, metavar="N", help="labeled faces at the start")
    p.add_argument("--inversion-steps", type=int, default=30, metavar="N")
    p.add_argument("--members", type=int, default=3, metavar="N", help="label generator ensemble size")
    p.add_argument("--fit-steps", type=int, default=150, metavar="N", help="label_generator.max_steps")
    p.add_argument("--samples", type=int, default=200, metavar="N", help="synthesis.num_samples")
    p.add_argument("--json", action="store_true", help="print only the JSON result on stdout")
    return p.parse_args(argv)


def _spec(args, root: Path, labeled: Path, *, seed: int = 0, run_id: str = "bench", **synthesis):
    from handsoff_ray.config import load_spec

    toy = load_spec(Path(__file__).resolve().parents[1] / "jobs/specs/toy.yaml")
    d = toy.model_dump(mode="json")
    d["data"] = {"path": str(labeled)}  # a labeled-set folder instead of rendered seeds
    d["inversion"].update(steps=args.inversion_steps, batch_size=args.images)
    d["label_generator"].update(ensemble_size=args.members, max_steps=args.fit_steps)
    d["synthesis"].update(num_samples=args.samples, shard_size=max(args.samples // 4, 1), **synthesis)
    d["storage"] = {"output": str(root / "runs"), "run_id": run_id}
    d["seed"] = seed
    d["evaluation"] = {"enabled": False}
    d["resources"] = {"engine": "local", "torch_threads": 1}
    from handsoff_ray.config import parse_spec

    return parse_spec(d)


def _run(spec) -> dict:
    from handsoff_ray.pipeline.context import RunContext
    from handsoff_ray.pipeline.run import run_stage

    ctx, out, t0 = RunContext(spec), {}, time.time()
    for name in ("invert", "fit", "synthesize"):
        r = run_stage(spec, name, engine="local", ctx=ctx)
        out[name] = {"seconds": r["seconds"], "reason": r["reason"]}
        if name == "invert":
            out[name]["inverted_now"] = r["inverted_now"]
        elif name == "fit":
            out[name]["fitted"] = not r["skipped"]
        else:
            out[name]["shards_written_now"] = r["shards_written_now"]
    out["seconds"] = round(time.time() - t0, 1)
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import numpy as np
    import torch
    from PIL import Image

    from handsoff_ray.datasets.toy import write_toy_labeled_set

    torch.set_num_threads(1)
    log = (lambda *a: print(*a, file=sys.stderr, flush=True))
    with tempfile.TemporaryDirectory(prefix="handsoff-bench-") as tmp:
        root = Path(tmp)
        os.environ["HANDSOFF_CACHE_DIR"] = str(root / "cache")  # a cold digest cache, like a fresh machine
        labeled, extra = root / "labeled", root / "extra"
        write_toy_labeled_set(labeled, seeds=range(args.images), size=64)
        write_toy_labeled_set(extra, seeds=[args.images], size=64)
        spec = _spec(args, root, labeled)
        cases = {}
        log("first run"); cases["first"] = _run(spec)
        log("rerun, nothing changed"); cases["unchanged"] = _run(spec)

        new_id = f"{args.images:06d}"  # add the extra face: its files, then its keypoints.json row
        for part in ("images", "masks", "depth"):
            os.replace(extra / part / f"{new_id}.png", labeled / part / f"{new_id}.png")
        kp = json.loads((labeled / "keypoints.json").read_text())
        kp["points"][new_id] = json.loads((extra / "keypoints.json").read_text())["points"][new_id]
        (labeled / "keypoints.json").write_text(json.dumps(kp))
        log("one labeled image added"); cases["added"] = _run(spec)

        mask = labeled / "masks" / "000001.png"  # relabel the nose as skin: a correction under the same name
        with Image.open(mask) as im:
            a = np.array(im)
        Image.fromarray(np.where(a == 2, 1, a).astype(np.uint8), mode="L").save(mask)
        log("one mask corrected"); cases["corrected"] = _run(spec)

        minute = int(time.time()) // 60  # what the chart's launcher passes as the version
        log("scheduled regeneration, nothing changed"); cases["scheduled"] = _run(_spec(args, root, labeled,
                                                                                          version=minute))
        log("scheduled regeneration as before (seed + offset, new run id)")
        cases["scheduled_before"] = _run(_spec(args, root, labeled, seed=minute % 2**31, run_id=f"bench-{minute}"))
    first = cases["first"]["seconds"]
    result = {
        "benchmark": "content_identity",
        "spec": "jobs/specs/toy.yaml (shipped toy StyleGAN2, 64 px), local engine, 1 torch thread",
        "settings": {"images": args.images, "inversion_steps": args.inversion_steps, "members": args.members,
                     "fit_max_steps": args.fit_steps, "samples": args.samples},
        "cases": cases,
        "vs_first": {k: round(v["seconds"] / first, 3) for k, v in cases.items()},
        "scheduled_non_synthesis_seconds": round(cases["scheduled"]["invert"]["seconds"]
                                                 + cases["scheduled"]["fit"]["seconds"], 1),
    }
    print(json.dumps(result, indent=None if args.json else 2))
    return result


if __name__ == "__main__":
    main()
