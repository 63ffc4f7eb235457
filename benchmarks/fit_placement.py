"""Fitting the label-generator ensemble on 2 workers: members per worker vs data-parallel; prints one JSON object.

    python benchmarks/fit_placement.py --json                 # toy shapes, 2 processes, CPU, ~1 min
    python benchmarks/fit_placement.py --json --channels 6016 --hidden 256 32 --classes 8 --device cuda

The unit of the fit stage is one ensemble member (a per-pixel MLP trained by Adam on batches of
hypercolumn rows). Two ways to use two workers, each a process with one torch thread, measured here on
the same member shape, batch and step count:

- members_per_worker (what the pipeline does): each worker trains its own member on full batches; no
  communication. Throughput = 2 members x steps / wall time of both running at once.
- data_parallel: both workers train one member together with DistributedDataParallel (gloo), each on
  half of every batch, gradients all-reduced every step. Throughput = steps / wall time.

`speedup_members_vs_data_parallel` = member-steps per second of the first / of the second. Rows are
random hypercolumns kept in memory (the pipeline gathers them from feature maps, a cost both ways share).
With --json only the JSON goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true", help="print only the JSON result on stdout")
    p.add_argument("--channels", type=int, default=960, metavar="C", help="hypercolumn width (toy: 960)")
    p.add_argument("--hidden", type=int, nargs=2, default=[256, 32], metavar="H", help="MLP widths (faces: 256 32)")
    p.add_argument("--classes", type=int, default=8, metavar="K", help="outputs (default: 8)")
    p.add_argument("--batch", type=int, default=512, metavar="P", help="pixels per step (toy spec: 512)")
    p.add_argument("--steps", type=int, default=300, metavar="S", help="Adam steps (toy spec: 300)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    return p.parse_args(argv)


def _member(args, seed: int):
    """The label generator's own member MLP (Linear-ReLU-BN x2 + Linear), initialised as fitting does."""
    import torch

    from handsoff_ray.core.label_generator.model import _make_member

    return _make_member(args.channels, tuple(args.hidden), args.classes, torch.Generator().manual_seed(seed))


def _train(rank: int, world: int, args, port: int, data_parallel: bool, out) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    device = torch.device("cuda", rank) if args.device == "cuda" else torch.device("cpu")
    model = _member(args, 0 if data_parallel else rank).to(device)  # DDP ranks start from one init
    if data_parallel:
        dist.init_process_group("nccl" if args.device == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                                rank=rank, world_size=world)
        model = torch.nn.parallel.DistributedDataParallel(model)
    batch = args.batch // world if data_parallel else args.batch
    g = torch.Generator().manual_seed(100 + rank)
    rows = torch.randn(16 * batch, args.channels, generator=g).to(device)
    labels = torch.randint(0, args.classes, (16 * batch,), generator=g).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    if data_parallel:
        dist.barrier()
    t0 = time.perf_counter()
    for step in range(args.steps):
        i = (step % 16) * batch
        opt.zero_grad(set_to_none=True)
        loss_fn(model(rows[i:i + batch]), labels[i:i + batch]).backward()
        opt.step()
    if args.device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    if data_parallel:
        dist.barrier()
        dist.destroy_process_group()
    out.put((rank, seconds))


def _run(args, world: int, data_parallel: bool) -> float:
    """Wall time of `world` processes training (the slowest one)."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [ctx.Process(target=_train, args=(r, world, args, port, data_parallel, out)) for r in range(world)]
    for p in procs:
        p.start()
    times = [out.get(timeout=900)[1] for _ in procs]
    for p in procs:
        p.join()
    return max(times)


def main(argv=None) -> dict:
    args = parse_args(argv)
    single = _run(args, 1, False)
    members = _run(args, 2, False)
    ddp = _run(args, 2, True)
    result = {
        "member_steps_per_s_one_worker": args.steps / single,
        "member_steps_per_s_members_per_worker": 2 * args.steps / members,
        "member_steps_per_s_data_parallel": args.steps / ddp,
        "speedup_members_vs_data_parallel": (2 * args.steps / members) / (args.steps / ddp),
        "scaling_members_1_to_2": (2 * args.steps / members) / (args.steps / single),
        "scaling_data_parallel_1_to_2": (args.steps / ddp) / (args.steps / single),
        "channels": args.channels, "hidden": args.hidden, "classes": args.classes, "batch": args.batch,
        "steps": args.steps, "device": args.device, "cpu_count": os.cpu_count(),
    }
    print(json.dumps(result, indent=None if args.json else 2))
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)
