"""fit: the inverted images' hypercolumns + their labels -> the label-generator ensemble.

    handsoff fit jobs/specs/toy.yaml        # -> <output>/_artifacts/label_generator/<identity>/, <run>/label_generator/

The label generator is stored under fit's identity (identity.py: the latents' keys, the labels' bytes, the
label_generator settings and the checkpoint) in the shared artifacts; the run folder refers to it
(label_generator/_ref.json, which also records what fit read) and keeps a copy of its fit.json. A labeled
image added, removed or corrected changes the identity, so fit runs again and says why; another run or
spec with the same inputs reuses the label generator.

Units are ensemble members. Every member has its own seed, so members fitted by different workers merge
into exactly the label generator one process would fit; each is saved as soon as it is done. `finish`
merges them and writes fit.json, which also records what fit learnt about the data (class names,
keypoint names, depth scale, label resolution): synthesis reads those from here and decodes no labeled
image.
"""

from __future__ import annotations

import sys
import tempfile

import numpy as np
import torch

from handsoff_ray.config import stage_hash
from handsoff_ray.core.label_alignment import AlignedLabels, align_labels, align_labels_in_content
from handsoff_ray.pipeline.context import RunContext, apply_torch_threads
from handsoff_ray.pipeline.errors import UserError
from handsoff_ray.pipeline.identity import explain_changes
from handsoff_ray.pipeline.layout import ARTIFACTS, RUN, run_roots
from handsoff_ray.pipeline.labeled import data_facts
from handsoff_ray.pipeline.outputs import read_latent
from handsoff_ray.pipeline.stages.base import Plan, Stage
from handsoff_ray.pipeline.telemetry import metrics

__all__ = ["FitStage", "fit_inputs", "hypercolumn_features"]


