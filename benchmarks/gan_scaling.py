"""Ray Train data-parallel scaling of `handsoff train-gan`: images/s with N workers vs 1, in one run; prints JSON.

    python benchmarks/gan_scaling.py --json --plain --ceiling        # 1 vs 2 workers, 1 torch thread each, CPU
    python benchmarks/gan_scaling.py --json --workers 1,2,4 --gpu    # on a GPU node (one GPU per worker)

Each arm trains the shipped toy architecture (64 px, global batch 16) on the Ray engine for --kimg on a finite
set of 320 toy faces (decoded once per worker, so after the first epoch no image is rendered or read: the
rate is training's, not data loading's), checkpointing every --every kimg. The rate is rank 0's progress
lines after the first checkpoint (each over --every / 4 kimg, checkpoint and grid time excluded; the model
card's history), averaged: Ray start-up, worker-group start-up, the first epoch's rendering and warm-up are
left out. Arms run one after another on an
otherwise idle machine; compare ratios from one run only. `--ceiling` adds the same work as N independent
one-process runs at once (no all-reduce, no Ray): the scaling the machine itself allows (shared caches,
memory bandwidth, clocks, vCPUs that may be one core's two threads), against which the DDP arm is read. `--plain` runs the same worker loop as plain torch.distributed processes
(gloo, no Ray), separating the DDP step's cost from that of Ray's own processes. The 2-worker arm splits each batch 8 + 8 and
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


def _plain_worker(rank: int, world: int, port: int, args: tuple) -> None:
    import torch
    import torch.distributed as dist

    from handsoff_ray.pipeline.context import open_run
    from handsoff_ray.pipeline.gan.checkpoints import LocalCheckpoints
    from handsoff_ray.pipeline.gan.train import worker_loop

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    spec = _spec(*args)
    worker_loop(spec, rank=rank, world=world, ckpts=LocalCheckpoints(open_run(spec), spec.gan.keep_checkpoints),
                device=torch.device("cpu"), log=lambda s: None)
    dist.destroy_process_group()


def plain_ddp(n: int, kimg: float, every: float, work: str) -> dict:
    """The same worker loop on n processes joined by torch.distributed (gloo) directly, without Ray: what the
    DDP step costs apart from Ray's own processes (controller, raylet, GCS, helper actors)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = (f"plain-{n}", n, kimg, every, False, work, "local")
    mp.spawn(_plain_worker, args=(n, port, args), nprocs=n)
    rate, rates = _rate(_spec(*args), every)
    return {"processes": n, "img_per_s": rate, "rates": rates}


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
    p.add_argument("--plain", action="store_true", help="also run each worker count as plain torch.distributed "
                   "processes (gloo, no Ray): the DDP step's own scaling (CPU only)")
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
        if (a.plain or a.ceiling) and not a.gpu:
            import ray

            ray.shutdown()  # Ray's own processes would share the cores with the arms below
        if a.plain and not a.gpu:
            result["plain"] = [plain_ddp(int(x), a.kimg, a.every, work) for x in a.workers.split(",")]
            base_plain = result["plain"][0]["img_per_s"]
            for r in result["plain"]:
                r["speedup_vs_first_plain"] = round(r["img_per_s"] / base_plain, 2)
            log(json.dumps(result["plain"]))
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
