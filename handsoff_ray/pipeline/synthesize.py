"""The synthesize stage: sample ids -> Parquet shards under <run>/dataset/, resumable.

    handsoff run jobs/specs/toy.yaml --stages synthesize

Work units are shards of consecutive sample ids (`synthesis.shard_size`); shard k is written as
`dataset/data/part-{k:06d}.parquet` and appears under that name only when complete (see RunStore.write_bytes),
then is recorded in `dataset/_manifest.json`. Because every sample's seed comes from (run seed,
sample id), a shard's bytes do not depend on who writes it or in which order: rerunning writes only
the shards that are missing. The run ends with `_SUCCESS` and a `README.md` dataset card.

`write_shard` is the unit of work; `run_synthesize` runs shards one after another in this process,
`ray_synthesize.run_synthesize_ray` fans them out to Ray Data actors. Both give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time

import numpy as np
import pyarrow.parquet as pq

from handsoff_ray.config import JobSpec
from handsoff_ray.pipeline.plan import stage_hash

__all__ = [
    "DATASET", "shard_ranges", "shard_name", "write_shard", "load_synthesis_models", "prepare_synthesis",
    "finish_dataset", "run_synthesize", "synthesize_stage",
]

DATASET = "dataset"
_ROW_GROUP = 256  # rows per row group: a few MB at 512 px, small enough for streaming readers
# Fixed log-spaced bins for uncertainty histograms, so shards' histograms add up across a whole run.
UNCERTAINTY_BINS = np.concatenate([[0.0], np.logspace(-6, 1, 29)])


def _histogram(values: list[float]) -> dict:
    v = np.asarray(values, np.float64)
    return {"count": int(v.size), "mean": float(v.mean()), "min": float(v.min()), "max": float(v.max()),
            "hist": np.histogram(np.clip(v, 0, UNCERTAINTY_BINS[-1]), UNCERTAINTY_BINS)[0].tolist()}


def shard_name(k: int) -> str:
    # Shards live in dataset/data/ with the card at dataset/README.md (the Hugging Face layout), so
    # `pq.read_table`, `ray.data.read_parquet` and `datasets.load_dataset` read dataset/data/ directly.
    return f"{DATASET}/data/part-{k:06d}.parquet"


def shard_ranges(num_samples: int, shard_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + shard_size, num_samples)) for s in range(0, num_samples, shard_size)]


def write_shard(store, k: int, start: int, stop: int, G, lg, spec: JobSpec, meta: dict) -> dict:
    """Synthesize sample ids [start, stop) and commit them as shard k; returns its manifest entry."""
    from handsoff_ray.core.synthesis import synthesize
    from handsoff_ray.pipeline.schema import pairs_to_table

    h = stage_hash(spec, "synthesize")
    syn = spec.synthesis
    scores: dict[str, list[float]] = {}
    class_pixels = np.zeros(len(meta.get("classes") or []), np.int64)
    t0 = time.time()
    # The shard streams to a local temporary file, a row group at a time, and is committed from there:
    # memory stays at one batch however large the shard (10,000 pairs at 512 px are gigabytes).
    with tempfile.TemporaryDirectory(prefix="handsoff-shard-") as tmp:
        local = f"{tmp}/part.parquet"
        writer = None
        for b in range(start, stop, syn.batch_size):
            pairs = synthesize(G, lg, sample_ids=range(b, min(b + syn.batch_size, stop)), run_seed=spec.seed,
                               truncation_psi=syn.truncation_psi, top_fraction=syn.uncertainty.top_fraction,
                               return_latents=syn.store_latent, crop_rows=spec.generator.crop_rows)
            table = pairs_to_table(pairs, spec_hash=h, meta=meta)
            if writer is None:
                writer = pq.ParquetWriter(local, table.schema, compression="zstd")
            writer.write_table(table, row_group_size=_ROW_GROUP)
            for t, s in pairs.uncertainty.items():
                scores.setdefault(t, []).extend(s.tolist())
            if "segmentation" in pairs.labels and len(class_pixels):
                class_pixels += np.bincount(pairs.labels["segmentation"].reshape(-1), minlength=len(class_pixels))[
                    : len(class_pixels)]
        writer.close()
        digest, size = _sha256_file(local)
        store.put_file(shard_name(k), local)
    _record_shard(spec.run_id, stop - start, time.time() - t0, scores)
    return {"shard": k, "file": shard_name(k).split("/", 1)[1], "start": start, "stop": stop, "rows": stop - start,
            "bytes": size, "sha256": digest, "seconds": round(time.time() - t0, 2),
            "uncertainty": {t: _histogram(v) for t, v in scores.items()}, "class_pixels": class_pixels.tolist()}


def _sha256_file(path: str) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _record_shard(run_id: str, rows: int, seconds: float, scores: dict[str, list[float]]) -> None:
    from handsoff_ray.pipeline.metrics import metrics

    m = metrics()
    m.inc("samples_written", rows, run_id=run_id)
    m.inc("shards_committed", 1, run_id=run_id)
    m.observe("shard_commit_seconds", seconds, run_id=run_id)
    for task, values in scores.items():
        for v in values:
            m.observe("sample_uncertainty", v, run_id=run_id, task=task)


def prepare_synthesis(spec: JobSpec) -> tuple:
    """Validate inputs and claim the dataset folder: (store, schema meta, manifest so far, shard ranges)."""
    from handsoff_ray.pipeline.errors import UserError
    from handsoff_ray.pipeline.stages import LABEL_GENERATOR, claim_stage, open_run, open_spec_labeled_set

    labeled, _ = open_spec_labeled_set(spec)
    store = open_run(spec)
    if not store.exists(f"{LABEL_GENERATOR}/label_generator.safetensors"):
        raise UserError("no fitted label generator in this run; run `handsoff fit SPEC` first")
    h = claim_stage(store, "synthesize", spec)
    fit = store.read_json(f"{LABEL_GENERATOR}/fit.json") or {}
    image_size = fit.get("out_size")
    if spec.generator.crop_rows is not None and image_size:
        # Pairs hold only the content rows (e.g. LSUN-car 512: rows 64..448 -> 384 x 512).
        from handsoff_ray.core.synthesis import content_rows

        rows = content_rows(spec.generator.crop_rows, _generator_height(spec), image_size[0])
        image_size = [rows.stop - rows.start, image_size[1]]
    meta = {"classes": list(labeled.classes or []), "keypoint_names": list(labeled.keypoint_names or []),
            "depth_scale": float(labeled.depth_scale or 1000.0), "image_size": image_size}
    manifest = store.read_json(f"{DATASET}/_manifest.json") or {"stage_hash": h, "shards": {}}
    manifest["stage_hash"] = h
    ranges = shard_ranges(spec.synthesis.num_samples, spec.synthesis.shard_size)
    from handsoff_ray.pipeline.metrics import metrics

    metrics().set("shards_planned", len(ranges), run_id=spec.run_id)
    return store, meta, manifest, ranges


def _generator_height(spec: JobSpec) -> int:
    """The generator canvas height (the checkpoint is loaded on the CPU; only when crop_rows is set)."""
    import torch

    from handsoff_ray.pipeline.stages import load_spec_generator

    return int(load_spec_generator(spec, torch.device("cpu")).cfg.resolution)


def finish_dataset(store, spec: JobSpec, manifest: dict, meta: dict) -> None:
    """Final manifest, the README.md card, then _SUCCESS (last, so it marks a complete dataset)."""
    manifest["num_samples"], manifest["meta"] = spec.synthesis.num_samples, meta
    store.sweep_temporaries(f"{DATASET}/data")  # left by writers killed mid-shard (their shards were redone)
    store.write_json(f"{DATASET}/_manifest.json", manifest)
    store.write_bytes(f"{DATASET}/README.md", dataset_card(spec, manifest).encode())
    store.write_bytes(f"{DATASET}/_SUCCESS", b"")


def load_synthesis_models(spec: JobSpec, store):
    """(generator, label generator) on the spec's device, after applying the spec's torch thread count;
    what the in-process runner and each Ray Data actor load once."""
    from handsoff_ray.core.label_generator import load_label_generator
    from handsoff_ray.pipeline.stages import LABEL_GENERATOR, apply_torch_threads, load_spec_generator, resolve_device

    apply_torch_threads(spec)
    device = resolve_device(spec)
    G = load_spec_generator(spec, device)
    with tempfile.TemporaryDirectory() as d:
        lg = load_label_generator(store.local_copy(f"{LABEL_GENERATOR}/label_generator.safetensors", d), device=device)
    return G, lg


def run_synthesize(spec: JobSpec, *, progress=None) -> dict:
    """Write every missing shard in this process (Ray Data: `ray_synthesize.run_synthesize_ray`)."""
    store, meta, manifest, ranges = prepare_synthesis(spec)
    todo = [k for k in range(len(ranges)) if not store.exists(shard_name(k))]
    t0 = time.time()
    if todo:
        G, lg = load_synthesis_models(spec, store)
        for n_done, k in enumerate(todo, 1):
            entry = write_shard(store, k, *ranges[k], G, lg, spec, meta)
            manifest["shards"][str(k)] = entry
            store.write_json(f"{DATASET}/_manifest.json", manifest)
            if progress:
                progress(n_done, len(todo), entry)
    finish_dataset(store, spec, manifest, meta)
    return {"stage": "synthesize", "run": store.uri(), "output": store.uri(DATASET), "skipped": not todo,
            "shards_written_now": len(todo),
            "shards": len(ranges), "samples": spec.synthesis.num_samples, "seconds": round(time.time() - t0, 1)}


def synthesize_stage(spec: JobSpec, *, progress=None) -> dict:
    """The synthesize stage on the engine the spec asks for (resources.engine), with a progress bar of
    shards (`pipeline.progress`); `progress(done, total, manifest entry)` is called too when given."""
    from handsoff_ray.pipeline.progress import StageProgress

    bar: list[StageProgress] = []  # made at the first shard, when the number to write is known
    started = time.monotonic()

    def on_shard(done: int, total: int, entry: dict) -> None:
        if not bar:
            bar.append(StageProgress("synthesize", total, "shard", started=started))
        bar[0].update_to(done, shard=entry["shard"], rows=entry["rows"])
        if progress:
            progress(done, total, entry)

    try:
        if spec.resources.engine == "ray":
            from handsoff_ray.pipeline.ray_synthesize import run_synthesize_ray

            return run_synthesize_ray(spec, progress=on_shard)
        return run_synthesize(spec, progress=on_shard)
    finally:
        for b in bar:
            b.close()


def dataset_card(spec: JobSpec, manifest: dict) -> str:
    """A human-readable README.md for the dataset folder."""
    shards = [manifest["shards"][k] for k in sorted(manifest["shards"], key=int)]
    lines = [f"# Synthetic dataset `{spec.run_id}`", "",
             "Generated by handsoff_ray (HandsOff, Xu et al. CVPR 2023).", "",
             f"- samples: {sum(s['rows'] for s in shards)} in {len(shards)} Parquet shards",
             f"- stage hash: `{manifest['stage_hash']}`; run seed {spec.seed}; truncation psi {spec.synthesis.truncation_psi}",
             f"- generator: `{spec.generator.checkpoint}`",
             f"- label resolution: {manifest['meta']['image_size']}", ""]
    tasks = sorted({t for s in shards for t in s["uncertainty"]})
    if tasks:
        lines += ["## Uncertainty (image scores)", "", "| task | count | mean | min | max | histogram (log bins 1e-6..10) |",
                  "|---|---|---|---|---|---|"]
        for t in tasks:
            per = [s["uncertainty"][t] for s in shards if t in s["uncertainty"]]
            count = sum(p["count"] for p in per)
            mean = sum(p["mean"] * p["count"] for p in per) / max(count, 1)
            hist = np.sum([p["hist"] for p in per], axis=0).tolist()
            lines.append(f"| {t} | {count} | {mean:.4g} | {min(p['min'] for p in per):.4g} | "
                         f"{max(p['max'] for p in per):.4g} | {hist} |")
        lines.append("")
    classes = manifest["meta"].get("classes") or []
    if classes and shards and shards[0]["class_pixels"]:
        total = np.sum([s["class_pixels"] for s in shards], axis=0)
        lines += ["## Class frequencies (pixels)", "", "| class | share |", "|---|---|"]
        lines += [f"| {c} | {p / max(total.sum(), 1):.4f} |" for c, p in zip(classes, total)]
        lines.append("")
    lines += ["## Schema", "", "See `handsoff_ray/pipeline/schema.py`. Spec:", "", "```json",
              json.dumps(spec.model_dump(mode="json"), indent=2), "```", ""]
    return "\n".join(lines)
