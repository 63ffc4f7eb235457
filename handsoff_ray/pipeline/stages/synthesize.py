"""synthesize: sample ids -> image+label pairs in Parquet shards under <run>/dataset/, resumable.

    handsoff synthesize jobs/specs/toy.yaml    # -> <run>/dataset/data/part-NNNNNN.parquet, _manifest.json, ...

Units are shards of consecutive sample ids (`synthesis.shard_size`). Because every sample's seed comes
from (run seed, sample id), a shard's bytes do not depend on who writes it or in which order. A shard
streams to a local file a row group at a time and is committed whole (DatasetWriter.stream_shard); the
driver records each in the manifest as it arrives. A rerun first verifies every committed shard against
the manifest (size and sha256, dataset/writer.py's `verify_committed`), rebuilds a lost or unreadable
manifest from the shards, and writes only what is missing or does not match. The dataset ends with `_SUCCESS` and a
`README.md` card (`dataset_card`). What a shard, a manifest entry and the card hold is the dataset
package's (pipeline/dataset/); this stage makes the pairs and decides which shards to write.

A dataset holds one or more versions (batches): `synthesis.version` V writes sample ids
[V * VERSION_STRIDE, ... + num_samples) as data/part-vV-NNNNNN.parquet (version 0: part-NNNNNN.parquet, the
ids and bytes of a run before versions), next to the versions already there. The manifest's "versions"
records each one's identity (identity.py: label generator, checkpoint, synthesis settings): a version
whose identity changed (a refit, a new checkpoint) is written again, one whose identity holds is verified
and kept. A scheduled run (the chart) adds a version and computes nothing else.
"""

from __future__ import annotations

import sys
import tempfile
import time

import numpy as np

from handsoff_ray.config import JobSpec, stage_hash
from handsoff_ray.pipeline.context import RunContext, apply_torch_threads
from handsoff_ray.pipeline.dataset.layout import DATASET_FILES, VERSION_STRIDE
from handsoff_ray.pipeline.dataset.writer import (
    DatasetWriter, count_classes, dataset_card, shard_entry, verify_committed, with_versions,
)
from handsoff_ray.pipeline.errors import UserError
from handsoff_ray.pipeline.layout import ARTIFACTS, RUN, run_roots
from handsoff_ray.pipeline.stages.base import Plan, Stage
from handsoff_ray.pipeline.telemetry import metrics

__all__ = ["SynthesizeStage", "shard_ranges"]


class SynthesizeStage(Stage):
    name, progress_unit, ray = "synthesize", "shard", "data"
    folder = output = RUN.dataset
    counts = ("samples", "shards", "shards_written_now", "version", "actors")

    def describe(self, spec) -> dict:
        root, _ = run_roots(spec)
        syn = spec.synthesis
        return {"hash": stage_hash(spec, self.name),
                "samples": syn.num_samples,
                "shards": len(shard_ranges(syn.num_samples, syn.shard_size)),
                "shard_size": syn.shard_size,
                "truncation_psi": syn.truncation_psi,
                "writes": f"{root}/{RUN.dataset}/" + (f" (version {syn.version})" if syn.version else ""),
                "actors": spec.resources.synthesis_actors}

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
        h = ctx.claim_stage(self)
        meta = _meta(_facts(ctx))
        writer = DatasetWriter(store, RUN.dataset)
        manifest, note = writer.load_manifest()
        notes = [f"{note}; rebuilding it from the verified shards"] if note else []
        manifest = with_versions(manifest or {"shards": {}})
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
        return {"skipped": not plan.units, "shards_written_now": plan.state["written_now"],
                "shards": plan.state["shards"], "samples": spec.synthesis.num_samples,
                "version": spec.synthesis.version, "versions": sorted(int(v) for v in manifest["versions"]),
                "actors": spec.resources.synthesis_actors, "reason": plan.state["reason"],
                "identity": ctx.identities().synthesize}


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
    """What fit recorded about the data (fit.json), never the labeled set: synthesis decodes no labeled image."""
    facts = (ctx.store.read_json(RUN.fit_summary) or {}).get("data")
    if not facts or "class_pixels" not in facts:
        raise UserError(f"{ctx.store.uri(RUN.fit_summary)} lacks the data facts synthesis needs (fitted by an "
                        f"earlier version): run `handsoff fit SPEC` once; it records them without refitting")
    return facts


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
    # One batch of pairs at a time: memory stays at one batch however large the shard (stream_shard).
    with writer.stream_shard(k, spec.synthesis.version) as shard:
        for b in range(start, stop, syn.batch_size):
            pairs = synthesize(G, lg, sample_ids=range(b, min(b + syn.batch_size, stop)), run_seed=spec.seed,
                               truncation_psi=syn.truncation_psi, top_fraction=syn.uncertainty.top_fraction,
                               return_latents=syn.store_latent, crop_rows=spec.generator.crop_rows,
                               logit_shift=shift)
            shard.write(pairs_to_table(pairs, spec_hash=h, meta=meta))
            for t, s in pairs.uncertainty.items():
                scores.setdefault(t, []).extend(s.tolist())
            if "segmentation" in pairs.labels:
                count_classes(class_pixels, pairs.labels["segmentation"])
    seconds = time.time() - t0
    _record_metrics(spec.run_id, stop - start, seconds, scores)
    return shard_entry(k, start, stop, shard.committed, seconds, scores, class_pixels, spec.synthesis.version)


def _record_metrics(run_id: str, rows: int, seconds: float, scores: dict[str, list[float]]) -> None:
    m = metrics()
    m.inc("samples_written", rows, run_id=run_id)
    m.inc("shards_committed", 1, run_id=run_id)
    m.observe("shard_commit_seconds", seconds, run_id=run_id)
    for task, values in scores.items():
        for v in values:
            m.observe("sample_uncertainty", v, run_id=run_id, task=task)
