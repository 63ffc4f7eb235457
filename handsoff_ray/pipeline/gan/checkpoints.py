"""Where `handsoff train-gan` keeps its training state: checkpoint folders under <run>/gan/ in the run's storage.

    ckpts = LocalCheckpoints(store, keep=2)      # the local engine: our own folders
    ckpts = RayCheckpoints(store, keep=2)        # Ray Train: ray.train.report(checkpoint=...) into the same place
    state = ckpts.latest()                       # None on a fresh run
    ckpts.save(state, metrics)                   # every worker calls it; rank 0's state is the one kept

A checkpoint is a folder `checkpoint_*` holding `state.pt` (G, G_ema, D, both optimisers, the recipe,
progress: steps, images seen, CPU and wall time, the KID curve) and `progress.json` (a copy of the progress,
written last: a folder without it is an interrupted write and is ignored). The local engine names folders
by images seen; Ray Train names them by time and keeps its own index beside them. Either engine resumes
from the other's newest checkpoint: `latest` reads Ray's `get_checkpoint()` when Ray restored one (a
restarted worker group, or a relaunched driver with the same run), else the folder with most images seen.
No RNG state is stored: every random draw is seeded by (seed, step, sample) (core/gan_step.py).
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import tempfile

import pyarrow.fs as pafs
import torch

from handsoff_ray.pipeline.storage import RunStore

__all__ = ["GAN_DIR", "LocalCheckpoints", "RayCheckpoints", "latest_state", "state_bytes"]

GAN_DIR = "gan"  # <output>/<run_id>/gan/: checkpoints, samples/, generator.safetensors, card.json
_STATE, _PROGRESS, _PREFIX = "state.pt", "progress.json", "checkpoint_"


def state_bytes(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def _folders(store: RunStore) -> list[tuple[int, str]]:
    """(images seen, folder under the run) of every complete checkpoint, oldest first."""
    base = store.path(GAN_DIR)
    try:
        infos = store.fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    except OSError:
        return []
    out = []
    for info in infos:
        name = posixpath.basename(info.path)
        if info.type != pafs.FileType.Directory or not name.startswith(_PREFIX):
            continue
        progress = store.read_json(f"{GAN_DIR}/{name}/{_PROGRESS}") if store.exists(f"{GAN_DIR}/{name}/{_PROGRESS}") \
            else None
        if progress is not None:
            out.append((int(progress["images_seen"]), f"{GAN_DIR}/{name}"))
    return sorted(out)


def latest_state(store: RunStore) -> dict | None:
    """The newest complete checkpoint's state (CPU tensors), or None."""
    folders = _folders(store)
    if not folders:
        return None
    return torch.load(io.BytesIO(store.read_bytes(f"{folders[-1][1]}/{_STATE}")), map_location="cpu",
                      weights_only=True)


class LocalCheckpoints:
    def __init__(self, store: RunStore, keep: int):
        self.store, self.keep = store, keep

    def latest(self) -> dict | None:
        return latest_state(self.store)

    def save(self, state: dict | None, metrics: dict) -> None:
        if state is None:  # only rank 0 holds the state; the local engine is rank 0
            return
        seen = state["progress"]["images_seen"]
        folder = f"{GAN_DIR}/{_PREFIX}{seen:012d}"
        self.store.write_bytes(f"{folder}/{_STATE}", state_bytes(state))
        self.store.write_json(f"{folder}/{_PROGRESS}", state["progress"])  # last: marks the folder complete
        for _, old in _folders(self.store)[:-self.keep]:
            self.store.fs.delete_dir(self.store.path(old))


class RayCheckpoints:
    """Ray Train's checkpoint API: rank 0 reports the state as a checkpoint, the others report metrics only
    (every worker must report the same number of times). Storage and run name are the trainer's RunConfig."""

    def __init__(self, store: RunStore, keep: int):
        self.store, self.keep = store, keep

    def latest(self) -> dict | None:
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is not None:
            with ckpt.as_directory() as d:
                return torch.load(os.path.join(d, _STATE), map_location="cpu", weights_only=True)
        return latest_state(self.store)  # a run the local engine began, or Ray's index lost

    def save(self, state: dict | None, metrics: dict) -> None:
        import ray.train

        if state is None:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, _STATE), "wb") as f:
                f.write(state_bytes(state))
            with open(os.path.join(d, _PROGRESS), "w") as f:
                json.dump(state["progress"], f)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
