"""Every input check a run makes before it computes, in one place: `handsoff validate` and `handsoff run` call it.

    problems = preflight(spec)        # [] when the run would get past every input check

Beyond the plan's cheap checks (files and folders exist) it opens what the stages would open: the labeled set
(every file decoded, data.ids known), the checkpoint (its header and weights), the device, the LPIPS trunk,
the storage URI (scheme, a writable local folder, a reachable object store, no other spec's outputs under this
run id), the Ray cluster the spec or RAY_ADDRESS names (it answers) and the evaluation test set (readable, and
sharing no image with the labeled set). Nothing is written.
"""

from __future__ import annotations

import os

from handsoff_ray.config import JobSpec
from handsoff_ray.pipeline.errors import UserError

__all__ = ["preflight"]


def preflight(spec: JobSpec, stages: tuple[str, ...] | None = None, *,
              ctx=None, plan: dict | None = None) -> list[str]:
    """One line per problem the spec's inputs have for these stages (default: every stage of a run); [] when
    there is none. Pass the run's
    RunContext to keep what the checks open (the labeled set) for the stages, and the plan (`resolved_plan`)
    when the caller has already made it: making it reads the labeled set's listing and the checkpoint."""
    from handsoff_ray.pipeline.context import RunContext
    from handsoff_ray.pipeline.errors import user_errors
    from handsoff_ray.pipeline.resolved import resolved_plan

    ctx = ctx or RunContext(spec)
    if stages is None:
        from handsoff_ray.pipeline.stages import STAGES

        stages = tuple(STAGES)

    problems = list((plan or resolved_plan(spec))["problems"])
    checks = [_labeled_set, _checkpoint, _device, _storage]
    if spec.resources.engine == "ray":
        checks.append(_ray)
    if "invert" in stages and spec.inversion.lpips_weight > 0:
        checks.append(_lpips_trunk)
    if "evaluate" in stages and spec.evaluation.enabled:
        checks.append(_test_set)
    for check in checks:
        try:
            check(ctx)
        except user_errors() as err:
            problems.append(str(err).replace("\n", "; "))
    return list(dict.fromkeys(problems))  # a missing folder is reported by the plan and by the reader


def _labeled_set(ctx) -> None:
    spec = ctx.spec
    if spec.data.format == "toy" or os.path.isdir(spec.data.path):  # a missing folder is already a plan problem
        ctx.labeled()


def _checkpoint(ctx) -> None:
    import torch

    from handsoff_ray.pipeline.context import resolve_checkpoint

    path = resolve_checkpoint(ctx.spec.generator.checkpoint)
    if "://" in path or os.path.isfile(path):
        ctx.content_rows(ctx.generator(torch.device("cpu")))  # loaded once per process: the stages reuse it


def _device(ctx) -> None:
    from handsoff_ray.pipeline.context import resolve_device

    resolve_device(ctx.spec)


def _ray(ctx) -> None:
    from handsoff_ray.pipeline.engines import check_ray_reachable

    check_ray_reachable(ctx.spec)


def _lpips_trunk(ctx) -> None:
    import torch

    ctx.lpips(torch.device("cpu"))


def _storage(ctx) -> None:
    """The output URI resolves, a local one can be created, and the run id holds no other spec's outputs."""
    import pyarrow.fs as pafs

    from handsoff_ray.pipeline.storage import StorageError, retry_remote

    store = ctx.store  # an unsupported scheme fails here
    if "://" not in store.uri():
        existing = store.root
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
            raise StorageError(f"storage.output: cannot create {store.root}: {existing} is not a writable folder")
    else:
        bucket = store.root.split("/", 1)[0]
        info = retry_remote("stat", f"s3://{bucket}", lambda: store.fs.get_file_info(bucket),
                            budget_s=store.retry_seconds)
        if info.type == pafs.FileType.NotFound:
            raise StorageError(f"storage.output: bucket s3://{bucket} does not exist: create it, or fix the bucket "
                               "name")
    from handsoff_ray.pipeline.stages import STAGES

    for stage in STAGES.values():  # a stage that never claims its folder (evaluate) has no marker to find
        ctx.check_stage_owner(stage)  # also reaches the object store, retrying as a run would


def _test_set(ctx) -> None:
    from handsoff_ray.datasets.public import open_public_set

    ev = ctx.spec.evaluation
    if ev.test_format == "toy":
        test = open_public_set(None, "toy", ids=ev.test_ids, seeds=ev.test_seeds)
    elif ev.test_path and os.path.isdir(ev.test_path):
        test = open_public_set(ev.test_path, ev.test_format, ids=ev.test_ids, split=ev.test_split)
    else:
        return
    _shares_no_image(ctx, test)


_NEVER_TRAINED_ON = "test images must never be trained on"


def _shares_no_image(ctx, test) -> None:
    """UserError when the test set holds a labeled image (the model would be scored on its training images): the
    same id in the same folder, or, for two labeled-set folders, the same image file bytes."""
    from handsoff_ray.datasets import LabeledSet, ReaderSet
    from handsoff_ray.pipeline.errors import user_errors

    d, ev = ctx.spec.data, ctx.spec.evaluation
    if "toy" in (d.format, ev.test_format):
        return  # two toy sets sharing seeds are refused at validation (config); a toy face has no file to compare
    try:
        labeled, ids = ctx.labeled()
    except user_errors():
        return  # the labeled-set check reports it
    if os.path.realpath(d.path) == os.path.realpath(ev.test_path) and \
            (d.split or "trainingset") == (ev.test_split or "trainingset"):
        shared = sorted(set(ids) & set(test.ids))
        if shared:
            raise UserError(f"evaluation.test_path: {len(shared)} test image(s) are labeled images of data.path "
                            f"(the same folder; first: {shared[0]!r}); {_NEVER_TRAINED_ON}: set evaluation.test_ids "
                            "or data.ids apart, or point test_path at a held-out set")
        return

    def plain(s) -> bool:  # a labeled-set folder: images/<id>.png (public layouts keep theirs elsewhere)
        return isinstance(s, LabeledSet) and not isinstance(s, ReaderSet)

    if plain(labeled) and plain(test):
        same = _same_files({i: labeled.root / "images" / f"{i}.png" for i in ids},
                           {i: test.root / "images" / f"{i}.png" for i in test.ids})
        if same:
            test_id, labeled_id = same[0]
            raise UserError(f"evaluation.test_path: images/{test_id}.png has the same bytes as data.path's "
                            f"images/{labeled_id}.png ({len(same)} such image(s)); {_NEVER_TRAINED_ON}: remove "
                            "them from one of the two sets")


def _same_files(a: dict, b: dict) -> list[tuple[str, str]]:
    """[(id in b, id in a)] of files holding the same bytes. Only files whose size occurs on both sides are read
    (streamed through sha256), so two sets of different images cost two listings of sizes."""
    import hashlib

    def digest(path) -> str:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()

    sizes_a: dict[int, list[str]] = {}
    for i, path in a.items():
        sizes_a.setdefault(os.path.getsize(path), []).append(i)
    digests_a: dict[str, str] = {}  # read once each, and only when a file of b has its size
    same = []
    for j, path in sorted(b.items()):
        candidates = sizes_a.get(os.path.getsize(path), [])
        if not candidates:
            continue
        d = digest(path)
        for i in candidates:
            if i not in digests_a:
                digests_a[i] = digest(a[i])
            if digests_a[i] == d:
                same.append((j, i))
                break
    return same
