"""What fits the label generator to its own training images cheapest? Prints one JSON object.

    python benchmarks/labelgen_fit.py --json                          # shipped toy generator, ~15 CPU-min
    python benchmarks/labelgen_fit.py --json --generator new.safetensors --configs 300,4000b

The issue's bar: on its 16 inverted training images, every class IoU >= 0.5 and keypoint PCK >= 0.9.
Setup: the demo's 16 labeled toy faces (seeds 0..15) are inverted once with the demo's inversion
settings (local engine, cached under --work); then, for each configuration, `--members` ensemble
members of each task are fitted on the same features and the resulting label generator is applied to
the 16 inverted latents and compared with their real labels (per-class IoU summed over the images,
PCK@0.05 of visible keypoints, depth RMSE). Seconds are the process CPU time of the fit (comparable
whatever else shares the machine), divided by the members fitted: the cost of one member of all tasks.

A configuration is written STEPS[b][c][lLR][pBATCH], e.g. `4000b`: 4000 steps, class-balanced batches;
`1200cp2048`: 1200 steps, cosine learning-rate decay, 2048 pixels per batch. Defaults: the demo's
512 pixels per batch, lr 1e-3 constant, uniform pixel sampling.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time

import numpy as np
import torch


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def parse_config(text: str) -> dict:
    m = re.fullmatch(r"(\d+)(b?)(c?)(?:l([0-9.e-]+))?(?:p(\d+))?", text)
    if not m:
        raise SystemExit(f"bad configuration {text!r}: expected STEPS[b][c][lLR][pBATCH], e.g. 4000b or 1200cp2048")
    return {"name": text, "max_steps": int(m[1]), "class_balanced": bool(m[2]), "schedule": "cosine" if m[3] else "constant",
            "lr": float(m[4]) if m[4] else 1e-3, "batch_pixels": int(m[5]) if m[5] else 512}


def prepare(work: str, generator: str, invert_steps: int, threads: int):
    """Invert the demo's 16 faces once (cached); return (spec, G, features, targets, tasks, aligned)."""
    from handsoff_ray.config import parse_spec
    from handsoff_ray.demo import FULL, demo_spec
    from handsoff_ray.pipeline.context import RunContext
    from handsoff_ray.pipeline.run import run_stage
    from handsoff_ray.pipeline.stages.fit import fit_inputs

    raw = demo_spec(work, FULL, generator=generator)
    raw["inversion"]["steps"] = invert_steps
    raw["resources"] = {"engine": "local", "torch_threads": threads}
    raw["evaluation"] = {"enabled": False}
    spec = parse_spec(raw)
    t0 = time.process_time()
    inv = run_stage(spec, "invert", engine="local")
    log(f"inversion: {inv.get('inverted_now', 0)} inverted now ({time.process_time() - t0:.0f} CPU-s)")
    ctx = RunContext(spec)
    x = fit_inputs(ctx)  # exactly what the fit stage's workers compute (hypercolumns, aligned targets)
    return spec, ctx.generator(), x["features"], x["targets"], x["tasks"], list(ctx.labeled()[0].classes)


def score(lg, features, targets, tasks) -> dict:
    """Per-class IoU, PCK@0.05 and depth RMSE of `lg` on the images the features came from (core.metrics)."""
    from handsoff_ray.core.metrics import SegmentationMeter, depth_errors, pck

    out = {}
    with torch.no_grad():
        preds = [lg.predict([m[None] if m.dim() == 3 else m for m in f]) for f in features]
    if "segmentation" in tasks:
        meter = SegmentationMeter(tasks["segmentation"].num_outputs)
        for i, p in enumerate(preds):
            meter.update(lg.decode("segmentation", p["segmentation"])[0], targets["segmentation"][i])
        iou = meter.iou().numpy()
        out |= {"iou": np.round(iou, 3).tolist(), "min_iou": round(float(iou.min()), 3),
                "miou": round(float(iou.mean()), 4)}
    if "keypoints" in tasks:
        kp = torch.cat([lg.decode("keypoints", p["keypoints"]) for p in preds])
        out["pck"] = round(pck(kp, targets["keypoints"].float(), image_size=tuple(lg.out_size), alpha=0.05), 4)
    if "depth" in tasks:
        depth = torch.cat([lg.decode("depth", p["depth"]) for p in preds])
        out["depth_rmse"] = round(depth_errors(depth, targets["depth"].float())["rmse"], 4)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true", help="print only the JSON result on stdout")
    p.add_argument("--generator", default="toy", help="generator checkpoint (default: the shipped toy)")
    p.add_argument("--work", default="handsoff-demo-labelgen", help="cache folder for the inversion")
    p.add_argument("--configs", default="300,1200,4000,1200b,4000b,1200bc,4000bc",
                   help="comma-separated configurations (see the module docstring)")
    p.add_argument("--members", type=int, default=2, help="members fitted per configuration and task")
    p.add_argument("--invert-steps", type=int, default=150)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from handsoff_ray.core.label_generator import fit_label_generator

    spec, G, features, targets, tasks, classes = prepare(a.work, a.generator, a.invert_steps, a.threads)
    result = {"generator": a.generator, "classes": classes, "members": a.members, "threads": a.threads,
              "images": len(features), "configs": []}
    for text in a.configs.split(","):
        cfg = parse_config(text)
        t0 = time.process_time()
        lg, _ = fit_label_generator(
            features, targets, tasks, out_size=tuple(targets["segmentation"].shape[-2:]),
            ensemble_size=a.members, max_steps=cfg["max_steps"], batch_pixels=cfg["batch_pixels"], lr=cfg["lr"],
            lr_schedule=cfg["schedule"], class_balanced=cfg["class_balanced"],
            val_fraction=spec.label_generator.val_fraction, patience=spec.label_generator.patience, seed=spec.seed)
        cpu = time.process_time() - t0
        row = {**cfg, "cpu_s_per_member": round(cpu / a.members, 1), **score(lg, features, targets, tasks)}
        log(json.dumps(row))
        result["configs"].append(row)
    print(json.dumps(result, indent=None if a.json else 2))
    return result


if __name__ == "__main__":
    main()
