"""Ray Train data-parallel scaling of `handsoff train-gan`: images/s with N workers vs 1, in one run; prints JSON.

    python benchmarks/gan_scaling.py --json --ceiling                # 1 vs 2 workers, 1 torch thread each, CPU
    python benchmarks/gan_scaling.py --json --workers 1,2,4 --gpu    # on a GPU node (one GPU per worker)

Each arm trains the shipped toy architecture (64 px, global batch 16) on the Ray engine for --kimg on a finite
set of 320 toy faces (decoded once per worker, so after the first epoch no image is rendered or read: the
rate is training's, not data loading's), checkpointing every --every kimg. The rate is rank 0's progress
lines after the first checkpoint (each over --every / 4 kimg, checkpoint and grid time excluded; the model
card's history), averaged: Ray start-up, worker-group start-up, the first epoch's rendering and warm-up are
left out. Arms run one after another on an
otherwise idle machine; compare ratios from one run only. `--ceiling` adds the same work as N independent
one-process runs at once (no all-reduce, no Ray): the scaling the machine itself allows (shared caches,
memory bandwidth, clocks, vCPUs that may be one core's two threads), against which the DDP arm is read. The 2-worker arm splits each batch 8 + 8 and
all-reduces gradients over gloo (nccl on GPUs) every step.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def _spec(name: str, workers: int, kimg: float, every: float, gpu: bool, work: str, engine: str):
    from handsoff_ray.config import parse_spec

    return parse_spec({
        "name": name, "storage": {"output": work},
        "resources": {"torch_threads": 1, "num_workers": workers, "use_gpu": gpu, "engine": engine},
        "gan": {"data": {"format": "toy", "seeds": "10000000-10000319", "holdout": 0},
                "kimg": kimg, "checkpoint_kimg": every, "log_kimg": every / 4},
    }, source="gan_scaling")


def _rate(spec, every: float) -> tuple[float, list[float]]:
    from handsoff_ray.pipeline.context import open_run
    from handsoff_ray.pipeline.gan import latest_state

    history = latest_state(open_run(spec))["progress"]["history"]
    rates = [r["img_per_s"] for r in history if r["kimg"] > every]
    return round(sum(rates) / len(rates), 2), rates


def _independent(args: tuple) -> None:
    from handsoff_ray.pipeline.gan import train_gan

    train_gan(_spec(*args), engine="local", export=False, log=lambda s: None)


def ceiling(n: int, kimg: float, every: float, work: str) -> dict:
    """n independent one-process runs at once (no communication): what the machine gives n workers at best."""
    import multiprocessing as mp

    args = [(f"ceiling-{n}-{i}", 1, kimg, every, False, work, "local") for i in range(n)]
    with mp.get_context("spawn").Pool(n) as pool:
        pool.map(_independent, args)
    rates = [_rate(_spec(*a), every)[0] for a in args]
    return {"independent_processes": n, "img_per_s_each": rates, "img_per_s": round(sum(rates), 2)}


def arm(workers: int, kimg: float, every: float, gpu: bool, work: str) -> dict:
    from handsoff_ray.pipeline.gan import train_gan

    spec = _spec(f"scaling-{workers}", workers, kimg, every, gpu, work, "ray")
    t0 = time.time()
    train_gan(spec, engine="ray", export=False, log=log)
    rate, rates = _rate(spec, every)
    return {"workers": workers, "img_per_s": rate, "intervals": len(rates), "rates": rates,
            "total_s": round(time.time() - t0, 1)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    p.add_argument("--kimg", type=float, default=2.56, help="images per arm, thousands")
    p.add_argument("--every", type=float, default=0.64, help="checkpoint interval, kimg")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker (nccl)")
    p.add_argument("--ceiling", action="store_true", help="also run the largest worker count as independent "
                   "one-process runs at once: the machine's own scaling, with no communication (CPU only)")
    a = p.parse_args(argv)
    import torch

    from handsoff_ray.core.device import cpu_model

    result = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name(0) if a.gpu else None, "arms": []}
    with tempfile.TemporaryDirectory() as work:
        for w in (int(x) for x in a.workers.split(",")):
            result["arms"].append(arm(w, a.kimg, a.every, a.gpu, work))
            log(json.dumps(result["arms"][-1]))
        if a.ceiling and not a.gpu:
            n = max(int(x) for x in a.workers.split(","))
            result["ceiling"] = ceiling(n, a.kimg, a.every, work)
            log(json.dumps(result["ceiling"]))
    base = result["arms"][0]["img_per_s"]
    for r in result["arms"] + ([result["ceiling"]] if "ceiling" in result else []):
        r["speedup_vs_first"] = round(r["img_per_s"] / base, 2)
    print(json.dumps(result, indent=None if a.json else 2))
    return result


if __name__ == "__main__":
    main()
