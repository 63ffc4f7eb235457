"""The labeled-set folder format: a reader that validates everything up front, and an atomic writer.

    <root>/images/<id>.png         RGB (8-bit; L, P and RGBA are read as RGB), all the same size
    <root>/masks/<id>.png          uint8 class ids (mode L or P), same size as the image
    <root>/masks/classes.yaml      classes: [background, skin, ...]   (id = list index)
    <root>/keypoints.json          {"names": [...], "points": {"<id>": [[x, y, v], ...]}}
                                   x, y in pixels, pixel centres at integer coordinates;
                                   v: 0 unlabeled, 1 labeled but occluded, 2 visible
    <root>/depth/<id>.png          uint16; depth = value / scale; value 0 = invalid
    <root>/depth/depth.yaml        scale: 1000.0

Every part but images/ is optional; a task is available when its part is present.

    from handsoff_ray.datasets.labeled_folder import open_labeled_set, summarize
    ls = open_labeled_set("data/labeled", require=("segmentation",))  # LabeledSetError lists ALL problems
    sample = ls.load(0)        # LabeledSample(id, image, segmentation, keypoints, depth)
    batch = ls.load_all()      # LabeledBatch: the same, stacked along a leading axis
    print(summarize(ls))       # counts, class pixel frequencies, keypoint visibility, depth range

`open_labeled_set` decodes every file once before returning (so a bad file fails the command before
any compute starts, not an hour into a run) and never writes. Loaded depth is float32 in the units of
the stored scale, with NaN where the stored value is 0 (invalid), so a metric cannot mistake an
invalid pixel for a depth of zero.

`write_labeled_set` validates each sample before writing it and writes every file atomically (a
temporary dot-file renamed into place), so an interrupted write leaves no half-written PNG. The
metadata files (classes.yaml, depth.yaml, keypoints.json) are written last: a set whose writer was
interrupted is missing them, and `open_labeled_set` says so.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import yaml
from PIL import Image

__all__ = [
    "PARTS",
    "LabeledSetError",
    "LabeledSample",
    "LabeledBatch",
    "LabeledSet",
    "open_labeled_set",
    "write_labeled_set",
    "summarize",
]

PARTS: tuple[str, ...] = ("segmentation", "keypoints", "depth")
_PART_FILES = {"segmentation": "masks/", "keypoints": "keypoints.json", "depth": "depth/"}
_IMAGE_MODES = ("RGB", "RGBA", "L", "P")
_MASK_MODES = ("L", "P")
_DEPTH_MODES = ("I;16", "I;16B", "I;16L")
_MAX_PROBLEM_LINES = 20
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


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


# ----------------------------------------------------------------------------------------------
# Reading and validating.


def _list_pngs(folder: Path, rel: str, problems: list[str]) -> set[str]:
    """Ids of folder/<id>.png; other files are problems, dot-files (e.g. writer temporaries) are skipped."""
    ids = set()
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or entry.is_dir():
            continue
        if entry.suffix == ".png":
            ids.add(entry.stem)
        elif entry.name not in ("classes.yaml", "depth.yaml"):
            problems.append(f"{rel}/{entry.name}: not a .png file; the format expects {rel}/<id>.png")
    return ids


def _decode(path: Path, rel: str, problems: list[str]) -> tuple[str, np.ndarray] | None:
    """(mode, pixels) of a PNG, or None after recording why it cannot be decoded."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.format != "PNG":
                problems.append(f"{rel}: is a {im.format} file, not a PNG; convert it to PNG")
                return None
            return im.mode, np.asarray(im)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        problems.append(f"{rel}: cannot decode ({e}); re-export the file")
        return None


def _hw(a: np.ndarray) -> str:
    return f"{a.shape[0]}x{a.shape[1]} (HxW)"


_UNREADABLE = object()


def _read_yaml(path: Path, rel: str, problems: list[str]) -> Any:
    """The parsed document, or _UNREADABLE after recording why."""
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        problems.append(f"{rel}: not readable YAML ({str(e).splitlines()[0]})")
        return _UNREADABLE


