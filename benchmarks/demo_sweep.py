"""What moves the demo's HandsOff score: truncation psi, number of pairs, the uncertainty filter. One JSON object.

The demo's own invert and fit (its spec, its 16 labeled faces or `--labeled-seeds`) run once through
`run_stage` (skipped when `--out` already holds them); pairs are then synthesised in this process with
`core.pairs.synthesize` for each psi (cached in `--out/pairs-psi<psi>.npz`; the first n sample ids of
the largest count serve every smaller count, as a dataset of n pairs would hold them), filtered like the
readers do, and the downstream network is trained on each setting and scored per class on a
*validation* range of toy faces (`--val-seeds`, default 3,000,000+), never on the demo's test faces.

    python benchmarks/demo_sweep.py --psis 0.7,1.0 --pairs 1000,2000 --filters 0.1   # ~25 CPU-min
    python benchmarks/demo_sweep.py --steps 1200 --seg-loss ce_dice --schedule cosine --precision bf16
    python benchmarks/demo_sweep.py --out handsoff-demo --prior-taus 0,0.5   # reuse a finished demo's invert and fit

Output: {"config", "stage_s", "pairs": {"psi<psi>-tau<tau>": class frequencies}, "runs": [{psi, prior_tau,
pairs, filter, kept, seed,
miou, iou, pck, depth_rmse, seconds}]}.
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

sys.path.insert(0, str(Path(__file__).parent))
from downstream_harness import VAL_TEST0  # noqa: E402


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="handsoff-sweep", help="run folder (invert and fit are kept here)")
    p.add_argument("--labeled-seeds", default="0-15")
    p.add_argument("--val-seeds", default=f"{VAL_TEST0}-{VAL_TEST0 + 299}")
    p.add_argument("--psis", default="0.7")
    p.add_argument("--pairs", default="2000", help="comma list of pair counts")
    p.add_argument("--filters", default="0.1", help="comma list of reader filter portions")
    p.add_argument("--prior-taus", default="0", help="comma list of synthesis.prior_tau (logit adjustment)")
    p.add_argument("--invert-steps", type=int, default=None, help="default: the demo's")
    p.add_argument("--fit-steps", type=int, default=None, help="default: the demo's")
    p.add_argument("--loss-resolution", type=int, default=None, help="inversion.loss_resolution (default: the demo's)")
    p.add_argument("--ensemble", type=int, default=None, help="default: the demo's")
    p.add_argument("--steps", type=int, default=600, help="downstream steps")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seg-loss", default="ce", choices=("ce", "ce_dice"))
    p.add_argument("--schedule", default="constant", choices=("constant", "cosine"))
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--augment", action="store_true")
    p.add_argument("--train-seeds", default="0")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--engine", default="local", choices=("local", "ray"), help="for invert and fit (same bytes)")
    return p.parse_args(argv)


def _pairs(G, lg, n: int, psi: float, seed: int, cache: Path, shift=None) -> dict[str, np.ndarray]:
    from handsoff_ray.core.pairs import synthesize

    if cache.exists():
        got = dict(np.load(cache))
        if len(got["images"]) >= n:
            return {k: v[:n] for k, v in got.items()}
    parts: list[Any] = []
    for start in range(0, n, 32):
        p = synthesize(G, lg, sample_ids=range(start, min(n, start + 32)), run_seed=seed, truncation_psi=psi,
                       logit_shift=shift)
        parts.append(p)
        print(json.dumps({"synthesize": psi, "done": min(n, start + 32), "of": n}), file=sys.stderr, flush=True)
    out = {"images": np.concatenate([p.images for p in parts]),
           **{k: np.concatenate([p.labels[k] for p in parts]) for k in parts[0].labels},
           "uncertainty": np.concatenate([p.uncertainty["segmentation"] for p in parts])}
    np.savez(cache, **out)
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    a = _parse(argv)
    torch.set_num_threads(a.threads)
    from handsoff_ray.config import parse_spec
    from handsoff_ray.core.label_generator import load_label_generator
    from handsoff_ray.core.uncertainty import filter_indices
    from handsoff_ray.demo import FULL, DemoSeeds, demo_spec, parse_seed_range
    from handsoff_ray.evaluation import DownstreamData, build_downstream, evaluate_downstream, train_downstream
    from handsoff_ray.pipeline.context import RunContext
    from handsoff_ray.pipeline.layout import RUN
    from handsoff_ray.pipeline.run import run_stage
    from handsoff_ray.pipeline.outputs import label_generator_location
    from handsoff_ray.core.pairs import class_prior_shift
    from handsoff_ray.toy.world import CLASSES, KEYPOINT_NAMES, render_batch

    size = FULL
    over = {k: v for k, v in (("invert_steps", a.invert_steps), ("fit_steps", a.fit_steps),
                              ("ensemble", a.ensemble)) if v is not None}
    if over:
        import dataclasses
        size = dataclasses.replace(size, **over)
    raw = demo_spec(a.out, size, seeds=DemoSeeds(labeled=parse_seed_range(a.labeled_seeds)))
    raw["resources"]["engine"] = a.engine
    if a.loss_resolution:
        raw["inversion"] = {**raw["inversion"], "loss_resolution": a.loss_resolution}
    spec = parse_spec(raw, source="sweep")
    ctx = RunContext(spec)
    stage_s = {}
    for stage in ("invert", "fit"):
        t0 = time.perf_counter()
        run_stage(spec, stage, ctx=ctx)
        stage_s[stage] = round(time.perf_counter() - t0, 1)
    G = ctx.generator()
    lg_store, lg_file = label_generator_location(ctx.store)  # the shared artifact the run refers to
    lg = load_label_generator(lg_store.path(lg_file), device="cpu")
    class_pixels = ctx.store.read_json(RUN.fit_summary)["data"]["class_pixels"]
    val = parse_seed_range(a.val_seeds)
    test = DownstreamData.from_batch(render_batch(val, 64))
    flip_pairs = [(0, 1), (3, 4)]
    assert KEYPOINT_NAMES[:2] == ("left_eye", "right_eye") and KEYPOINT_NAMES[3:] == ("mouth_left", "mouth_right")
    report: dict[str, Any] = {"config": vars(a), "stage_s": stage_s, "classes": list(CLASSES), "pairs": {}, "runs": []}
    n_max = max(int(x) for x in a.pairs.split(","))
    settings = [(float(psi), float(tau)) for psi in a.psis.split(",") for tau in a.prior_taus.split(",")]
    for psi, tau in settings:
        t0 = time.perf_counter()
        shift = class_prior_shift(class_pixels, tau) if tau else None
        pairs = _pairs(G, lg, n_max, psi, spec.seed, Path(a.out) / f"pairs-psi{psi}-tau{tau}-n{n_max}.npz", shift)
        freq = np.bincount(pairs["segmentation"].ravel(), minlength=len(CLASSES)) / pairs["segmentation"].size
        report["pairs"][f"psi{psi}-tau{tau}"] = {"class_frequency": [round(float(f), 4) for f in freq],
                                                 "seconds": round(time.perf_counter() - t0, 1)}
        for n in (int(x) for x in a.pairs.split(",")):
            for portion in (float(x) for x in a.filters.split(",")):
                keep = filter_indices(torch.from_numpy(pairs["uncertainty"][:n].astype(np.float64)), portion=portion,
                                      drop_most_certain=30).numpy()
                data = DownstreamData(images=pairs["images"][keep], segmentation=pairs["segmentation"][keep],
                                      keypoints=pairs["keypoints"][keep], depth=pairs["depth"][keep])
                for seed in (int(s) for s in a.train_seeds.split(",")):
                    model = build_downstream("unet", num_classes=len(CLASSES), num_keypoints=len(KEYPOINT_NAMES),
                                             depth=True, base_width=a.width, seed=seed)
                    t1 = time.perf_counter()
                    train_downstream(model, data, epochs=10**6, max_steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                                     seed=seed, seg_loss=a.seg_loss, lr_schedule=a.schedule, precision=a.precision,
                                     augment=a.augment, flip_pairs=flip_pairs, sigma=1.5)
                    s = evaluate_downstream(model, test)
                    run = {"psi": psi, "prior_tau": tau, "pairs": n, "filter": portion, "kept": int(len(keep)), "seed": seed,
                           "miou": round(s["miou"], 4), "iou": [round(v, 3) for v in s["iou"]],
                           "pck": round(s["pck"], 4), "depth_rmse": round(s["depth_rmse"], 4),
                           "seconds": round(time.perf_counter() - t1, 1)}
                    report["runs"].append(run)
                    print(json.dumps(run), file=sys.stderr, flush=True)
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    main()
