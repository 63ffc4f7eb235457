"""`handsoff suggest`: choose the few pool images worth labeling, and hand them to an annotator.

    handsoff suggest SPEC --pool s3://bucket/unlabeled/ --budget 16 --out to-label/     # round one
    handsoff suggest SPEC --pool ... --budget 8 --after <output>/<run_id> --out round2/ # after a fit
    handsoff suggest SPEC --pool-seeds 4000000-4001999 --dry-run                        # what it would compute

    from handsoff_ray.pipeline.suggest import suggest
    picked = suggest(spec, pool={"format": "toy", "seeds": "4000000-4001999"}, budget=16, out="to-label")

Round one (no labels yet): every pool image is described by the ImageNet trunk (stage `suggest`,
pipeline/stages/suggest.py: units on the spec's engine, Parquet parts, resumable), the descriptors are
whitened on the pool, and `suggest.method` picks the budget on the driver (core/selection.py: typical =
TypiClust, kcenter = core-set). After a fit (`--after RUN`): the pool images nearest the labeled ones
are set aside, `suggest.shortlist` x budget candidates are chosen the same way around the labeled images,
only those are inverted (the spec's inversion settings), and the picks combine the label generator's
ensemble disagreement on them (the JS score synthesis writes) with their distance to the labeled images.

Writes to `--out` (a local folder): suggestions.parquet (rank, id, ref, score, why, ...),
contact_sheet.png (the picks, ranked, captioned), labeled/images/<id>.png (the chosen images, ready for
the annotator, with labeled/TO_LABEL.md saying what to add) and suggest.json (the request and timings).
Deterministic for a given spec, pool and budget. Pool labels are never opened.
"""

from __future__ import annotations

import io
import json
import posixpath
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from handsoff_ray.config import JobSpec
from handsoff_ray.pipeline.errors import UserError

__all__ = ["Suggestions", "suggest", "with_request"]


@dataclass
class Suggestions:
    ids: list[str]
    refs: list[str]  # where each image is in the pool (toy: its seed)
    scores: list[float]
    why: list[str]
    out: str
    summary: dict = field(default_factory=dict)


def with_request(spec: JobSpec, *, pool: dict | None = None, budget: int | None = None, out: str | None = None,
                 method: str | None = None) -> JobSpec:
    """The spec with the command line's pool, budget, out and method in its `suggest` section (validated)."""
    from handsoff_ray.config import parse_spec

    raw = spec.model_dump(mode="json")
    sg = raw["suggest"]
    if pool:
        sg["pool"] = {**{k: v for k, v in sg["pool"].items() if k not in ("path", "seeds", "format")}, **pool}
    for key, value in (("budget", budget), ("out", out), ("method", method)):
        if value is not None:
            sg[key] = value
    return parse_spec(raw, source="suggest")