def _required_yaml(root: Path, rel: str, hint: str, problems: list[str]) -> dict | None:
    """The mapping in root/rel, or None after recording why not (missing: `hint` says what to write)."""
    path = root / rel
    if not path.is_file():
        problems.append(f"{rel}: missing; write {hint}")
        return None
    doc = _read_yaml(path, rel, problems)
    if doc is _UNREADABLE:
        return None
    return doc if isinstance(doc, dict) else {}


def _read_classes(root: Path, problems: list[str]) -> tuple[str, ...] | None:
    doc = _required_yaml(root, "masks/classes.yaml", "`classes: [background, ...]` (class id = list index)", problems)
    if doc is None:
        return None
    classes = doc.get("classes")
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) and c for c in classes)):
        problems.append("masks/classes.yaml: expected `classes: [name, ...]` with at least one non-empty name")
        return None
    if len(set(classes)) != len(classes):
        dupes = sorted(c for c, k in Counter(classes).items() if k > 1)
        problems.append(f"masks/classes.yaml: class names repeat: {', '.join(dupes)}")
        return None
    if len(classes) > 256:
        problems.append(f"masks/classes.yaml: {len(classes)} classes, but uint8 masks hold at most 256")
        return None
    return tuple(classes)


def _read_depth_scale(root: Path, problems: list[str]) -> float | None:
    doc = _required_yaml(root, "depth/depth.yaml", "`scale: 1000.0` (depth = stored value / scale)", problems)
    if doc is None:
        return None
    scale = doc.get("scale")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
        problems.append(f"depth/depth.yaml: scale must be a positive number, got {scale!r}")
        return None
    return float(scale)


def _read_keypoints(
    root: Path, image_ids: set[str], problems: list[str]
) -> tuple[tuple[str, ...] | None, dict[str, np.ndarray]]:
    rel = "keypoints.json"
    try:
        doc = json.loads((root / rel).read_text())
    except json.JSONDecodeError as e:
        problems.append(f"{rel}: not valid JSON (line {e.lineno} column {e.colno}: {e.msg})")
        return None, {}
    except (OSError, UnicodeDecodeError) as e:
        problems.append(f"{rel}: not readable ({e})")
        return None, {}
    names = doc.get("names") if isinstance(doc, dict) else None
    points = doc.get("points") if isinstance(doc, dict) else None
    if not (isinstance(names, list) and names and all(isinstance(n, str) and n for n in names)):
        problems.append(f'{rel}: expected "names": [name, ...] with at least one keypoint name')
        return None, {}
    if len(set(names)) != len(names):
        dupes = sorted(n for n, k in Counter(names).items() if k > 1)
        problems.append(f"{rel}: keypoint names repeat: {', '.join(dupes)}")
        return None, {}
    if not isinstance(points, dict):
        problems.append(f'{rel}: expected "points": {{"<id>": [[x, y, v], ...]}}')
        return None, {}
    out: dict[str, np.ndarray] = {}
    j = len(names)
    for sid in sorted(points):
        pts = points[sid]
        if sid not in image_ids:
            problems.append(f"{rel}: points for {sid!r} but images/{sid}.png does not exist")
            continue
        if not isinstance(pts, list) or len(pts) != j:
            got = len(pts) if isinstance(pts, list) else type(pts).__name__
            problems.append(f"{rel}: {sid!r} has {got} points, expected {j} (one per name)")
            continue
        bad = _bad_keypoint_rows(pts)
        if bad:
            problems.append(f"{rel}: {sid!r} {bad}")
            continue
        out[sid] = np.asarray(pts, dtype=np.float64).astype(np.float32)
    for sid in sorted(image_ids - set(points)):
        problems.append(f"{rel}: no points for images/{sid}.png (add them, with visibility 0 if unlabeled)")
    return tuple(names), out


