"""The toy world's faces as a generator sees real data: `[N, 3, R, R]` float tensors in [-1, 1].

`handsoff train-gan` trains on them (pipeline/gan/data.py, the toy stream) and quality.py measures KID
against them.

Tests: `python -m pytest -q tests/pipeline/test_train_gan.py tests/toy/test_quality.py`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from handsoff_ray.core.images import from_uint8
from handsoff_ray.toy.world import render_batch

__all__ = ["real_images"]


def real_images(seeds: Sequence[int] | np.ndarray, resolution: int) -> torch.Tensor:
    """Toy-world images for these seeds as [N, 3, R, R] floats in [-1, 1]."""
    imgs = render_batch([int(s) for s in seeds], size=resolution).images  # [N, R, R, 3] uint8
    return from_uint8(imgs)