class FitStage(Stage):
    name, progress_unit, ray = "fit", "member", "train"
    folder = output = RUN.label_generator
    counts = ("images", "ensemble_size", "tasks", "workers")

    def describe(self, spec) -> dict:
        root, artifacts = run_roots(spec)
        return {"hash": stage_hash(spec, self.name),
                "tasks": spec.label_generator.tasks.enabled(),
                "ensemble_size": spec.label_generator.ensemble_size,
                "writes": f"{artifacts}/{ARTIFACTS.label_generators}/<identity>/, {root}/{RUN.label_generator_ref}"}

    def prepare(self, ctx: RunContext) -> Plan:
        _, ids = ctx.labeled()
        store, artifacts, idn = ctx.store, ctx.artifacts, ctx.identities()
        have = set(artifacts.list(ARTIFACTS.latents))
        missing = [i for i in ids if f"{idn.latent_key(i)}.safetensors" not in have]
        if missing:
            raise UserError(f"{len(missing)} of {len(ids)} images are not inverted yet (first: {missing[0]}); "
                            f"run `handsoff invert SPEC` first")
        ctx.claim_stage(self)
        before = store.read_json(RUN.label_generator_ref)
        if artifacts.exists(ARTIFACTS.label_generator_file(idn.fit)):
            if before is not None and before.get("identity") == idn.fit:
                reason = "fit: nothing changed since the last fit"
            else:
                reason = f"fit: {_why(ctx, before)}; reusing the label generator fitted from these inputs"
            summary = _adopt(ctx)
            print(f"handsoff: {reason}", file=sys.stderr, flush=True)
            return Plan(done={"reason": reason, "identity": idn.fit, **summary})
        todo = _pending(ctx, range(ctx.spec.label_generator.ensemble_size))
        reason = f"fit: {_why(ctx, before)}; fitting {len(todo)} of {ctx.spec.label_generator.ensemble_size} members"
        return Plan(units=todo, total=len(todo), state={"ids": ids, "reason": reason})

    def worker(self, ctx: RunContext):
        from handsoff_ray.core.label_generator import fit_label_generator, save_label_generator

        apply_torch_threads(ctx.spec)
        store, lg_spec, fid = ctx.artifacts, ctx.spec.label_generator, ctx.identities().fit
        state: dict = {}

        def inputs() -> dict:  # hypercolumns and targets: computed once per process, at its first member
            if not state:
                state.update(fit_inputs(ctx))
            return state

        def work(m: int, report) -> int:
            if store.exists(ARTIFACTS.member(fid, m)):  # a retried worker skips saved members
                return m
            x = inputs()
            lg, _ = fit_label_generator(
                x["features"], x["targets"], x["tasks"], out_size=x["out_size"], ensemble_size=lg_spec.ensemble_size,
                members=[m], max_steps=lg_spec.max_steps, batch_pixels=lg_spec.batch_pixels, lr=lg_spec.lr,
                lr_schedule=lg_spec.lr_schedule, class_balanced=lg_spec.class_balanced,
                val_fraction=lg_spec.val_fraction, patience=lg_spec.patience, seed=ctx.spec.seed, device=ctx.device,
            )
            with tempfile.TemporaryDirectory() as d:
                save_label_generator(lg, f"{d}/m.safetensors")
                store.put_file(ARTIFACTS.member(fid, m), f"{d}/m.safetensors")
            metrics().inc("members_fitted", 1, run_id=ctx.spec.run_id)
            for task, per_member in lg.history_summary.items():
                best = per_member.get(str(m), {}).get("best_val_loss")
                if best is not None:
                    metrics().set("fit_loss", best, run_id=ctx.spec.run_id, task=task)
            return m

        return work

    def finish(self, ctx: RunContext, plan: Plan) -> dict:
        """Merge the saved members into label_generator.safetensors (written last: it marks the stage done)."""
        from handsoff_ray.core.label_generator import load_label_generator, merge_label_generators, save_label_generator

        artifacts, ids, fid = ctx.artifacts, plan.state["ids"], ctx.identities().fit
        with tempfile.TemporaryDirectory() as d:
            parts = [load_label_generator(artifacts.local_copy(ARTIFACTS.member(fid, m), d))
                     for m in range(ctx.spec.label_generator.ensemble_size)]
            lg = merge_label_generators(parts)
            save_label_generator(lg, f"{d}/lg.safetensors")
            summary = {"images": len(ids), "tasks": list(lg.tasks), "out_size": list(lg.out_size),
                       "ensemble_size": lg.ensemble_size, "stage_hash": ctx.stage_hash(self.name), "identity": fid,
                       "members": lg.history_summary, "data": data_facts(ctx)}
            artifacts.write_json(ARTIFACTS.fit_summary(fid), summary)
            artifacts.put_file(ARTIFACTS.label_generator_file(fid), f"{d}/lg.safetensors")  # last: marks it done
        _adopt(ctx)
        print(f"handsoff: {plan.state['reason']}", file=sys.stderr, flush=True)
        return {"reason": plan.state["reason"], **summary}


def _why(ctx: RunContext, before: dict | None) -> str:
    """Why the run's label generator is not the one of these inputs ("2 labeled images changed since ...")."""
    if before is None:
        legacy = ctx.store.exists(RUN.legacy_label_generator_file)
        return ("this run folder was written before content identities (no record of what fit read)" if legacy
                else "first fit in this run")
    return explain_changes(before.get("inputs"), ctx.identities().fit_inputs(), "fit")


