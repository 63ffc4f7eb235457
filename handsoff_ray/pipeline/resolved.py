"""The resolved plan of a job spec: what each stage reads and writes, and the hashes that stamp it.

Pure and cheap: nothing is loaded or computed, so `handsoff validate` and `handsoff run --dry-run`
answer in a second. The cheap input checks (does the checkpoint file exist, does the data folder
exist) are reported under `problems`.
"""

from __future__ import annotations

import errno
import math
import os

from handsoff_ray.config import JobSpec, spec_hash, stage_hash
from handsoff_ray.pipeline.layout import ARTIFACTS, RUN
from handsoff_ray.toy import SHIPPED_GENERATOR, resolve_alias

__all__ = ["resolved_plan", "resolve_checkpoint", "TOY_CHECKPOINT"]

TOY_CHECKPOINT = SHIPPED_GENERATOR.name


def resolve_checkpoint(name: str) -> str:
    """'toy' -> the generator shipped in handsoff_ray/toy/assets; anything else is a path or URI."""
    return os.path.expanduser(resolve_alias(name))


def _device(spec: JobSpec) -> str:
    if spec.generator.device != "auto":
        return spec.generator.device
    from handsoff_ray.core.device import resolve_device

    return resolve_device("auto").type


def _source(fmt: str, path: str | None, seeds: str | None) -> str | None:
    return f"toy faces, seeds {seeds}" if fmt == "toy" else path


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

    run_root = f"{spec.storage.output.rstrip('/')}/{spec.run_id}"
    artifacts = f"{spec.storage.output.rstrip('/')}/{ARTIFACTS.root}"
    syn = spec.synthesis
    n_shards = math.ceil(syn.num_samples / syn.shard_size)
    return {
        "run_id": spec.run_id,
        "spec_hash": spec_hash(spec),
        "storage": run_root,
        "device": _device(spec),
        "generator": ckpt,
        "stages": {
            "invert": {
                "hash": stage_hash(spec, "invert"),
                "reads": _source(spec.data.format, spec.data.path, spec.data.seeds),
                "images": spec.data.ids or (f"first {spec.data.limit}" if spec.data.limit else "all"),
                "steps": spec.inversion.steps,
                "batch_size": spec.inversion.batch_size,
                "init": "encoder" if spec.inversion.encoder.enabled else "average latent",
                "writes": f"{artifacts}/{ARTIFACTS.latents}/ (one latent per image, by content), "
                          f"{run_root}/{RUN.latents_refs}",
                "workers": spec.resources.num_workers,
            },
            "fit": {
                "hash": stage_hash(spec, "fit"),
                "tasks": spec.label_generator.tasks.enabled(),
                "ensemble_size": spec.label_generator.ensemble_size,
                "writes": f"{artifacts}/{ARTIFACTS.label_generators}/<identity>/, {run_root}/{RUN.label_generator_ref}",
            },
            "synthesize": {
                "hash": stage_hash(spec, "synthesize"),
                "samples": syn.num_samples,
                "shards": n_shards,
                "shard_size": syn.shard_size,
                "truncation_psi": syn.truncation_psi,
                "writes": f"{run_root}/{RUN.dataset}/" + (f" (version {syn.version})" if syn.version else ""),
                "actors": spec.resources.synthesis_actors,
            },
            "evaluate": {"enabled": ev.enabled, "hash": stage_hash(spec, "evaluate"),
                         "reads": _source(ev.test_format, ev.test_path, ev.test_seeds),
                         "writes": f"{run_root}/{RUN.eval_report}"},
        },
        "problems": problems,
    }
