"""Opening a labeled set in any supported layout: format detection, the dispatch to its reader, and
class-map merges between a format's full label set and its variants.

    from handsoff_ray.datasets.public import open_public_set, detect_format
    ls = open_public_set("CelebAMask-HQ", "celebamask", classes="8", limit=16)
    ls.load(0)              # LabeledSample, exactly as from a labeled-set folder
    detect_format("data/")  # 'folder' | 'celebamask' | 'car_parts' | 'deepfashion'
    check_labeled_set("data/")   # `handsoff data check`: every problem raised at once, else a summary

Each reader (celebamask.py, car_parts.py, deepfashion.py) validates the selected images up front, like
`open_labeled_set`: every problem, each naming its file, is raised together as one LabeledSetError
before any compute starts. Selection (`ids`, `limit`) happens before decoding, so a 16-image run on
the 30,000-image CelebAMask-HQ decodes 16 images, not 30,000. The readers share _common.py and never
import this module.

Tests: `python -m pytest -q tests/datasets`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

import handsoff_ray.datasets.car_parts as car_parts
import handsoff_ray.datasets.celebamask as celebamask
import handsoff_ray.datasets.deepfashion as deepfashion
from handsoff_ray.datasets._common import select_ids
from handsoff_ray.datasets.labeled_folder import LabeledSet, LabeledSetError, open_labeled_set, summarize
from handsoff_ray.datasets.toy import open_toy_set

__all__ = ["FORMATS", "detect_format", "open_public_set", "check_labeled_set", "merge_table"]

FORMATS = ("folder", "celebamask", "car_parts", "deepfashion", "toy")


def detect_format(root: str | Path) -> str:
    """Which layout the folder at root holds (see each reader's docstring for the markers)."""
    root = Path(root)
    if (root / "images").is_dir() and ((root / "masks").is_dir() or (root / "keypoints.json").is_file()
                                       or (root / "depth").is_dir()):
        return "folder"
    if (root / "CelebA-HQ-img").is_dir() or (root / "CelebAMask-HQ-mask-anno").is_dir():
        return "celebamask"
    if (root / "annotations.json").is_file() or (root / "trainingset" / "annotations.json").is_file():
        return "car_parts"
    if (root / "segm").is_dir() or (root / "keypoints" / "keypoints_loc.txt").is_file():
        return "deepfashion"
    if (root / "images").is_dir():
        return "folder"
    raise LabeledSetError(root, [
        "cannot tell the dataset layout: expected images/ + masks/ (labeled-set folder), CelebA-HQ-img/ + "
        "CelebAMask-HQ-mask-anno/ (CelebAMask-HQ), annotations.json or trainingset/annotations.json "
        "(Car-Parts-Segmentation), or image(s)/ + segm/ + keypoints/ (DeepFashion-MultiModal)"])


def open_public_set(root: str | Path, format: str = "auto", *, classes: str | None = None,
                    ids: Sequence[str] | None = None, limit: int | None = None, split: str | None = None,
                    resize: tuple[int, int] | None = None, require: Sequence[str] = (),
                    seeds: str | None = None) -> LabeledSet:
    """Open root with the reader for `format` ('auto' detects it); 'folder' is `open_labeled_set`;
    'toy' renders the toy faces of `seeds` (root is unused) at resize's height (square, default 64).

    classes: the class-map variant (each reader's VARIANTS); ids/limit: which images; split: Car-Parts
    'trainingset' or 'testset'; resize: (H, W) every sample is brought to (images antialiased, labels
    nearest, keypoints scaled); require: parts that must be present.
    """
    if format == "toy":
        if resize is not None and resize[0] != resize[1]:
            raise LabeledSetError(root, [f"data.resize: toy faces are square, got {list(resize)}"])
        return open_toy_set(seeds, size=resize[0] if resize else 64, ids=ids, limit=limit)
    fmt = detect_format(root) if format == "auto" else format
    if fmt == "folder":
        if classes not in (None, "as-is"):
            raise LabeledSetError(root, [f"data.classes: {classes!r} needs a public format; a labeled-set folder "
                                         "uses its masks/classes.yaml as is"])
        labeled = open_labeled_set(root, require=require)
        if ids is not None or limit:
            labeled = labeled.subset(select_ids(labeled.ids, ids=ids, limit=limit, root=Path(root)))
        return labeled
    if fmt == "celebamask":
        out = celebamask.open_celebamask(root, classes=classes or "19", ids=ids, limit=limit, resize=resize)
    elif fmt == "car_parts":
        out = car_parts.open_car_parts(root, split=split or "trainingset", classes=classes or "10", ids=ids, limit=limit,
                             resize=resize)
    elif fmt == "deepfashion":
        out = deepfashion.open_deepfashion(root, classes=classes or "24", ids=ids, limit=limit, resize=resize)
    else:
        raise ValueError(f"format must be one of {', '.join(FORMATS)} or 'auto', got {format!r}")
    missing = [p for p in require if p not in out.tasks]
    if missing:
        raise LabeledSetError(root, [f"{fmt}: no {', '.join(missing)} labels in this dataset, but the spec "
                                     f"enables {', '.join(missing)}; disable those tasks in label_generator.tasks"])
    return out


def check_labeled_set(path: str | Path, *, format: str = "auto", limit: int | None = None,
                      split: str | None = None) -> dict:
    """`handsoff data check`: validate eagerly (raises with every problem), then summarise.

    format 'auto' recognises a labeled-set folder and the public CelebAMask-HQ, Car-Parts-Segmentation
    and DeepFashion-MultiModal layouts; limit checks only the first N images of a big public set.
    """
    fmt = detect_format(path) if format == "auto" else format
    labeled = open_public_set(path, fmt, limit=limit, split=split)
    return {"format": fmt, **summarize(labeled)}


def _variants(format: str) -> tuple[tuple[str, ...], dict]:
    """(the format's full label set, its VARIANTS)."""
    if format == "celebamask":
        return celebamask.CLASSES_19, celebamask.VARIANTS
    if format == "car_parts":
        return car_parts.CLASSES_19, car_parts.VARIANTS
    if format == "deepfashion":
        return deepfashion.CLASSES, {k: (v, np.arange(len(v), dtype=np.uint8)) for k, v in deepfashion.VARIANTS.items()}
    raise ValueError(f"class maps exist for celebamask, car_parts and deepfashion, not {format!r}")


def merge_table(format: str, from_classes: Sequence[str], variant: str) -> tuple[tuple[str, ...], np.ndarray]:
    """(variant's class names, uint8 lookup from `from_classes` ids): labels in the format's full label
    set (or already in the variant) mapped to `variant`, e.g. synthetic 19-class faces to the 8-class map."""
    full, variants = _variants(format)
    if variant not in variants:
        raise ValueError(f"{variant!r} is not a {format} class map; choose one of {', '.join(variants)}")
    names, table = variants[variant]
    if tuple(from_classes) == tuple(full):
        return names, table
    if tuple(from_classes) == tuple(names):
        return names, np.arange(len(names), dtype=np.uint8)
    raise ValueError(f"labels with classes {list(from_classes)[:5]}... are neither {format}'s full label set nor "
                     f"the {variant!r} map; fit the label generator on data.classes of the full set to merge later")
