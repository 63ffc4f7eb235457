"""The labeled-set folder parser: each function reads one part of the folder (images, masks, keypoints, depth)
and checks it, appending a line naming the file to `problems` instead of raising, so `open_labeled_set`
reports every problem at once.

Tests: `python -m pytest -q tests/datasets/test_labeled_folder.py`.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image


def list_pngs(folder: Path, rel: str, problems: list[str]) -> set[str]:
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


def decode_image_file(path: Path, rel: str, problems: list[str]) -> tuple[str, np.ndarray] | None:
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


def image_hw(a: np.ndarray) -> str:
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


def read_classes(root: Path, problems: list[str]) -> tuple[str, ...] | None:
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


def read_depth_scale(root: Path, problems: list[str]) -> float | None:
    doc = _required_yaml(root, "depth/depth.yaml", "`scale: 1000.0` (depth = stored value / scale)", problems)
    if doc is None:
        return None
    scale = doc.get("scale")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
        problems.append(f"depth/depth.yaml: scale must be a positive number, got {scale!r}")
        return None
    return float(scale)


def read_keypoints(
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


def check_visible_inside(sid: str, pts: np.ndarray, names: Sequence[str], hw: tuple[int, int],
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


def scan_part(root: Path, part: str, what: str, modes: Collection[str], mode_hint: str, image_ids: set[str],
               problems: list[str]) -> Iterator[tuple[str, str, np.ndarray]]:
    """(rel path, id, pixels) of each decodable `part/` PNG that pairs with an image and has a valid mode;
    every other case becomes a problem line."""
    ids = list_pngs(root / part, part, problems)
    _check_pairs(part, ids, image_ids, what, problems)
    for sid in sorted(ids & image_ids):
        rel = f"{part}/{sid}.png"
        got = decode_image_file(root / rel, rel, problems)
        if got is None:
            continue
        mode, px = got
        if mode not in modes:
            problems.append(f"{rel}: mode {mode}, expected {mode_hint}")
            continue
        yield rel, sid, px

