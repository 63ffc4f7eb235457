"""The resolved plan of a job spec: what each stage reads and writes (its `describe`), and the hashes that stamp it.

Pure and cheap: nothing is loaded or computed, so `handsoff validate` and `handsoff run --dry-run`
answer in a second. The cheap input checks (does the checkpoint file exist, does the data folder
exist) are reported under `problems`.
"""

from __future__ import annotations

import errno
import os

from handsoff_ray.config import JobSpec, spec_hash
from handsoff_ray.pipeline.layout import run_roots

__all__ = ["resolved_plan"]


def _device(spec: JobSpec) -> str:
    if spec.generator.device != "auto":
        return spec.generator.device
    from handsoff_ray.core.device import resolve_device

    return resolve_device("auto").type


def _path_problem(field: str, path: str, *, want_folder: bool) -> str | None:
    """What is wrong with a local path a field names (None when it is the file or folder it should be):
    missing, the other kind of entry, or a symlink that points at itself (os.stat says ELOOP)."""
    if want_folder and os.path.isdir(path) or not want_folder and os.path.isfile(path):
        return None
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return f"{field}: {path} is a symlink loop; point it at a real {'folder' if want_folder else 'file'}"
        return f"{field}: no such {'folder' if want_folder else 'file'} {path}"
    if want_folder:
        return f"{field}: {path} is a file, expected a labeled folder"
    return f"{field}: {path} is a folder; pass the checkpoint file (.pt, .pkl or .safetensors)"


def resolved_plan(spec: JobSpec) -> dict:
    # Imported here, not at the top: importing this module loads no torch (context and the stages do).
    from handsoff_ray.pipeline.context import resolve_checkpoint
    from handsoff_ray.pipeline.stages import STAGES

    problems = []
    ckpt = resolve_checkpoint(spec.generator.checkpoint)
    if "://" not in ckpt and (problem := _path_problem("generator.checkpoint", ckpt, want_folder=False)):
        hint = " (the toy generator is not in this install)" if spec.generator.checkpoint == "toy" else ""
        problems.append(problem + hint)
    if spec.data.format != "toy" and (problem := _path_problem("data.path", spec.data.path, want_folder=True)):
        problems.append(problem)
    ev = spec.evaluation
    if ev.enabled and ev.test_format != "toy" and ev.test_path and (
            problem := _path_problem("evaluation.test_path", ev.test_path, want_folder=True)):
        problems.append(problem)
    return {
        "run_id": spec.run_id,
        "spec_hash": spec_hash(spec),
        "storage": run_roots(spec)[0],
        "device": _device(spec),
        "generator": ckpt,
        "stages": {name: stage.describe(spec) for name, stage in STAGES.items()},  # each stage says its own
        "problems": problems,
    }
