"""Naive hypercolumn vs factorized label generation on the same generator features; prints one JSON object.

    python benchmarks/labelgen.py --json                  # config-f 512 generator, output 512, K=8, E=10, CPU
    python benchmarks/labelgen.py --json --device cuda    # same on a GPU (all E members timed on both paths)
    python benchmarks/labelgen.py --json --generator-resolution 1024 --features random   # faces shapes, no G

Features come from one `G.synthesis` call of a randomly initialised config-f Generator
(`--features generator`, default) or are random tensors with `feature_spec`'s shapes (`--features random`);
the JSON says which. Both paths compute the same ensemble (segmentation heads 256/32, BatchNorm with
non-trivial running statistics) for one image:
- naive: `naive_hypercolumn` (the full [1, C, H, W] fp32 tensor, 6.3 GB at 512x512x6016) then every member
  per pixel (`predict_naive`), like the reference;
- factorized: `LabelGenerator.predict` (per-layer projection at native resolution, streamed rows).
On CPU a naive member costs ~0.8 TFLOP, so only `--naive-members` members run and the MLP time is scaled
linearly to E (`naive_extrapolated`); the hypercolumn is built once either way. The logit difference is
measured on the members both paths ran.

Peak memory is the most a call holds beyond what exists before it (features, model weights, and the
stacked first-layer weights `predict` keeps between calls, `factorized_plan_bytes`, built beforehand as
in a generation loop). The returned outputs count (E members for factorized: `factorized_output_bytes`;
the timed members for naive). On CUDA: `torch.cuda.max_memory_allocated`. On CPU: live tensor bytes
tracked by `torch.profiler(profile_memory=True)` at operator granularity (`*_peak_bytes`, used for
`memory_ratio`), and, for reference, the peak resident set above the resident set before the call
(`*_peak_rss_bytes`: Linux VmHWM reset through /proc/self/clear_refs, after malloc_trim and a small
warm-up), which adds allocator caching and fragmentation. The naive call is timed while profiled (few,
large operators: negligible overhead); the factorized call is timed and profiled in separate runs.
With --json nothing but the JSON goes to stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from handsoff_ray.core.hypercolumn import naive_hypercolumn
from handsoff_ray.core.label_generator import LabelGenerator, TaskSpec, predict_naive


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print only the JSON object on stdout")
    p.add_argument("--device", default="cpu", metavar="DEV", help="cpu or cuda (default cpu)")
    p.add_argument("--generator-resolution", type=int, default=512, metavar="PX",
                   help="config-f generator size: 512 (cars, C=6016) or 1024 (faces, C=6080) (default 512)")
    p.add_argument("--resolution", type=int, default=512, metavar="PX", help="hypercolumn / label size (default 512)")
    p.add_argument("--features", choices=["generator", "random"], default="generator",
                   help="one G.synthesis call, or random maps of the same shapes (default generator)")
    p.add_argument("--classes", type=int, default=8, metavar="K", help="segmentation classes (default 8)")
    p.add_argument("--ensemble", type=int, default=10, metavar="E", help="ensemble members (default 10)")
    p.add_argument("--naive-members", type=int, default=None, metavar="M",
                   help="members run on the naive path, time scaled to E (default: 1 on CPU, E on CUDA)")
    p.add_argument("--threads", type=int, default=1, metavar="T",
                   help="torch CPU threads (default 1: stable timings on shared cores)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="weights / features seed (default 0)")
    return p.parse_args(argv)


def _log(args: argparse.Namespace, msg: str) -> None:
    print(f"[labelgen] {msg}", file=sys.stderr if args.json else sys.stdout, flush=True)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status: CPU peak memory needs Linux")


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float, int]:
    """Run fn once: (result, seconds, peak bytes above the start). CUDA: allocator peak; CPU: peak RSS."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # return freed heap, so reuse cannot hide a peak
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        base = _status_kib("VmRSS") * 1024
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return result, time.perf_counter() - start, torch.cuda.max_memory_allocated(device) - base
    return result, time.perf_counter() - start, _status_kib("VmHWM") * 1024 - base


