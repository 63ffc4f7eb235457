"""The synthetic dataset format: what a dataset folder holds, who writes it, and how it is read.

    handsoff synthesize jobs/specs/toy.yaml                     # writes <run>/dataset/ (DatasetWriter)
    handsoff inspect handsoff-demo/runs/toy-demo/dataset        # reads it back (SyntheticDataset)
    handsoff verify handsoff-demo/runs/toy-demo/dataset         # every shard's sha256 against the manifest

    from handsoff_ray.pipeline.dataset import SyntheticDataset  # also `from handsoff_ray import SyntheticDataset`
    ds = SyntheticDataset("handsoff-demo/runs/toy-demo/dataset", uncertainty_filter="reference")

A dataset folder (layout.py, DATASET_FILES; a run's dataset/, or the output of `handsoff filter`):

    data/part-NNNNNN.parquet        shards of version 0, one row per image + label pair (schema.py)
    data/part-vV-NNNNNN.parquet     shards of version V > 0 (sample ids from V * VERSION_STRIDE)
    _manifest.json                  every shard's name, rows, bytes and sha256: the truth (manifest.py)
    README.md                       the dataset card
    _SUCCESS                        written last: the dataset is complete

One writer owns the folder (writer.py, DatasetWriter): it commits a shard only when whole, records it in the
manifest, and writes the card and then _SUCCESS, last. The synthesize stage and `handsoff filter` write
through it and nothing else writes there. A rerun repairs rather than trusts: `verify_committed` checks each
committed shard's size and sha256 against the manifest and rebuilds a lost entry from a whole shard.

Readers trust the manifest: `check_dataset` needs _SUCCESS and a data/ that holds exactly the manifest's
files at its sizes before anything is opened, so SyntheticDataset (reader.py), `handsoff inspect` /
`preview` (inspection.py, preview.py) and `export` / `filter` (export.py) never read half a dataset.
The same shards open in `ray.data.read_parquet` and Hugging Face `datasets`.

Names are imported on first use, so `import handsoff_ray.pipeline.dataset` costs nothing: the reader and
the previews need torch, the manifest checks and the writer do not.
"""

from __future__ import annotations

import importlib

__all__ = [
    "DATASET_FILES", "VERSION_STRIDE", "DatasetWriter", "verify_committed", "dataset_card", "SyntheticDataset",
    "DatasetError", "IncompleteDatasetWarning", "check_dataset", "verify_dataset", "export_dataset",
    "filter_dataset", "inspect_dataset", "preview_dataset", "preview_grid",
]

# name -> the module of this package that defines it
_HOMES = {
    "DATASET_FILES": "layout", "VERSION_STRIDE": "layout",
    "DatasetWriter": "writer", "verify_committed": "writer", "dataset_card": "writer",
    "SyntheticDataset": "reader",
    "DatasetError": "manifest", "IncompleteDatasetWarning": "manifest", "check_dataset": "manifest",
    "verify_dataset": "manifest",
    "export_dataset": "export", "filter_dataset": "export",
    "inspect_dataset": "inspection", "preview_dataset": "inspection",
    "preview_grid": "preview",
}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
