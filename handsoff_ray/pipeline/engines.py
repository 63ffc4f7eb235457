"""Where a stage's units of work run: in this process, on Ray Train workers, or on a Ray Data actor pool.

    run_units(stage, ctx, plan, bar, engine="local")    # one after another, here
    run_units(stage, ctx, plan, bar, engine="ray")      # stage.ray == "train": Ray Train; "data": Ray Data

An engine knows nothing of what a unit does (pipeline/stages/): it deals units out, reports progress to
`bar` and hands results to `stage.record`. Work is split by unit, not by data parallelism: an inversion
batch, an ensemble member and a shard are independent, so N workers finish N times as much with no
gradient traffic (members are small MLPs whose all-reduce would cost more than their compute).

- Ray Train (`TorchTrainer`, `FailureConfig` retries): worker r runs units r, r+N, ...; results stay in
  storage, and each worker writes its progress count to a small file the driver sums (`watch`).
- Ray Data (`map_batches` with a callable class, so an actor loads its models once; `num_gpus` per actor
  on GPU nodes): results stream back and the driver records each as it arrives (the manifest).
A unit skips output that is already in storage, so a retried worker or a restarted driver (the Ray
Train run is named after the run id) redoes only unfinished work.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import uuid

from handsoff_ray.config import JobSpec
from handsoff_ray.pipeline.context import RunContext
from handsoff_ray.pipeline.errors import UserError
from handsoff_ray.pipeline.layout import RUN
from handsoff_ray.pipeline.progress import StageProgress, log_event, watch
from handsoff_ray.pipeline.stages.base import Plan, Stage

__all__ = ["run_units", "ENGINES", "ensure_ray", "ray_init_args", "check_ray_reachable", "enter_driver_cwd"]

ENGINES = ("local", "ray")
PROGRESS_EVERY_S = 2.0  # how often a Ray Train worker writes its progress count (one small JSON file)


def run_units(stage: Stage, ctx: RunContext, plan: Plan, bar: StageProgress, engine: str) -> None:
    """Run every unit of `plan` on `engine` ("local" or "ray"); Ray is not started when nothing is left."""
    if not plan.units:
        return
    if engine == "ray" and stage.ray == "train":
        _ray_train(stage, ctx, plan, bar)
    elif engine == "ray" and stage.ray == "data":
        _ray_data(stage, ctx, plan, bar)
    else:
        _local(stage, ctx, plan, bar)


def _local(stage: Stage, ctx: RunContext, plan: Plan, bar: StageProgress) -> None:
    work = stage.worker(ctx)
    done = 0
    for unit in plan.units:
        result = work(unit, lambda n: bar.update_to(done + n))
        done += stage.weight(ctx, unit)
        stage.record(ctx, plan, result)
        bar.update_to(done)


# ------------------------------------------------------------------------------------------ Ray Train


def _train_loop(config: dict) -> None:
    import ray.train

    from handsoff_ray.config import parse_spec
    from handsoff_ray.pipeline.stages import ALL_STAGES

    enter_driver_cwd(config["cwd"])
    train_ctx = ray.train.get_context()
    rank, world = train_ctx.get_world_rank(), train_ctx.get_world_size()
    stage, ctx = ALL_STAGES[config["stage"]], RunContext(parse_spec(config["spec"]))
    progress_file = f"{RUN.progress_folder(stage.folder)}/{config['progress_key']}-{rank}.json"
    work = stage.worker(ctx)
    finished, last = 0, [float("-inf")]

    def report(n: int, *, force: bool = False) -> None:  # the driver sums these files for its progress bar
        if force or time.monotonic() - last[0] >= PROGRESS_EVERY_S:
            last[0] = time.monotonic()
            ctx.store.write_json(progress_file, {"done": finished + n})

    for unit in config["units"][rank::world]:
        t0 = time.time()
        work(unit, report)
        finished += stage.weight(ctx, unit)
        report(0, force=True)
        log_event(f"{stage.name}: unit done", rank=rank, done=finished, seconds=round(time.time() - t0, 1))


def _ray_train(stage: Stage, ctx: RunContext, plan: Plan, bar: StageProgress) -> None:
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ensure_ray(ctx.spec)
    res, store = ctx.spec.resources, ctx.store
    key = uuid.uuid4().hex[:12]  # this call's progress files, not a previous call's
    folder = RUN.progress_folder(stage.folder)

    def done() -> int:
        return sum(store.read_json(f"{folder}/{n}")["done"] for n in store.list(folder) if n.startswith(key))

    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={"stage": stage.name, "spec": ctx.spec.model_dump(mode="json"), "units": plan.units,
                           "cwd": os.getcwd(), "progress_key": key},
        # A worker with no unit would cost a process start-up and nothing else; results do not depend on
        # the worker count.
        scaling_config=ScalingConfig(num_workers=min(res.num_workers, len(plan.units)), use_gpu=res.use_gpu,
                                     resources_per_worker={"CPU": res.cpus_per_worker}),
        run_config=RunConfig(
            name=f"{ctx.spec.run_id}-{stage.name}",
            # Ray Train keeps only its own bookkeeping here; the stage's outputs go to the run store.
            storage_path=os.path.join(tempfile.gettempdir(), "handsoff_ray_train"),
            failure_config=FailureConfig(max_failures=2),
        ),
    )
    with watch(done, bar):
        trainer.fit()
    bar.update_to(bar.total)  # the last steps may fall between two progress writes


# ------------------------------------------------------------------------------------------- Ray Data


class _UnitActor:
    """Ray Data actor: the stage's worker (its models loaded once), then every unit it is handed."""

    def __init__(self, stage: str, spec_json: dict, cwd: str):
        enter_driver_cwd(cwd)
        from handsoff_ray.config import parse_spec
        from handsoff_ray.pipeline.stages import ALL_STAGES

        self.stage, self.ctx = ALL_STAGES[stage], RunContext(parse_spec(spec_json))
        self.work = self.stage.worker(self.ctx)

    def __call__(self, batch: dict) -> dict[str, list]:
        units = [json.loads(u) for u in batch["unit"]]
        return {"result": [json.dumps(self.work(u, lambda n: None)) for u in units],
                "weight": [self.stage.weight(self.ctx, u) for u in units]}


