"""`handsoff train-gan`: train a StyleGAN2 on the user's unlabeled images, in this process or on Ray Train.

    handsoff train-gan jobs/specs/my.yaml                       # reads gan: {data, resolution, kimg, ...}
    handsoff train-gan --toy --set gan.kimg=300                 # the shipped toy generator's recipe
    train_gan(spec, engine="ray", max_minutes=30)               # the same from Python; resumable

Both engines run `worker_loop`: the local engine as rank 0 of 1 in this process, Ray Train as N
`TorchTrainer` workers (gloo on CPU, nccl on GPU; Ray Train builds the process group) that split the
global batch `gan.batch_size` (core/gan_step.py explains why the result is the same on 1 or N workers).
Checkpoints go to <run>/gan/ in the run's storage (local or s3://), through Ray Train's checkpoint API on
the Ray engine (`RunConfig(storage_path=<run>, name="gan")`, `FailureConfig` retries), so a killed worker,
a restarted job or the other engine resumes from the newest one. A step's draws are seeded by (seed, step,
sample) and data order by (seed, epoch): an interrupted and resumed run computes what an uninterrupted
one computes (same device, thread count and precision).

When `gan.kimg` is reached the driver exports `<run>/gan/generator.safetensors` with its model card
(card.py); `generator.checkpoint` of a HandsOff spec can name it.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from handsoff_ray.config import JobSpec, parse_spec
from handsoff_ray.core.gan_step import (
    autocast_dtype, build_nets, generator_config, load_nets_state, nets_state, r1_gamma, train_step,
)
from handsoff_ray.pipeline.context import apply_torch_threads, open_run
from handsoff_ray.pipeline.engines import ensure_ray, enter_driver_cwd
from handsoff_ray.pipeline.errors import UserError
from handsoff_ray.pipeline.gan.checkpoints import GAN_DIR, LocalCheckpoints, RayCheckpoints, latest_state
from handsoff_ray.pipeline.gan.data import TrainImages

__all__ = ["train_gan", "preflight", "worker_loop", "RUN_OPTIONS", "check_resumable", "machine_description"]

# gan.* fields that may change between invocations of one run (how long, how often, how precisely it
# computes: precision is like the device); everything else must match to resume.
RUN_OPTIONS = ("kimg", "checkpoint_kimg", "keep_checkpoints", "log_kimg", "kid", "precision")


def machine_description(device: torch.device | str = "cpu", threads: int | None = None, workers: int = 1) -> str:
    """CPU model, cores and threads used, accelerator, torch version: the model card's `machine`."""
    from handsoff_ray.core.device import cpu_model

    cpu = cpu_model()
    dev = torch.device(device)
    acc = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "no accelerator"
    used = threads or torch.get_num_threads()
    who = f"{workers} workers x " if workers > 1 else ""
    return f"{cpu}, {os.cpu_count()} cores ({who}{used} torch threads), {acc}, torch {torch.__version__}"


def _identity(gan: dict) -> dict:
    return {k: v for k, v in gan.items() if k not in RUN_OPTIONS}


def check_resumable(saved: dict, gan: dict) -> None:
    """UserError listing the recipe fields a checkpoint was trained with that the spec now changes."""
    ours, theirs = _identity(gan), _identity(saved)
    diff = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    if diff:
        pairs = ", ".join(f"gan.{k}={theirs.get(k)!r} (now {ours.get(k)!r})" for k in diff)
        raise UserError(f"the checkpoint under gan/ was trained with another recipe: {pairs}; restore those "
                        f"fields or use another storage.run_id")


def _init_card(gan, nets) -> dict:
    """G and G_ema <- gan.init's weights; its model card. Refuses another architecture."""
    from handsoff_ray.core.checkpoint import load_generator
    from handsoff_ray.toy import resolve_alias

    src = load_generator(resolve_alias(gan.init))
    ours = generator_config(gan).to_dict()
    if src.cfg.to_dict() != ours:
        raise UserError(f"gan.init {gan.init} is a {src.cfg.to_dict()} generator; gan.* builds {ours}: set "
                        f"gan.resolution / channel_base / channel_max / style_dim / n_mlp to match")
    nets.G.load_state_dict(src.state_dict())
    nets.G_ema.load_state_dict(src.state_dict())
    return src.metadata.get("model_card") or {}


def _all_reduce(values: list[float], op: str = "sum") -> list[float]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t.tolist()


