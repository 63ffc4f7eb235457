"""handsoff_ray: HandsOff labeled-dataset generation (Xu et al., CVPR 2023), at cluster scale on Ray.

Layers, imports pointing one way: `handsoff_ray.core` (pure PyTorch) <- `handsoff_ray.pipeline`
(storage, Ray orchestration) <- `handsoff_ray.cli` and `jobs/`. See docs/ARCHITECTURE.md.

    from handsoff_ray import SyntheticDataset
    ds = SyntheticDataset("s3://bucket/runs/<run_id>/dataset")   # a torch IterableDataset of the shards
"""

__version__ = "0.1.0"
__all__ = ["SyntheticDataset", "__version__"]


def __getattr__(name: str):
    # Lazy, so `import handsoff_ray` (the CLI's start-up) does not import torch and pyarrow.
    if name == "SyntheticDataset":
        from handsoff_ray.pipeline.dataset.reader import SyntheticDataset

        return SyntheticDataset
    raise AttributeError(f"module 'handsoff_ray' has no attribute {name!r}")
