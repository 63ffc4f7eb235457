"""What the readers of the paper's public datasets share: a LabeledSet whose samples come from a loader,
decoding that names the file, resizing, class merges as lookup tables, and id selection.

Each reader (celebamask.py, car_parts.py, deepfashion.py, toy.py) imports these; public.py picks the reader.

Tests: `python -m pytest -q tests/datasets`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from handsoff_ray.datasets.labeled_folder import LabeledSample, LabeledSet, LabeledSetError


@dataclass(frozen=True)
class ReaderSet(LabeledSet):
    """A LabeledSet read from a public layout: `load` calls the reader's loader instead of reading
    images/<id>.png. `format` and `variant` say which reader and which class map produced it."""

    format: str = "folder"
    variant: str | None = None
    _loader: Callable[[str], LabeledSample] | None = field(default=None, repr=False, compare=False)

    def load(self, i: int | str) -> LabeledSample:
        sid = self.ids[i] if isinstance(i, (int, np.integer)) else i
        if sid not in self._id_set:
            raise KeyError(f"{sid!r} is not an image id of {self.root}")
        return self._loader(sid)

    def __repr__(self) -> str:
        return (f"ReaderSet(format={self.format!r}, variant={self.variant!r}, root={str(self.root)!r}, "
                f"images={len(self.ids)}, image_size={self.image_size}, tasks={self.tasks})")


def _decode(path: Path, rel: str, problems: list[str], convert: str | None) -> np.ndarray | None:
    """Pixels of an image file (converted to `convert` when given), or None after recording why not."""
    if not path.is_file():
        problems.append(f"{rel}: missing")
        return None
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert(convert) if convert else im)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        problems.append(f"{rel}: cannot decode ({e}); re-download or re-extract the file")
        return None


def decode_rgb(path: Path, rel: str, problems: list[str]) -> np.ndarray | None:
    """uint8 [H, W, 3] of any PIL-readable image (JPEG, PNG), or None after recording why not."""
    return _decode(path, rel, problems, "RGB")


def check_image_size(rel: str, hw: tuple[int, int], size: tuple[int, int] | None,
                     problems: list[str]) -> tuple[int, int]:
    """The set's image size so far: the first image's, or a problem recorded for one that differs."""
    if size is not None and tuple(hw) != tuple(size):
        problems.append(f"{rel}: size {hw[0]}x{hw[1]}, expected {size[0]}x{size[1]} like the other images; "
                        "set data.resize to bring them to one size")
    return size if size is not None else tuple(hw)


def decode_label_png(path: Path, rel: str, problems: list[str]) -> np.ndarray | None:
    """uint8 [H, W] of a label PNG; RGB(A) files give their first channel (what cv2.imread(...)[..., 0]
    gives the public scripts for gray-as-RGB masks)."""
    px = _decode(path, rel, problems, None)
    if px is None:
        return None
    if px.ndim == 3:
        px = px[..., 0]
    if px.dtype != np.uint8:
        if px.dtype == bool:
            px = px.astype(np.uint8)
        else:
            problems.append(f"{rel}: {px.dtype} pixels, expected 8-bit labels")
            return None
    return px


def resize_nearest(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Class ids to (H, W) without inventing in-between classes."""
    if labels.shape[:2] == tuple(size):
        return labels
    return np.asarray(Image.fromarray(labels).resize((size[1], size[0]), Image.NEAREST))


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 RGB to (H, W) with PIL's antialiased bilinear filter."""
    if image.shape[:2] == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))


def apply_merge(labels: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Map fine class ids through a lookup table (uint8 [K_fine] -> merged ids)."""
    return table[labels]


def chosen_ids(available: Sequence[str], *, ids: Sequence[str] | None, limit: int | None,
               key: Callable[[str], object] = str) -> list[str]:
    """The one rule for data.ids / data.limit: `ids` as given, else the first `limit` of `available` in `key`
    order (all when limit is None). No checks: `select_ids` adds them; content digests apply the rule as is."""
    if ids is not None:
        return list(ids)
    ordered = sorted(available, key=key)
    return ordered[:limit] if limit else ordered


def select_ids(available: Sequence[str], *, ids: Sequence[str] | None, limit: int | None, root: Path,
               key: Callable[[str], object] = str) -> list[str]:
    """The ids to read (`chosen_ids`), each of `ids` checked to exist."""
    if ids is not None:
        have = set(available)
        unknown = [i for i in ids if i not in have]
        if unknown:
            shown = ", ".join(repr(i) for i in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
            raise LabeledSetError(root, [f"data.ids: {len(unknown)} id(s) not in the dataset: {shown}"])
    return chosen_ids(available, ids=ids, limit=limit, key=key)


def scale_keypoints(kps: np.ndarray, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> np.ndarray:
    """Keypoints [J, 3] (pixel centres at integers) after resizing the image from_hw -> to_hw."""
    out = kps.astype(np.float32).copy()
    out[:, 0] = (out[:, 0] + 0.5) * (to_hw[1] / from_hw[1]) - 0.5
    out[:, 1] = (out[:, 1] + 0.5) * (to_hw[0] / from_hw[0]) - 0.5
    return out


def class_table(full: Sequence[str], names: Sequence[str], assign: dict[str, str]) -> tuple[tuple[str, ...], np.ndarray]:
    """(merged class names, uint8 lookup over `full` ids): fine class -> `assign[fine]`'s index in `names`;
    every fine class not in `assign` goes to 0 (background)."""
    table = np.zeros(len(full), np.uint8)
    for fine, coarse in assign.items():
        table[list(full).index(fine)] = names.index(coarse)
    return tuple(names), table