def _bad_keypoint_rows(pts: list[Any]) -> str | None:
    """Why a list of [x, y, v] rows is malformed, or None."""
    for k, row in enumerate(pts):
        ok = isinstance(row, list) and len(row) == 3 and all(
            isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) for c in row)
        if not ok:
            return f"point {k} is not [x, y, v] with finite numbers: {row!r}"
        if row[2] not in (0, 1, 2):
            return f"point {k} has visibility {row[2]!r}; use 0 (unlabeled), 1 (occluded) or 2 (visible)"
    return None


def _check_visible_inside(sid: str, pts: np.ndarray, names: Sequence[str], hw: tuple[int, int],
                          problems: list[str]) -> None:
    """Points marked visible (v=2) must lie on the image: pixel centres are integers, so [-0.5, W-0.5]."""
    h, w = hw
    x, y, v = pts[:, 0], pts[:, 1], pts[:, 2]
    outside = np.flatnonzero((v == 2) & ((x < -0.5) | (x > w - 0.5) | (y < -0.5) | (y > h - 0.5)))
    if outside.size:
        k = int(outside[0])
        more = f" (and {outside.size - 1} more)" if outside.size > 1 else ""
        problems.append(f"keypoints.json: {sid!r} point {k} ({names[k]}) at ({x[k]:g}, {y[k]:g}) is marked visible "
                        f"but lies outside images/{sid}.png ({w}x{h}){more}; fix it, or set v to 0 (unlabeled)")


def _check_pairs(part_dir: str, part_ids: set[str], image_ids: set[str], what: str, problems: list[str]) -> None:
    for sid in sorted(image_ids - part_ids):
        problems.append(f"images/{sid}.png has no {what}: expected {part_dir}/{sid}.png")
    for sid in sorted(part_ids - image_ids):
        problems.append(f"{part_dir}/{sid}.png has no image: expected images/{sid}.png")


def _scan_part(root: Path, part: str, what: str, modes: Collection[str], mode_hint: str, image_ids: set[str],
               problems: list[str]) -> Iterator[tuple[str, str, np.ndarray]]:
    """(rel path, id, pixels) of each decodable `part/` PNG that pairs with an image and has a valid mode;
    every other case becomes a problem line."""
    ids = _list_pngs(root / part, part, problems)
    _check_pairs(part, ids, image_ids, what, problems)
    for sid in sorted(ids & image_ids):
        rel = f"{part}/{sid}.png"
        got = _decode(root / rel, rel, problems)
        if got is None:
            continue
        mode, px = got
        if mode not in modes:
            problems.append(f"{rel}: mode {mode}, expected {mode_hint}")
            continue
        yield rel, sid, px


