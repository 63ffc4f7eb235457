"""The synthesize stage: sample ids -> Parquet shards under <run>/dataset/, resumable.

    handsoff run jobs/specs/toy.yaml --stages synthesize

Work units are shards of consecutive sample ids (`synthesis.shard_size`); shard k is written as
`dataset/data/part-{k:06d}.parquet` and appears under that name only when complete (see RunStore.write_bytes),
then is recorded in `dataset/_manifest.json`. Because every sample's seed comes from (run seed,
sample id), a shard's bytes do not depend on who writes it or in which order. A rerun first verifies
every committed shard against the manifest (size and sha256, `verify_committed`), rebuilds a lost or
unreadable manifest from the shards, and writes only what is missing or does not match. The run ends
with `_SUCCESS` and a `README.md` dataset card.

`write_shard` is the unit of work; `run_synthesize` runs shards one after another in this process,
`ray_synthesize.run_synthesize_ray` fans them out to Ray Data actors. Both give the same bytes.
"""

from __future__ import annotations

import json
import posixpath
import sys
import tempfile
import time

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from handsoff_ray.config import JobSpec
from handsoff_ray.pipeline.manifest import MANIFEST, SUCCESS
from handsoff_ray.pipeline.plan import stage_hash
from handsoff_ray.pipeline.schema import TASK_COLUMNS
from handsoff_ray.pipeline.storage import sha256_file

