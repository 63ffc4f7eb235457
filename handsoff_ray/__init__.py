"""handsoff_ray: HandsOff labeled-dataset generation (Xu et al., CVPR 2023), at cluster scale on Ray.

Layers, imports pointing one way: `handsoff_ray.core` (pure PyTorch) <- `handsoff_ray.pipeline`
(storage, Ray orchestration) <- `handsoff_ray.cli` and `jobs/`. See docs/ARCHITECTURE.md.
"""

__version__ = "0.1.0"
