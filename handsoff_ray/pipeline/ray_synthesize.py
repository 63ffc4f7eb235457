"""The synthesize stage on Ray Data: shards fan out to an actor pool; the driver keeps the manifest.

    spec.resources.synthesis_actors = 4        # actors, each loading the generator + label generator once
    run_synthesize_ray(spec)                   # same outputs as pipeline.synthesize.run_synthesize

The work units are the missing shard ids. Each actor (`map_batches` with a callable class, so the
models load once per actor, `num_gpus` per actor on GPU nodes) runs `write_shard`, the same function the
in-process runner uses: a shard's bytes depend only on the spec and its sample ids, so the dataset is the
same whatever the actor count. The driver records each committed shard in the manifest as results stream
back; a rerun after a crash writes only the shards that are still missing.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from handsoff_ray.config import JobSpec

__all__ = ["ensure_ray", "enter_driver_cwd", "ray_init_args", "run_synthesize_ray"]


def ray_init_args(spec: JobSpec, environ=os.environ) -> tuple[dict, str]:
    """(ray.init keyword arguments, a line saying what they do) for this spec in this environment.

    - `resources.ray_address` set: join that cluster (its own resources; none are passed).
    - else RAY_ADDRESS holds a cluster address: this driver runs inside a Ray job (`ray job submit`
      sets it to the cluster's GCS address), so join that cluster.
    - else start a private local Ray. `address="local"` is what keeps `ray.init` from attaching to a
      head some other `ray start` left running (or a stale address file one left behind in Ray's temp dir).
    """
    if spec.resources.ray_address:
        return ({"address": spec.resources.ray_address},
                f"joining the Ray cluster at {spec.resources.ray_address} (resources.ray_address)")
    env_address = environ.get("RAY_ADDRESS", "")
    # An http(s):// RAY_ADDRESS is a dashboard URL meant for `ray job submit`, not a cluster to join.
    if env_address and "://" not in env_address:
        return {"address": env_address}, f"joining the Ray cluster at {env_address} (RAY_ADDRESS: inside a Ray job)"
    cpus = os.cpu_count()
    return ({"address": "local", "num_cpus": cpus, "include_dashboard": False,
             "object_store_memory": 512 * 2**20},
            f"starting a private local Ray ({cpus} CPUs); set resources.ray_address to use a cluster")


def ensure_ray(spec: JobSpec) -> str:
    """Join the cluster the spec or the Ray job names, or start a private local Ray; says which on stderr."""
    import ray

    if ray.is_initialized():  # inside a Ray worker, or a caller that initialised Ray itself
        return "using the Ray this process is already connected to"
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


class _ShardWriter:
    """Ray Data actor: load the models once, then write every shard it is handed."""

    def __init__(self, spec_json: dict, meta: dict, cwd: str):
        enter_driver_cwd(cwd)
        from handsoff_ray.config import parse_spec
        from handsoff_ray.pipeline.stages import open_run
        from handsoff_ray.pipeline.synthesize import load_synthesis_models

        self.spec = parse_spec(spec_json)
        self.meta = meta
        self.store = open_run(self.spec)
        self.G, self.lg = load_synthesis_models(self.spec, self.store)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        from handsoff_ray.pipeline.synthesize import write_shard

        entries = []
        for k, start, stop in zip(batch["shard"], batch["start"], batch["stop"]):
            entry = write_shard(self.store, int(k), int(start), int(stop), self.G, self.lg, self.spec, self.meta)
            entries.append(json.dumps(entry))
        return {"entry": entries}


def run_synthesize_ray(spec: JobSpec, *, progress=None) -> dict:
    """Write every missing shard with `resources.synthesis_actors` Ray actors; then manifest, _SUCCESS, card."""
    from handsoff_ray.pipeline.manifest import MANIFEST
    from handsoff_ray.pipeline.synthesize import DATASET, finish_dataset, prepare_synthesis

    store, meta, manifest, ranges, todo = prepare_synthesis(spec)
    t0 = time.time()
    if todo:  # else neither Ray nor Ray Data is imported or started
        import ray.data

        from handsoff_ray.pipeline.progress import quiet_ray_data

        quiet_ray_data()
        ensure_ray(spec)
        res = spec.resources
        items = [{"shard": k, "start": ranges[k][0], "stop": ranges[k][1]} for k in todo]
        ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            _ShardWriter,
            fn_constructor_kwargs={"spec_json": spec.model_dump(mode="json"), "meta": meta,
                                   "cwd": os.getcwd()},
            batch_size=1,
            # A fixed pool: each actor loads the generator and label generator once.
            compute=ray.data.ActorPoolStrategy(size=min(res.synthesis_actors, len(items))),
            num_cpus=res.cpus_per_worker,
            num_gpus=res.gpus_per_actor or None,
        )
        for n_done, row in enumerate(ds.iter_rows(), 1):
            entry = json.loads(row["entry"])
            manifest["shards"][str(entry["shard"])] = entry
            store.write_json(f"{DATASET}/{MANIFEST}", manifest)
            if progress:
                progress(n_done, len(todo), entry)
    finish_dataset(store, spec, manifest, meta)
    return {"stage": "synthesize", "run": store.uri(), "output": store.uri(DATASET), "skipped": not todo,
            "shards_written_now": len(todo),
            "shards": len(ranges), "samples": spec.synthesis.num_samples, "seconds": round(time.time() - t0, 1),
            "actors": spec.resources.synthesis_actors}