def suggest(spec: JobSpec, *, pool: dict | None = None, budget: int | None = None, out: str | None = None,
            after: str | None = None, method: str | None = None, engine: str | None = None, force: bool = False,
            dry_run: bool = False, log=None) -> Suggestions | dict:
    """Run the pool features, select, write the outputs; the dry-run plan (a dict) when dry_run."""
    from handsoff_ray.core.selection import project, select_kcenter, select_typical
    from handsoff_ray.pipeline.context import RunContext
    from handsoff_ray.pipeline.run import run_stage
    from handsoff_ray.pipeline.stages import ALL_STAGES
    from handsoff_ray.pipeline.stages.suggest import read_features

    log = log or (lambda msg: print(f"handsoff: {msg}", file=__import__("sys").stderr, flush=True))
    spec = with_request(spec, pool=pool, budget=budget, out=out, method=method)
    sg = spec.suggest
    t0 = time.time()
    ctx = RunContext(spec)
    fitted = _open_after(spec, after) if after else None  # a bad --after fails before any compute
    out_dir = Path(sg.out)
    request = {"pool": sg.pool.model_dump(mode="json"), "budget": sg.budget, "method": sg.method,
               "feature": sg.feature, "dims": sg.dims, "seed": spec.seed, "after": after,
               "shortlist": sg.shortlist if after else None}
    _check_out(out_dir, request, force)
    stage = ALL_STAGES["suggest"]
    plan = stage.prepare(ctx)
    n_pool = len(plan.state["pool"].items)
    if sg.budget > n_pool:
        raise UserError(f"suggest.budget {sg.budget} is more than the pool's {n_pool} images")
    if dry_run:
        return {"pool": plan.state["pool"].root, "pool_images": n_pool, "budget": sg.budget, "method": sg.method,
                "feature": sg.feature, "features": ctx.artifacts.uri(plan.state["folder"]),
                "images_to_describe": plan.total, "parts": plan.state["parts"], "parts_to_write": len(plan.units),
                "after": after, "images_to_invert": min(n_pool, sg.shortlist * sg.budget) if after else 0,
                "out": str(out_dir)}
    feats = run_stage(spec, "suggest", engine=engine, ctx=ctx)
    t_feat = time.time() - t0
    ids, refs, x_raw = read_features(ctx, feats["feature_key"], feats["parts"])
    extra: dict[str, list] = {}
    if fitted is None:
        x = project(torch.from_numpy(x_raw), sg.dims)  # after a fit, _after_fit whitens on pool + labeled images
        sel = (select_typical(x, sg.budget, seed=spec.seed) if sg.method == "typical"
               else select_kcenter(x, sg.budget))
        chosen = sel.indices
        rounds = "one"
    else:
        chosen, sel, extra = _after_fit(ctx, fitted, ids, refs, x_raw, plan.state["pool"], log)
        rounds = "after-fit"
    picks = [(ids[i], refs[i]) for i in chosen]
    t_sel = time.time() - t0 - t_feat
    from handsoff_ray.pipeline.pool import PoolItem, load_images

    pl = plan.state["pool"]
    images = load_images(pl.format, pl.root, [PoolItem(i, r) for i, r in picks], storage=spec.storage,
                         size=_toy_size(ctx), image_column=pl.image_column)
    summary = {"request": request, "pool": pl.root, "pool_images": n_pool, "round": rounds,
               "features": feats["output"], "seconds": {"features": round(t_feat, 1), "selection": round(t_sel, 1)},
               "picks": [{"rank": k + 1, "id": i, "ref": r} for k, (i, r) in enumerate(picks)]}
    _write_outputs(out_dir, picks, sel, extra, images, summary, fitted)
    log(f"suggest: {len(picks)} of {n_pool:,} pool images -> {out_dir}/suggestions.parquet, contact_sheet.png, "
        f"labeled/images/ ({round(time.time() - t0, 1)} s)")
    return Suggestions(ids=[p[0] for p in picks], refs=[p[1] for p in picks], scores=sel.scores, why=sel.why,
                       out=str(out_dir), summary=summary)


def _toy_size(ctx) -> int:
    return ctx.generator(torch.device("cpu")).resolution


# ---------------------------------------------------------------------------------------------- after a fit


@dataclass
class _Fitted:
    store: object  # the fitted run's RunStore
    identity: str
    labeled_ids: list[str]
    classes: list[str]


def _open_after(spec: JobSpec, after: str) -> _Fitted:
    from handsoff_ray.pipeline.layout import RUN
    from handsoff_ray.pipeline.storage import RunStore

    base, run_id = posixpath.split(after.rstrip("/"))
    s3 = spec.storage.s3
    store = RunStore.open(base or ".", run_id=run_id, endpoint_url=s3.endpoint_url, region=s3.region)
    ref = store.read_json(RUN.label_generator_ref)
    refs = store.read_json(RUN.latents_refs)
    if ref is None or refs is None:
        raise UserError(f"--after {after}: no fitted label generator there; run `handsoff run SPEC` (or invert and "
                        f"fit) first, and pass the run folder <storage.output>/<run_id>")
    facts = (store.read_json(RUN.fit_summary) or {}).get("data") or {}
    return _Fitted(store, ref["identity"], sorted(refs["latents"]), list(facts.get("classes") or []))


