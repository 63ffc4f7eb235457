"""Synthesis throughput: the Ray Data pipeline vs the bare generator, and 1 vs 2 actors; prints one JSON object.

    python benchmarks/synthesis.py --json                      # toy generator, E=10, 256 pairs, CPU, ~5 min
    python benchmarks/synthesis.py --json --samples 2048 --device cuda --batch-size 64

Setup (not timed): the shipped toy StyleGAN2 (64x64) and a label generator with the toy spec's shape
(segmentation 256/32, keypoints 128/32, depth 128/32, E members), fitted for a few steps on 8 toy faces
(the weights' values do not change the cost). Then, all with the same batch size, device and torch
threads per process (--threads, default 1: one core per actor on this 2-core machine):

- bare_generator_pairs_per_s: `core.pairs.synthesize` in a loop in this process: the generator, the
  label generator and the uncertainty scores, i.e. every FLOP a pair needs, nothing else.
- generator_only_pairs_per_s: `G.synthesis` alone (images + features, no labels), for scale.
- pipeline_pairs_per_s: `handsoff run --stages synthesize` on Ray Data with one actor, end to end with
  Ray already up: actor start and model loading, PNG encoding, Parquet, atomic commits, manifest.
- efficiency = pipeline_pairs_per_s / bare_generator_pairs_per_s (goal >= 0.8).
- scaling_1_to_2 = throughput with 2 actors / with 1 actor (goal >= 1.7 on 2 cores).
- steady_scaling_1_to_2 = 2 x (mean seconds per shard with 1 actor) / (with 2 actors): the same ratio
  without the fixed actor start-up (process spawn, imports, model loading) that a short run pays.
- bare_scaling_1_to_2: two processes running the bare loop at once vs one: what the machine itself
  allows (shared caches and memory bandwidth), with no Ray involved.
- identical_1_vs_2_actors: whether both runs wrote byte-identical shards (sha256 in the manifest).

--samples is rounded to a multiple of 4 shards so two actors get equal work. With --json only the JSON
goes to stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true", help="print only the JSON result on stdout")
    p.add_argument("--samples", type=int, default=256, metavar="N", help="pairs per timed run (default: 256)")
    p.add_argument("--batch-size", type=int, default=32, metavar="B", help="pairs per generator call (default: 32)")
    p.add_argument("--ensemble", type=int, default=10, metavar="E", help="label-generator members (default: 10)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cpu | cuda (default: cpu)")
    p.add_argument("--threads", type=int, default=1, metavar="T", help="torch threads per process (default: 1)")
    p.add_argument("--workdir", default=None, metavar="DIR", help="keep the run here (default: a temp dir)")
    return p.parse_args(argv)


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def build_spec(root: str, args: argparse.Namespace):
    from handsoff_ray.config import parse_spec

    shard = max(1, args.samples // 4)
    return parse_spec({
        "name": "bench-synthesis",
        "generator": {"checkpoint": "toy", "device": args.device},
        "data": {"path": f"{root}/labeled"},
        "inversion": {"steps": 2, "batch_size": 8, "loss_resolution": 32},
        "label_generator": {
            "ensemble_size": args.ensemble, "max_steps": 5, "batch_pixels": 512,
            "tasks": {"segmentation": {"hidden": [256, 32]}, "keypoints": {"hidden": [128, 32], "sigma": 1.5},
                      "depth": {"hidden": [128, 32]}},
        },
        "synthesis": {"num_samples": 4 * shard, "shard_size": shard, "batch_size": args.batch_size},
        "storage": {"output": f"{root}/runs"},
        "resources": {"engine": "ray", "synthesis_actors": 1, "torch_threads": args.threads,
                      "gpus_per_actor": 1 if args.device == "cuda" else 0},
    })


def time_bare(spec, args) -> dict:
    """In-process: every pair the pipeline makes, computed by the same core functions, nothing written."""
    import torch

    from handsoff_ray.core.label_generator import load_label_generator
    from handsoff_ray.core.stylegan2 import z_from_seeds
    from handsoff_ray.core.pairs import synthesize
    from handsoff_ray.pipeline.context import RunContext, open_run, resolve_device

    device = resolve_device(spec)
    G = RunContext(spec).generator(device)
    from handsoff_ray.pipeline.outputs import label_generator_location

    lg_store, lg_file = label_generator_location(open_run(spec))
    lg = load_label_generator(lg_store.path(lg_file), device=device)
    n, b = spec.synthesis.num_samples, spec.synthesis.batch_size

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    synthesize(G, lg, sample_ids=range(b), run_seed=spec.seed)  # warm-up (allocator, inference plan)
    sync()
    t0 = time.perf_counter()
    for s in range(0, n, b):
        synthesize(G, lg, sample_ids=range(s, min(s + b, n)), run_seed=spec.seed,
                   truncation_psi=spec.synthesis.truncation_psi)
    sync()
    bare = n / (time.perf_counter() - t0)
    with torch.no_grad():
        t0 = time.perf_counter()
        for s in range(0, n, b):
            ws = G.mapping(z_from_seeds(list(range(s, min(s + b, n))), G.style_dim).to(device), truncation_psi=0.7)
            G.synthesis(ws, noise_mode="const", return_features=True)
        sync()
        g_only = n / (time.perf_counter() - t0)
    return {"bare_generator_pairs_per_s": bare, "generator_only_pairs_per_s": g_only}


def _bare_child(root: str, argv: list[str]) -> float:
    """One of two concurrent processes running the bare loop (spawned: fresh torch, one thread)."""
    import torch

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    return time_bare(build_spec(root, args), args)["bare_generator_pairs_per_s"]


def time_bare_two_processes(root: str, argv: list[str]) -> float:
    """Total bare throughput of two processes at once: the hardware's own 1 -> 2 scaling, without Ray."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(2) as pool:
        return sum(pool.starmap(_bare_child, [(root, argv)] * 2))


