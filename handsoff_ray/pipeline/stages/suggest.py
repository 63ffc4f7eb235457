"""suggest (features): describe every image of an unlabeled pool, as Parquet parts with a manifest, resumable.

    handsoff suggest SPEC --pool DIR --budget 16 --out to-label/    # runs this stage, then selects (pipeline/suggest.py)

Units are runs of `suggest.images_per_unit` consecutive pool images. A unit loads its images (never a
label), brings them to the descriptor resolution the way inversion does (centre crop, antialiased
resize), and writes one part of [id, ref, feature] rows to `<output>/_artifacts/pool_features/<key>/`,
where key names the pool's listing (pool.py), the trunk and the resolution: a second round over the same
pool, or another spec with the same pool, reads the features instead of computing them. The driver
records each part in `_manifest.json` as it arrives; a rerun keeps the parts whose size matches the
manifest (and adopts a part written just before a kill), and computes only the rest. `_SUCCESS` last.
Ray engine: a Ray Data actor pool (each actor loads the trunk once), like synthesize.
"""

from __future__ import annotations

import hashlib
import io
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from handsoff_ray.pipeline.context import RunContext, apply_torch_threads
from handsoff_ray.pipeline.layout import ARTIFACTS
from handsoff_ray.pipeline.stages.base import Plan, Stage

__all__ = ["SuggestFeaturesStage", "feature_key", "descriptor_size", "read_features"]

MANIFEST, SUCCESS = "_manifest.json", "_SUCCESS"
_MAX_RESOLUTION = 256  # descriptors of a 1024 px generator's images at 256 px: 16x cheaper, the same layout


def descriptor_size(ctx: RunContext) -> int:
    """Images are described at the generator's resolution, capped at 256 px."""
    import torch

    return min(_MAX_RESOLUTION, ctx.generator(torch.device("cpu")).resolution)


def feature_key(pool, feature: str, size: int) -> str:
    return hashlib.sha256(f"{pool.listing_digest}\0{feature}\0{size}\0v1".encode()).hexdigest()[:24]


