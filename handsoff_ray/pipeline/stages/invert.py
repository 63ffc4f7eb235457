"""invert: the labeled images -> W+ latents, one file per image (LPIPS + MSE optimisation, core.inversion).

    handsoff invert jobs/specs/toy.yaml     # -> <output>/_artifacts/latents/<key>.safetensors, <run>/latents/_refs.json

Each image's latent is stored under its key (identity.py: invert settings + checkpoint + that image's bytes)
in the shared artifacts, so adding or correcting one labeled image inverts exactly that image, and another
run or spec with the same image and settings reuses the latent. The run folder refers to the latents by
key (latents/_refs.json) and records what it read, so a rerun says what changed.

Units are batches of `inversion.batch_size` images without a latent yet. A batch is written as soon as it
finishes, so an interrupted run redoes at most one batch per worker; float results depend on the
batch's shape, so the batches are cut the same way on every engine.
"""

from __future__ import annotations

import json
import sys
import tempfile

import numpy as np
import torch
from safetensors.torch import save as st_save

from handsoff_ray.config import stage_hash
from handsoff_ray.pipeline.context import RunContext, apply_torch_threads
from handsoff_ray.pipeline.identity import explain_changes
from handsoff_ray.pipeline.layout import ARTIFACTS, RUN, run_roots, source_of
from handsoff_ray.pipeline.outputs import read_latent
from handsoff_ray.pipeline.progress import log_event
from handsoff_ray.pipeline.stages.base import Plan, Stage
from handsoff_ray.pipeline.storage import RunStore
from handsoff_ray.pipeline.telemetry import metrics

__all__ = ["InvertStage", "inversion_kwargs", "summarize_inversion"]


class InvertStage(Stage):
    name, progress_unit, ray = "invert", "step", "train"
    folder = output = RUN.latents
    counts = ("images", "inverted_now", "mean_psnr", "mean_lpips", "workers")

    def describe(self, spec) -> dict:
        root, artifacts = run_roots(spec)
        return {"hash": stage_hash(spec, self.name),
                "reads": source_of(spec.data.format, spec.data.path, spec.data.seeds),
                "images": spec.data.ids or (f"first {spec.data.limit}" if spec.data.limit else "all"),
                "steps": spec.inversion.steps,
                "batch_size": spec.inversion.batch_size,
                "init": "encoder" if spec.inversion.encoder.enabled else "average latent",
                "writes": f"{artifacts}/{ARTIFACTS.latents}/ (one latent per image, by content), "
                          f"{root}/{RUN.latents_refs}",
                "workers": spec.resources.num_workers}

    def prepare(self, ctx: RunContext) -> Plan:
        _, ids = ctx.labeled()  # decodes and checks the whole set before any compute
        ctx.content_rows(ctx.generator(torch.device("cpu")))  # a bad checkpoint or crop_rows fails here
        ctx.claim_stage(self)
        idn = ctx.identities()
        if list(idn.latents) != list(ids):  # digests.py selects like labeled.py; a mismatch is a bug, never data
            raise RuntimeError(f"content digests cover other images than the labeled set ({len(idn.latents)} vs {len(ids)})")
        todo = _pending(ctx, ids)
        reason = _reason(ctx, ids, todo)
        if todo and ctx.spec.inversion.encoder.enabled:
            _encoder(ctx, ctx.generator())  # trained once, here, so that every worker loads the same one
        bs = ctx.spec.inversion.batch_size
        return Plan(units=[todo[i : i + bs] for i in range(0, len(todo), bs)],
                    total=len(todo) * ctx.spec.inversion.steps,
                    state={"ids": ids, "inverted_now": len(todo), "reason": reason, "identity": idn.invert})

    def weight(self, ctx: RunContext, unit: list[str]) -> int:
        return len(unit) * ctx.spec.inversion.steps  # image-steps, what `work` reports as it goes

    def worker(self, ctx: RunContext):
        from handsoff_ray.core.inversion import invert

        apply_torch_threads(ctx.spec)
        labeled, _ = ctx.labeled()
        G = ctx.generator()
        # lpips_weight 0 (pure MSE) needs no VGG trunk, which also cannot run below ~16 px on a side.
        lpips_model = ctx.lpips() if ctx.spec.inversion.lpips_weight > 0 else None
        encoder = _encoder(ctx, G)
        h, artifacts, idn = ctx.stage_hash(self.name), ctx.artifacts, ctx.identities()

        def work(batch_ids: list[str], report) -> int:
            batch_ids = _pending(ctx, batch_ids)  # a retried worker skips what is written
            if not batch_ids:
                return 0
            images = np.stack([labeled.load(i).image for i in batch_ids])
            done_steps = [0]

            def on_step(step) -> None:  # core.inversion.InversionStep: one update of len(step.index) images
                done_steps[0] += len(step.index)
                report(done_steps[0])

            res = invert(G, images, lpips_model=lpips_model, callback=on_step, **inversion_kwargs(ctx.spec),
                         init_ws=encoder.invert(G, images) if encoder is not None else None)
            for k, image_id in enumerate(batch_ids):
                meta = {"id": image_id, "psnr": float(res.psnr[k]), "lpips": float(res.lpips[k]),
                        "final_loss": float(res.final_loss[k]), "best_step": int(res.best_step[k]), "stage_hash": h,
                        "image_sha256": idn.data.images[image_id], "checkpoint_sha256": idn.checkpoint}
                blob = st_save({"ws": res.ws[k].contiguous(), "loss_curve": res.loss_curve[k].contiguous()},
                               metadata={"handsoff_ray.inversion": json.dumps(meta)})
                artifacts.write_bytes(ARTIFACTS.latent(idn.latent_key(image_id)), blob)
            m = metrics()
            m.inc("images_inverted", len(batch_ids), run_id=ctx.spec.run_id)
            m.set("inversion_loss", float(res.final_loss.mean()), run_id=ctx.spec.run_id)
            return len(batch_ids)

        return work

    def finish(self, ctx: RunContext, plan: Plan) -> dict:
        store, ids, idn = ctx.store, plan.state["ids"], ctx.identities()
        missing = _pending(ctx, ids)
        if missing:  # a unit that returned without writing: never expected, but never hidden
            raise RuntimeError(f"invert finished with {len(missing)} image(s) not inverted (first: {missing[0]})")
        refs = {"identity": idn.invert, "checkpoint": idn.checkpoint, "latents": {i: idn.latent_key(i) for i in ids},
                "images": {i: idn.data.images[i] for i in ids}}
        if store.read_json(RUN.latents_refs) != refs:
            store.write_json(RUN.latents_refs, refs)
        summary = summarize_inversion(store, ids)
        if store.read_json(RUN.latents_index) != summary:
            store.write_json(RUN.latents_index, summary)
        print(f"handsoff: {plan.state['reason']}", file=sys.stderr, flush=True)
        return {"skipped": plan.state["inverted_now"] == 0, "inverted_now": plan.state["inverted_now"],
                "reason": plan.state["reason"], "identity": idn.invert, **summary}


