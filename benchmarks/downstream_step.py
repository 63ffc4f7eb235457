"""What one downstream training step costs on this CPU, per variant, and where the time goes. Prints JSON.

The demo trains 3 arms x `train_seeds` UNets for `max_steps` each; before paying for more steps (issue 17)
this profiles one step of exactly that network (toy faces, batch 8, width 16, three tasks, CE + Dice,
cosine schedule) under precision (fp32 / bf16 autocast), memory format (contiguous / channels-last) and
torch threads, all in one process so that the ratios are comparable.

    python benchmarks/downstream_step.py                      # every variant, 1 thread, 60 timed steps each
    python benchmarks/downstream_step.py --steps 30 --profile # plus the top ops of the fp32 and bf16 steps

Output: {"machine", "variants": {name: {"s_per_step", "ratio_to_fp32"}}, "top_ops": {name: [[op, ms]]}}.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Sequence
from typing import Any

import torch

from handsoff_ray.evaluation import DownstreamData, build_downstream, train_downstream
from handsoff_ray.toy.world import CLASSES, KEYPOINT_NAMES, render_batch

SEEDS0 = 6_000_000  # a range of this script's own; the faces only have to look like the demo's


def _data(n: int) -> DownstreamData:
    return DownstreamData.from_batch(render_batch(range(SEEDS0, SEEDS0 + n), 64))


def _train(data: DownstreamData, *, precision: str, steps: int, batch: int, width: int,
           channels_last: bool = False, callback=None) -> None:
    """The demo's downstream training (CE + Dice, cosine, lr 2e-3) for `steps` steps on a fresh network."""
    model = build_downstream("unet", num_classes=len(CLASSES), num_keypoints=len(KEYPOINT_NAMES), depth=True,
                             base_width=width, seed=0)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_downstream(model, data, epochs=10**6, batch_size=batch, seed=0, lr=2e-3, max_steps=steps,
                     seg_loss="ce_dice", lr_schedule="cosine", precision=precision, callback=callback)


def _time(data: DownstreamData, *, steps: int, warmup: int, **kw) -> float:
    """Seconds per step after `warmup` steps."""
    stamps: list[float] = []
    _train(data, steps=warmup + steps, **kw,
           callback=lambda step, logs: stamps.append(time.perf_counter()) if "epoch" not in logs else None)
    return (stamps[-1] - stamps[warmup - 1]) / steps


def _top_ops(data: DownstreamData, *, steps: int = 10, **kw) -> list:
    """The 12 ops with the most self CPU time, in ms per step."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        _train(data, steps=steps, **kw)
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    return [[e.key, round(e.self_cpu_time_total / 1000 / steps, 2)] for e in rows]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=60, help="timed steps per variant (after 10 warm-up)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--threads", default="1", help="comma list of torch thread counts (default 1)")
    p.add_argument("--profile", action="store_true", help="also list the top ops of a fp32 and a bf16 step")
    a = p.parse_args(argv)
    data = _data(256)
    bf16_native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    out: dict[str, Any] = {"machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                                       "bf16_native": bf16_native},
                           "config": {"batch_size": a.batch_size, "width": a.width, "steps": a.steps},
                           "variants": {}}
    for threads in (int(t) for t in a.threads.split(",")):
        torch.set_num_threads(threads)
        base = None
        for precision in ("fp32", "bf16"):
            for channels_last in (False, True):
                name = f"{precision}{'-channels_last' if channels_last else ''}-{threads}t"
                s = _time(data, precision=precision, channels_last=channels_last, steps=a.steps, warmup=10,
                          batch=a.batch_size, width=a.width)
                base = base or s
                out["variants"][name] = {"s_per_step": round(s, 4), "ratio_to_fp32": round(s / base, 3)}
    if a.profile:
        torch.set_num_threads(1)
        out["top_ops"] = {pr: _top_ops(data, precision=pr, batch=a.batch_size, width=a.width)
                          for pr in ("fp32", "bf16")}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