def _after_fit(ctx, fitted: _Fitted, ids, refs, x_raw: np.ndarray, pool, log):
    """Shortlist around the labeled images, invert the shortlist, pick by disagreement + distance."""
    from handsoff_ray.core.inversion import invert, prepare_images
    from handsoff_ray.core.label_generator import load_label_generator
    from handsoff_ray.core.lpips_offline import load_lpips
    from handsoff_ray.core.selection import image_descriptors, project, select_after_fit, select_kcenter, select_typical
    from handsoff_ray.core.uncertainty import image_scores, pixel_uncertainty
    from handsoff_ray.pipeline.layout import ARTIFACTS
    from handsoff_ray.pipeline.pool import PoolItem, load_images
    from handsoff_ray.pipeline.stages.invert import inversion_kwargs
    from handsoff_ray.pipeline.stages.suggest import descriptor_size

    spec, sg = ctx.spec, ctx.spec.suggest
    labeled, labeled_ids = ctx.labeled()
    if sorted(labeled_ids) != fitted.labeled_ids:
        raise UserError(f"--after names a run fitted on {len(fitted.labeled_ids)} other labeled images than the "
                        f"spec's data section ({len(labeled_ids)}); pass the spec that run was made from")
    size = descriptor_size(ctx)
    lp_desc = load_lpips(sg.feature, trunk_path=spec.inversion.lpips.trunk_path)
    with torch.no_grad():
        lab = image_descriptors(lp_desc, prepare_images([labeled.load(i).image for i in labeled_ids], size))
    pool_x = torch.from_numpy(x_raw)
    fit_on = torch.cat([pool_x, lab])
    x, lab_x = project(pool_x, sg.dims, fit_on=fit_on), project(lab, sg.dims, fit_on=fit_on)
    labeled_set = set(labeled_ids)
    keep = [k for k, i in enumerate(ids) if i not in labeled_set]  # a labeled image is never suggested again
    n_short = min(len(keep), sg.shortlist * sg.budget)
    xs = x[keep]
    short_sel = (select_typical(xs, n_short, seed=spec.seed, already=lab_x) if sg.method == "typical"
                 else select_kcenter(xs, n_short, already=lab_x))
    short = [keep[j] for j in short_sel.indices]
    log(f"suggest: inverting a shortlist of {len(short)} pool images ({spec.inversion.steps} steps each)")
    G = ctx.generator()
    images = load_images(pool.format, pool.root, [PoolItem(ids[k], refs[k]) for k in short], storage=spec.storage,
                         size=G.resolution, image_column=pool.image_column)
    res = invert(G, images, lpips_model=ctx.lpips() if spec.inversion.lpips_weight > 0 else None,
                 batch_size=spec.inversion.batch_size, **inversion_kwargs(spec))
    with tempfile.TemporaryDirectory() as d:
        artifacts = fitted.store.sibling(ARTIFACTS.root)
        lg = load_label_generator(artifacts.local_copy(ARTIFACTS.label_generator_file(fitted.identity), d),
                                  device=ctx.device)
    unc = []
    with torch.no_grad():
        for s in range(0, len(short), 16):
            _, hc = G.synthesis(res.ws[s : s + 16].to(ctx.device), noise_mode="const", return_features=True)
            outputs = lg.predict(hc)
            task = "segmentation" if "segmentation" in outputs else next(iter(outputs))
            unc.append(image_scores(pixel_uncertainty(lg.tasks[task].kind, outputs[task]), top_fraction=0.1).cpu())
    u = torch.cat(unc).double()
    sel = select_after_fit(x[short], lab_x, u, sg.budget)
    chosen = [short[j] for j in sel.indices]
    dist = torch.cdist(x[chosen], lab_x).min(1).values
    extra = {"uncertainty": [float(u[j]) for j in sel.indices], "distance_to_labeled": [float(v) for v in dist],
             "inversion_psnr": [float(res.psnr[j]) for j in sel.indices]}
    return chosen, sel, extra


# ------------------------------------------------------------------------------------------------- outputs


def _check_out(out_dir: Path, request: dict, force: bool) -> None:
    """Refuse to replace the suggestions of another request (they may be half labeled by now)."""
    prior = out_dir / "suggest.json"
    if prior.exists() and not force:
        try:
            before = json.loads(prior.read_text())["request"]
        except (ValueError, KeyError):
            before = None
        if before != request:
            raise UserError(f"--out {out_dir} holds suggestions of another request; choose another --out "
                            f"(or pass --force to replace them)")


def _file_id(image_id: str) -> str:
    return image_id.replace("/", "__")


