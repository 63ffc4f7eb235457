"""The HandsOff stages on one machine: invert, fit. Each is idempotent and resumable.

    handsoff invert jobs/specs/toy.yaml     # -> <output>/<run_id>/latents/<image id>.safetensors
    handsoff fit jobs/specs/toy.yaml        # -> <output>/<run_id>/label_generator/

A stage first validates everything it will read (spec, labeled set, checkpoint, LPIPS trunk), then
claims its output folder with the stage's spec hash: output of another spec under the same run id is
refused, output of the same spec is reused. Inversion writes one file per image as soon as its batch
finishes, so an interrupted run redoes at most one batch.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from handsoff_ray.config import JobSpec
from handsoff_ray.pipeline.errors import UserError
from handsoff_ray.pipeline.labeled import AlignedLabels, align_labels, align_labels_in_content, open_spec_labeled_set
from handsoff_ray.pipeline.telemetry import metrics
from handsoff_ray.pipeline.plan import resolve_checkpoint, stage_hash
from handsoff_ray.pipeline.progress import log_event, stage_progress
from handsoff_ray.pipeline.storage import RunStore

__all__ = [
    "LATENTS", "LABEL_GENERATOR", "open_run", "resolve_device", "prepare_invert", "invert_images", "finish_invert",
    "run_invert", "run_fit", "fit_members", "invert_stage", "fit_stage",
]

LATENTS = "latents"
LABEL_GENERATOR = "label_generator"


def apply_torch_threads(spec: JobSpec) -> None:
    """Set this process's intra-op thread count to the spec's (when given). Float results depend on it
    (how reductions split), so every engine applies it before computing: same spec, same bytes."""
    if spec.resources.torch_threads:
        torch.set_num_threads(spec.resources.torch_threads)


def resolve_device(spec: JobSpec) -> torch.device:
    if spec.generator.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.generator.device == "cuda" and not torch.cuda.is_available():
        raise UserError("generator.device is 'cuda' but no CUDA device is visible; set generator.device: auto")
    return torch.device(spec.generator.device)


def open_run(spec: JobSpec) -> RunStore:
    s3 = spec.storage.s3
    return RunStore.open(
        spec.storage.output, run_id=spec.run_id, endpoint_url=s3.endpoint_url, region=s3.region,
        max_attempts=s3.max_attempts, retry_seconds=s3.retry_seconds,
    )


def claim_stage(store: RunStore, stage: str, spec: JobSpec) -> str:
    """Record which spec owns <run>/<stage>/; refuse to mix two specs' outputs under one run id."""
    h = stage_hash(spec, stage)
    marker = f"{_STAGE_FOLDERS[stage]}/_stage.json"
    existing = check_stage_owner(store, stage, spec)
    if existing is None:
        store.write_json(marker, {"stage": stage, "stage_hash": h, "spec": spec.model_dump(mode="json")})
    return h


_STAGE_FOLDERS = {"invert": LATENTS, "fit": LABEL_GENERATOR, "synthesize": "dataset"}


def check_stage_owner(store: RunStore, stage: str, spec: JobSpec) -> dict | None:
    """The stage's marker when this spec owns <run>/<stage>/ (None when nobody does yet); UserError when
    another spec's outputs are there."""
    h = stage_hash(spec, stage)
    folder = _STAGE_FOLDERS[stage]
    existing = store.read_json(f"{folder}/_stage.json")
    if existing is not None and existing.get("stage_hash") != h:
        raise UserError(
            f"{store.uri(folder)} holds {stage} output of another spec (hash {existing.get('stage_hash')}, this spec "
            f"{h}); set storage.run_id to a new id, or delete that folder to recompute"
        )
    return existing