def _adopt(ctx: RunContext) -> dict:
    """Point the run at the label generator of fit's identity: label_generator/_ref.json and a copy of its
    fit.json (what synthesis and the demo read). Returns that fit.json."""
    idn, store = ctx.identities(), ctx.store
    summary = ctx.artifacts.read_json(ARTIFACTS.fit_summary(idn.fit)) or {}
    ref = {"identity": idn.fit, "artifact": f"{ARTIFACTS.root}/{ARTIFACTS.label_generator(idn.fit)}",
           "inputs": idn.fit_inputs()}
    stale = "class_pixels" not in (summary.get("data") or {})
    if stale:  # fitted before fit.json recorded the data facts: record them now, so synthesis never opens the set
        summary["data"] = data_facts(ctx)
        ctx.artifacts.write_json(ARTIFACTS.fit_summary(idn.fit), summary)
    if stale or store.read_json(RUN.label_generator_ref) != ref:
        store.write_json(RUN.fit_summary, summary)
        store.write_json(RUN.label_generator_ref, ref)  # last: the run now uses this label generator
    return summary


def _pending(ctx: RunContext, members) -> list[int]:
    fid = ctx.identities().fit
    return [m for m in members if not ctx.artifacts.exists(ARTIFACTS.member(fid, m))]


def fit_inputs(ctx: RunContext) -> dict:
    """Hypercolumn features of every inverted image and the label targets aligned to them."""
    labeled, ids = ctx.labeled()
    G = ctx.generator()
    out_size = ctx.feature_size(G)
    refs = {"latents": dict(ctx.identities().latents)}  # these inputs' latents, whatever the run last recorded
    ws = torch.stack([read_latent(ctx.store, i, refs)[0] for i in ids])  # [N, L, D]
    # Full-resolution feature maps of big generators are ~0.5 GB per image in fp32: keep them in fp16.
    features = hypercolumn_features(G, ws, store_dtype=torch.float16 if G.resolution >= 256 else torch.float32)
    rows = ctx.content_rows(G)
    if rows is not None:
        # Hypercolumns cover the whole canvas; only the content rows carry labels (padding is ignored).
        aligned = [align_labels_in_content(labeled.load(i), labeled.classes, out_size, rows) for i in ids]
    else:
        aligned = [align_labels(labeled.load(i), labeled.classes, out_size) for i in ids]
    targets, tasks = _targets(ctx, aligned)
    return {"features": features, "targets": targets, "tasks": tasks, "out_size": out_size}


@torch.no_grad()
def hypercolumn_features(G, ws: torch.Tensor, *, store_dtype: torch.dtype = torch.float32) -> list[list[torch.Tensor]]:
    """Per image, the generator's feature maps for its W+ latent ([C_l, h_l, w_l] each, on the CPU)."""
    out = []
    for k in range(ws.shape[0]):
        _, feats = G.synthesis(ws[k : k + 1].to(G.latent_avg.device), noise_mode="const", return_features=True)
        out.append([f[0].to("cpu", store_dtype) for f in feats])
    return out


def _targets(ctx: RunContext, aligned: list[AlignedLabels]) -> tuple[dict, dict]:
    """Label tensors at the feature resolution and the matching TaskSpecs."""
    from handsoff_ray.core.label_generator import TaskSpec

    t = ctx.spec.label_generator.tasks
    targets, tasks = {}, {}
    if t.segmentation.enabled:
        targets["segmentation"] = torch.from_numpy(np.stack([a.segmentation for a in aligned])).long()
        tasks["segmentation"] = TaskSpec(
            "segmentation", num_outputs=len(aligned[0].classes), hidden=t.segmentation.hidden,
            class_weights=t.segmentation.class_weights, min_pixels=t.segmentation.min_pixels,
        )
    if t.keypoints.enabled:
        targets["keypoints"] = torch.from_numpy(np.stack([a.keypoints for a in aligned])).float()
        tasks["keypoints"] = TaskSpec("keypoints", num_outputs=targets["keypoints"].shape[1],
                                      hidden=t.keypoints.hidden, sigma=t.keypoints.sigma)
    if t.depth.enabled:
        targets["depth"] = torch.from_numpy(np.stack([a.depth for a in aligned])).float()
        tasks["depth"] = TaskSpec("depth", num_outputs=1, hidden=t.depth.hidden)
    return targets, tasks
