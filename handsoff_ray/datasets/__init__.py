"""Labeled data on disk: the labeled-set folder format (see labeled_folder.py and docs/ARCHITECTURE.md)."""

from handsoff_ray.datasets.labeled_folder import (
    PARTS,
    LabeledBatch,
    LabeledSample,
    LabeledSet,
    LabeledSetError,
    open_labeled_set,
    summarize,
    write_labeled_set,
)

__all__ = [
    "PARTS",
    "LabeledBatch",
    "LabeledSample",
    "LabeledSet",
    "LabeledSetError",
    "open_labeled_set",
    "summarize",
    "write_labeled_set",
]
