"""The HandsOff pipeline: stages, engines, storage and Ray orchestration.

    from handsoff_ray.config import load_spec
    from handsoff_ray.pipeline.run import run_stage
    run_stage(load_spec("jobs/specs/toy.yaml"), "invert")      # on resources.engine; see run.py

Entry points: `run` (dispatch), `context` (what a run shares), `stages/` (each stage once), `engines`
(where units run), `layout` (every path of a run), `dataset/` (the dataset format: writer, manifest,
SyntheticDataset, export). See docs/ARCHITECTURE.md.
"""