def _cached_checkpoint(spec: JobSpec, uri: str) -> str:
    """A local copy of a remote checkpoint (torch and safetensors read local files), downloaded once per
    machine: every stage, worker and actor reuses it instead of leaving a copy per load."""
    import hashlib
    import shutil

    from handsoff_ray.pipeline.storage import resolve_filesystem

    fs, inner = resolve_filesystem(uri, endpoint_url=spec.storage.s3.endpoint_url, region=spec.storage.s3.region)
    info = fs.get_file_info(inner)
    key = f"{uri}|{info.size}|{info.mtime_ns}"  # a replaced object gets a new copy
    folder = os.path.join(tempfile.gettempdir(), "handsoff-checkpoints")
    local = os.path.join(folder, f"{hashlib.sha256(key.encode()).hexdigest()[:16]}_{inner.rsplit('/', 1)[-1]}")
    if not (os.path.isfile(local) and os.path.getsize(local) == info.size):
        os.makedirs(folder, exist_ok=True)
        partial = f"{local}.{os.getpid()}.part"  # concurrent actors each write their own, then rename
        with fs.open_input_stream(inner) as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst, 8 << 20)
        os.replace(partial, local)
    return local


def load_spec_generator(spec: JobSpec, device: torch.device):
    from handsoff_ray.core.checkpoint import load_generator

    path = resolve_checkpoint(spec.generator.checkpoint)
    if "://" in path:
        path = _cached_checkpoint(spec, path)
    G = load_generator(path, device=device)
    G.eval().requires_grad_(False)
    return G


def _check_crop_rows(spec: JobSpec, G) -> slice | None:
    """The label-map rows generator.crop_rows covers, or UserError naming the field."""
    if spec.generator.crop_rows is None:
        return None
    from handsoff_ray.core.pairs import content_rows

    try:
        return content_rows(spec.generator.crop_rows, G.resolution, feature_size(spec, G)[0])
    except ValueError as err:
        raise UserError(f"generator.crop_rows: {err}") from None


def feature_size(spec: JobSpec, G) -> tuple[int, int]:
    """The hypercolumn (label) resolution: the spec's, else min(generator height, 512) like the reference."""
    h = spec.generator.feature_resolution or min(G.resolution, 512)
    return h, h // G.cfg.init_aspect


# ------------------------------------------------------------------------------------------ invert


def _latent_file(image_id: str) -> str:
    return f"{LATENTS}/{image_id}.safetensors"


def prepare_invert(spec: JobSpec) -> tuple[list[str], RunStore]:
    """Validate every input, then claim latents/ for this spec: (selected ids, store)."""
    _, ids = open_spec_labeled_set(spec)  # decodes and checks the whole set before any compute
    G = load_spec_generator(spec, torch.device("cpu"))  # a bad checkpoint fails here, before anything is written
    _check_crop_rows(spec, G)
    store = open_run(spec)
    claim_stage(store, "invert", spec)
    return ids, store


def pending_inversions(store: RunStore, ids: list[str]) -> list[str]:
    """Those of `ids` without a latent file yet."""
    done = {name.removesuffix(".safetensors") for name in store.list(LATENTS) if name.endswith(".safetensors")}
    return [i for i in ids if i not in done]