def worker_loop(spec: JobSpec, *, rank: int, world: int, ckpts, device: torch.device,
                deadline: float = math.inf, log: Callable[[str], None] = print) -> dict:
    """Train (or resume) until gan.kimg or the deadline (time.time()); return the progress dict.

    Every worker runs this with the same spec and step sequence; rank r trains on the global batch's
    positions r, r + world, ... Only rank 0 logs, measures KID and holds the state it checkpoints.
    """
    from handsoff_ray.pipeline.gan.card import KidProxy

    gan = spec.gan
    if gan.batch_size % world:
        raise UserError(f"gan.batch_size {gan.batch_size} does not split over {world} workers; make it a multiple "
                        f"of resources.num_workers")
    apply_torch_threads(spec)
    amp = autocast_dtype(gan.precision, device)
    data = TrainImages.open(gan, storage=spec.storage)
    nets = build_nets(gan, device)
    gan_dict = gan.model_dump(mode="json")
    prog: dict[str, Any] = {"step": 0, "images_seen": 0, "wall_s": 0.0, "cpu_s": 0.0, "history": [],
                            "kid_curve": []}
    init_card: dict = {}
    state = ckpts.latest()
    if state is not None:
        check_resumable(state["gan"], gan_dict)
        load_nets_state(nets, state["nets"])
        prog, init_card = state["progress"], state.get("init_card") or {}
        if rank == 0:
            log(json.dumps({"resumed_at_kimg": prog["images_seen"] / 1000, "step": prog["step"]}))
    elif gan.init:
        init_card = _init_card(gan, nets)
    for net in (nets.G, nets.D, nets.G_ema):
        net.to(device)
    for opt in (nets.opt_G, nets.opt_D):  # optimiser moments were loaded on the CPU
        for st in opt.state.values():
            for k, v in st.items():
                if torch.is_tensor(v) and k != "step":
                    st[k] = v.to(device)
    kid = KidProxy(spec, data, device) if rank == 0 else None
    if rank == 0:
        log(json.dumps({"start": {"kimg": gan.kimg, "batch": gan.batch_size, "workers": world, "device": str(device),
                                  "precision": str(amp or "fp32"), "r1_gamma": r1_gamma(gan), "data": data.describe(),
                                  "G_params": sum(p.numel() for p in nets.G.parameters()),
                                  "D_params": sum(p.numel() for p in nets.D.parameters())}}))

    B, total = gan.batch_size, round(gan.kimg * 1000)
    mine = list(range(rank, B, world))  # this worker's positions in every global batch (strided: see core)
    ckpt_every, log_every = round(gan.checkpoint_kimg * 1000), round(gan.log_kimg * 1000)
    t0, c0, wall0, cpu0 = time.time(), time.process_time(), prog["wall_s"], prog["cpu_s"]
    since = (prog["images_seen"], time.time(), time.process_time())
    losses = {"loss_D": float("nan"), "loss_G": float("nan")}
    last_kid = prog["kid_curve"][-1]["kimg"] * 1000 if prog["kid_curve"] else 0

    def checkpoint() -> None:
        nonlocal last_kid
        cpu = _all_reduce([time.process_time() - c0])[0]  # summed over workers
        prog["wall_s"], prog["cpu_s"] = wall0 + time.time() - t0, cpu0 + cpu
        metrics = {"kimg": prog["images_seen"] / 1000, **losses}
        if kid is not None and gan.kid.every_kimg and prog["images_seen"] - last_kid >= gan.kid.every_kimg * 1000 \
                and prog["images_seen"] < total:
            point = kid.measure(nets.G_ema)
            if point is not None:
                prog["kid_curve"].append({"kimg": prog["images_seen"] / 1000, "cpu_s": round(prog["cpu_s"], 1),
                                          **point})
                log(json.dumps({"kid": prog["kid_curve"][-1]}))
            last_kid = prog["images_seen"]
        if kid is not None:
            _write_grid(spec, nets.G_ema, prog["images_seen"])
        ckpts.save({"gan": gan_dict, "nets": nets_state(nets), "progress": prog, "init_card": init_card,
                    "machine": machine_description(device, spec.resources.torch_threads, world),
                    "precision": str(amp or "fp32"), "data": data.describe(), "workers": world}
                   if rank == 0 else None, metrics)

    with ThreadPoolExecutor(max_workers=1) as pool:  # decoding / rendering the next batch overlaps this step
        def fetch(seen: int):
            return pool.submit(lambda: data.load(data.positions(seen, B)[mine]))

        pending = fetch(prog["images_seen"]) if prog["images_seen"] < total else None
        while prog["images_seen"] < total:
            real = pending.result().to(device, memory_format=torch.channels_last)
            seen_next = prog["images_seen"] + B
            pending = fetch(seen_next) if seen_next < total else None
            losses = train_step(nets, gan, real, step=prog["step"], indices=mine, amp=amp)
            prog["step"] += 1
            prog["images_seen"] = seen_next
            if not all(math.isfinite(v) for v in losses.values()):
                raise FloatingPointError(f"loss became {losses} at step {prog['step']}; resume from the last "
                                         f"checkpoint with a lower gan.lr or gan.precision fp32")
            if rank == 0 and seen_next // log_every != (seen_next - B) // log_every:
                n, wall, cpu = seen_next - since[0], time.time() - since[1], time.process_time() - since[2]
                rec = {"step": prog["step"], "kimg": round(seen_next / 1000, 3),
                       "epochs": round(data.epochs(seen_next), 2), **{k: round(v, 4) for k, v in losses.items()},
                       "img_per_s": round(n / max(wall, 1e-9), 2), "img_per_cpu_s": round(n / max(cpu, 1e-9) / world, 2)}
                prog["history"].append(rec)
                log(json.dumps(rec))
                since = (seen_next, time.time(), time.process_time())
            stop = _all_reduce([float(time.time() >= deadline)], op="max")[0] > 0
            if stop or seen_next >= total or seen_next // ckpt_every != (seen_next - B) // ckpt_every:
                checkpoint()
                since = (seen_next, time.time(), time.process_time())  # rates exclude checkpoint and KID time
            if stop:
                break
    return prog


