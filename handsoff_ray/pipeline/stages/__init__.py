"""The HandsOff stages, each written once as prepare -> units of work -> finish (base.py).

    invert      labeled images -> W+ latents               units: batches of images   (Ray Train)
    fit         hypercolumns + labels -> label generator   units: ensemble members    (Ray Train)
    synthesize  sample ids -> Parquet shards               units: shards              (Ray Data)
    evaluate    downstream network on the pairs -> scores  one unit, in the driver
    suggest     unlabeled pool -> image descriptors        units: runs of pool images (Ray Data)
                (not a step of `handsoff run`: `handsoff suggest` runs it, then selects)

`pipeline.run.run_stage(spec, name)` runs one on the spec's engine (pipeline/engines.py).
"""

from handsoff_ray.pipeline.stages.base import Plan, Stage
from handsoff_ray.pipeline.stages.evaluate import EvaluateStage
from handsoff_ray.pipeline.stages.fit import FitStage
from handsoff_ray.pipeline.stages.invert import InvertStage
from handsoff_ray.pipeline.stages.suggest import SuggestFeaturesStage
from handsoff_ray.pipeline.stages.synthesize import SynthesizeStage

__all__ = ["STAGES", "ALL_STAGES", "Plan", "Stage"]

STAGES: dict[str, Stage] = {s.name: s for s in (InvertStage(), FitStage(), SynthesizeStage(), EvaluateStage())}
# Every stage an engine can run by name: the run's stages and `handsoff suggest`'s pool features.
ALL_STAGES: dict[str, Stage] = {**STAGES, "suggest": SuggestFeaturesStage()}
