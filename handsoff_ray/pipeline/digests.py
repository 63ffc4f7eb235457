"""What a stage reads, by content: sha256 of files (cached by path, size and mtime) and of labeled sets.

    file_digest("ckpt.safetensors")           # sha256 hex; hashed once, then read from the cache
    labeled_digests(spec, labeled, ids)       # LabeledDigests: per image the image's and the labels' digests

A stage's identity (pipeline/identity.py) is built from these, never from paths: a file replaced at the same
path, a mask corrected under the same name, a face added to the folder all change what is recomputed.

The cache is one small JSON file, `$HANDSOFF_CACHE_DIR/digests.json` (default ~/.cache/handsoff): an entry
is used only while the file's size and mtime_ns are what they were when it was hashed, so a rewrite is seen
even when the size stays. Concurrent processes each rewrite the whole file atomically; a lost update only
costs a re-hash. Toy faces (`data.format: toy`) read no file: their content is (renderer version, seed).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from dataclasses import dataclass

import numpy as np

__all__ = ["file_digest", "file_digests", "labeled_digests", "LabeledDigests", "TOY_RENDERER_VERSION", "digest_of",
           "test_set_digest"]

# Bump when handsoff_ray/toy/world.py renders different faces for a seed: every toy run then recomputes.
TOY_RENDERER_VERSION = "toy-world-1"

_lock = threading.Lock()
_memo: dict[str, tuple[int, int, str]] = {}  # this process's view of the cache


def digest_of(*parts) -> str:
    """sha256 hex of JSON-able parts (sorted keys): the one way identities are combined."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def _cache_path() -> str:
    root = os.environ.get("HANDSOFF_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "handsoff")
    return os.path.join(root, "digests.json")


def _load_cache() -> dict:
    try:
        with open(_cache_path()) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_cache(entries: dict) -> None:
    path = _cache_path()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".digests-")
        with os.fdopen(fd, "w") as f:
            json.dump(entries, f, separators=(",", ":"))
        os.replace(tmp, path)
    except OSError:  # a read-only home: digests are recomputed next time, nothing is wrong
        pass


def file_digests(paths: list[str]) -> dict[str, str]:
    """{path: sha256 hex} of local files, hashing only those changed since they were last hashed."""
    out, fresh = {}, {}
    stats = {p: os.stat(p) for p in paths}
    with _lock:
        missing = [p for p in paths if _memo.get(os.path.abspath(p), (None, None, None))[:2]
                   != (stats[p].st_size, stats[p].st_mtime_ns)]
        if missing:
            cached = _load_cache()
            for p in missing:
                entry = cached.get(os.path.abspath(p))
                if isinstance(entry, list) and len(entry) == 3:
                    _memo[os.path.abspath(p)] = tuple(entry)
        for p in paths:
            key, st = os.path.abspath(p), stats[p]
            size, mtime, digest = _memo.get(key, (None, None, None))
            if (size, mtime) != (st.st_size, st.st_mtime_ns):
                with open(p, "rb") as f:
                    digest = hashlib.file_digest(f, "sha256").hexdigest()
                _memo[key] = (st.st_size, st.st_mtime_ns, digest)
                fresh[key] = [st.st_size, st.st_mtime_ns, digest]
            out[p] = digest
        if fresh:
            cached = _load_cache()
            cached.update(fresh)
            _save_cache(cached)
    return out


def file_digest(path: str) -> str:
    """sha256 hex of one local file (cached by path, size and mtime_ns)."""
    return file_digests([path])[path]


@dataclass(frozen=True)
class LabeledDigests:
    """The content of a selected labeled set: per image id, its image's digest and its labels' digest,
    plus what all labels share (class names, keypoint names, depth scale)."""

    images: dict[str, str]  # id -> digest of what inversion reads
    labels: dict[str, str]  # id -> digest of what fit reads besides the image (mask, keypoints, depth)
    shared: str  # digest of the set's label metadata

    def identity(self) -> str:
        return digest_of(self.images, self.labels, self.shared)