def _write_grid(spec: JobSpec, G, images_seen: int) -> None:
    from handsoff_ray.pipeline.gan.card import grid_png

    store = open_run(spec)
    store.write_bytes(f"{GAN_DIR}/samples/samples_{images_seen // 1000:06d}kimg.png", grid_png(G))


# ------------------------------------------------------------------------------------------ engines


def _ray_loop(config: dict) -> None:
    import ray.train
    import ray.train.torch

    enter_driver_cwd(config["cwd"])
    spec = parse_spec(config["spec"])
    ctx = ray.train.get_context()
    device = ray.train.torch.get_device() if spec.resources.use_gpu else torch.device("cpu")
    worker_loop(spec, rank=ctx.get_world_rank(), world=ctx.get_world_size(),
                ckpts=RayCheckpoints(open_run(spec), spec.gan.keep_checkpoints), device=device,
                deadline=config["deadline"], log=lambda s: print(s, flush=True))


def _ray_train(spec: JobSpec, deadline: float, log: Callable[[str], None]) -> None:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    ensure_ray(spec)
    store = open_run(spec)
    res = spec.resources
    trainer = TorchTrainer(
        _ray_loop,
        train_loop_config={"spec": spec.model_dump(mode="json"), "cwd": os.getcwd(), "deadline": deadline},
        torch_config=TorchConfig(backend="nccl" if res.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=res.num_workers, use_gpu=res.use_gpu,
                                     resources_per_worker={"CPU": res.cpus_per_worker}),
        run_config=RunConfig(
            name=GAN_DIR,
            # The run's own storage: checkpoints land in <run>/gan/ (S3 too), where a relaunched job finds them.
            storage_path=store.root, storage_filesystem=store.fs,
            checkpoint_config=CheckpointConfig(num_to_keep=spec.gan.keep_checkpoints),
            failure_config=FailureConfig(max_failures=2),
        ),
    )
    log(json.dumps({"engine": "ray", "workers": res.num_workers, "use_gpu": res.use_gpu}))
    trainer.fit()


def preflight(spec: JobSpec, engine: str):
    """The run's store, after every check that needs no compute: the data source, the batch split, and that a
    checkpoint already under <run>/gan/ was trained with this recipe. UserError (one line) otherwise."""
    TrainImages.open(spec.gan, storage=spec.storage)
    workers = spec.resources.num_workers if engine == "ray" else 1
    if spec.gan.batch_size % workers:
        raise UserError(f"gan.batch_size {spec.gan.batch_size} does not split over {workers} workers; make it a "
                        f"multiple of resources.num_workers")
    store = open_run(spec)
    state = latest_state(store)
    if state is not None:
        check_resumable(state["gan"], spec.gan.model_dump(mode="json"))
    return store


def train_gan(spec: JobSpec, *, engine: str | None = None, max_minutes: float | None = None,
              export: bool = True, log: Callable[[str], None] = print) -> dict:
    """Train or resume spec.gan on `engine` (default resources.engine); export when gan.kimg is reached.

    Returns {"images_seen", "finished", "generator" (the exported URI or None), "card" (or None)}."""
    from handsoff_ray.pipeline.gan.card import export_generator

    engine = engine or spec.resources.engine
    store = preflight(spec, engine)
    deadline = time.time() + max_minutes * 60 if max_minutes is not None else math.inf
    if engine == "ray":
        _ray_train(spec, deadline, log)
    else:
        from handsoff_ray.pipeline.context import resolve_device

        if spec.resources.num_workers > 1:
            log(json.dumps({"note": "the local engine trains in this one process; resources.num_workers applies "
                                    "to the Ray engine"}))
        worker_loop(spec, rank=0, world=1, ckpts=LocalCheckpoints(store, spec.gan.keep_checkpoints),
                    device=resolve_device(spec), deadline=deadline, log=log)
    state = latest_state(store)
    seen = state["progress"]["images_seen"] if state else 0
    total = round(spec.gan.kimg * 1000)
    out = {"images_seen": seen, "finished": seen >= total, "generator": None, "card": None}
    if seen >= total and export:
        out["generator"], out["card"] = export_generator(spec, state, log=log)
    elif seen < total:
        print(f"stopped at {seen / 1000:g} of {spec.gan.kimg:g} kimg; rerun the same command to resume",
              file=sys.stderr, flush=True)
    return out
