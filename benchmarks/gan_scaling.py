"""Ray Train data-parallel scaling of `handsoff train-gan`: images/s with N workers vs 1, in one run; prints JSON.

    python benchmarks/gan_scaling.py --json                          # 1 vs 2 workers, 1 torch thread each, CPU
    python benchmarks/gan_scaling.py --json --workers 1,2,4 --gpu    # on a GPU node (one GPU per worker)

Each arm trains the shipped toy architecture (64 px, global batch 16, the toy stream so no data set is
read) on the Ray engine for --kimg, checkpointing every --every kimg with every checkpoint kept. The rate is
images between the first and the last checkpoint over the wall time between them (rank 0's clock), so Ray
start-up, worker-group start-up and the first steps' warm-up are excluded. Arms run one after another on an
otherwise idle machine; compare ratios from one run only. The 2-worker arm splits each batch 8 + 8 and
all-reduces gradients over gloo (nccl on GPUs) every step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def arm(workers: int, kimg: float, every: float, gpu: bool, work: str) -> dict:
    from handsoff_ray.config import parse_spec
    from handsoff_ray.pipeline.context import open_run
    from handsoff_ray.pipeline.gan import train_gan

    spec = parse_spec({
        "name": f"scaling-{workers}", "storage": {"output": work},
        "resources": {"torch_threads": 1, "num_workers": workers, "use_gpu": gpu, "engine": "ray"},
        "gan": {"data": {"format": "toy", "seeds": "10000000-10000000", "stream": True, "holdout": 0},
                "kimg": kimg, "checkpoint_kimg": every, "keep_checkpoints": 1000, "log_kimg": every},
    }, source="gan_scaling")
    t0 = time.time()
    train_gan(spec, engine="ray", export=False, log=log)
    store = open_run(spec)
    points = sorted((p["images_seen"], p["wall_s"]) for p in (
        store.read_json(f"gan/{d}/progress.json") for d in os.listdir(store.path("gan")) if d.startswith("checkpoint_")))
    (n0, w0), (n1, w1) = points[0], points[-1]
    return {"workers": workers, "img_per_s": round((n1 - n0) / (w1 - w0), 2), "measured_images": n1 - n0,
            "measured_s": round(w1 - w0, 1), "total_s": round(time.time() - t0, 1)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    p.add_argument("--kimg", type=float, default=1.6, help="images per arm, thousands")
    p.add_argument("--every", type=float, default=0.32, help="checkpoint interval, kimg")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker (nccl)")
    a = p.parse_args(argv)
    import torch

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor())
    result = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name(0) if a.gpu else None, "arms": []}
    with tempfile.TemporaryDirectory() as work:
        for w in (int(x) for x in a.workers.split(",")):
            result["arms"].append(arm(w, a.kimg, a.every, a.gpu, work))
            log(json.dumps(result["arms"][-1]))
    base = result["arms"][0]["img_per_s"]
    for r in result["arms"]:
        r["speedup_vs_first"] = round(r["img_per_s"] / base, 2)
    print(json.dumps(result, indent=None if a.json else 2))
    return result


if __name__ == "__main__":
    main()
