"""One writer owns a dataset folder's files: shard names, their hashes, the manifest, the card, _SUCCESS.

    writer = DatasetWriter(store, "dataset")            # a folder of a RunStore (local or s3://)
    with writer.stream_shard(k) as shard:                # to a local file, a row group at a time ...
        shard.write(table)                               # ... for each batch (an Arrow table, schema.py)
    shard.committed                                      # {"file", "bytes", "sha256"}; visible only when whole
    entry = writer.commit_shard(k, "/tmp/part.parquet")  # or commit a finished local file
    writer.write_manifest(manifest)                      # after each shard: a crash loses no recorded shard
    writer.finish(manifest, card)                        # manifest, README.md, then _SUCCESS, last

Used by the synthesize stage on every engine and by `handsoff filter`. The layout is DATASET_FILES
(layout.py); what readers check is manifest.py.

What a manifest entry holds is defined here too (`shard_entry`: sample ids, size, sha256, uncertainty
histograms on the fixed UNCERTAINTY_BINS, class pixels), and so is what a rerun trusts of an earlier one:
`verify_committed` checks every committed shard against its entry before any compute, takes in a whole
shard the manifest lost (its entry rebuilt from the file) and lists the rest to be written again.
`dataset_card` is the README.md of the folder, from the manifest alone.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import tempfile

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from handsoff_ray.config import JobSpec
from handsoff_ray.pipeline.dataset.layout import DATASET_FILES
from handsoff_ray.pipeline.dataset.manifest import DatasetError, parse_manifest
from handsoff_ray.pipeline.dataset.schema import TASK_COLUMNS, decode_png
from handsoff_ray.pipeline.errors import UserError
from handsoff_ray.pipeline.storage import RunStore, sha256_file

__all__ = ["DatasetWriter", "ShardStream", "ROW_GROUP", "UNCERTAINTY_BINS", "count_classes", "dataset_card",
           "shard_entry", "verify_committed", "with_versions"]

ROW_GROUP = 256  # rows per row group: a few MB at 512 px, small enough for streaming readers
# Fixed log-spaced bins for uncertainty histograms, so shards' histograms add up across a whole run.
UNCERTAINTY_BINS = np.concatenate([[0.0], np.logspace(-6, 1, 29)])


class DatasetWriter:
    def __init__(self, store: RunStore, folder: str = ""):
        self.store, self.folder = store, folder

    def rel(self, name: str) -> str:
        """A DATASET_FILES path relative to the store's root."""
        return posixpath.join(self.folder, name) if self.folder else name

    def shard(self, k: int, version: int = 0) -> str:
        return self.rel(DATASET_FILES.shard(k, version))

    def commit_shard(self, k: int, local_path: str, version: int = 0) -> dict:
        """Commit a finished local Parquet file as shard k of a version (streamed; it appears only when
        whole); returns the manifest fields that identify it."""
        digest, size = sha256_file(pafs.LocalFileSystem(), local_path)
        self.store.put_file(self.shard(k, version), local_path)
        return {"file": DATASET_FILES.shard(k, version), "bytes": size, "sha256": digest}

    @contextlib.contextmanager
    def stream_shard(self, k: int, version: int = 0):
        """A ShardStream to write shard k of a version into, committed (`.committed`) when the block ends.

        The shard streams to a local temporary file, a row group at a time, and is committed from there:
        memory stays at one batch however large the shard (10,000 pairs at 512 px are gigabytes). A block
        that raises commits nothing.
        """
        with tempfile.TemporaryDirectory(prefix="handsoff-shard-") as tmp:
            shard = ShardStream(f"{tmp}/part.parquet")
            yield shard
            shard.close()
            shard.committed = self.commit_shard(k, shard.path, version)

    def load_manifest(self) -> tuple[dict | None, str | None]:
        """(the manifest a previous writer left, or None; a note when it was unreadable)."""
        rel = self.rel(DATASET_FILES.manifest)
        if not self.store.exists(rel):
            return None, None
        try:
            return parse_manifest(self.store.read_bytes(rel), self.store.uri(self.folder)), None
        except DatasetError as err:
            return None, str(err)

    def write_manifest(self, manifest: dict) -> None:
        self.store.write_json(self.rel(DATASET_FILES.manifest), manifest)

    def unmark(self) -> None:
        """Finished no longer (a repair is under way): readers wait until `finish`."""
        self.store.delete(self.rel(DATASET_FILES.success))

    def finish(self, manifest: dict, card: str) -> None:
        """The final manifest, the README.md card, then _SUCCESS (last, so it marks a complete dataset)."""
        self.store.sweep_temporaries(self.rel(DATASET_FILES.data))  # left by writers killed mid-shard
        self.write_manifest(manifest)
        self.store.write_bytes(self.rel(DATASET_FILES.card), card.encode())
        self.store.write_bytes(self.rel(DATASET_FILES.success), b"")