def _write_outputs(out_dir: Path, picks, sel, extra: dict, images, summary: dict, fitted) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    (out_dir / "labeled" / "images").mkdir(parents=True, exist_ok=True)
    cols = {"rank": pa.array(range(1, len(picks) + 1), pa.int32()), "id": [p[0] for p in picks],
            "ref": [p[1] for p in picks], "source": [summary["pool"]] * len(picks),
            "score": pa.array(sel.scores, pa.float64()), "why": sel.why}
    for name, vals in extra.items():
        cols[name] = pa.array(vals, pa.float64())
    buf = io.BytesIO()
    pq.write_table(pa.table(cols), buf)
    _atomic(out_dir / "suggestions.parquet", buf.getvalue())
    for (image_id, _), im in zip(picks, images):
        b = io.BytesIO()
        Image.fromarray(im).save(b, format="PNG")
        _atomic(out_dir / "labeled" / "images" / f"{_file_id(image_id)}.png", b.getvalue())
    _atomic(out_dir / "labeled" / "TO_LABEL.md", _to_label(picks, fitted).encode())
    _atomic(out_dir / "contact_sheet.png", contact_sheet(images, [p[0] for p in picks], sel.why,
                                                         title=f"handsoff suggest: {len(picks)} of "
                                                               f"{summary['pool_images']:,} pool images "
                                                               f"({summary['round']} round)"))
    _atomic(out_dir / "suggest.json", json.dumps(summary, indent=2).encode())


def _atomic(path: Path, data: bytes) -> None:
    from handsoff_ray.core._files import atomic_write

    with atomic_write(path) as fh:
        fh.write(data)


def _to_label(picks, fitted) -> str:
    classes = fitted.classes if fitted else []
    lines = ["# Images to label", "",
             f"{len(picks)} images chosen by `handsoff suggest` (ranked in ../suggestions.parquet). Add, next to "
             "images/, the labels of the tasks you fit (handsoff_ray/datasets/labeled_folder):", "",
             "- masks/<id>.png: uint8 class ids, same size as the image; masks/classes.yaml: `classes: [...]`",
             "- keypoints.json: {\"names\": [...], \"points\": {\"<id>\": [[x, y, v], ...]}}",
             "- depth/<id>.png: uint16, depth = value / scale; depth/depth.yaml: `scale: 1000.0`", "",
             "Then `handsoff data check` this folder and point the spec's data.path at it (or merge it into the "
             "labeled set you have).", ""]
    if classes:
        lines += [f"Classes of the fitted run: {', '.join(classes)}", ""]
    lines += ["Images:", ""] + [f"{k + 1}. {p[0]}" for k, p in enumerate(picks)]
    return "\n".join(lines) + "\n"


def _caption(reason: str) -> str:
    """A selection reason (core.selection) shortened to fit under a tile."""
    import re

    m = re.search(r"JS ([\d.]+), rank (\d+) of (\d+)\).*distance ([\d.]+)", reason)
    if m:  # after a fit: "JS 0.264 (2/24), d 7.04"
        return f"JS {float(m[1]):.3f} ({m[2]}/{m[3]}), d {m[4]}"
    for long, short in (("most typical of a group of ", "typical of "), (" pool images", ""),
                        ("farthest from the chosen set ", "far "), ("distance ", "d "),
                        ("nearest the pool's centre", "central")):
        reason = reason.replace(long, short)
    return reason


def contact_sheet(images: list[np.ndarray], ids: list[str], why: list[str], *, title: str, tile: int = 160) -> bytes:
    """The picks as one PNG: a title, then a grid of tiles, each the image (scaled to `tile` px wide) over
    its rank, id and the first words of why it was chosen."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    cols = min(8, max(1, int(np.ceil(np.sqrt(len(images))))))
    rows = int(np.ceil(len(images) / cols))
    cap, head, pad = 30, 24, 6
    sheet = Image.new("RGB", (cols * (tile + pad) + pad, head + rows * (tile + cap + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 6), title, fill="black", font=font)
    for k, (im, image_id, reason) in enumerate(zip(images, ids, why)):
        r, c = divmod(k, cols)
        x0, y0 = pad + c * (tile + pad), head + r * (tile + cap + pad)
        h, w = im.shape[:2]
        th = max(1, round(tile * h / w))
        resample = Image.NEAREST if w * 2 <= tile else Image.LANCZOS  # tiny images stay crisp, large ones smooth
        sheet.paste(Image.fromarray(im).resize((tile, min(tile, th)), resample), (x0, y0))
        draw.text((x0, y0 + tile + 2), f"#{k + 1}  {image_id}"[:26], fill="black", font=font)
        draw.text((x0, y0 + tile + 15), _caption(reason)[:28], fill=(70, 70, 70), font=font)
    b = io.BytesIO()
    sheet.save(b, format="PNG")
    return b.getvalue()