__all__ = [
    "DATASET", "shard_ranges", "shard_name", "write_shard", "load_synthesis_models", "prepare_synthesis",
    "finish_dataset", "run_synthesize", "synthesize_stage", "verify_committed",
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
    from handsoff_ray.core.pairs import synthesize
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
            if "segmentation" in pairs.labels:
                _count_classes(class_pixels, pairs.labels["segmentation"])
        writer.close()
        digest, size = sha256_file(pafs.LocalFileSystem(), local)
        store.put_file(shard_name(k), local)
    _record_shard(spec.run_id, stop - start, time.time() - t0, scores)
    return _entry(k, start, stop, size, digest, time.time() - t0, scores, class_pixels)


def _count_classes(class_pixels: np.ndarray, segmentation: np.ndarray) -> None:
    """Add the pixels of each class in segmentation ([N, H, W] class ids) to class_pixels, in place."""
    if len(class_pixels):
        class_pixels += np.bincount(segmentation.reshape(-1), minlength=len(class_pixels))[: len(class_pixels)]


def _entry(k: int, start: int, stop: int, size: int, digest: str, seconds: float, scores: dict[str, list[float]],
           class_pixels: np.ndarray) -> dict:
    """Shard k's manifest entry."""
    return {"shard": k, "file": shard_name(k).split("/", 1)[1], "start": start, "stop": stop, "rows": stop - start,
            "bytes": size, "sha256": digest, "seconds": round(seconds, 2),
            "uncertainty": {t: _histogram(v) for t, v in scores.items()}, "class_pixels": class_pixels.tolist()}


def _rebuilt_entry(store, k: int, start: int, stop: int, meta: dict, h: str) -> dict | None:
    """Shard k's manifest entry recomputed from the committed file, or None when it is not a whole shard
    of this spec (unreadable, other sample ids, another spec's rows). Streams the shard a row group at a time."""
    from handsoff_ray.pipeline.schema import decode_png

    scores: dict[str, list[float]] = {}
    class_pixels = np.zeros(len(meta.get("classes") or []), np.int64)
    ids: list[int] = []
    with tempfile.TemporaryDirectory(prefix="handsoff-verify-") as tmp:
        local = store.local_copy(shard_name(k), tmp)
        digest, size = sha256_file(pafs.LocalFileSystem(), local)
        try:
            pf = pq.ParquetFile(local)
            for batch in pf.iter_batches(batch_size=_ROW_GROUP):
                if set(batch.column("spec_hash").to_pylist()) != {h}:
                    return None
                ids += batch.column("sample_id").to_pylist()
                for t in TASK_COLUMNS:
                    values = [v for v in batch.column(f"uncertainty_{t}").to_pylist() if v is not None]
                    if values:
                        scores.setdefault(t, []).extend(values)
                masks = [decode_png(m) for m in batch.column("segmentation").to_pylist() if m is not None]
                if masks:
                    _count_classes(class_pixels, np.stack(masks))
        except (OSError, ValueError, KeyError):  # not Parquet, or not this schema
            return None
    if ids != list(range(start, stop)):
        return None
    return _entry(k, start, stop, size, digest, 0.0, scores, class_pixels)


def verify_committed(store, manifest: dict, ranges: list[tuple[int, int]], meta: dict, h: str) -> tuple[list[int], list[str]]:
    """(shard ids still to write, one note per shard repaired) after checking what a previous run committed.

    One listing of dataset/data/ finds the committed shards. Each one with a manifest entry must match it
    in size and sha256 (streamed); one without (the driver died between commit and manifest, or the
    manifest was lost) is taken in when it is a whole shard of this spec, its entry recomputed. Anything
    else is dropped from the manifest and written again; a file that is no shard of this dataset stops
    the run before any compute, so nothing of the user's is overwritten.
    """
    from handsoff_ray.pipeline.errors import UserError

    sizes = store.sizes(f"{DATASET}/data")
    names = [posixpath.basename(shard_name(k)) for k in range(len(ranges))]
    known = set(names)
    strangers = sorted(n for n in sizes if not n.startswith(".") and n not in known)
    if strangers:
        raise UserError(f"{store.uri(f'{DATASET}/data/{strangers[0]}')}: not a shard of this dataset "
                        f"({len(strangers)} such file(s)); move it out of {store.uri(DATASET)} and rerun")
    todo, notes = [], []
    for k, (start, stop) in enumerate(ranges):
        entry = manifest["shards"].pop(str(k), None)
        if names[k] not in sizes:
            if entry is not None:
                notes.append(f"{store.uri(shard_name(k))}: missing (the manifest lists it); writing it again")
            todo.append(k)
            continue
        if entry is not None:
            if (entry.get("bytes") == sizes[names[k]] and (entry.get("start"), entry.get("stop")) == (start, stop)
                    and store.sha256(shard_name(k))[0] == entry.get("sha256")):
                manifest["shards"][str(k)] = entry
                continue
            notes.append(f"{store.uri(shard_name(k))}: differs from its manifest entry (size or sha256); "
                         "writing it again")
        else:
            rebuilt = _rebuilt_entry(store, k, start, stop, meta, h)
            if rebuilt is not None:
                manifest["shards"][str(k)] = rebuilt
                continue
            notes.append(f"{store.uri(shard_name(k))}: not a whole shard of this spec; writing it again")
        todo.append(k)
    return todo, notes


def _record_shard(run_id: str, rows: int, seconds: float, scores: dict[str, list[float]]) -> None:
    from handsoff_ray.pipeline.telemetry import metrics

    m = metrics()
    m.inc("samples_written", rows, run_id=run_id)
    m.inc("shards_committed", 1, run_id=run_id)
    m.observe("shard_commit_seconds", seconds, run_id=run_id)
    for task, values in scores.items():
        for v in values:
            m.observe("sample_uncertainty", v, run_id=run_id, task=task)


def prepare_synthesis(spec: JobSpec) -> tuple:
    """Validate inputs, claim the dataset folder and verify what an earlier run committed:
    (store, schema meta, manifest so far, shard ranges, shard ids to write)."""
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
        from handsoff_ray.core.pairs import content_rows

        rows = content_rows(spec.generator.crop_rows, _generator_height(spec), image_size[0])
        image_size = [rows.stop - rows.start, image_size[1]]
    meta = {"classes": list(labeled.classes or []), "keypoint_names": list(labeled.keypoint_names or []),
            "depth_scale": float(labeled.depth_scale or 1000.0), "image_size": image_size}
    manifest, notes = _load_manifest(store, h)
    manifest["stage_hash"] = h
    ranges = shard_ranges(spec.synthesis.num_samples, spec.synthesis.shard_size)
    todo, repaired = verify_committed(store, manifest, ranges, meta, h)
    notes += repaired
    if todo and store.exists(f"{DATASET}/{SUCCESS}"):
        store.delete(f"{DATASET}/{SUCCESS}")  # finished no longer: readers wait until the repair is done
    for note in notes:
        print(f"handsoff: {note}", file=sys.stderr, flush=True)
    from handsoff_ray.pipeline.telemetry import metrics

    metrics().set("shards_planned", len(ranges), run_id=spec.run_id)
    return store, meta, manifest, ranges, todo


def _load_manifest(store, h: str) -> tuple[dict, list[str]]:
    """(the manifest a previous run left, or a new one; a note when it was unreadable and will be rebuilt)."""
    from handsoff_ray.pipeline.manifest import DatasetError, parse_manifest

    rel = f"{DATASET}/{MANIFEST}"
    if not store.exists(rel):
        return {"stage_hash": h, "shards": {}}, []
    try:
        return parse_manifest(store.read_bytes(rel), store.uri(DATASET)), []
    except DatasetError as err:
        return {"stage_hash": h, "shards": {}}, [f"{err}; rebuilding it from the verified shards"]


def _generator_height(spec: JobSpec) -> int:
    """The generator canvas height (the checkpoint is loaded on the CPU; only when crop_rows is set)."""
    import torch

    from handsoff_ray.pipeline.stages import load_spec_generator

    return int(load_spec_generator(spec, torch.device("cpu")).cfg.resolution)


def finish_dataset(store, spec: JobSpec, manifest: dict, meta: dict) -> None:
    """Final manifest, the README.md card, then _SUCCESS (last, so it marks a complete dataset)."""
    manifest["num_samples"], manifest["meta"] = spec.synthesis.num_samples, meta
    store.sweep_temporaries(f"{DATASET}/data")  # left by writers killed mid-shard (their shards were redone)
    store.write_json(f"{DATASET}/{MANIFEST}", manifest)
    store.write_bytes(f"{DATASET}/README.md", dataset_card(spec, manifest).encode())
    store.write_bytes(f"{DATASET}/{SUCCESS}", b"")


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
    store, meta, manifest, ranges, todo = prepare_synthesis(spec)
    t0 = time.time()
    if todo:
        G, lg = load_synthesis_models(spec, store)
        for n_done, k in enumerate(todo, 1):
            entry = write_shard(store, k, *ranges[k], G, lg, spec, meta)
            manifest["shards"][str(k)] = entry
            store.write_json(f"{DATASET}/{MANIFEST}", manifest)
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
