"""What the readers of the paper's public datasets share: a LabeledSet whose samples come from a loader,
decoding that names the file, class merges as lookup tables, and format detection.

    from handsoff_ray.datasets.public import open_public_set, detect_format
    ls = open_public_set("CelebAMask-HQ", "celebamask", classes="8", limit=16)
    ls.load(0)              # LabeledSample, exactly as from a labeled-set folder
    detect_format("data/")  # 'folder' | 'celebamask' | 'car_parts' | 'deepfashion'

Each reader (celebamask.py, car_parts.py, deepfashion.py) validates the selected images up front, like
`open_labeled_set`: every problem, each naming its file, is raised together as one LabeledSetError
before any compute starts. Selection (`ids`, `limit`) happens before decoding, so a 16-image run on
the 30,000-image CelebAMask-HQ decodes 16 images, not 30,000.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from handsoff_ray.datasets.labeled_folder import LabeledSample, LabeledSet, LabeledSetError

__all__ = ["FORMATS", "ReaderSet", "detect_format", "open_public_set", "apply_merge", "merge_table", "select_ids"]

FORMATS = ("folder", "celebamask", "car_parts", "deepfashion", "toy")


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


def select_ids(available: Sequence[str], *, ids: Sequence[str] | None, limit: int | None, root: Path,
               key: Callable[[str], object] = str) -> list[str]:
    """The ids to read: `ids` as given (each must exist), else the first `limit` in `key` order."""
    if ids is not None:
        have = set(available)
        unknown = [i for i in ids if i not in have]
        if unknown:
            shown = ", ".join(repr(i) for i in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
            raise LabeledSetError(root, [f"data.ids: {len(unknown)} id(s) not in the dataset: {shown}"])
        return list(ids)
    ordered = sorted(available, key=key)
    return ordered[:limit] if limit else ordered


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
    from handsoff_ray.datasets.labeled_folder import open_labeled_set

    if format == "toy":
        from handsoff_ray.datasets.toy import open_toy_set

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
        from handsoff_ray.datasets.celebamask import open_celebamask

        out = open_celebamask(root, classes=classes or "19", ids=ids, limit=limit, resize=resize)
    elif fmt == "car_parts":
        from handsoff_ray.datasets.car_parts import open_car_parts

        out = open_car_parts(root, split=split or "trainingset", classes=classes or "10", ids=ids, limit=limit,
                             resize=resize)
    elif fmt == "deepfashion":
        from handsoff_ray.datasets.deepfashion import open_deepfashion

        out = open_deepfashion(root, classes=classes or "24", ids=ids, limit=limit, resize=resize)
    else:
        raise ValueError(f"format must be one of {', '.join(FORMATS)} or 'auto', got {format!r}")
    missing = [p for p in require if p not in out.tasks]
    if missing:
        raise LabeledSetError(root, [f"{fmt}: no {', '.join(missing)} labels in this dataset, but the spec "
                                     f"enables {', '.join(missing)}; disable those tasks in label_generator.tasks"])
    return out


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


def _variants(format: str) -> tuple[tuple[str, ...], dict]:
    """(the format's full label set, its VARIANTS)."""
    if format == "celebamask":
        from handsoff_ray.datasets import celebamask as m

        return m.CLASSES_19, m.VARIANTS
    if format == "car_parts":
        from handsoff_ray.datasets import car_parts as m

        return m.CLASSES_19, m.VARIANTS
    if format == "deepfashion":
        from handsoff_ray.datasets import deepfashion as m

        return m.CLASSES, {k: (v, np.arange(len(v), dtype=np.uint8)) for k, v in m.VARIANTS.items()}
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
