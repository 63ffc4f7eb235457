"""synthesize: sample ids -> image+label pairs in Parquet shards under <run>/dataset/, resumable.

    handsoff synthesize jobs/specs/toy.yaml    # -> <run>/dataset/data/part-NNNNNN.parquet, _manifest.json, ...

Units are shards of consecutive sample ids (`synthesis.shard_size`). Because every sample's seed comes
from (run seed, sample id), a shard's bytes do not depend on who writes it or in which order. A shard
streams to a local file a row group at a time and is committed whole (DatasetWriter); the driver records
each in the manifest as it arrives. A rerun first verifies every committed shard against the manifest
(size and sha256, `verify_committed`), rebuilds a lost or unreadable manifest from the shards, and writes
only what is missing or does not match. The dataset ends with `_SUCCESS` and a `README.md` card.

A dataset holds one or more versions (batches): `synthesis.version` V writes sample ids
[V * VERSION_STRIDE, ... + num_samples) as data/part-vV-NNNNNN.parquet (version 0: part-NNNNNN.parquet, the
ids and bytes of a run before versions), next to the versions already there. The manifest's "versions"
records each one's identity (identity.py: label generator, checkpoint, synthesis settings): a version
whose identity changed (a refit, a new checkpoint) is written again, one whose identity holds is verified
and kept. A scheduled run (the chart) adds a version and computes nothing else.
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
from handsoff_ray.pipeline.context import RunContext, apply_torch_threads
from handsoff_ray.pipeline.dataset.layout import DATASET_FILES, VERSION_STRIDE
from handsoff_ray.pipeline.dataset.schema import TASK_COLUMNS
from handsoff_ray.pipeline.dataset.writer import DatasetWriter
from handsoff_ray.pipeline.errors import UserError
from handsoff_ray.pipeline.layout import ARTIFACTS, RUN
from handsoff_ray.pipeline.stages.base import Plan, Stage
from handsoff_ray.pipeline.storage import sha256_file
from handsoff_ray.pipeline.telemetry import metrics

__all__ = ["SynthesizeStage", "shard_ranges", "verify_committed", "dataset_card", "UNCERTAINTY_BINS"]

_ROW_GROUP = 256  # rows per row group: a few MB at 512 px, small enough for streaming readers
# Fixed log-spaced bins for uncertainty histograms, so shards' histograms add up across a whole run.
UNCERTAINTY_BINS = np.concatenate([[0.0], np.logspace(-6, 1, 29)])


class SynthesizeStage(Stage):
    name, progress_unit, ray = "synthesize", "shard", "data"

    def prepare(self, ctx: RunContext) -> Plan:
        """Claim the dataset folder, verify what an earlier run committed, list the shards still to write."""
        store, spec, idn = ctx.store, ctx.spec, ctx.identities()
        ref = store.read_json(RUN.label_generator_ref)
        if ref is None:
            raise UserError("no fitted label generator in this run; run `handsoff fit SPEC` first")
        if ref.get("identity") != idn.fit:
            from handsoff_ray.pipeline.identity import explain_changes

            raise UserError(f"the run's label generator is stale: {explain_changes(ref.get('inputs'), idn.fit_inputs(), 'fit')}; "
                            "run `handsoff fit SPEC` (or `handsoff run SPEC`) first")
        h = ctx.claim_stage("synthesize")
        meta = _meta(_facts(ctx))
        writer = DatasetWriter(store, RUN.dataset)
        manifest, note = writer.load_manifest()
        notes = [f"{note}; rebuilding it from the verified shards"] if note else []
        manifest = _with_versions(manifest or {"shards": {}})
        v = spec.synthesis.version
        before = manifest["versions"].get(str(v))
        ranges = version_ranges(spec, v)
        if before is not None and before.get("identity") != idn.synthesize:
            # Made from other inputs: none of its shards may be kept or adopted, whatever their spec_hash says.
            for key in [key for key, e in manifest["shards"].items() if e.get("version", 0) == v]:
                del manifest["shards"][key]
            for k in range(max(len(ranges), len(before.get("shards") or []))):
                store.delete(writer.shard(k, v))
            why = _why(before, idn)
        else:
            why = None
        manifest["stage_hash"] = h
        manifest["versions"][str(v)] = {"identity": idn.synthesize, "fit": idn.fit, "checkpoint": idn.checkpoint,
                                        "stage_hash": h, "seed": spec.seed, "first_sample_id": v * VERSION_STRIDE,
                                        "samples": spec.synthesis.num_samples,
                                        "shards": [DATASET_FILES.shard_key(k, v) for k in range(len(ranges))]}
        todo, repaired = verify_committed(writer, manifest, ranges, meta, h, version=v)
        if todo:
            writer.unmark()
        for line in notes + repaired:
            print(f"handsoff: {line}", file=sys.stderr, flush=True)
        reason = _reason(before, why, v, len(todo), len(ranges))
        metrics().set("shards_planned", len(ranges), run_id=spec.run_id)
        return Plan(units=[[k, *ranges[k]] for k in todo], total=len(todo),
                    state={"writer": writer, "manifest": manifest, "meta": meta, "shards": len(ranges),
                           "written_now": len(todo), "reason": reason})

    def worker(self, ctx: RunContext):
        from handsoff_ray.core.label_generator import load_label_generator

        apply_torch_threads(ctx.spec)
        G = ctx.generator()
        # The label generator the run refers to: prepare checked that it is the one of this spec's inputs, and an
        # actor need not reach the labeled set to know it.
        fit_identity = ctx.store.read_json(RUN.label_generator_ref)["identity"]
        with tempfile.TemporaryDirectory() as d:
            lg_file = ARTIFACTS.label_generator_file(fit_identity)
            lg = load_label_generator(ctx.artifacts.local_copy(lg_file, d), device=ctx.device)
        facts = _facts(ctx)
        writer, meta, shift = DatasetWriter(ctx.store, RUN.dataset), _meta(facts), _prior_shift(ctx, facts)
        return lambda unit, report: _write_shard(ctx, writer, *unit, G, lg, meta, shift)

    def record(self, ctx: RunContext, plan: Plan, entry: dict) -> None:
        manifest = plan.state["manifest"]
        manifest["shards"][DATASET_FILES.shard_key(entry["shard"], entry.get("version", 0))] = entry
        plan.state["writer"].write_manifest(manifest)

    def finish(self, ctx: RunContext, plan: Plan) -> dict:
        spec, manifest = ctx.spec, plan.state["manifest"]
        # Readers trust the manifest: it carries the reader policy's defaults (reader.*, not hashed, so a
        # new policy never needs regeneration) next to what the shards hold.
        manifest.update(num_samples=sum(v["samples"] for v in manifest["versions"].values()),
                        meta=plan.state["meta"], reader=spec.reader.model_dump(mode="json"))
        plan.state["writer"].finish(manifest, dataset_card(spec, manifest))
        print(f"handsoff: {plan.state['reason']}", file=sys.stderr, flush=True)
        return {"stage": "synthesize", "run": ctx.store.uri(), "output": ctx.store.uri(RUN.dataset),
                "skipped": not plan.units, "shards_written_now": plan.state["written_now"],
                "shards": plan.state["shards"], "samples": spec.synthesis.num_samples,
                "version": spec.synthesis.version, "versions": sorted(int(v) for v in manifest["versions"]),
                "actors": spec.resources.synthesis_actors, "reason": plan.state["reason"],
                "identity": ctx.identities().synthesize}


def _with_versions(manifest: dict) -> dict:
    """The manifest with its "versions" record; a dataset written before versions is version 0 whose
    identity nobody recorded (so it is written again rather than trusted)."""
    if "versions" not in manifest:
        keys = sorted(manifest["shards"], key=lambda key: int(key) if key.isdigit() else -1)
        manifest["versions"] = {} if not keys else {"0": {"identity": None, "samples": manifest.get("num_samples", 0),
                                                          "shards": keys, "first_sample_id": 0}}
    return manifest


def version_ranges(spec: JobSpec, version: int) -> list[tuple[int, int]]:
    """The sample-id ranges of the shards of one version (version 0: 0..num_samples, as before versions)."""
    base = version * VERSION_STRIDE
    return [(base + a, base + b) for a, b in shard_ranges(spec.synthesis.num_samples, spec.synthesis.shard_size)]


def _why(before: dict, idn) -> str:
    if before.get("identity") is None:
        return "this dataset was written before content identities (no record of what it was made from)"
    if before.get("checkpoint") not in (None, idn.checkpoint):
        return "the generator checkpoint changed since the last synthesis"
    if before.get("fit") not in (None, idn.fit):
        return "the label generator was refitted since the last synthesis"
    return "the synthesis settings changed since the last synthesis"


def _reason(before: dict | None, why: str | None, version: int, todo: int, shards: int) -> str:
    """One line: what synthesize does now and why."""
    what = f"version {version}" if version else "the dataset"
    if why is not None:
        return f"synthesize: {why}; writing {what} again ({todo} of {shards} shards)"
    if before is None:
        return f"synthesize: {what} is new; writing {todo} shards" if version else \
            f"synthesize: first synthesis in this run; writing {todo} shards"
    if todo:
        return f"synthesize: nothing changed; writing {todo} missing or damaged of {shards} shards"
    return f"synthesize: nothing changed since the last synthesis ({shards} shards verified)"


def _facts(ctx: RunContext) -> dict:
    """What fit recorded about the data (fit.json), never the labeled set."""
    from handsoff_ray.pipeline.stages.fit import data_facts

    facts = (ctx.store.read_json(RUN.fit_summary) or {}).get("data")
    return facts if facts and "class_pixels" in facts else data_facts(ctx)  # a run fitted before fit.json had them


def _meta(facts: dict) -> dict:
    """The schema meta of the pairs, in this key order: the Parquet schema metadata, and so every shard's
    bytes, depend on it."""
    return {k: facts[k] for k in ("classes", "keypoint_names", "depth_scale", "image_size")}


def _prior_shift(ctx: RunContext, facts: dict):
    """synthesis.prior_tau's segmentation logit shift (core.pairs.class_prior_shift), or None."""
    from handsoff_ray.core.pairs import class_prior_shift

    tau = ctx.spec.synthesis.prior_tau
    pixels = facts["class_pixels"]
    return class_prior_shift(pixels, tau) if tau and pixels else None