def _ray_data(stage: Stage, ctx: RunContext, plan: Plan, bar: StageProgress) -> None:
    import ray.data

    from handsoff_ray.pipeline.progress import quiet_ray_data

    quiet_ray_data()
    ensure_ray(ctx.spec)
    res = ctx.spec.resources
    items = [{"unit": json.dumps(u)} for u in plan.units]
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        _UnitActor,
        fn_constructor_kwargs={"stage": stage.name, "spec_json": ctx.spec.model_dump(mode="json"),
                               "cwd": os.getcwd()},
        batch_size=1,
        # A fixed pool: each actor loads its models once.
        compute=ray.data.ActorPoolStrategy(size=min(res.synthesis_actors, len(items))),
        num_cpus=res.cpus_per_worker,
        num_gpus=res.gpus_per_actor or None,
    )
    done = 0
    for row in ds.iter_rows():
        stage.record(ctx, plan, json.loads(row["result"]))
        done += int(row["weight"])
        bar.update_to(done)


# ------------------------------------------------------------------------------------------- the Ray connection
# Every Ray connection of the project, benchmarks and tests included, is made here.


# How long the probe of a named Ray cluster waits for its GCS port: a head that is up answers in milliseconds,
# while ray.init retries a dead one for minutes.
RAY_PROBE_TIMEOUT_S = 3.0


def _named_ray_address(spec: JobSpec, environ=os.environ) -> tuple[str, str] | None:
    """(address, what named it) of the Ray cluster to join, or None for a private local Ray."""
    if spec.resources.ray_address:
        return spec.resources.ray_address, "resources.ray_address"
    env_address = environ.get("RAY_ADDRESS", "")
    # An http(s):// RAY_ADDRESS is a dashboard URL meant for `ray job submit`, not a cluster to join.
    if env_address and "://" not in env_address:
        return env_address, "RAY_ADDRESS"
    return None


def ray_init_args(spec: JobSpec, environ=os.environ) -> tuple[dict, str]:
    """(ray.init keyword arguments, a line saying what they do) for this spec in this environment.

    - `resources.ray_address` set: join that cluster (its own resources; none are passed).
    - else RAY_ADDRESS holds a cluster address: this driver runs inside a Ray job (`ray job submit`
      sets it to the cluster's GCS address), so join that cluster.
    - else start a private local Ray. `address="local"` is what keeps `ray.init` from attaching to a
      head some other `ray start` left running (or a stale address file one left behind in Ray's temp dir).
    """
    named = _named_ray_address(spec, environ)
    if named is not None:
        address, source = named
        why = "resources.ray_address" if source == "resources.ray_address" else "RAY_ADDRESS: inside a Ray job"
        return {"address": address}, f"joining the Ray cluster at {address} ({why})"
    cpus = os.cpu_count()
    return ({"address": "local", "num_cpus": cpus, "include_dashboard": False,
             "object_store_memory": 512 * 2**20},
            f"starting a private local Ray ({cpus} CPUs); set resources.ray_address to use a cluster")


def check_ray_reachable(spec: JobSpec, environ=os.environ) -> None:
    """UserError naming the field (or RAY_ADDRESS) when the cluster it names does not answer a TCP connect to
    its GCS port within RAY_PROBE_TIMEOUT_S. Called before ray.init and before a stage writes anything:
    ray.init would retry a dead head for minutes. 'auto' (Ray finds the address itself) is not probed."""
    named = _named_ray_address(spec, environ)
    ray = sys.modules.get("ray")
    if named is None or (ray is not None and ray.is_initialized()):
        return
    import socket

    address, source = named
    if address == "auto":
        return
    hostport = address.removeprefix("ray://")  # Ray Client (port 10001), a TCP port too
    host, _, port = hostport.rpartition(":")
    fix = "unset RAY_ADDRESS to start a private local Ray" if source == "RAY_ADDRESS" else "fix the address"
    if not host or not port.isdigit():
        raise UserError(f"{source}: {address!r} is not HOST:PORT (the head's GCS address, e.g. 10.0.0.5:6379)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=RAY_PROBE_TIMEOUT_S).close()
    except OSError as err:
        raise UserError(f"{source}: no Ray cluster answers at {address} ({err.strerror or err}); start it "
                        f"(`ray start --head`), or {fix}") from None


def ensure_ray(spec: JobSpec) -> str:
    """Join the cluster the spec or the Ray job names, or start a private local Ray; says which on stderr."""
    import ray

    if ray.is_initialized():  # inside a Ray worker, or a caller that initialised Ray itself
        return "using the Ray this process is already connected to"
    check_ray_reachable(spec)
    kwargs, what = ray_init_args(spec)
    print(f"handsoff: {what}", file=sys.stderr, flush=True)
    ray.init(log_to_driver=False, **kwargs)
    return what


def enter_driver_cwd(cwd: str) -> None:
    """Resolve the spec's relative paths like the driver did.

    Ray runs workers in directories of its own (Ray Train in the run's trial dir), so a relative
    `data.path` would point elsewhere; on the driver's machine we step into the driver's directory.
    Elsewhere in a cluster it does not exist, and specs there use absolute paths or URIs anyway.
    """
    if os.path.isdir(cwd):
        os.chdir(cwd)