def _tensor_peak(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run fn under the profiler: (result, peak live tensor bytes above the start, CPU allocations)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    # Each event's self memory is what it allocated minus what it freed; in start order the running
    # sum is the live-bytes trajectory ([memory] events carry frees outside operators).
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    live = peak = 0
    for e in events:
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
    return result, peak


def _features(args: argparse.Namespace, device: torch.device) -> tuple[list[torch.Tensor], str]:
    from handsoff_ray.core.stylegan2 import Generator, GeneratorConfig, feature_spec, z_from_seeds

    cfg = GeneratorConfig(resolution=args.generator_resolution, channel_base=32768)
    if args.features == "random":
        gen = torch.Generator().manual_seed(args.seed)
        maps = [torch.randn(1, s.channels, s.height, s.width, generator=gen).to(device) for s in feature_spec(cfg)]
        return maps, f"random tensors with feature_spec(GeneratorConfig(resolution={cfg.resolution})) shapes"
    torch.manual_seed(args.seed)
    G = Generator(cfg).to(device).eval()
    with torch.no_grad():
        ws = G.mapping(z_from_seeds([args.seed], cfg.style_dim, device=device))
        _, maps = G.synthesis(ws, noise_mode="const", return_features=True)
    maps = [m.contiguous() for m in maps]  # the const map is an expanded view
    del G
    return maps, f"one G.synthesis call of a random config-f Generator(resolution={cfg.resolution})"


def _label_generator(channels: list[int], args: argparse.Namespace, device: torch.device) -> LabelGenerator:
    lg = LabelGenerator(channels, {"seg": TaskSpec("segmentation", args.classes, hidden=(256, 32))},
                        out_size=(args.resolution, args.resolution), ensemble_size=args.ensemble, seed=args.seed)
    gen = torch.Generator().manual_seed(args.seed + 1)
    with torch.no_grad():
        for m in lg.modules():
            if isinstance(m, torch.nn.BatchNorm1d):  # trained-looking statistics, so BN folding is exercised
                m.running_mean.copy_(torch.rand(m.num_features, generator=gen))
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return lg.to(device).eval()


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    on_cpu = device.type == "cpu"
    naive_members = args.naive_members or (min(1, args.ensemble) if on_cpu else args.ensemble)
    out_size = (args.resolution, args.resolution)

    t0 = time.perf_counter()
    feats, source = _features(args, device)
    _log(args, f"features ({source}) in {time.perf_counter() - t0:.1f} s")
    lg = _label_generator([f.shape[1] for f in feats], args, device)
    channels = sum(lg.feature_channels)

    # Warm-up: first calls fault in library code and lazily built state, which a resident-set
    # measurement would otherwise charge to whichever path runs first. Then build the stacked
    # first-layer weights predict keeps between calls, as a generation loop's first sample would.
    small = LabelGenerator(lg.feature_channels, lg.tasks, out_size=(16, 16), ensemble_size=2).to(device).eval()
    small.predict(feats)
    predict_naive(small, feats)
    plan_bytes = lg._inference_plan(list(range(args.ensemble)))[1].numel() * 4

    # Factorized before naive: its smaller peak is then not hidden by heap the naive run leaves resident.
    fast, fast_s, fast_peak_rss = _timed(lambda: lg.predict(feats)["seg"], device)
    fast_peak = _tensor_peak(lambda: lg.predict(feats))[1] if on_cpu else fast_peak_rss
    _log(args, f"factorized: {fast_s:.1f} s, peak {fast_peak / 2**20:.0f} MiB")

    timed = list(range(naive_members))

    def naive() -> tuple[torch.Tensor, float]:
        start = time.perf_counter()
        hc = naive_hypercolumn(feats, out_size)
        if not on_cpu:
            torch.cuda.synchronize(device)
        build = time.perf_counter() - start
        return predict_naive(lg, feats, members=timed, hypercolumn=hc)["seg"], build

    if on_cpu:
        ((slow, build_s), naive_peak), naive_total_s, naive_peak_rss = _timed(lambda: _tensor_peak(naive), device)
    else:
        (slow, build_s), naive_total_s, naive_peak = _timed(naive, device)
    mlp_per_member = (naive_total_s - build_s) / naive_members
    naive_s = build_s + mlp_per_member * args.ensemble
    _log(args, f"naive: build {build_s:.1f} s, MLP {mlp_per_member:.1f} s/member, peak {naive_peak / 2**20:.0f} MiB")

    diff = (fast[timed] - slow).abs().max().item()
    scale = slow.abs().max().item()
    result = {
        "resolution": args.resolution,
        "generator_resolution": args.generator_resolution,
        "features": source,
        "hypercolumn_channels": channels,
        "classes": args.classes,
        "hidden": [256, 32],
        "ensemble_size": args.ensemble,
        "device": "cpu" if on_cpu else torch.cuda.get_device_name(device),
        "threads": args.threads,
        "load_average_1m": os.getloadavg()[0],
        "naive_members_run": naive_members,
        "naive_extrapolated": naive_members != args.ensemble,
        "naive_build_s": round(build_s, 3),
        "naive_mlp_s_per_member": round(mlp_per_member, 3),
        "naive_s_per_sample": round(naive_s, 3),
        "factorized_s_per_sample": round(fast_s, 3),
        "speedup": round(naive_s / fast_s, 2),
        "naive_peak_bytes": naive_peak,
        "factorized_peak_bytes": fast_peak,
        "memory_ratio": round(fast_peak / naive_peak, 5),
        "memory_method": ("torch.profiler live tensor bytes (CPU allocations, operator granularity)" if on_cpu
                          else "torch.cuda.max_memory_allocated above the allocated bytes before the call"),
        "factorized_plan_bytes": plan_bytes,
        "factorized_output_bytes": fast.numel() * fast.element_size(),
        "naive_hypercolumn_bytes": channels * args.resolution**2 * 4,
        "max_abs_logit_diff": diff,
        "max_abs_logit": scale,
        "relative_logit_diff": diff / scale,
        "goals": {"memory_ratio<=0.02": fast_peak / naive_peak <= 0.02, "speedup>=20": naive_s / fast_s >= 20,
                  "relative_logit_diff<=1e-4": diff / scale <= 1e-4},
        "torch": torch.__version__,
    }
    if on_cpu:
        result.update(naive_peak_rss_bytes=naive_peak_rss, factorized_peak_rss_bytes=fast_peak_rss,
                      memory_ratio_rss=round(fast_peak_rss / naive_peak_rss, 5))
    print(json.dumps(result, indent=None if args.json else 2))
    return result


if __name__ == "__main__":
    main()
