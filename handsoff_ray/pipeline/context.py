"""What every stage of a run shares: the spec, the run's storage, the device, the models (Ray: engines.py).

    ctx = RunContext(spec)        # cheap: nothing is opened until asked for
    ctx.store                     # the run's RunStore (storage.output/<run_id>)
    ctx.generator()               # the spec's generator on ctx.device, loaded once per process
    ctx.labeled()                 # (labeled set, selected ids), opened and checked once per process
    ctx.artifacts                 # <storage.output>/_artifacts: outputs shared by identity across runs
    ctx.identities()              # every stage's identity (identity.py): spec sections + input digests

A process (the driver, a Ray Train worker, a Ray Data actor) loads each model once, whatever number of
stages or units of work it runs: the model caches are per process, keyed by what the model depends on
(the checkpoint file's path, size and mtime; the device), so a changed input gets a fresh load. The
labeled set is opened once per context (`handsoff run` shares one context across its stages).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field

import torch

from handsoff_ray.config import JobSpec, stage_hash
from handsoff_ray.pipeline.errors import UserError
from handsoff_ray.pipeline.layout import ARTIFACTS, RUN
from handsoff_ray.pipeline.storage import RunStore, cached_local_file
from handsoff_ray.toy import resolve_alias

__all__ = ["RunContext", "open_run", "apply_torch_threads", "resolve_checkpoint", "resolve_device"]


def resolve_checkpoint(name: str) -> str:
    """generator.checkpoint as a path or URI: 'toy' -> the generator shipped in handsoff_ray/toy/assets."""
    return os.path.expanduser(resolve_alias(name))


def open_run(spec: JobSpec) -> RunStore:
    """The run's storage: <storage.output>/<run_id>, local or on S3."""
    s3 = spec.storage.s3
    return RunStore.open(spec.storage.output, run_id=spec.run_id, endpoint_url=s3.endpoint_url, region=s3.region,
                         max_attempts=s3.max_attempts, retry_seconds=s3.retry_seconds)


def apply_torch_threads(spec: JobSpec) -> None:
    """Set this process's intra-op thread count to the spec's (when given). Float results depend on it
    (how reductions split), so every engine applies it before computing: same spec, same bytes."""
    if spec.resources.torch_threads:
        torch.set_num_threads(spec.resources.torch_threads)


def resolve_device(spec: JobSpec) -> torch.device:
    """generator.device as a torch device; UserError naming the field when it names a missing CUDA."""
    from handsoff_ray.core.device import resolve_device as resolve

    try:
        return resolve(spec.generator.device)
    except ValueError:
        raise UserError("generator.device is 'cuda' but no CUDA device is visible; set generator.device: auto") from None


