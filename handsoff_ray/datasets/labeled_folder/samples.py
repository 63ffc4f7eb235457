"""A labeled set in memory: `LabeledSample`, `LabeledBatch`, `LabeledSet` (decodes on `load`),
`LabeledSetError` (every problem, each naming its file), and the depth PNG encoding.

Tests: `python -m pytest -q tests/datasets/test_labeled_folder.py`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

PARTS: tuple[str, ...] = ("segmentation", "keypoints", "depth")
_MAX_PROBLEM_LINES = 20


class LabeledSetError(ValueError):
    """A labeled set breaks the folder format. `problems` holds one line per problem, each naming its file."""

    def __init__(self, root: str | Path, problems: Sequence[str]):
        self.root = str(root)
        self.problems = list(problems)
        n = len(self.problems)
        if n == 1:  # one problem, one line
            super().__init__(f"{self.root}: {self.problems[0]}")
            return
        lines = [f"{n} problems in {self.root}:"]
        lines += [f"  {p}" for p in self.problems[:_MAX_PROBLEM_LINES]]
        if n > _MAX_PROBLEM_LINES:
            lines.append(f"  ... and {n - _MAX_PROBLEM_LINES} more")
        super().__init__("\n".join(lines))

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuild from (root, problems), not from the message, so the error survives pickling
        # (Ray ships exceptions between processes).
        return type(self), (self.root, self.problems)


@dataclass(frozen=True)
class LabeledSample:
    """One labeled image; a part is None when the set does not have it."""

    id: str
    image: np.ndarray  # uint8 [H, W, 3]
    segmentation: np.ndarray | None = None  # uint8 [H, W], ids into classes
    keypoints: np.ndarray | None = None  # float32 [J, 3]: x, y (pixels), visibility 0|1|2
    depth: np.ndarray | None = None  # float32 [H, W], NaN where invalid


@dataclass(frozen=True)
class LabeledBatch:
    """Several LabeledSamples stacked along a leading axis (all images share one size)."""

    ids: tuple[str, ...]
    images: np.ndarray  # uint8 [N, H, W, 3]
    segmentation: np.ndarray | None  # uint8 [N, H, W]
    keypoints: np.ndarray | None  # float32 [N, J, 3]
    depth: np.ndarray | None  # float32 [N, H, W]


@dataclass(frozen=True)
class LabeledSet:
    """A validated labeled-set folder. Build it with `open_labeled_set`, not directly."""

    root: Path
    ids: tuple[str, ...]  # image ids (file names without .png), sorted unless subset() chose an order
    image_size: tuple[int, int]  # (height, width)
    classes: tuple[str, ...] | None
    keypoint_names: tuple[str, ...] | None
    depth_scale: float | None
    _points: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)
    _id_set: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_id_set", frozenset(self.ids))

    @property
    def has_masks(self) -> bool:
        return self.classes is not None

    @property
    def has_keypoints(self) -> bool:
        return self.keypoint_names is not None

    @property
    def has_depth(self) -> bool:
        return self.depth_scale is not None

    @property
    def tasks(self) -> tuple[str, ...]:
        """The parts present, in PARTS order."""
        have = {"segmentation": self.has_masks, "keypoints": self.has_keypoints, "depth": self.has_depth}
        return tuple(p for p in PARTS if have[p])

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return (f"LabeledSet(root={str(self.root)!r}, images={len(self.ids)}, image_size={self.image_size}, "
                f"tasks={self.tasks})")

    def load(self, i: int | str) -> LabeledSample:
        """Decode sample i (an index into `ids`, or an id)."""
        sid = self.ids[i] if isinstance(i, (int, np.integer)) else i
        if sid not in self._id_set:
            raise KeyError(f"{sid!r} is not an image id of {self.root}")
        with Image.open(self.root / "images" / f"{sid}.png") as im:
            image = np.asarray(im.convert("RGB"), dtype=np.uint8)
        seg = kps = depth = None
        if self.has_masks:
            with Image.open(self.root / "masks" / f"{sid}.png") as im:
                seg = np.asarray(im, dtype=np.uint8)  # mode L or P: the raw ids
        if self.has_keypoints:
            kps = self._points[sid].copy()
        if self.has_depth:
            with Image.open(self.root / "depth" / f"{sid}.png") as im:
                depth = decode_depth(np.asarray(im), self.depth_scale)
        return LabeledSample(id=sid, image=image, segmentation=seg, keypoints=kps, depth=depth)

    def load_all(self, indices: Iterable[int | str] | None = None) -> LabeledBatch:
        """Decode several samples (default: all, in `ids` order) into stacked arrays."""
        picks = list(range(len(self.ids)) if indices is None else indices)
        if not picks:
            raise ValueError("load_all: no indices given; pass None for every sample")
        samples = [self.load(i) for i in picks]

        def stack(name: str) -> np.ndarray | None:
            parts = [getattr(s, name) for s in samples]
            return None if parts[0] is None else np.stack(parts)

        return LabeledBatch(
            ids=tuple(s.id for s in samples),
            images=np.stack([s.image for s in samples]),
            segmentation=stack("segmentation"),
            keypoints=stack("keypoints"),
            depth=stack("depth"),
        )

    def subset(self, ids: Iterable[str]) -> LabeledSet:
        """The same set restricted to `ids`, in the order given."""
        ids = tuple(ids)
        unknown = [i for i in ids if i not in self._id_set]
        if unknown:
            shown = ", ".join(repr(i) for i in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
            raise LabeledSetError(self.root, [f"subset: {len(unknown)} id(s) not in the set: {shown}"])
        dupes = [i for i, c in Counter(ids).items() if c > 1]
        if dupes:
            raise LabeledSetError(self.root, [f"subset: id(s) given twice: {', '.join(map(repr, dupes))}"])
        return replace(self, ids=ids, _points={i: self._points[i] for i in ids if i in self._points})


# The depth PNG's scale when a writer is not told one: depth in metres stored as millimetres. Readers of a
# dataset written without a scale (and depth/depth.yaml's documented example) use the same value.
DEFAULT_DEPTH_SCALE = 1000.0


def encode_depth(depth: np.ndarray, scale: float) -> np.ndarray:
    """float depth [H, W] -> the stored uint16 PNG values: round(depth * scale), 0 where invalid."""
    d = np.asarray(depth, dtype=np.float64)
    valid = np.isfinite(d) & (d > 0)
    return np.where(valid, np.rint(np.where(valid, d, 0.0) * scale), 0).astype(np.uint16)


def decode_depth(stored: np.ndarray, scale: float) -> np.ndarray:
    """Stored uint16 values -> float32 depth [H, W], NaN where invalid (0)."""
    raw = np.asarray(stored).astype(np.float64)
    depth = (raw / scale).astype(np.float32)
    depth[raw == 0] = np.nan
    return depth

