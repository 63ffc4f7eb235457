"""Labeled data on disk: the labeled-set folder format (labeled_folder.py) and readers of the paper's
public datasets in their own layouts (celebamask.py, car_parts.py, deepfashion.py; public.py dispatches)."""

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
from handsoff_ray.datasets.public import FORMATS, ReaderSet, detect_format, merge_table, open_public_set

__all__ = [
    "FORMATS",
    "PARTS",
    "ReaderSet",
    "detect_format",
    "merge_table",
    "open_public_set",
    "LabeledBatch",
    "LabeledSample",
    "LabeledSet",
    "LabeledSetError",
    "open_labeled_set",
    "summarize",
    "write_labeled_set",
]
