"""Image conversions and mosaics shared by the pipeline, the checkpoint tools and the toy GAN's training.

    from handsoff_ray.core.images import from_uint8, mosaic, to_uint8
    png = mosaic(to_uint8(G(z, noise_mode="const")), columns=8)   # uint8 [rows*H, 8*W, 3]
    x = from_uint8(images)                                         # uint8 [N, H, W, 3] -> float [N, 3, H, W]
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["from_uint8", "mosaic", "to_uint8"]


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """Generator images [N, 3, H, W] in [-1, 1] -> uint8 [N, H, W, 3] (clamped, rounded to nearest).

    The operation order is part of the dataset format: synthesized shards store these bytes.
    """
    return img.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def from_uint8(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float32 [N, 3, H, W] in [-1, 1] (x / 127.5 - 1), the generator's image range."""
    images = np.ascontiguousarray(images)
    if not images.flags.writeable:  # e.g. decoded by PIL: torch warns on read-only memory; a uint8 copy is cheap
        images = images.copy()
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def mosaic(images: np.ndarray, columns: int | None = None, *, fill: int = 0) -> np.ndarray:
    """uint8 [N, H, W, C] -> one [rows*H, columns*W, C] picture, row-major, empty cells `fill`.

    columns defaults to ceil(sqrt(N)) (a near-square mosaic).
    """
    n, h, w, c = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    canvas = np.full((rows * h, columns * w, c), fill, np.uint8)
    for i, im in enumerate(images):
        r, k = divmod(i, columns)
        canvas[r * h : (r + 1) * h, k * w : (k + 1) * w] = im
    return canvas