def inversion_kwargs(spec) -> dict:
    """core.inversion.invert's settings from the spec: every image of a spec is inverted the same way."""
    inv = spec.inversion
    return {"steps": inv.steps, "lr": inv.lr, "lpips_weight": inv.lpips_weight, "mse_weight": inv.mse_weight,
            "reg_weight": inv.reg_weight, "rampup": inv.rampup, "rampdown": inv.rampdown,
            "loss_resolution": inv.loss_resolution, "crop_rows": spec.generator.crop_rows}


def _pending(ctx: RunContext, ids: list[str]) -> list[str]:
    """Those of `ids` without a latent of their key in the shared artifacts yet (one listing)."""
    idn = ctx.identities()
    done = {n.removesuffix(".safetensors") for n in ctx.artifacts.list(ARTIFACTS.latents) if n.endswith(".safetensors")}
    return [i for i in ids if idn.latent_key(i) not in done]


def _reason(ctx: RunContext, ids: list[str], todo: list[str]) -> str:
    """One line: what invert does now and why ("invert: 1 labeled image added since the last inversion; ...")."""
    idn, store = ctx.identities(), ctx.store
    before = store.read_json(RUN.latents_refs)
    reused = len(ids) - len(todo)
    if before is None:
        legacy = any(n.endswith(".safetensors") and not n.startswith("_") for n in store.list(RUN.latents))
        why = ("this run folder was written before content identities (no record of what it read)" if legacy
               else "first inversion in this run")
    elif before.get("identity") == idn.invert:
        return f"invert: nothing changed since the last inversion ({_images(len(ids))} reused)"
    else:
        why = explain_changes(before, {"checkpoint": idn.checkpoint, "latents": dict(idn.latents)}, "inversion")
    done = f"inverting {_images(len(todo))}" if todo else "nothing to invert"
    shared = f", {reused} reused from the shared artifacts" if reused else ""
    return f"invert: {why}; {done}{shared}"


def _images(n: int) -> str:
    return f"{n} image{'' if n == 1 else 's'}"


def _encoder(ctx: RunContext, G):
    """The ReStyle-style encoder when the spec asks for encoder initialisation: trained once per run, then
    read back from latents/_encoder.safetensors; None when not enabled."""
    enc_spec = ctx.spec.inversion.encoder
    if not enc_spec.enabled:
        return None
    from handsoff_ray.core.encoder import Encoder, train_encoder

    # Stored by identity: it depends on the invert settings and the checkpoint, which its key covers.
    store, rel = ctx.artifacts, ARTIFACTS.encoder(ctx.identities().encoder_key)
    if store.exists(rel):
        with tempfile.TemporaryDirectory() as d:
            return Encoder.load(store.local_copy(rel, d), device=G.latent_avg.device)
    log_event("training the encoder", steps=enc_spec.steps)
    encoder = train_encoder(G, steps=enc_spec.steps, batch_size=enc_spec.batch_size, lr=enc_spec.lr,
                            n_iters=enc_spec.n_iters, seed=ctx.spec.seed)
    with tempfile.TemporaryDirectory() as d:
        encoder.save(f"{d}/enc.safetensors")
        store.put_file(rel, f"{d}/enc.safetensors")
    return encoder


def summarize_inversion(store: RunStore, ids: list[str]) -> dict:
    refs = store.read_json(RUN.latents_refs)
    per_image = {i: read_latent(store, i, refs)[1] for i in ids}
    psnrs = [m["psnr"] for m in per_image.values()]
    lp = [m["lpips"] for m in per_image.values()]
    return {
        "images": len(ids),
        "mean_psnr": float(np.mean(psnrs)),
        "mean_lpips": float(np.mean(lp)),
        "per_image": {i: {k: m[k] for k in ("psnr", "lpips", "final_loss")} for i, m in per_image.items()},
    }
