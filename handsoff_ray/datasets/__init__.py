"""Labeled data on disk: the labeled-set folder format (labeled_folder/) and readers of the paper's
public datasets in their own layouts (celebamask.py, car_parts.py, deepfashion.py, toy.py;
they share _common.py) and public.py, which detects a folder's format and dispatches to its reader."""

from handsoff_ray.datasets._common import ReaderSet
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
from handsoff_ray.datasets.public import FORMATS, detect_format, merge_table, open_public_set

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
