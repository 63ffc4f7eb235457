"""A stage is written once, as prepare -> units of work -> finish; an engine only decides where units run.

    plan = stage.prepare(ctx)            # driver: validate inputs, claim the output folder, list what is left
    work = stage.worker(ctx)             # each process that runs units: load the models once
    result = work(unit, report)          # one unit of work (an inversion batch, an ensemble member, a shard)
    stage.record(ctx, plan, result)      # driver, as each result arrives (engines that return results)
    summary = stage.finish(ctx, plan)    # driver: merge, index, mark the stage done

A stage's facts live on its class, nowhere else: its name, its `folder` in the run (which spec owns it:
`_stage.json`; Ray Train progress: `_progress/`), its `output`, the `counts` its summary line shows and
`describe(spec)`, its entry in the resolved plan (`handsoff run --dry-run`). Their order is
stages/__init__.py's registry. Which spec sections its identity hashes is config.py's `stage_hash` (one
place for spec hashing: identity.py and the resolved plan hash without importing stages).

`run.run_stage` puts the same header on every result: stage, run (the run's URI), output (`output_uri`) and
skipped (True when prepare found the stage done; a stage's own result may say more precisely). A stage
returns only what is its own (counts, reason, identity).

Units are JSON-able, and their results depend only on the spec and the unit, so the outputs are the
same bytes on every engine and for every number of workers. A unit writes its own output to the run's
storage before it returns, so an interrupted run redoes only the units that had not returned.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Plan", "Stage", "Report", "Worker"]

Report = Callable[[int], None]  # progress inside the running unit, in the stage's progress unit, so far
Worker = Callable[[Any, Report], Any]  # (unit, report) -> result


@dataclass
class Plan:
    units: list = field(default_factory=list)  # JSON-able units of work still to do
    total: int = 0  # the progress bar's total, in the stage's progress unit
    state: dict = field(default_factory=dict)  # what record/finish need (ids, manifest, ...)
    done: dict | None = None  # the stage's result when it was already done: no unit runs, finish is skipped


class Stage:
    name: str
    progress_unit: str = "unit"
    # Where the `ray` engine runs the units: Ray Train workers ("train": results stay in storage),
    # a Ray Data actor pool ("data": results stream back to the driver's `record`), or in-process (None).
    ray: Literal["train", "data"] | None = None

    folder: str = ""  # the stage's folder in the run (layout.RUN): its _stage.json marker and _progress/
    output: str = ""  # the stage's output in the run folder (layout.RUN), named in the result header
    counts: tuple[str, ...] = ()  # the result fields its summary line shows, after the header (run.stage_summary)

    def output_uri(self, ctx, plan: Plan) -> str:
        return ctx.store.uri(self.output)

    def describe(self, spec) -> dict:
        """The stage's entry in the resolved plan (pipeline/resolved.py): what it reads and writes, its hash.
        Nothing is opened or computed."""
        return {}

    def prepare(self, ctx) -> Plan:
        raise NotImplementedError

    def worker(self, ctx) -> Worker:
        raise NotImplementedError

    def weight(self, ctx, unit) -> int:
        """A unit's share of the progress total."""
        return 1

    def record(self, ctx, plan: Plan, result) -> None:
        """Take one unit's result on the driver (called in completion order)."""

    def finish(self, ctx, plan: Plan) -> dict:
        raise NotImplementedError