class SuggestFeaturesStage(Stage):
    name, progress_unit, ray = "suggest", "image", "data"
    folder = "suggest"
    counts = ("pool_images", "parts", "parts_written_now")

    def output_uri(self, ctx, plan: Plan) -> str:  # the pool's features are shared artifacts, not the run's
        return ctx.artifacts.uri(plan.state["folder"])

    def prepare(self, ctx: RunContext) -> Plan:
        from handsoff_ray.pipeline.pool import open_pool

        sg = ctx.spec.suggest
        pool = open_pool(sg.pool, storage=ctx.spec.storage)
        size = descriptor_size(ctx)
        key = feature_key(pool, sg.feature, size)
        folder, store = ARTIFACTS.pool_features(key), ctx.artifacts
        per = sg.images_per_unit
        chunks = [pool.items[s : s + per] for s in range(0, len(pool.items), per)]
        manifest = store.read_json(f"{folder}/{MANIFEST}") or {}
        if manifest.get("images") != len(pool.items) or manifest.get("images_per_unit") != per:
            manifest = {"pool": pool.root, "format": pool.format, "images": len(pool.items), "feature": sg.feature,
                        "resolution": size, "images_per_unit": per, "parts": {}}
        sizes = store.sizes(folder)
        todo, adopted = [], 0
        for k, chunk in enumerate(chunks):
            name = ARTIFACTS.pool_part(key, k).rsplit("/", 1)[1]
            entry = manifest["parts"].get(str(k))
            if entry and sizes.get(name) == entry["size"]:
                continue
            if name in sizes and entry is None and _rows(store, ARTIFACTS.pool_part(key, k)) == len(chunk):
                manifest["parts"][str(k)] = _entry(store, key, k, len(chunk))  # written, then killed before recorded
                adopted += 1
                continue
            manifest["parts"].pop(str(k), None)
            todo.append({"k": k, "key": key, "format": pool.format, "root": pool.root, "column": pool.image_column,
                         "items": [[it.id, it.ref] for it in chunk]})
        done = len(chunks) - len(todo)
        reason = (f"suggest: describing {sum(len(u['items']) for u in todo):,} of {len(pool.items):,} pool images "
                  f"({done} of {len(chunks)} parts kept{f', {adopted} adopted' if adopted else ''})") if todo else \
            f"suggest: pool features up to date ({len(pool.items):,} images, {len(chunks)} parts)"
        return Plan(units=todo, total=sum(len(u["items"]) for u in todo),
                    state={"key": key, "folder": folder, "manifest": manifest, "pool": pool, "reason": reason,
                           "parts": len(chunks), "now": len(todo)})

    def weight(self, ctx: RunContext, unit: dict) -> int:
        return len(unit["items"])

    def worker(self, ctx: RunContext):
        import torch

        from handsoff_ray.core.inversion import prepare_images
        from handsoff_ray.core.lpips_offline import load_lpips
        from handsoff_ray.core.selection import image_descriptors
        from handsoff_ray.pipeline.pool import PoolItem, load_images

        apply_torch_threads(ctx.spec)
        sg, size = ctx.spec.suggest, descriptor_size(ctx)
        lp = load_lpips(sg.feature, trunk_path=ctx.spec.inversion.lpips.trunk_path)
        store = ctx.artifacts

        def work(unit: dict, report) -> dict:
            items = [PoolItem(i, r) for i, r in unit["items"]]
            feats = []
            for s in range(0, len(items), 32):  # bounded memory at 256 px
                imgs = load_images(unit["format"], unit["root"], items[s : s + 32], storage=ctx.spec.storage,
                                   size=size, image_column=unit["column"])
                with torch.no_grad():
                    feats.append(image_descriptors(lp, prepare_images(imgs, size)).numpy())
                report(min(len(items), s + 32))
            x = np.concatenate(feats).astype(np.float32)
            table = pa.table({"id": [it.id for it in items], "ref": [it.ref for it in items],
                              "feature": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1])})
            buf = io.BytesIO()
            pq.write_table(table, buf, compression="zstd")
            data = buf.getvalue()
            store.write_bytes(ARTIFACTS.pool_part(unit["key"], unit["k"]), data)
            # digest of the bytes in hand, not a second read of what was just written
            return {"part": unit["k"], "rows": len(items), "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}

        return work

    def record(self, ctx: RunContext, plan: Plan, entry: dict) -> None:
        plan.state["manifest"]["parts"][str(entry["part"])] = entry
        ctx.artifacts.write_json(f"{plan.state['folder']}/{MANIFEST}", plan.state["manifest"])

    def finish(self, ctx: RunContext, plan: Plan) -> dict:
        st, store = plan.state, ctx.artifacts
        store.write_json(f"{st['folder']}/{MANIFEST}", st["manifest"])
        if not store.exists(f"{st['folder']}/{SUCCESS}"):
            store.write_bytes(f"{st['folder']}/{SUCCESS}", b"")
        print(f"handsoff: {st['reason']}", file=sys.stderr, flush=True)
        return {"skipped": not plan.units,
                "pool_images": len(st["pool"].items), "parts": st["parts"], "parts_written_now": st["now"],
                "feature_key": st["key"], "reason": st["reason"]}


def _rows(store, rel: str) -> int | None:
    try:
        return pq.ParquetFile(io.BytesIO(store.read_bytes(rel))).metadata.num_rows
    except Exception:  # noqa: BLE001 - a torn or foreign file is recomputed, not trusted
        return None


def _entry(store, key: str, k: int, rows: int) -> dict:
    digest, size = store.sha256(ARTIFACTS.pool_part(key, k))
    return {"part": k, "rows": rows, "size": size, "sha256": digest}


def read_features(ctx: RunContext, key: str, parts: int) -> tuple[list[str], list[str], np.ndarray]:
    """(ids, refs, features [N, D]) of a finished pool-features folder, in pool order."""
    ids, refs, feats = [], [], []
    for k in range(parts):
        t = pq.read_table(io.BytesIO(ctx.artifacts.read_bytes(ARTIFACTS.pool_part(key, k))))
        ids += t.column("id").to_pylist()
        refs += t.column("ref").to_pylist()
        col = t.column("feature").combine_chunks()
        feats.append(col.values.to_numpy().reshape(len(t), -1))
    return ids, refs, np.concatenate(feats)

