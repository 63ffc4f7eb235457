"""Pure-PyTorch HandsOff core: generator, checkpoints, inversion, label generator, uncertainty, metrics.

No Ray and no storage URIs here; `handsoff_ray.pipeline` orchestrates these pieces.

    from handsoff_ray.core import load_generator
    G = load_generator("stylegan2-ffhq-config-f.pt")
    img = G(z, truncation_psi=0.7, noise_mode="const")
"""

from handsoff_ray.core.checkpoint import CheckpointError, load_generator, save_generator
from handsoff_ray.core.stylegan2 import FeatureSpec, Generator, GeneratorConfig, feature_spec, z_from_seeds

__all__ = [
    "CheckpointError",
    "FeatureSpec",
    "Generator",
    "GeneratorConfig",
    "feature_spec",
    "load_generator",
    "save_generator",
    "z_from_seeds",
]
