"""The procedural labeled face world (exact segmentation, keypoints, depth); see world.py.

    python -m handsoff_ray.toy.world_cli --grid grid.png --n 16

Names are resolved lazily so that importing the package (e.g. for its assets/) stays free.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

# The toy generator shipped with the package ('toy' in specs and `train-gan --init toy`).
SHIPPED_GENERATOR = Path(__file__).parent / "assets" / "toy_stylegan2.safetensors"
TOY_ALIAS = "toy"


def resolve_alias(name: str) -> str:
    """The one place the alias is read: 'toy' -> the shipped generator's path; any other name unchanged."""
    return str(SHIPPED_GENERATOR) if name == TOY_ALIAS else name

__all__ = ["CLASSES", "KEYPOINT_NAMES", "ToyBatch", "ToySample", "render_batch", "render_face"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("handsoff_ray.toy.world"), name)
    raise AttributeError(f"module 'handsoff_ray.toy' has no attribute {name!r}")