def shard_ranges(num_samples: int, shard_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + shard_size, num_samples)) for s in range(0, num_samples, shard_size)]


def _write_shard(ctx: RunContext, writer: DatasetWriter, k: int, start: int, stop: int, G, lg, meta: dict,
                 shift=None) -> dict:
    """Synthesize sample ids [start, stop) and commit them as shard k; returns its manifest entry."""
    from handsoff_ray.core.pairs import synthesize
    from handsoff_ray.pipeline.dataset.schema import pairs_to_table

    spec = ctx.spec
    h, syn = ctx.stage_hash("synthesize"), spec.synthesis
    scores: dict[str, list[float]] = {}
    class_pixels = np.zeros(len(meta.get("classes") or []), np.int64)
    t0 = time.time()
    # The shard streams to a local temporary file, a row group at a time, and is committed from there:
    # memory stays at one batch however large the shard (10,000 pairs at 512 px are gigabytes).
    with tempfile.TemporaryDirectory(prefix="handsoff-shard-") as tmp:
        local = f"{tmp}/part.parquet"
        writer_pq = None
        for b in range(start, stop, syn.batch_size):
            pairs = synthesize(G, lg, sample_ids=range(b, min(b + syn.batch_size, stop)), run_seed=spec.seed,
                               truncation_psi=syn.truncation_psi, top_fraction=syn.uncertainty.top_fraction,
                               return_latents=syn.store_latent, crop_rows=spec.generator.crop_rows,
                               logit_shift=shift)
            table = pairs_to_table(pairs, spec_hash=h, meta=meta)
            if writer_pq is None:
                writer_pq = pq.ParquetWriter(local, table.schema, compression="zstd")
            writer_pq.write_table(table, row_group_size=_ROW_GROUP)
            for t, s in pairs.uncertainty.items():
                scores.setdefault(t, []).extend(s.tolist())
            if "segmentation" in pairs.labels:
                _count_classes(class_pixels, pairs.labels["segmentation"])
        writer_pq.close()
        committed = writer.commit_shard(k, local, spec.synthesis.version)
    seconds = time.time() - t0
    _record_metrics(spec.run_id, stop - start, seconds, scores)
    return _entry(k, start, stop, committed, seconds, scores, class_pixels, spec.synthesis.version)


