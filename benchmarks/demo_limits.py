"""What limits the toy demo: label-generator fit vs generator samples; prints one JSON object.

    make demo                                                    # a finished full demo in ./handsoff-demo
    python benchmarks/demo_limits.py --json --demo handsoff-demo  # ~3 min on 2 cores

Three measurements on the demo's own run (its 16 inverted latents, its label generator):
- `fit`: per-class IoU and keypoint PCK of the demo's label generator on its *training* images, i.e.
  applied to the generator features of the 16 inverted latents and compared with their real labels.
  Low IoU here means the label generator underfits (capacity, steps, class imbalance).
- `refit`: the same after refitting --refit-members members for --refit-steps steps (the demo uses 300):
  how much more fitting buys.
- `samples`: class frequencies of the labels the refitted label generator gives *fresh samples* of the
  toy generator at truncation 0.5 / 0.7 / 1.0, next to the frequencies in the real labeled images. When
  the label generator separates a class on inverted real images but almost never finds it in samples,
  the samples do not draw that part the way real images do: generator quality.
- `held_out`: with --held-out-seeds A-B, the `fit` measurement on toy faces the label generator never
  saw: they are inverted once with the demo's inversion settings (kept in <demo>/held-out-<seeds>/, so a
  rerun reuses them) and labelled from their latents. The gap between `fit` and `held_out` is how far the labels generalise.
- `prior`: with --prior-taus, the `fit` and `samples` measurements again after a post-hoc logit
  adjustment of the segmentation outputs, logits + tau * log(class frequency in the 16 labeled images):
  a class-balanced fit learns as if every class were equally likely, which over-paints rare small parts
  in samples; tau 1 is the Bayes correction back to the labeled images' prior, tau 0 is none.
With --json only the JSON goes to stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true", help="print only the JSON result on stdout")
    p.add_argument("--demo", default="handsoff-demo", metavar="DIR", help="a finished full demo (default: %(default)s)")
    p.add_argument("--refit-steps", type=int, default=1200, metavar="K", help="steps per refitted member")
    p.add_argument("--refit-members", type=int, default=2, metavar="E", help="members refitted (default: 2)")
    p.add_argument("--samples", type=int, default=64, metavar="N", help="fresh samples per truncation")
    p.add_argument("--psis", default="0.5,0.7,1.0", metavar="LIST", help="truncations to sample at (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, metavar="T", help="torch threads (default: 2)")
    p.add_argument("--prior-taus", default="", metavar="LIST",
                   help="logit-adjustment strengths to measure (e.g. 0.5,1); none by default")
    p.add_argument("--labeled-seeds", default="", metavar="A-B",
                   help="the demo's labeled faces (default 0-15); another range is inverted and fitted first "
                        "(skipped when --demo already holds it), e.g. 0-31 to ask whether 16 labels are the limit")
    p.add_argument("--loss-resolution", type=int, default=None, metavar="PX",
                   help="inversion.loss_resolution for the demo's and the held-out faces (default: the demo's 32)")
    p.add_argument("--held-out-seeds", default="", metavar="A-B",
                   help="also score the label generator on these inverted, never-fitted toy faces (e.g. 3000000-3000031)")
    return p.parse_args(argv)


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def on_training_images(G, lg, store, labeled, ids) -> dict:
    """Per-class IoU (summed over the images) and PCK@0.05 of lg on the inverted training images."""
    from handsoff_ray.pipeline.outputs import read_latent

    k = lg.tasks["segmentation"].num_outputs
    inter, union, hits, total = np.zeros(k), np.zeros(k), 0, 0
    with torch.no_grad():
        for i in ids:
            ws, _ = read_latent(store, i)
            _, feats = G.synthesis(ws[None], noise_mode="const", return_features=True)
            out = lg.predict(feats)
            seg = lg.decode("segmentation", out["segmentation"])[0].numpy()
            sample = labeled.load(i)
            for c in range(k):
                inter[c] += ((seg == c) & (sample.segmentation == c)).sum()
                union[c] += ((seg == c) | (sample.segmentation == c)).sum()
            if "keypoints" in lg.tasks and sample.keypoints is not None:
                kp = lg.decode("keypoints", out["keypoints"])[0].numpy()
                vis = sample.keypoints[:, 2] > 0
                err = np.linalg.norm(kp[vis, :2] - sample.keypoints[vis, :2], axis=1)
                hits, total = hits + int((err <= 0.05 * max(seg.shape)).sum()), total + int(vis.sum())
    iou = inter / np.maximum(union, 1)
    return {"iou": np.round(iou, 3).tolist(), "miou": round(float(iou.mean()), 4),
            "pck": round(hits / max(total, 1), 4)}


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from handsoff_ray.config import parse_spec
    from handsoff_ray.core.label_generator import load_label_generator
    from handsoff_ray.core.pairs import synthesize
    from handsoff_ray.pipeline.labeled import open_spec_labeled_set
    from handsoff_ray.pipeline.context import RunContext, open_run
    from handsoff_ray.pipeline.run import run_stage
    from handsoff_ray.demo import FULL, DemoSeeds, demo_spec, parse_seed_range

    seeds = DemoSeeds(labeled=parse_seed_range(args.labeled_seeds)) if args.labeled_seeds else DemoSeeds()
    base = _with_inversion(args, demo_spec(args.demo, FULL, seeds=seeds))
    spec = parse_spec(base)
    store = open_run(spec)
    if args.labeled_seeds or args.loss_resolution:
        for stage in ("invert", "fit"):  # skipped when done
            run_stage(spec, stage)
    from handsoff_ray.pipeline.outputs import label_generator_location

    lg_store, lg_file = label_generator_location(store)  # the shared artifact (or a run from before them)
    if not lg_store.exists(lg_file):
        raise SystemExit(f"no finished demo under {args.demo}: run `make demo` (or pass --demo DIR)")
    G = RunContext(spec).generator(torch.device("cpu"))
    labeled, ids = open_spec_labeled_set(spec)
    result: dict = {"demo": args.demo, "classes": list(labeled.classes)}
    log("label generator of the demo on its 16 inverted training images")
    lg = load_label_generator(lg_store.path(lg_file))
    result["fit"] = {"steps": spec.label_generator.max_steps, "members": spec.label_generator.ensemble_size,
                     **on_training_images(G, lg, store, labeled, ids)}

    held_out = _held_out_set(args) if args.held_out_seeds else None
    if held_out:
        result["held_out"] = _held_out(held_out, G, lg)
    lg2 = lg
    if args.refit_members:
        lg2 = _refit(args, base, spec, store, G, labeled, ids, result, held_out)
    else:
        log("no refit (--refit-members 0): fresh samples are labelled by the demo's own label generator")
    _sample_frequencies(args, spec, G, lg2, labeled, ids, result)
    if args.prior_taus:
        _prior_adjusted(args, spec, G, lg2, store, labeled, ids, result)
    print(json.dumps(result, indent=None if args.json else 2))
    return result


def _with_inversion(args, raw: dict) -> dict:
    if args.loss_resolution:
        raw["inversion"] = {**raw["inversion"], "loss_resolution": args.loss_resolution}
    return raw


def _held_out_set(args) -> dict:
    """The held-out faces inverted with the demo's inversion settings into <demo>/held-out-<seeds>/ (kept:
    a rerun reuses the latents): {"seeds", "invert_s", "store", "labeled", "ids"}."""
    from handsoff_ray.config import parse_spec
    from handsoff_ray.demo import FULL, DemoSeeds, demo_spec, parse_seed_range
    from handsoff_ray.pipeline.context import open_run
    from handsoff_ray.pipeline.labeled import open_spec_labeled_set
    from handsoff_ray.pipeline.run import run_stage

    raw = demo_spec(os.path.join(args.demo, f"held-out-{args.held_out_seeds}"), FULL,
                    seeds=DemoSeeds(labeled=parse_seed_range(args.held_out_seeds)))
    hspec = parse_spec(_with_inversion(args, raw), source="held-out")
    log(f"held-out faces {args.held_out_seeds}: inverted with the demo's inversion settings")
    t0 = time.time()
    run_stage(hspec, "invert")
    labeled, ids = open_spec_labeled_set(hspec)
    return {"seeds": args.held_out_seeds, "invert_s": round(time.time() - t0, 1), "store": open_run(hspec),
            "labeled": labeled, "ids": ids}


def _held_out(held_out: dict, G, lg) -> dict:
    """`on_training_images` on faces the label generator never saw."""
    return {"seeds": held_out["seeds"], "invert_s": held_out["invert_s"],
            **on_training_images(G, lg, held_out["store"], held_out["labeled"], held_out["ids"])}


def _refit(args, base, spec, store, G, labeled, ids, result, held_out=None):
    from handsoff_ray.config import parse_spec
    from handsoff_ray.core.label_generator import load_label_generator
    from handsoff_ray.pipeline.context import open_run
    from handsoff_ray.pipeline.run import run_stage

    log(f"refit {args.refit_members} members for {args.refit_steps} steps on the same latents")
    with tempfile.TemporaryDirectory() as tmp:
        # fit finds the demo's latents by content in <output>/_artifacts: copy those
        shutil.copytree(store.sibling("_artifacts").path("latents"), os.path.join(tmp, "_artifacts", "latents"))
        refit = {**base, "storage": {**base["storage"], "output": tmp},
                 "label_generator": {**base["label_generator"], "max_steps": args.refit_steps,
                                     "ensemble_size": args.refit_members},
                 "resources": {**base["resources"], "engine": "local", "torch_threads": args.threads}}
        rspec = parse_spec(refit)
        t0 = time.time()
        run_stage(rspec, "fit", engine="local")
        from handsoff_ray.pipeline.outputs import label_generator_location

        lg_store, lg_file = label_generator_location(open_run(rspec))
        lg2 = load_label_generator(lg_store.path(lg_file))
        result["refit"] = {"steps": args.refit_steps, "members": args.refit_members,
                           "seconds": round(time.time() - t0, 1), **on_training_images(G, lg2, store, labeled, ids)}
        if held_out:
            result["refit"]["held_out"] = _held_out(held_out, G, lg2)
    return lg2


def _sample_frequencies(args, spec, G, lg2, labeled, ids, result) -> None:
    from handsoff_ray.core.pairs import synthesize

    from handsoff_ray.demo import ORACLE_SEED0
    from handsoff_ray.toy.world import render_batch

    log("class frequencies: real faces vs fresh samples")
    real16 = np.bincount(labeled.load_all(ids).segmentation.reshape(-1), minlength=len(labeled.classes))
    # The world's own frequencies from as many real faces as samples (the oracle's seeds: no test face)
    world = render_batch(range(ORACLE_SEED0, ORACLE_SEED0 + args.samples), size=G.resolution).segmentation
    real = np.bincount(world.reshape(-1), minlength=len(labeled.classes))
    result["class_frequency"] = {"real_16_labeled": np.round(real16 / real16.sum(), 4).tolist(),
                                 f"real_{args.samples}_faces": np.round(real / real.sum(), 4).tolist()}
    with torch.no_grad():
        for psi in [float(x) for x in args.psis.split(",")]:
            pairs = synthesize(G, lg2, sample_ids=range(args.samples), run_seed=spec.seed, truncation_psi=psi)
            c = np.bincount(pairs.labels["segmentation"].reshape(-1), minlength=len(labeled.classes))
            result["class_frequency"][f"samples_psi_{psi}"] = np.round(c / c.sum(), 4).tolist()
            ratio = (c / c.sum()) / np.maximum(real / real.sum(), 1e-12)
            result["class_frequency"][f"samples_over_real_psi_{psi}"] = np.round(ratio, 3).tolist()


class _PriorAdjusted:
    """A label generator whose segmentation logits are shifted by `shift` [K] (everything else delegated)."""

    def __init__(self, lg, shift: torch.Tensor):
        self.lg, self.shift = lg, shift

    def predict(self, features, **kw):
        out = self.lg.predict(features, **kw)
        return {**out, "segmentation": out["segmentation"] + self.shift.view(1, 1, -1, 1, 1)}

    def __getattr__(self, name):
        return getattr(self.lg, name)


def _prior_adjusted(args, spec, G, lg, store, labeled, ids, result) -> None:
    from handsoff_ray.core.pairs import synthesize

    k = len(labeled.classes)
    counts = np.bincount(labeled.load_all(ids).segmentation.reshape(-1), minlength=k)[:k]
    log_prior = torch.log(torch.from_numpy(np.maximum(counts, 1) / counts.sum()).float())
    real = np.asarray(result["class_frequency"][f"real_{args.samples}_faces"])
    psi = float(args.psis.split(",")[0])
    result["prior"] = {"psi": psi}
    for tau in [float(x) for x in args.prior_taus.split(",")]:
        log(f"logit adjustment tau {tau}")
        adj = _PriorAdjusted(lg, tau * (log_prior - log_prior.mean()))
        entry = on_training_images(G, adj, store, labeled, ids)
        with torch.no_grad():
            pairs = synthesize(G, adj, sample_ids=range(args.samples), run_seed=spec.seed, truncation_psi=psi)
        c = np.bincount(pairs.labels["segmentation"].reshape(-1), minlength=k)
        entry["samples_over_real"] = np.round((c / c.sum()) / np.maximum(real, 1e-12), 3).tolist()
        result["prior"][f"tau_{tau}"] = entry


if __name__ == "__main__":
    main()