def invert_images(spec: JobSpec, ids: list[str], *, report: Callable[[int], None] | None = None) -> int:
    """Invert those of `ids` without a latent file yet, writing each batch as it finishes; returns how many.

    The unit of work of both engines: the local runner calls it once, each Ray Train worker calls it on
    its own disjoint slice of ids. Retried or restarted workers skip what is already written.
    `report(n)` is told the image-steps done so far (images x optimiser steps), after every step.
    """
    from handsoff_ray.core.inversion import invert

    labeled, _ = open_spec_labeled_set(spec)
    store = open_run(spec)
    h = stage_hash(spec, "invert")
    todo = pending_inversions(store, ids)
    if not todo:
        return 0
    apply_torch_threads(spec)
    device = resolve_device(spec)
    G = load_spec_generator(spec, device)
    # lpips_weight 0 (pure MSE) needs no VGG trunk, which also cannot run below ~16 px on a side.
    lpips_model = (_lpips(spec.inversion.lpips.net, spec.inversion.lpips.trunk_path, str(device))
                   if spec.inversion.lpips_weight > 0 else None)
    encoder = _maybe_encoder(spec, G, store)
    inv = spec.inversion
    t0 = time.time()
    done_steps = [0]

    def on_step(step) -> None:  # core.inversion.InversionStep: one update of len(step.index) images
        done_steps[0] += len(step.index)
        report(done_steps[0])

    for start in range(0, len(todo), inv.batch_size):
        batch_ids = todo[start : start + inv.batch_size]
        images = np.stack([labeled.load(i).image for i in batch_ids])
        init_ws = encoder.invert(G, images) if encoder is not None else None
        res = invert(
            G, images, lpips_model=lpips_model, steps=inv.steps, lr=inv.lr, lpips_weight=inv.lpips_weight,
            mse_weight=inv.mse_weight, reg_weight=inv.reg_weight, rampup=inv.rampup, rampdown=inv.rampdown,
            loss_resolution=inv.loss_resolution, init_ws=init_ws, crop_rows=spec.generator.crop_rows,
            callback=on_step if report is not None else None,
        )
        for k, image_id in enumerate(batch_ids):
            meta = {"id": image_id, "psnr": float(res.psnr[k]), "lpips": float(res.lpips[k]),
                    "final_loss": float(res.final_loss[k]), "best_step": int(res.best_step[k]), "stage_hash": h}
            blob = st_save({"ws": res.ws[k].contiguous(), "loss_curve": res.loss_curve[k].contiguous()},
                           metadata={"handsoff_ray.inversion": json.dumps(meta)})
            store.write_bytes(_latent_file(image_id), blob)
        m = metrics()
        m.inc("images_inverted", len(batch_ids), run_id=spec.run_id)
        m.set("inversion_loss", float(res.final_loss.mean()), run_id=spec.run_id)
        if report is None:  # a Ray worker's log (its driver shows progress); in-process, the bar says it
            log_event("inverted batch", done=min(start + inv.batch_size, len(todo)), of=len(todo),
                      mean_psnr=round(float(res.psnr.mean()), 2), mean_lpips=round(float(res.lpips.mean()), 4),
                      seconds=round(time.time() - t0, 1))
    return len(todo)


def finish_invert(store: RunStore, ids: list[str], inverted_now: int) -> dict:
    summary = summarize_inversion(store, ids)
    store.write_json(f"{LATENTS}/_index.json", summary)
    return {"stage": "invert", "run": store.uri(), "output": store.uri(LATENTS), "skipped": inverted_now == 0,
            "inverted_now": inverted_now, **summary}


def run_invert(spec: JobSpec) -> dict:
    """Invert every selected labeled image not inverted yet, in this process; returns a summary."""
    ids, store = prepare_invert(spec)
    with stage_progress("invert", total=len(pending_inversions(store, ids)) * spec.inversion.steps,
                        unit="step") as bar:
        inverted_now = invert_images(spec, ids, report=bar.update_to)
    return finish_invert(store, ids, inverted_now)


@functools.lru_cache(maxsize=2)
def _lpips(net: str, trunk_path: str | None, device: str):
    # Building LPIPS (VGG16 trunk + verification) takes seconds; reuse it across stages in one process.
    from handsoff_ray.core.lpips_offline import load_lpips

    return load_lpips(net, trunk_path=trunk_path, device=device)


def _maybe_encoder(spec: JobSpec, G, store: RunStore):
    """Train (or reuse) the ReStyle-style encoder when the spec asks for encoder initialisation."""
    enc_spec = spec.inversion.encoder
    if not enc_spec.enabled:
        return None
    from handsoff_ray.core.encoder import Encoder, train_encoder

    rel = f"{LATENTS}/_encoder.safetensors"
    if store.exists(rel):
        with tempfile.TemporaryDirectory() as d:
            return Encoder.load(store.local_copy(rel, d), device=G.latent_avg.device)
    log_event("training the encoder", steps=enc_spec.steps)
    encoder = train_encoder(G, steps=enc_spec.steps, batch_size=enc_spec.batch_size, lr=enc_spec.lr,
                            n_iters=enc_spec.n_iters, seed=spec.seed)
    with tempfile.TemporaryDirectory() as d:
        encoder.save(f"{d}/enc.safetensors")
        store.write_bytes(rel, open(f"{d}/enc.safetensors", "rb").read())
    return encoder


