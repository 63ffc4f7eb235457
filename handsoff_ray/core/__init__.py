"""Pure-PyTorch HandsOff core: generator, checkpoints, inversion, label generator, uncertainty, metrics.

No Ray and no storage URIs here; `handsoff_ray.pipeline` orchestrates these pieces.

    from handsoff_ray.core import load_generator
    G = load_generator("stylegan2-ffhq-config-f.pt")
    img = G(z, truncation_psi=0.7, noise_mode="const")
"""

from handsoff_ray.core.checkpoint import CheckpointError, load_generator, save_generator
from handsoff_ray.core.encoder import Encoder, train_encoder
from handsoff_ray.core.inversion import InversionResult, invert, prepare_images
from handsoff_ray.core.label_generator import (
    LabelGenerator,
    TaskSpec,
    fit_label_generator,
    load_label_generator,
    merge_label_generators,
    save_label_generator,
)
from handsoff_ray.core.lpips_offline import load_lpips
from handsoff_ray.core.pairs import SyntheticPairs, synthesize
from handsoff_ray.core.stylegan2 import FeatureSpec, Generator, GeneratorConfig, feature_spec, z_from_seeds
from handsoff_ray.core.uncertainty import filter_indices, image_scores, pixel_uncertainty

__all__ = [
    "CheckpointError",
    "Encoder",
    "FeatureSpec",
    "Generator",
    "GeneratorConfig",
    "InversionResult",
    "LabelGenerator",
    "SyntheticPairs",
    "TaskSpec",
    "feature_spec",
    "filter_indices",
    "fit_label_generator",
    "image_scores",
    "invert",
    "load_generator",
    "load_label_generator",
    "load_lpips",
    "merge_label_generators",
    "pixel_uncertainty",
    "prepare_images",
    "save_generator",
    "save_label_generator",
    "synthesize",
    "train_encoder",
    "z_from_seeds",
]