def open_labeled_set(root: str | Path, *, require: Sequence[str] = ("segmentation",)) -> LabeledSet:
    """Validate the labeled-set folder at root and return it; nothing is written.

    Every file is decoded once. All problems (missing pairs, undecodable files, wrong sizes, unknown
    class ids, malformed keypoints.json, missing parts listed in `require`) are collected and raised
    together as one LabeledSetError.
    """
    unknown = [r for r in require if r not in PARTS]
    if unknown:
        raise ValueError(f"require: unknown part(s) {unknown}; choose from {', '.join(PARTS)}")
    root = Path(root)
    if not root.is_dir():
        raise LabeledSetError(root, [f"{root} is not a folder; point at a folder holding images/<id>.png"])
    if not (root / "images").is_dir():
        raise LabeledSetError(root, ["images/: missing; put the RGB images at images/<id>.png"])
    problems: list[str] = []
    image_ids = _list_pngs(root / "images", "images", problems)
    if not image_ids:
        problems.append("images/: holds no .png files")

    present = {"segmentation": (root / "masks").is_dir(), "keypoints": (root / "keypoints.json").is_file(),
               "depth": (root / "depth").is_dir()}
    for part in require:
        if not present[part]:
            problems.append(f"{_PART_FILES[part]}: missing, but {part} labels are required "
                            f"(add them, or leave '{part}' out of the required parts)")

    # Images: decodable, 8-bit, all one size (the most common one is taken as intended).
    images: dict[str, np.ndarray] = {}
    for sid in sorted(image_ids):
        got = _decode(root / "images" / f"{sid}.png", f"images/{sid}.png", problems)
        if got is None:
            continue
        mode, px = got
        if mode not in _IMAGE_MODES:
            problems.append(f"images/{sid}.png: mode {mode} is not an 8-bit image; save it as 8-bit RGB")
            continue
        images[sid] = px
    sizes = Counter(px.shape[:2] for px in images.values())
    size = sizes.most_common(1)[0][0] if sizes else (0, 0)
    for sid, px in images.items():
        if px.shape[:2] != size:
            problems.append(f"images/{sid}.png: size {_hw(px)}, expected {size[0]}x{size[1]} like the other images")

    def check_part_size(rel: str, sid: str, px: np.ndarray) -> bool:
        if sid in images and px.shape[:2] != images[sid].shape[:2]:
            problems.append(f"{rel}: size {_hw(px)}, expected {_hw(images[sid])} like images/{sid}.png")
            return False
        return True

    classes = None
    if present["segmentation"]:
        classes = _read_classes(root, problems)
        masks = _scan_part(root, "masks", "mask", _MASK_MODES, "single-channel class ids (mode L or P)",
                           image_ids, problems)
        for rel, sid, px in masks:
            if check_part_size(rel, sid, px) and classes is not None:
                ids = np.unique(px)
                bad = ids[ids >= len(classes)]
                if bad.size:
                    shown = ", ".join(str(int(b)) for b in bad[:10]) + (" ..." if bad.size > 10 else "")
                    problems.append(f"{rel}: class ids [{shown}] not in masks/classes.yaml "
                                    f"({len(classes)} classes, ids 0..{len(classes) - 1})")

    names, points = None, {}
    if present["keypoints"]:
        names, points = _read_keypoints(root, image_ids, problems)
        for sid in sorted(set(points) & set(images)):
            _check_visible_inside(sid, points[sid], names, images[sid].shape[:2], problems)

    scale = None
    if present["depth"]:
        scale = _read_depth_scale(root, problems)
        for rel, sid, px in _scan_part(root, "depth", "depth map", _DEPTH_MODES,
                                       "16-bit grayscale (stored value = depth * scale)", image_ids, problems):
            check_part_size(rel, sid, px)

    if problems:
        raise LabeledSetError(root, problems)
    return LabeledSet(root=root, ids=tuple(sorted(image_ids)), image_size=(int(size[0]), int(size[1])),
                      classes=classes, keypoint_names=names, depth_scale=scale, _points=points)


# ----------------------------------------------------------------------------------------------
# Writing.


def _atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write via a dot-file in the same folder renamed into place, so `path` is never half-written.

    No fsync: this protects against an interrupted process, not against a power cut.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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


def _write_png(path: Path, array: np.ndarray) -> None:
    _atomic_write(path, lambda fh: Image.fromarray(array).save(fh, format="PNG"))


def _write_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda fh: fh.write(text.encode()))