def _histogram(values: list[float]) -> dict:
    v = np.asarray(values, np.float64)
    return {"count": int(v.size), "mean": float(v.mean()), "min": float(v.min()), "max": float(v.max()),
            "hist": np.histogram(np.clip(v, 0, UNCERTAINTY_BINS[-1]), UNCERTAINTY_BINS)[0].tolist()}


def _count_classes(class_pixels: np.ndarray, segmentation: np.ndarray) -> None:
    """Add the pixels of each class in segmentation ([N, H, W] class ids) to class_pixels, in place."""
    if len(class_pixels):
        class_pixels += np.bincount(segmentation.reshape(-1), minlength=len(class_pixels))[: len(class_pixels)]


def _entry(k: int, start: int, stop: int, committed: dict, seconds: float, scores: dict[str, list[float]],
           class_pixels: np.ndarray, version: int = 0) -> dict:
    """Shard k's manifest entry."""
    return {"shard": k, "version": version, "file": committed["file"], "start": start, "stop": stop, "rows": stop - start,
            "bytes": committed["bytes"], "sha256": committed["sha256"], "seconds": round(seconds, 2),
            "uncertainty": {t: _histogram(v) for t, v in scores.items()}, "class_pixels": class_pixels.tolist()}


def _rebuilt_entry(writer: DatasetWriter, k: int, start: int, stop: int, meta: dict, h: str,
                   version: int = 0) -> dict | None:
    """Shard k's manifest entry recomputed from the committed file, or None when it is not a whole shard
    of this spec (unreadable, other sample ids, another spec's rows). Streams the shard a row group at a time."""
    from handsoff_ray.pipeline.dataset.schema import decode_png

    scores: dict[str, list[float]] = {}
    class_pixels = np.zeros(len(meta.get("classes") or []), np.int64)
    ids: list[int] = []
    with tempfile.TemporaryDirectory(prefix="handsoff-verify-") as tmp:
        local = writer.store.local_copy(writer.shard(k, version), tmp)
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
    committed = {"file": DATASET_FILES.shard(k, version), "bytes": size, "sha256": digest}
    return _entry(k, start, stop, committed, 0.0, scores, class_pixels, version)


