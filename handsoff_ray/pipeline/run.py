"""Run the stages of one job spec, each on the engine the spec names, with the run's metrics.

    run_stage(spec, "invert")                          # one stage on resources.engine; its full result
    run_stage(spec, "fit", engine="local")             # the same units of work in this process
    for summary in run_stages(spec, ["invert", "fit", "synthesize"], spec_hash=h):
        print(summary)                                 # {"stage": "invert", ...} as each stage finishes

This is the one place stages are dispatched: `handsoff run`, the single-stage commands (`handsoff invert`,
`fit`, `synthesize`, `evaluate`), the demo and the RayJob entrypoint all come through `run_stage`, so a
stage runs the same way whichever starts it. A command prints `stage_summary`: {"stage", "run" (the
run's URI), "output" (the stage's), "skipped" (nothing was left to do), the stage's counts, "seconds"
(wall time of this call), "reason" (one line: what reran and why, e.g. "fit: 2 labeled images changed since
the last fit")}. Details stay in the stage's files (latents/_index.json,
label_generator/fit.json, dataset/_manifest.json, eval/report.json).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from handsoff_ray.config import JobSpec
from handsoff_ray.pipeline.context import RunContext
from handsoff_ray.pipeline.engines import check_ray_reachable
from handsoff_ray.pipeline.stages import ALL_STAGES, STAGES

__all__ = ["select_stages", "run_stage", "run_stages", "stage_summary"]

def select_stages(spec: JobSpec, names: list[str]) -> list[str]:
    """The requested stages in order, without evaluate when the spec does not enable it; ValueError on typos."""
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; choose from {list(STAGES)}")
    return [n for n in names if n != "evaluate" or spec.evaluation.enabled]


def stage_summary(result: dict) -> dict:
    """A stage's result in the one output shape (module docstring)."""
    name = result["stage"]
    out = {"stage": name, "run": result["run"], "output": result["output"], "skipped": bool(result["skipped"])}
    out.update({k: result[k] for k in ALL_STAGES[name].counts if k in result})  # the stage's own counts
    if "reason" in result:  # what reran and why, one line
        out["reason"] = result["reason"]
    if name == "evaluate":  # the headline scores, not the per-class lists
        out["synthetic"] = {k: v for k, v in result["synthetic"].items() if not isinstance(v, list)}
    out["seconds"] = result["seconds"]
    return out


def run_stage(spec: JobSpec, name: str, *, engine: str | None = None, ctx: RunContext | None = None) -> dict:
    """Run one stage: prepare, its units on `engine` (default resources.engine), finish; the stage's result
    with "seconds" (this call's wall time) and, on Ray, "workers"."""
    from handsoff_ray.pipeline.engines import ENGINES, run_units
    from handsoff_ray.pipeline.progress import stage_progress

    if name not in ALL_STAGES:
        raise ValueError(f"unknown stage {name!r}; choose from {list(ALL_STAGES)}")
    engine = engine or spec.resources.engine
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose from {list(ENGINES)}")
    t0 = time.time()
    ctx = ctx or RunContext(spec)
    stage = ALL_STAGES[name]
    if engine == "ray" and stage.ray:
        check_ray_reachable(spec)  # before prepare writes the stage's marker: a dead head fails in seconds
    plan = stage.prepare(ctx)
    header = {"stage": name, "run": ctx.store.uri(), "output": stage.output_uri(ctx, plan),
              "skipped": plan.done is not None}  # the one place results get their header (stages/base.py)
    result = plan.done
    if result is None:
        # A stage with no progress total (evaluate) shows its own progress; a silent bar stands in.
        with stage_progress(name, total=plan.total, unit=stage.progress_unit,
                            **({} if plan.total else {"interactive": False})) as bar:
            run_units(stage, ctx, plan, bar, engine)
        result = stage.finish(ctx, plan)
        if engine == "ray" and stage.ray == "train":
            result["workers"] = spec.resources.num_workers
    return {**header, **result, "seconds": round(time.time() - t0, 1)}


def run_stages(spec: JobSpec, names: list[str], *, spec_hash: str, ctx: RunContext | None = None,
               on_start: Callable[[int, int, str], None] | None = None) -> Iterator[dict]:
    """Run `names` in order in one run context, yielding each stage's `stage_summary` as it finishes.

    Records run_info and each stage's duration; when the run ends (or fails), pushes this process's
    metrics to the Pushgateway named by HANDSOFF_PUSHGATEWAY, so a finished batch run stays visible.
    """
    from handsoff_ray.pipeline.telemetry import metrics, push_to_gateway

    ctx = ctx or RunContext(spec)  # the labeled set is opened once for all the stages
    metrics().set("run_info", 1, run_id=spec.run_id, spec_hash=spec_hash)
    try:
        for i, name in enumerate(names, 1):
            if on_start:
                on_start(i, len(names), name)
            summary = stage_summary(run_stage(spec, name, ctx=ctx))
            metrics().set("stage_seconds", summary["seconds"], run_id=spec.run_id, stage=name)
            yield summary
    finally:
        push_to_gateway(job=f"handsoff-{spec.run_id}")