def labeled_digests(spec, opened=None) -> LabeledDigests:
    """Digests of the labeled images spec.data selects, without decoding one for a labeled-set folder or toy
    faces (synthesis checks its inputs without opening the set):

    - folder: each selected image's and label file's sha256 (masks/, depth/), its keypoints.json row, and
      the metadata files (classes.yaml, depth.yaml, keypoint names) as `shared`;
    - toy: (renderer version, seed, size) per face;
    - public layouts: the decoded arrays of `opened()` ((labeled set, ids): their readers resize and merge
      classes, so what the stages see is what counts).
    """
    d = spec.data
    if d.format == "toy":
        from handsoff_ray.config import parse_seeds
        from handsoff_ray.toy.world import toy_ids

        seeds = parse_seeds(d.seeds, what="data.seeds")
        seed_of = dict(zip(toy_ids(seeds), seeds))
        from handsoff_ray.datasets._common import chosen_ids

        chosen = chosen_ids(seed_of, ids=d.ids, limit=d.limit)
        size = d.resize[0] if d.resize else 64  # datasets/public.py: toy faces are rendered at resize's height
        images = {i: digest_of(TOY_RENDERER_VERSION, seed_of.get(i), size) for i in chosen}
        return LabeledDigests(images, dict(images), digest_of(TOY_RENDERER_VERSION))
    if d.format == "folder":
        return _folder_digests(d.path, d.ids, d.limit)
    labeled, ids = opened()
    images, labels = {}, {}
    for i in ids:
        s = labeled.load(i)
        images[i] = hashlib.sha256(np.ascontiguousarray(s.image).tobytes()).hexdigest()
        labels[i] = digest_of(*(None if a is None else hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
                                for a in (s.segmentation, s.keypoints, s.depth)))
    shared = digest_of(list(labeled.classes or []), list(labeled.keypoint_names or []), labeled.depth_scale,
                       list(labeled.image_size))
    return LabeledDigests(images, labels, shared)


def _folder_digests(root: str, ids, limit) -> LabeledDigests:
    """A labeled-set folder's digests (labeled_folder's layout: images/, masks/, depth/, keypoints.json)."""
    def pngs(part: str) -> set[str]:
        folder = os.path.join(root, part)
        if not os.path.isdir(folder):
            return set()
        return {n[:-4] for n in os.listdir(folder) if n.endswith(".png") and not n.startswith(".")}

    available = pngs("images")
    from handsoff_ray.datasets._common import chosen_ids

    chosen = chosen_ids(available, ids=ids, limit=limit)
    parts = [p for p in ("masks", "depth") if os.path.isdir(os.path.join(root, p))]
    have = {p: pngs(p) for p in parts}
    paths = [os.path.join(root, "images", f"{i}.png") for i in chosen if i in available]
    paths += [os.path.join(root, p, f"{i}.png") for p in parts for i in chosen if i in have[p]]
    meta = [os.path.join(root, rel) for rel in ("masks/classes.yaml", "depth/depth.yaml") if os.path.isfile(os.path.join(root, rel))]
    digests = file_digests(paths + meta)
    points, names = {}, None
    kp_path = os.path.join(root, "keypoints.json")
    if os.path.isfile(kp_path):
        try:
            with open(kp_path) as f:
                doc = json.load(f)
            names, points = doc.get("names"), doc.get("points") or {}
        except (OSError, ValueError, AttributeError):
            names, points = file_digest(kp_path), {}  # unreadable: open_labeled_set will say why
    images = {i: digests.get(os.path.join(root, "images", f"{i}.png")) for i in chosen}
    labels = {i: digest_of([digests.get(os.path.join(root, p, f"{i}.png")) for p in parts], points.get(i))
              for i in chosen}
    shared = digest_of({os.path.relpath(m, root): digests[m] for m in meta}, names)
    return LabeledDigests(images, labels, shared)


def test_set_digest(spec) -> str:
    """The content of evaluation's test set: (renderer version, seeds) of toy faces, else every file under
    evaluation.test_path (each hashed once, then cached)."""
    ev = spec.evaluation
    if ev.test_format == "toy":
        return digest_of(TOY_RENDERER_VERSION, ev.test_seeds, ev.test_ids)
    paths = sorted(os.path.join(d, n) for d, _, names in os.walk(ev.test_path) for n in names
                   if not n.startswith("."))
    d = file_digests(paths)
    return digest_of(ev.test_ids, ev.test_split, {os.path.relpath(p, ev.test_path): d[p] for p in paths})