@dataclass
class RunContext:
    spec: JobSpec
    _store: RunStore | None = field(default=None, repr=False)
    _labeled: tuple | None = field(default=None, repr=False)
    _identities: object | None = field(default=None, repr=False)

    @property
    def store(self) -> RunStore:
        if self._store is None:
            self._store = open_run(self.spec)
        return self._store

    @property
    def artifacts(self) -> RunStore:
        """<storage.output>/_artifacts (layout.py ARTIFACTS): latents and label generators by identity."""
        return self.store.sibling(ARTIFACTS.root)

    def checkpoint_path(self) -> str:
        """A local path of the spec's generator checkpoint (a remote one is downloaded once per machine)."""
        path = resolve_checkpoint(self.spec.generator.checkpoint)
        if "://" in path:
            path = cached_local_file(path, endpoint_url=self.spec.storage.s3.endpoint_url,
                                     region=self.spec.storage.s3.region)
        return path

    def identities(self):
        """Every stage's identity (pipeline/identity.py), computed once per context: the checkpoint's and the
        selected labeled files' sha256 come from the digest cache (digests.py) unless a file changed. A folder
        or toy set is not opened for it (synthesis decodes no labeled image)."""
        if self._identities is None:
            from handsoff_ray.pipeline.digests import file_digest, labeled_digests
            from handsoff_ray.pipeline.identity import Identities

            self._identities = Identities.of(self.spec, file_digest(self.checkpoint_path()),
                                             labeled_digests(self.spec, self.labeled))
        return self._identities

    @functools.cached_property
    def device(self) -> torch.device:
        return resolve_device(self.spec)

    def generator(self, device: torch.device | None = None):
        """The spec's generator (eval mode, no gradients) on `device` (default ctx.device)."""
        path = self.checkpoint_path()
        stat = os.stat(path)  # a file replaced at the same path is loaded again
        return _load_generator(path, stat.st_size, stat.st_mtime_ns, str(device or self.device))

    def labeled(self):
        """(labeled set, selected ids) of data.*, every selected image decoded and checked, requiring the
        labels of the tasks the label generator fits (so a missing label stops invert before any compute)."""
        from handsoff_ray.pipeline.labeled import open_spec_labeled_set

        if self._labeled is None:
            self._labeled = open_spec_labeled_set(self.spec, tasks=self.spec.label_generator.tasks.enabled())
        return self._labeled

    def lpips(self, device: torch.device | None = None):
        """The inversion's LPIPS (its ImageNet trunk read from disk) on `device` (default ctx.device)."""
        inv = self.spec.inversion
        return _lpips(inv.lpips.net, inv.lpips.trunk_path, str(device or self.device))

    def stage_hash(self, stage: str) -> str:
        return stage_hash(self.spec, stage)

    def check_stage_owner(self, stage) -> dict | None:
        """The marker of `stage`'s folder (a stages.base.Stage) when this spec owns it (None when nobody does
        yet); UserError when another spec's outputs are there."""
        h = self.stage_hash(stage.name)
        existing = self.store.read_json(RUN.stage_marker(stage.folder))
        if existing is not None and existing.get("stage_hash") != h:
            raise UserError(
                f"{self.store.uri(stage.folder)} holds {stage.name} output of another spec (hash "
                f"{existing.get('stage_hash')}, this spec {h}); set storage.run_id to a new id, or delete that "
                "folder to recompute")
        return existing

    def claim_stage(self, stage) -> str:
        """Record which spec owns `stage`'s folder; refuse to mix two specs' outputs under one run id."""
        h = self.stage_hash(stage.name)
        if self.check_stage_owner(stage) is None:
            self.store.write_json(RUN.stage_marker(stage.folder), {"stage": stage.name, "stage_hash": h,
                                                                   "spec": self.spec.model_dump(mode="json")})
        return h

    def feature_size(self, G) -> tuple[int, int]:
        """The hypercolumn (label) resolution: the spec's, else min(generator height, 512) like the reference."""
        h = self.spec.generator.feature_resolution or min(G.resolution, 512)
        return h, h // G.cfg.init_aspect

    def content_rows(self, G) -> slice | None:
        """The label-map rows generator.crop_rows covers (None: all), or UserError naming the field."""
        if self.spec.generator.crop_rows is None:
            return None
        from handsoff_ray.core.pairs import content_rows

        try:
            return content_rows(self.spec.generator.crop_rows, G.resolution, self.feature_size(G)[0])
        except ValueError as err:
            raise UserError(f"generator.crop_rows: {err}") from None


@functools.lru_cache(maxsize=2)
def _load_generator(path: str, size: int, mtime_ns: int, device: str):
    from handsoff_ray.core.checkpoint import load_generator

    G = load_generator(path, device=torch.device(device))
    return G.eval().requires_grad_(False)


@functools.lru_cache(maxsize=2)
def _lpips(net: str, trunk_path: str | None, device: str):
    # Building LPIPS (VGG16 trunk + verification) takes seconds; reuse it across stages in one process.
    from handsoff_ray.core.lpips_offline import load_lpips

    return load_lpips(net, trunk_path=trunk_path, device=device)
