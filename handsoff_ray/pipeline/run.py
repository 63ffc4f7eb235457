"""Chain the stages of one job spec, each on the engine the spec names, with the run's metrics.

    for result in run_stages(spec, ["invert", "fit", "synthesize"]):
        print(result)          # {"stage": "invert", ...} as each stage finishes

`handsoff run` and the single-stage commands (`handsoff invert`, `fit`, `synthesize`, `evaluate`) all
go through `run_stage`, so a stage runs the same way, and reports in the same shape, whichever command
starts it: {"stage", "run" (the run's URI), "output" (the stage's), "skipped" (nothing was left to do),
the stage's counts, "seconds" (wall time of this call)}. Details stay in the stage's files
(latents/_index.json, label_generator/fit.json, dataset/_manifest.json, eval/report.json).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from handsoff_ray.config import JobSpec

__all__ = ["STAGES", "select_stages", "run_stage", "run_stages", "stage_summary"]

STAGES = ("invert", "fit", "synthesize", "evaluate")

# The counts each stage reports, between "skipped" and "seconds".
_COUNTS = {
    "invert": ("images", "inverted_now", "mean_psnr", "mean_lpips", "workers"),
    "fit": ("images", "ensemble_size", "tasks", "workers"),
    "synthesize": ("samples", "shards", "shards_written_now", "actors"),
    "evaluate": ("test_images", "synthetic"),
}

Progress = Callable[[int, int, dict], None]  # (shards done, shards to do, manifest entry) for synthesize


def select_stages(spec: JobSpec, names: list[str]) -> list[str]:
    """The requested stages in order, without evaluate when the spec does not enable it; ValueError on typos."""
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; choose from {list(STAGES)}")
    return [n for n in names if n != "evaluate" or spec.evaluation.enabled]


def stage_summary(name: str, result: dict, seconds: float) -> dict:
    """A stage's result in the one output shape (module docstring)."""
    out = {"stage": name, "run": result["run"], "output": result["output"], "skipped": bool(result["skipped"])}
    out.update({k: result[k] for k in _COUNTS[name] if k in result})
    if name == "evaluate":  # the headline scores, not the per-class lists
        out["synthetic"] = {k: v for k, v in result["synthetic"].items() if not isinstance(v, list)}
    out["seconds"] = round(seconds, 1)
    return out


def run_stage(spec: JobSpec, name: str, *, progress: Progress | None = None) -> dict:
    """One stage on the spec's engine (Ray Train / Ray Data, or this process), summarised by `stage_summary`."""
    t0 = time.time()
    return stage_summary(name, _run(spec, name, progress), time.time() - t0)


def _run(spec: JobSpec, name: str, progress: Progress | None) -> dict:
    if name == "invert":
        from handsoff_ray.pipeline.stages import invert_stage

        return invert_stage(spec)
    if name == "fit":
        from handsoff_ray.pipeline.stages import fit_stage

        return fit_stage(spec)
    if name == "synthesize":
        from handsoff_ray.pipeline.synthesize import synthesize_stage

        return synthesize_stage(spec, progress=progress)
    if name == "evaluate":
        from handsoff_ray.pipeline.evaluate import run_evaluate

        return run_evaluate(spec)
    raise ValueError(f"unknown stage {name!r}; choose from {list(STAGES)}")


def run_stages(spec: JobSpec, names: list[str], *, spec_hash: str, progress: Progress | None = None,
               on_start: Callable[[int, int, str], None] | None = None) -> Iterator[dict]:
    """Run `names` in order, yielding each stage's summary (`stage_summary`) as it finishes.

    Records run_info and each stage's duration; when the run ends (or fails), pushes this process's
    metrics to the Pushgateway named by HANDSOFF_PUSHGATEWAY, so a finished batch run stays visible.
    """
    from handsoff_ray.pipeline.telemetry import metrics, push_to_gateway

    metrics().set("run_info", 1, run_id=spec.run_id, spec_hash=spec_hash)
    try:
        for i, name in enumerate(names, 1):
            if on_start:
                on_start(i, len(names), name)
            result = run_stage(spec, name, progress=progress)
            metrics().set("stage_seconds", result["seconds"], run_id=spec.run_id, stage=name)
            yield result
    finally:
        push_to_gateway(job=f"handsoff-{spec.run_id}")
