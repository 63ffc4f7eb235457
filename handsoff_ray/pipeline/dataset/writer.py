"""One writer owns a dataset folder's files: shard names, their hashes, the manifest, the card, _SUCCESS.

    writer = DatasetWriter(store, "dataset")            # a folder of a RunStore (local or s3://)
    entry = writer.commit_shard(k, "/tmp/part.parquet")  # {"file", "bytes", "sha256"}; visible only when whole
    writer.write_manifest(manifest)                      # after each shard: a crash loses no recorded shard
    writer.finish(manifest, card)                        # manifest, README.md, then _SUCCESS, last

Used by the synthesize stage on every engine and by `handsoff filter`. The layout is DATASET_FILES
(layout.py); what readers check is manifest.py.
"""

from __future__ import annotations

import posixpath

import pyarrow.fs as pafs

from handsoff_ray.pipeline.dataset.layout import DATASET_FILES
from handsoff_ray.pipeline.dataset.manifest import DatasetError, parse_manifest
from handsoff_ray.pipeline.storage import RunStore, sha256_file

__all__ = ["DatasetWriter"]


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