def read_latent(store: RunStore, image_id: str) -> tuple[torch.Tensor, dict]:
    """(ws [L, D], inversion metrics) of one inverted image."""
    from safetensors import safe_open

    blob = store.read_bytes(_latent_file(image_id))
    tensors = st_load(blob)
    with tempfile.NamedTemporaryFile(suffix=".safetensors") as f:  # safe_open reads metadata from a file
        f.write(blob)
        f.flush()
        with safe_open(f.name, framework="pt") as sf:
            meta = json.loads(sf.metadata()["handsoff_ray.inversion"])
    return tensors["ws"], meta


def summarize_inversion(store: RunStore, ids: list[str]) -> dict:
    per_image = {i: read_latent(store, i)[1] for i in ids}
    psnrs = [m["psnr"] for m in per_image.values()]
    lp = [m["lpips"] for m in per_image.values()]
    return {
        "images": len(ids),
        "mean_psnr": float(np.mean(psnrs)),
        "mean_lpips": float(np.mean(lp)),
        "per_image": {i: {k: m[k] for k in ("psnr", "lpips", "final_loss")} for i, m in per_image.items()},
    }


# --------------------------------------------------------------------------------------------- fit


@torch.no_grad()
def hypercolumn_features(G, ws: torch.Tensor, *, store_dtype: torch.dtype = torch.float32) -> list[list[torch.Tensor]]:
    """Per image, the generator's feature maps for its W+ latent ([C_l, h_l, w_l] each, on the CPU)."""
    out = []
    for k in range(ws.shape[0]):
        _, feats = G.synthesis(ws[k : k + 1].to(G.latent_avg.device), noise_mode="const", return_features=True)
        out.append([f[0].to("cpu", store_dtype) for f in feats])
    return out


def _targets(spec: JobSpec, aligned: list[AlignedLabels]) -> tuple[dict, dict]:
    """Label tensors at the feature resolution and the matching TaskSpecs."""
    from handsoff_ray.core.label_generator import TaskSpec

    t = spec.label_generator.tasks
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


def _member_file(m: int) -> str:
    return f"{LABEL_GENERATOR}/members/member-{m:03d}.safetensors"


def pending_members(store: RunStore, members: list[int]) -> list[int]:
    """Those ensemble `members` not saved yet."""
    return [m for m in members if not store.exists(_member_file(m))]


def prepare_fit(spec: JobSpec) -> tuple[list[str], RunStore, dict | None]:
    """Validate, claim label_generator/: (ids, store, the finished result when the stage is already done)."""
    _, ids = open_spec_labeled_set(spec, tasks=spec.label_generator.tasks.enabled())
    store = open_run(spec)
    missing = [i for i in ids if not store.exists(_latent_file(i))]
    if missing:
        raise UserError(f"{len(missing)} of {len(ids)} images are not inverted yet (first: {missing[0]}); "
                        f"run `handsoff invert SPEC` first")
    claim_stage(store, "fit", spec)
    if store.exists(f"{LABEL_GENERATOR}/label_generator.safetensors"):
        done = store.read_json(f"{LABEL_GENERATOR}/fit.json") or {}
        return ids, store, {"stage": "fit", "run": store.uri(), "output": store.uri(LABEL_GENERATOR), "skipped": True,
                            **done}
    return ids, store, None