def _check_sample(s: Any, first: LabeledSample | None, classes: Sequence[str] | None,
                  keypoint_names: Sequence[str] | None, depth_scale: float) -> str | None:
    """Why sample s cannot be written, or None."""
    if not isinstance(s, LabeledSample):
        return f"expected a LabeledSample, got {type(s).__name__}"
    if not (isinstance(s.id, str) and _SAFE_ID.match(s.id)):
        return f"id {s.id!r} is not a safe file name; use letters, digits, '.', '_', '-' (not starting with '.')"
    img = np.asarray(s.image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        return f"sample {s.id!r}: image must be uint8 [H, W, 3], got {img.dtype} {list(img.shape)}"
    hw = img.shape[:2]
    if first is not None:
        if hw != first.image.shape[:2]:
            return f"sample {s.id!r}: image is {hw[0]}x{hw[1]}, but the first sample's is {_hw(first.image)}"
        for part in ("segmentation", "keypoints", "depth"):
            if (getattr(s, part) is None) != (getattr(first, part) is None):
                return f"sample {s.id!r}: {part} is {'missing' if getattr(s, part) is None else 'present'}, " \
                       f"unlike the first sample; every sample must have the same parts"
    if s.segmentation is not None:
        seg = np.asarray(s.segmentation)
        if classes is None:
            return "samples have segmentation but classes is None; pass the class names"
        if seg.shape != hw or not np.issubdtype(seg.dtype, np.integer):
            return (f"sample {s.id!r}: segmentation must be integer [{hw[0]}, {hw[1]}], "
                    f"got {seg.dtype} {list(seg.shape)}")
        if seg.size and (seg.min() < 0 or seg.max() >= len(classes)):
            return f"sample {s.id!r}: segmentation ids span {int(seg.min())}..{int(seg.max())}, " \
                   f"outside 0..{len(classes) - 1} ({len(classes)} classes)"
    if s.keypoints is not None:
        kp = np.asarray(s.keypoints, dtype=np.float64)
        if keypoint_names is None:
            return "samples have keypoints but keypoint_names is None; pass the keypoint names"
        if kp.shape != (len(keypoint_names), 3):
            return f"sample {s.id!r}: keypoints must be [{len(keypoint_names)}, 3] (x, y, v), got {list(kp.shape)}"
        if not np.isfinite(kp).all() or not np.isin(kp[:, 2], (0, 1, 2)).all():
            return f"sample {s.id!r}: keypoints need finite x, y and visibility 0, 1 or 2"
    if s.depth is not None:
        d = np.asarray(s.depth, dtype=np.float64)
        if d.shape != hw:
            return f"sample {s.id!r}: depth must be [{hw[0]}, {hw[1]}], got {list(d.shape)}"
        valid = np.isfinite(d) & (d > 0)
        if valid.any():
            hi, lo = float(d[valid].max()), float(d[valid].min())
            if round(hi * depth_scale) > 65535:
                return (f"sample {s.id!r}: depth {hi:g} exceeds {65535 / depth_scale:g} (65535 / scale); "
                        "pass a smaller depth_scale")
            if round(lo * depth_scale) == 0:
                return (f"sample {s.id!r}: depth {lo:g} rounds to 0 (= invalid) at scale {depth_scale:g}; "
                        "pass a larger depth_scale")
    return None


def write_labeled_set(
    root: str | Path,
    samples: Iterable[LabeledSample],
    classes: Sequence[str] | None,
    *,
    keypoint_names: Sequence[str] | None = None,
    depth_scale: float = 1000.0,
) -> Path:
    """Write samples (any iterable, consumed once) as a labeled-set folder at root; returns root.

    root must not already hold images. Depth is stored as round(depth * depth_scale); NaN, inf and
    depths <= 0 are stored as 0 (invalid). Raises LabeledSetError, naming the sample, on the first
    sample that does not fit; the samples before it stay written, the metadata files do not.
    """
    root = Path(root)
    if not (isinstance(depth_scale, (int, float)) and math.isfinite(depth_scale) and depth_scale > 0):
        raise ValueError(f"depth_scale must be a positive number, got {depth_scale!r}")
    if (root / "images").is_dir() and any(p.suffix == ".png" for p in (root / "images").iterdir()):
        raise LabeledSetError(root, ["images/: already holds images; write into an empty folder or remove it first"])
    if classes is not None and (len(classes) == 0 or len(classes) > 256 or len(set(classes)) != len(classes)):
        raise ValueError(f"classes must be 1..256 unique names, got {list(classes)}")
    if keypoint_names is not None and (len(keypoint_names) == 0 or len(set(keypoint_names)) != len(keypoint_names)):
        raise ValueError(f"keypoint_names must be unique names, got {list(keypoint_names)}")

    first: LabeledSample | None = None
    seen: set[str] = set()
    points: dict[str, list[list[float]]] = {}
    for s in samples:
        why = _check_sample(s, first, classes, keypoint_names, depth_scale)
        if why is None and s.id in seen:
            why = f"id {s.id!r} appears twice"
        if why is not None:
            raise LabeledSetError(root, [why])
        if first is None:
            first = s
            for sub, on in (("images", True), ("masks", s.segmentation is not None), ("depth", s.depth is not None)):
                if on:
                    (root / sub).mkdir(parents=True, exist_ok=True)
        seen.add(s.id)
        _write_png(root / "images" / f"{s.id}.png", np.ascontiguousarray(s.image))
        if s.segmentation is not None:
            _write_png(root / "masks" / f"{s.id}.png", np.asarray(s.segmentation).astype(np.uint8))
        if s.depth is not None:
            _write_png(root / "depth" / f"{s.id}.png", encode_depth(s.depth, depth_scale))
        if s.keypoints is not None:
            points[s.id] = [[float(x), float(y), int(v)] for x, y, v in np.asarray(s.keypoints, np.float32)]
    if first is None:
        raise ValueError("samples is empty; nothing to write")

    # Metadata last: an interrupted write shows up as a missing classes.yaml / keypoints.json.
    if first.segmentation is not None:
        _write_text(root / "masks" / "classes.yaml", yaml.safe_dump({"classes": list(classes)}, sort_keys=False))
    if first.depth is not None:
        _write_text(root / "depth" / "depth.yaml", yaml.safe_dump({"scale": float(depth_scale)}))
    if first.keypoints is not None:
        _write_text(root / "keypoints.json", json.dumps({"names": list(keypoint_names), "points": points}))
    return root


# ----------------------------------------------------------------------------------------------
# Summary (for `handsoff data check`).


def summarize(ls: LabeledSet) -> dict[str, Any]:
    """Plain-Python statistics of a labeled set: sizes, class pixel frequencies, keypoint visibility,
    depth range. Decodes every sample once."""
    out: dict[str, Any] = {"root": str(ls.root), "images": len(ls), "image_size": list(ls.image_size),
                           "tasks": list(ls.tasks)}
    n_classes = len(ls.classes) if ls.classes else 0
    pixels = np.zeros(n_classes, np.int64)
    images_with = np.zeros(n_classes, np.int64)
    vis = np.zeros((len(ls.keypoint_names or ()), 3), np.int64)
    d_min, d_max, d_sum, d_valid, d_total = math.inf, -math.inf, 0.0, 0, 0
    for i in range(len(ls)):
        s = ls.load(i)
        if s.segmentation is not None:
            c = np.bincount(s.segmentation.ravel(), minlength=n_classes)[:n_classes]
            pixels += c
            images_with += c > 0
        if s.keypoints is not None:
            for j, v in enumerate(s.keypoints[:, 2].astype(int)):
                vis[j, v] += 1
        if s.depth is not None:
            valid = s.depth[np.isfinite(s.depth)]
            d_total += s.depth.size
            if valid.size:
                d_min, d_max = min(d_min, float(valid.min())), max(d_max, float(valid.max()))
                d_sum += float(valid.sum(dtype=np.float64))
                d_valid += valid.size
    if ls.has_masks:
        total = max(int(pixels.sum()), 1)
        out["segmentation"] = {
            "classes": list(ls.classes),
            "pixel_fraction": {c: round(int(p) / total, 6) for c, p in zip(ls.classes, pixels)},
            "images_with_class": {c: int(k) for c, k in zip(ls.classes, images_with)},
        }
    if ls.has_keypoints:
        out["keypoints"] = {
            "names": list(ls.keypoint_names),
            "visibility": {n: {"unlabeled": int(a), "occluded": int(b), "visible": int(c)}
                           for n, (a, b, c) in zip(ls.keypoint_names, vis)},
        }
    if ls.has_depth:
        out["depth"] = {
            "scale": ls.depth_scale,
            "valid_fraction": round(d_valid / max(d_total, 1), 6),
            "min": round(d_min, 6) if d_valid else None,
            "max": round(d_max, 6) if d_valid else None,
            "mean": round(d_sum / d_valid, 6) if d_valid else None,
        }
    return out
