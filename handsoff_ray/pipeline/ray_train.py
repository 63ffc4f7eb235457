"""invert and fit on Ray Train: N workers (GPU or CPU), each on a disjoint slice of the work.

    spec.resources.num_workers = 4; spec.resources.use_gpu = True
    run_invert_ray(spec)     # worker r inverts batches r, r+N, ... of the ids, writing each as it finishes
    run_fit_ray(spec)        # worker r fits ensemble members r, r+N, ... and saves each one

Work is split by item, not by data parallelism: an inversion batch and an ensemble member are
independent, so N workers finish N times as much with no gradient traffic (members are small MLPs
whose all-reduce would cost more than their compute). The driver validates and claims the output
before any worker starts, and merges after they end. `FailureConfig` retries failed workers; because
each worker skips the latents and members already in storage, a retry or a restarted driver (the
Ray Train run is named after the run id) redoes only unfinished work.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
import uuid

from handsoff_ray.config import JobSpec
from handsoff_ray.pipeline.progress import stage_progress, watch

__all__ = ["run_invert_ray", "run_fit_ray"]

PROGRESS_EVERY_S = 2.0  # how often an inverting worker writes its step count (one small JSON file)


def _trainer(spec: JobSpec, stage: str, loop, config: dict, *, units: int):
    """A TorchTrainer of min(num_workers, units) workers: a worker with no unit of work (batch, member)
    would cost a process start-up and nothing else. Results do not depend on the worker count."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    res = spec.resources
    return TorchTrainer(
        loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=min(res.num_workers, units), use_gpu=res.use_gpu,
                                     resources_per_worker={"CPU": res.cpus_per_worker}),
        run_config=RunConfig(
            name=f"{spec.run_id}-{stage}",
            # Ray Train keeps only its own bookkeeping here; the stage's outputs go to the run store.
            storage_path=os.path.join(tempfile.gettempdir(), "handsoff_ray_train"),
            failure_config=FailureConfig(max_failures=2),
        ),
    )


def _invert_loop(config: dict) -> None:
    import ray.train

    from handsoff_ray.config import parse_spec
    from handsoff_ray.pipeline.ray_synthesize import enter_driver_cwd
    from handsoff_ray.pipeline.stages import LATENTS, invert_images, open_run

    enter_driver_cwd(config["cwd"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    spec = parse_spec(config["spec"])
    # Deal out whole batches, not single images: a batch then holds the same images as in a one-process
    # run, and since float results depend on the batch's shape, latents do not depend on the worker count.
    bs, ids = spec.inversion.batch_size, config["ids"]
    batches = [ids[i : i + bs] for i in range(0, len(ids), bs)]
    progress_file = f"{LATENTS}/_progress/{config['progress_key']}-{rank}.json"
    store, last = open_run(spec), [float("-inf")]

    def report(done: int) -> None:  # the driver sums these files for its progress bar
        if time.monotonic() - last[0] >= PROGRESS_EVERY_S:
            last[0] = time.monotonic()
            store.write_json(progress_file, {"done": done})

    invert_images(spec, [i for batch in batches[rank::world] for i in batch], report=report)


def _fit_loop(config: dict) -> None:
    import ray.train

    from handsoff_ray.config import parse_spec
    from handsoff_ray.pipeline.ray_synthesize import enter_driver_cwd
    from handsoff_ray.pipeline.stages import fit_members

    enter_driver_cwd(config["cwd"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    fit_members(parse_spec(config["spec"]), config["ids"], config["members"][rank::world])


def run_invert_ray(spec: JobSpec) -> dict:
    from handsoff_ray.pipeline.ray_synthesize import ensure_ray
    from handsoff_ray.pipeline.stages import (
        LATENTS,
        _maybe_encoder,
        finish_invert,
        load_spec_generator,
        pending_inversions,
        prepare_invert,
    )

    ids, store = prepare_invert(spec)
    todo = pending_inversions(store, ids)
    if not todo:  # nothing to do: no Ray to start
        return finish_invert(store, ids, 0)
    before = sum(1 for n in store.list("latents") if not n.startswith("_"))
    if spec.inversion.encoder.enabled:
        # Trained once here, before the workers start, so that they all load the same encoder.
        import torch

        _maybe_encoder(spec, load_spec_generator(spec, torch.device("cpu")), store)
    ensure_ray(spec)
    key = uuid.uuid4().hex[:12]  # this call's progress files, not a previous call's

    def steps_done() -> int:
        names = [n for n in store.list(f"{LATENTS}/_progress") if n.startswith(key)]
        return sum(store.read_json(f"{LATENTS}/_progress/{n}")["done"] for n in names)

    with stage_progress("invert", total=len(todo) * spec.inversion.steps, unit="step") as bar:
        with watch(steps_done, bar):
            _trainer(spec, "invert", _invert_loop, {"spec": spec.model_dump(mode="json"), "ids": ids,
                                                    "cwd": os.getcwd(), "progress_key": key},
                     units=math.ceil(len(ids) / spec.inversion.batch_size)).fit()
        bar.update_to(bar.total)  # the last steps may fall between two progress writes
    after = sum(1 for n in store.list("latents") if not n.startswith("_"))
    return finish_invert(store, ids, after - before) | {"workers": spec.resources.num_workers}


def run_fit_ray(spec: JobSpec) -> dict:
    from handsoff_ray.pipeline.ray_synthesize import ensure_ray
    from handsoff_ray.pipeline.stages import finish_fit, pending_members, prepare_fit

    ids, store, done = prepare_fit(spec)
    if done is not None:
        return done
    t0 = time.time()
    members = list(range(spec.label_generator.ensemble_size))
    todo = pending_members(store, members)
    if todo:  # else only the merge is left: no Ray to start
        ensure_ray(spec)
        with stage_progress("fit", total=len(todo), unit="member") as bar, \
                watch(lambda: len(todo) - len(pending_members(store, todo)), bar):
            _trainer(spec, "fit", _fit_loop, {"spec": spec.model_dump(mode="json"), "ids": ids,
                                              "members": members, "cwd": os.getcwd()},
                     units=len(members)).fit()
    return finish_fit(spec, store, ids, time.time() - t0) | {"workers": spec.resources.num_workers}