class ShardStream:
    """One shard's local Parquet file, written a table at a time (zstd, ROW_GROUP rows per row group)."""

    def __init__(self, path: str):
        self.path, self.committed, self._file = path, None, None

    def write(self, table) -> None:
        if self._file is None:  # the first table's schema is the shard's (pairs_to_table: with its metadata)
            self._file = pq.ParquetWriter(self.path, table.schema, compression="zstd")
        self._file.write_table(table, row_group_size=ROW_GROUP)

    def close(self) -> None:
        self._file.close()


def with_versions(manifest: dict) -> dict:
    """The manifest with its "versions" record; a dataset written before versions is version 0 whose
    identity nobody recorded (so it is written again rather than trusted)."""
    if "versions" not in manifest:
        keys = sorted(manifest["shards"], key=lambda key: int(key) if key.isdigit() else -1)
        manifest["versions"] = {} if not keys else {"0": {"identity": None, "samples": manifest.get("num_samples", 0),
                                                          "shards": keys, "first_sample_id": 0}}
    return manifest


def shard_entry(k: int, start: int, stop: int, committed: dict, seconds: float, scores: dict[str, list[float]],
                class_pixels: np.ndarray, version: int = 0) -> dict:
    """Shard k's manifest entry: what commit_shard returned, the sample ids, and the uncertainty
    histograms and class pixels of its pairs (the card adds them up)."""
    return {"shard": k, "version": version, "file": committed["file"], "start": start, "stop": stop, "rows": stop - start,
            "bytes": committed["bytes"], "sha256": committed["sha256"], "seconds": round(seconds, 2),
            "uncertainty": {t: _histogram(v) for t, v in scores.items()}, "class_pixels": class_pixels.tolist()}


def _histogram(values: list[float]) -> dict:
    v = np.asarray(values, np.float64)
    return {"count": int(v.size), "mean": float(v.mean()), "min": float(v.min()), "max": float(v.max()),
            "hist": np.histogram(np.clip(v, 0, UNCERTAINTY_BINS[-1]), UNCERTAINTY_BINS)[0].tolist()}


def count_classes(class_pixels: np.ndarray, segmentation: np.ndarray) -> None:
    """Add the pixels of each class in segmentation ([N, H, W] class ids) to class_pixels, in place."""
    if len(class_pixels):
        class_pixels += np.bincount(segmentation.reshape(-1), minlength=len(class_pixels))[: len(class_pixels)]


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


def _rebuilt_entry(writer: DatasetWriter, k: int, start: int, stop: int, meta: dict, h: str,
                   version: int = 0) -> dict | None:
    """Shard k's manifest entry recomputed from the committed file, or None when it is not a whole shard
    of this spec (unreadable, other sample ids, another spec's rows). Streams the shard a row group at a time."""
    scores: dict[str, list[float]] = {}
    class_pixels = np.zeros(len(meta.get("classes") or []), np.int64)
    ids: list[int] = []
    with tempfile.TemporaryDirectory(prefix="handsoff-verify-") as tmp:
        local = writer.store.local_copy(writer.shard(k, version), tmp)
        digest, size = sha256_file(pafs.LocalFileSystem(), local)
        try:
            pf = pq.ParquetFile(local)
            for batch in pf.iter_batches(batch_size=ROW_GROUP):
                if set(batch.column("spec_hash").to_pylist()) != {h}:
                    return None
                ids += batch.column("sample_id").to_pylist()
                for t in TASK_COLUMNS:
                    values = [v for v in batch.column(f"uncertainty_{t}").to_pylist() if v is not None]
                    if values:
                        scores.setdefault(t, []).extend(values)
                masks = [decode_png(m) for m in batch.column("segmentation").to_pylist() if m is not None]
                if masks:
                    count_classes(class_pixels, np.stack(masks))
        except (OSError, ValueError, KeyError):  # not Parquet, or not this schema
            return None
    if ids != list(range(start, stop)):
        return None
    committed = {"file": DATASET_FILES.shard(k, version), "bytes": size, "sha256": digest}
    return shard_entry(k, start, stop, committed, 0.0, scores, class_pixels, version)


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
    lines += ["## Schema", "", "See `handsoff_ray/pipeline/dataset/schema.py`. Spec:", "", "```json",
              json.dumps(spec.model_dump(mode="json"), indent=2), "```", ""]
    return "\n".join(lines)