def verify_committed(writer: DatasetWriter, manifest: dict, ranges: list[tuple[int, int]], meta: dict,
                     h: str, *, version: int = 0) -> tuple[list[int], list[str]]:
    """(shard ids still to write, one note per shard repaired) after checking what a previous run committed.

    One listing of data/ finds the committed shards. Each one with a manifest entry must match it in size
    and sha256 (streamed); one without (the driver died between commit and manifest, or the manifest was
    lost) is taken in when it is a whole shard of this spec, its entry recomputed. Anything else is
    dropped from the manifest and written again; a file that is no shard of this dataset stops the run
    before any compute, so nothing of the user's is overwritten. Only `version`'s shards are checked; the
    other versions' shards (in the manifest) are left as they are.
    """
    store = writer.store
    sizes = store.sizes(writer.rel(DATASET_FILES.data))
    names = [posixpath.basename(DATASET_FILES.shard(k, version)) for k in range(len(ranges))]
    others = {posixpath.basename(e["file"]) for e in manifest["shards"].values() if e.get("version", 0) != version}
    strangers = sorted(n for n in sizes if not n.startswith(".") and n not in set(names) | others)
    if strangers:
        raise UserError(f"{store.uri(writer.rel(f'{DATASET_FILES.data}/{strangers[0]}'))}: not a shard of this "
                        f"dataset ({len(strangers)} such file(s)); move it out of {store.uri(writer.folder)} and rerun")
    todo, notes = [], []
    for key in [key for key, e in manifest["shards"].items()  # shards of a bigger num_samples than this one
                if e.get("version", 0) == version and e.get("shard", -1) >= len(ranges)]:
        del manifest["shards"][key]
    for k, (start, stop) in enumerate(ranges):
        key = DATASET_FILES.shard_key(k, version)
        entry = manifest["shards"].pop(key, None)
        where = store.uri(writer.shard(k, version))
        if names[k] not in sizes:
            if entry is not None:
                notes.append(f"{where}: missing (the manifest lists it); writing it again")
            todo.append(k)
            continue
        if entry is not None:
            if (entry.get("bytes") == sizes[names[k]] and (entry.get("start"), entry.get("stop")) == (start, stop)
                    and store.sha256(writer.shard(k, version))[0] == entry.get("sha256")):
                manifest["shards"][key] = entry
                continue
            notes.append(f"{where}: differs from its manifest entry (size or sha256); writing it again")
        else:
            rebuilt = _rebuilt_entry(writer, k, start, stop, meta, h, version)
            if rebuilt is not None:
                manifest["shards"][key] = rebuilt
                continue
            notes.append(f"{where}: not a whole shard of this spec; writing it again")
        todo.append(k)
    return todo, notes