def fit_members(spec: JobSpec, ids: list[str], members: list[int], *,
                report: Callable[[int], None] | None = None) -> int:
    """Fit those ensemble `members` not saved yet, each saved as soon as it is done; returns how many.

    Every member has its own seed, so members fitted by different Ray Train workers merge into exactly
    the label generator one process would fit. A restarted worker skips saved members.
    `report(n)` is told how many members this call has saved so far.
    """
    from handsoff_ray.core.label_generator import fit_label_generator, save_label_generator

    store = open_run(spec)
    todo = pending_members(store, members)
    if not todo:
        return 0
    apply_torch_threads(spec)
    labeled, _ = open_spec_labeled_set(spec, tasks=spec.label_generator.tasks.enabled())
    device = resolve_device(spec)
    G = load_spec_generator(spec, device)
    out_size = feature_size(spec, G)
    ws = torch.stack([read_latent(store, i)[0] for i in ids])  # [N, L, D]
    # Full-resolution feature maps of big generators are ~0.5 GB per image in fp32: keep them in fp16.
    store_dtype = torch.float16 if G.resolution >= 256 else torch.float32
    features = hypercolumn_features(G, ws, store_dtype=store_dtype)
    if spec.generator.crop_rows is not None:
        # Hypercolumns cover the whole canvas; only the content rows carry labels (padding is ignored).
        rows = _check_crop_rows(spec, G)
        aligned = [align_labels_in_content(labeled.load(i), labeled, out_size, rows) for i in ids]
    else:
        aligned = [align_labels(labeled.load(i), labeled, out_size) for i in ids]
    targets, tasks = _targets(spec, aligned)
    lg_spec = spec.label_generator
    for m in todo:
        t0 = time.time()
        lg, _ = fit_label_generator(
            features, targets, tasks, out_size=out_size, ensemble_size=lg_spec.ensemble_size, members=[m],
            max_steps=lg_spec.max_steps, batch_pixels=lg_spec.batch_pixels, lr=lg_spec.lr,
            lr_schedule=lg_spec.lr_schedule,
            class_balanced=lg_spec.class_balanced, val_fraction=lg_spec.val_fraction, patience=lg_spec.patience,
            seed=spec.seed, device=device,
        )
        with tempfile.TemporaryDirectory() as d:
            save_label_generator(lg, f"{d}/m.safetensors")
            store.write_bytes(_member_file(m), open(f"{d}/m.safetensors", "rb").read())
        metrics().inc("members_fitted", 1, run_id=spec.run_id)
        for task, per_member in lg.history_summary.items():
            best = per_member.get(str(m), {}).get("best_val_loss")
            if best is not None:
                metrics().set("fit_loss", best, run_id=spec.run_id, task=task)
        if report is not None:
            report(todo.index(m) + 1)
        else:  # a Ray worker's log
            log_event("fitted member", member=m, seconds=round(time.time() - t0, 1))
    return len(todo)


def finish_fit(spec: JobSpec, store: RunStore, ids: list[str], seconds: float) -> dict:
    """Merge the saved members into label_generator.safetensors (written last: it marks the stage done)."""
    from handsoff_ray.core.label_generator import load_label_generator, merge_label_generators, save_label_generator

    with tempfile.TemporaryDirectory() as d:
        parts = [load_label_generator(store.local_copy(_member_file(m), d))
                 for m in range(spec.label_generator.ensemble_size)]
        lg = merge_label_generators(parts)
        save_label_generator(lg, f"{d}/lg.safetensors")
        blob = open(f"{d}/lg.safetensors", "rb").read()
    summary = {"images": len(ids), "tasks": list(lg.tasks), "out_size": list(lg.out_size),
               "ensemble_size": lg.ensemble_size, "seconds": round(seconds, 1),
               "stage_hash": stage_hash(spec, "fit"), "members": lg.history_summary}
    store.write_json(f"{LABEL_GENERATOR}/fit.json", summary)
    store.write_bytes(f"{LABEL_GENERATOR}/label_generator.safetensors", blob)
    return {"stage": "fit", "run": store.uri(), "output": store.uri(LABEL_GENERATOR), "skipped": False, **summary}


def run_fit(spec: JobSpec) -> dict:
    """Fit the label-generator ensemble in this process; returns a summary."""
    ids, store, done = prepare_fit(spec)
    if done is not None:
        return done
    t0 = time.time()
    members = list(range(spec.label_generator.ensemble_size))
    with stage_progress("fit", total=len(pending_members(store, members)), unit="member") as bar:
        fit_members(spec, ids, members, report=bar.update_to)
    return finish_fit(spec, store, ids, time.time() - t0)


def invert_stage(spec: JobSpec) -> dict:
    """invert on the engine the spec asks for: Ray Train workers (resources.engine: ray) or this process."""
    if spec.resources.engine == "ray":
        from handsoff_ray.pipeline.ray_train import run_invert_ray

        return run_invert_ray(spec)
    return run_invert(spec)


def fit_stage(spec: JobSpec) -> dict:
    """fit on the engine the spec asks for: Ray Train workers (resources.engine: ray) or this process."""
    if spec.resources.engine == "ray":
        from handsoff_ray.pipeline.ray_train import run_fit_ray

        return run_fit_ray(spec)
    return run_fit(spec)
