"""Every path inside one dataset folder (a run's dataset/, or the output of `handsoff filter`).

    <dataset>/data/part-NNNNNN.parquet       shards of version 0 (the Hugging Face layout: readers open data/)
    <dataset>/data/part-vV-NNNNNN.parquet    shards of version V > 0 (synthesis.version: a scheduled batch)
    <dataset>/_manifest.json                what the dataset holds: the truth readers check (manifest.py)
    <dataset>/README.md                     the dataset card
    <dataset>/_SUCCESS                      written last: the dataset is complete

Paths are relative to the dataset root and use "/" on every file system. Where a run keeps its dataset is
pipeline/layout.py's (RUN.dataset).
"""

from __future__ import annotations

__all__ = ["DATASET_FILES", "DatasetLayout", "VERSION_STRIDE"]

# Version V of a dataset holds sample ids [V * VERSION_STRIDE, V * VERSION_STRIDE + num_samples): versions never
# share a sample id, and so never a sample seed. Above synthesis.num_samples' maximum (1e10).
VERSION_STRIDE = 2**34


class DatasetLayout:
    """Paths inside one dataset folder (a run's dataset/, or the output of `handsoff filter`)."""

    data = "data"
    manifest = "_manifest.json"
    success = "_SUCCESS"
    card = "README.md"

    def shard(self, k: int, version: int = 0) -> str:
        return f"{self.data}/part-{k:06d}.parquet" if not version else f"{self.data}/part-v{version}-{k:06d}.parquet"

    @staticmethod
    def shard_key(k: int, version: int = 0) -> str:
        """Shard k of a version in the manifest's "shards" (version 0 keeps the plain "k" of older datasets)."""
        return str(k) if not version else f"v{version}-{k}"


DATASET_FILES = DatasetLayout()
