"""The HandsOff stages, each written once as prepare -> units of work -> finish (base.py).

    invert      labeled images -> W+ latents               units: batches of images   (Ray Train)
    fit         hypercolumns + labels -> label generator   units: ensemble members    (Ray Train)
    synthesize  sample ids -> Parquet shards               units: shards              (Ray Data)
    evaluate    downstream network on the pairs -> scores  one unit, in the driver

`pipeline.run.run_stage(spec, name)` runs one on the spec's engine (pipeline/engines.py).
"""

from handsoff_ray.pipeline.stages.base import Plan, Stage
from handsoff_ray.pipeline.stages.evaluate import EvaluateStage
from handsoff_ray.pipeline.stages.fit import FitStage
from handsoff_ray.pipeline.stages.invert import InvertStage
from handsoff_ray.pipeline.stages.synthesize import SynthesizeStage

__all__ = ["STAGES", "Plan", "Stage"]

STAGES: dict[str, Stage] = {s.name: s for s in (InvertStage(), FitStage(), SynthesizeStage(), EvaluateStage())}