def time_pipeline(spec, actors: int) -> tuple[float, float, dict[str, str]]:
    from handsoff_ray.pipeline.run import run_stage
    from handsoff_ray.pipeline.context import open_run

    store = open_run(spec)
    shutil.rmtree(store.path("dataset"), ignore_errors=True)
    spec = spec.model_copy(update={"resources": spec.resources.model_copy(update={"synthesis_actors": actors})})
    t0 = time.perf_counter()
    run_stage(spec, "synthesize", engine="ray")
    seconds = time.perf_counter() - t0
    manifest = store.read_json("dataset/_manifest.json")
    shard_seconds = sum(v["seconds"] for v in manifest["shards"].values()) / len(manifest["shards"])
    return (spec.synthesis.num_samples / seconds, shard_seconds,
            {k: v["sha256"] for k, v in manifest["shards"].items()})


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    import ray
    import torch

    from handsoff_ray.pipeline.engines import ensure_ray
    from handsoff_ray.pipeline.run import run_stage
    from handsoff_ray.datasets.toy import write_toy_labeled_set

    torch.set_num_threads(args.threads)
    root = args.workdir or tempfile.mkdtemp(prefix="bench-synth-")
    os.makedirs(root, exist_ok=True)
    spec = build_spec(root, args)
    if not os.path.isdir(f"{root}/labeled/images"):
        write_toy_labeled_set(f"{root}/labeled", seeds=range(8), size=64)
    log("setup: invert + fit (few steps; only the label generator's shape matters)")
    local = spec.model_copy(update={"resources": spec.resources.model_copy(update={"engine": "local"})})
    run_stage(local, "invert", engine="local")
    run_stage(local, "fit", engine="local")

    log("timing the bare generator")
    result = time_bare(spec, args)
    log("timing the bare generator in two processes at once")
    result["bare_2_processes_pairs_per_s"] = time_bare_two_processes(root, argv)
    # Up once for both timings, through the pipeline's own connection path: a private local Ray with every
    # CPU, or the cluster resources.ray_address / RAY_ADDRESS names (never one a stray `ray start` left).
    ensure_ray(spec)
    try:
        log("timing the pipeline, 1 actor")
        one, shard_one, hashes_one = time_pipeline(spec, 1)
        log("timing the pipeline, 2 actors")
        two, shard_two, hashes_two = time_pipeline(spec, 2)
    finally:
        ray.shutdown()
    result.update({
        "pipeline_pairs_per_s": one,
        "pipeline_2_actors_pairs_per_s": two,
        "efficiency": one / result["bare_generator_pairs_per_s"],
        "scaling_1_to_2": two / one,
        # Per-shard work time (synthesis + encoding + commit) alone, without actor start-up: how much
        # two actors slow each other down on shared cores and memory bandwidth.
        "shard_seconds_1_actor": shard_one,
        "shard_seconds_2_actors": shard_two,
        "steady_scaling_1_to_2": 2 * shard_one / shard_two,
        "bare_scaling_1_to_2": result["bare_2_processes_pairs_per_s"] / result["bare_generator_pairs_per_s"],
        "identical_1_vs_2_actors": hashes_one == hashes_two,
        "samples": spec.synthesis.num_samples, "shards": 4, "batch_size": args.batch_size,
        "ensemble": args.ensemble, "device": args.device, "threads_per_process": args.threads,
        "cpu_count": os.cpu_count(), "torch": torch.__version__,
    })
    if not args.workdir:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result, indent=None if args.json else 2))
    return result


if __name__ == "__main__":
    main()