def _record_metrics(run_id: str, rows: int, seconds: float, scores: dict[str, list[float]]) -> None:
    m = metrics()
    m.inc("samples_written", rows, run_id=run_id)
    m.inc("shards_committed", 1, run_id=run_id)
    m.observe("shard_commit_seconds", seconds, run_id=run_id)
    for task, values in scores.items():
        for v in values:
            m.observe("sample_uncertainty", v, run_id=run_id, task=task)


def dataset_card(spec: JobSpec, manifest: dict) -> str:
    """A human-readable README.md for the dataset folder."""
    shards = sorted(manifest["shards"].values(), key=lambda e: (e.get("version", 0), e["shard"]))
    lines = [f"# Synthetic dataset `{spec.run_id}`", "",
             "Generated by handsoff_ray (HandsOff, Xu et al. CVPR 2023).", "",
             f"- samples: {sum(s['rows'] for s in shards)} in {len(shards)} Parquet shards",
             f"- stage hash: `{manifest['stage_hash']}`; run seed {spec.seed}; truncation psi {spec.synthesis.truncation_psi}",
             f"- generator: `{spec.generator.checkpoint}`",
             f"- label resolution: {manifest['meta']['image_size']}",
             f"- reader defaults (`uncertainty_filter=\"reference\"`): drop {spec.reader.filter_portion:g} of the pairs, "
             f"{spec.reader.drop_most_certain} of them the most certain", ]
    versions = manifest.get("versions") or {}
    if versions:
        lines += ["", "## Versions (batches)", "",
                  "Read one with `SyntheticDataset(path, version=V)`, all with the default `version=None`.", "",
                  "| version | samples | sample ids | seed | identity |", "|---|---|---|---|---|"]
        for v in sorted(versions, key=int):
            r = versions[v]
            first = r.get("first_sample_id", 0)
            lines.append(f"| {v} | {r['samples']} | {first}..{first + r['samples'] - 1} | {r.get('seed', '')} | "
                         f"`{(r.get('identity') or 'unrecorded')[:16]}` |")
    lines.append("")
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
