"""Toy faces as a labeled set: `data.format: toy` renders them from seeds, nothing is read from disk.

    from handsoff_ray.datasets.toy import open_toy_set
    ls = open_toy_set("0-15")      # the demo's 16 labeled faces, 64x64
    ls.load("000003")              # LabeledSample, equal to reading a folder written by write_toy_labeled_set

Because a toy set is a seed range, a spec that uses it (jobs/specs/toy.yaml) runs unchanged on a fresh
clone, under `ray job submit --working-dir .` and in the Helm chart's default: every worker renders the
faces it needs. Depth goes through the folder format's uint16 encoding, so a toy set and the folder
`write_toy_labeled_set` writes for the same seeds give identical samples (and identical runs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from handsoff_ray.datasets._common import ReaderSet, select_ids
from handsoff_ray.datasets.labeled_folder import DEFAULT_DEPTH_SCALE, LabeledSample, LabeledSetError
from handsoff_ray.datasets.labeled_folder.samples import decode_depth, encode_depth

__all__ = ["open_toy_set", "write_toy_labeled_set", "toy_sample", "DEPTH_SCALE"]

DEPTH_SCALE = DEFAULT_DEPTH_SCALE  # toy depth in metres, stored in millimetres


def open_toy_set(seeds: str, *, size: int = 64, ids: Sequence[str] | None = None,
                 limit: int | None = None) -> ReaderSet:
    """The toy faces of `seeds` ('0-15', '1,5,9-12') at size x size; ids/limit select as for a folder.

    Toy faces carry every task (segmentation, keypoints, depth), so there is no `require`."""
    from handsoff_ray.config import parse_seeds
    from handsoff_ray.toy.world import CLASSES, KEYPOINT_NAMES, toy_ids

    root = Path(f"toy:{seeds}")
    try:
        seed_list = parse_seeds(seeds, what="seeds")
    except ValueError as err:
        raise LabeledSetError(root, [str(err)]) from None
    seed_of = dict(zip(toy_ids(seed_list), seed_list))
    if len(seed_of) != len(seed_list):
        raise LabeledSetError(root, [f"seeds {seeds!r} name a seed twice"])
    chosen = select_ids(sorted(seed_of), ids=ids, limit=limit, root=root)

    def load(sid: str) -> LabeledSample:
        s = toy_sample(seed_of[sid], sid, size)
        # the folder format's uint16 round trip, so a toy set reads exactly like the folder written for it
        return dataclasses.replace(s, depth=decode_depth(encode_depth(s.depth, DEPTH_SCALE), DEPTH_SCALE))

    return ReaderSet(root=root, ids=tuple(chosen), image_size=(size, size), classes=tuple(CLASSES),
                     keypoint_names=tuple(KEYPOINT_NAMES), depth_scale=DEPTH_SCALE, format="toy", _loader=load)


def toy_sample(seed: int, sample_id: str, size: int) -> LabeledSample:
    """One toy face as a LabeledSample (float depth in metres, NaN-free: every toy pixel has a depth)."""
    from handsoff_ray.toy.world import render_face

    t = render_face(seed, size)
    return LabeledSample(id=sample_id, image=t.image, segmentation=t.segmentation, keypoints=t.keypoints, depth=t.depth)


def write_toy_labeled_set(
    root: str | Path, seeds: Sequence[int], size: int = 64, *, depth_scale: float = DEPTH_SCALE
) -> Path:
    """Render `seeds` and write them as a labeled-set folder (ids are the zero-padded seeds).

    Samples are rendered and written one at a time, so memory stays flat for any number of seeds.
    """
    from handsoff_ray.datasets.labeled_folder import write_labeled_set
    from handsoff_ray.toy.world import CLASSES, KEYPOINT_NAMES, check_size, toy_ids

    check_size(size, 3)  # before the folder is created
    samples = (toy_sample(s, sid, size) for s, sid in zip(seeds, toy_ids(seeds)))
    return write_labeled_set(root, samples, classes=CLASSES, keypoint_names=KEYPOINT_NAMES, depth_scale=depth_scale)
