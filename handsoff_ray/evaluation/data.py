"""The labeled images a downstream network trains or is tested on, in memory: `DownstreamData`.

Images are uint8 `[N, H, W, 3]`; each task (segmentation, keypoints, depth) is present when not None;
`weights` are per-sample loss weights (0 = never trained on). Invalid depth is NaN or <= 0.

Tests: `python -m pytest -q tests/evaluation/test_downstream.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

TASKS: tuple[str, ...] = ("segmentation", "keypoints", "depth")
IGNORE_INDEX = 255  # segmentation pixels never trained on nor scored
EVAL_CHUNK = 256  # images per chunk when scanning a whole dataset


def as_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, np.ndarray) and not x.flags.writeable:
        x = x.copy()  # torch warns on (and must not alias) read-only numpy memory
    return torch.as_tensor(x)


@dataclass(frozen=True)
class DownstreamData:
    """Labeled images in memory. numpy arrays are accepted and become tensors; a task is present when not None."""

    images: torch.Tensor  # uint8 [N, H, W, 3]
    segmentation: torch.Tensor | None = None  # integer [N, H, W] class ids, 255 = ignore
    keypoints: torch.Tensor | None = None  # float32 [N, J, 3]: x, y (pixel centres at integers), v 0|1|2
    depth: torch.Tensor | None = None  # float32 [N, H, W] in the dataset's units; NaN or <= 0 = invalid
    weights: torch.Tensor | None = None  # float32 [N] per-sample loss weight >= 0; 0 = never trained on

    def __post_init__(self) -> None:
        images = as_tensor(self.images)
        if images.dim() != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 [N, H, W, 3], got {images.dtype} {tuple(images.shape)}")
        n, h, w = images.shape[:3]
        if n < 1:
            raise ValueError("images is empty; pass at least one labeled image")
        object.__setattr__(self, "images", images)
        expect = {"segmentation": (n, h, w), "keypoints": None, "depth": (n, h, w), "weights": (n,)}
        for name in ("segmentation", "keypoints", "depth", "weights"):
            value = getattr(self, name)
            if value is None:
                continue
            t = as_tensor(value)
            if name == "segmentation":
                if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
                    raise ValueError(f"segmentation must hold integer class ids, got dtype {t.dtype}")
            elif name == "keypoints":
                if t.dim() != 3 or t.shape[0] != n or t.shape[2] != 3:
                    raise ValueError(f"keypoints must be [N={n}, J, 3] (x, y, v), got {tuple(t.shape)}")
                t = t.float()
            else:
                t = t.float()
            if expect[name] is not None and tuple(t.shape) != expect[name]:
                raise ValueError(f"{name} must have shape {list(expect[name])} to match images, got {list(t.shape)}")
            if name == "weights" and (not bool(torch.isfinite(t).all()) or bool((t < 0).any()) or not bool((t > 0).any())):
                raise ValueError("weights must be finite, >= 0, and not all 0 (0 drops a sample)")
            object.__setattr__(self, name, t)

    @classmethod
    def from_batch(cls, batch: Any, *, weights: Any = None) -> DownstreamData:
        """From anything with `images` and optional `segmentation` / `keypoints` / `depth` (LabeledBatch, ToyBatch)."""
        return cls(images=batch.images, segmentation=getattr(batch, "segmentation", None),
                   keypoints=getattr(batch, "keypoints", None), depth=getattr(batch, "depth", None), weights=weights)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(t for t in TASKS if getattr(self, t) is not None)

    def subset(self, indices: Sequence[int] | torch.Tensor) -> DownstreamData:
        """The samples at `indices` (e.g. `uncertainty.filter_indices(scores)`), in that order."""
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        if idx.numel() == 0:
            raise ValueError("subset: no indices given; keep at least one sample")
        if int(idx.min()) < 0 or int(idx.max()) >= len(self):
            raise IndexError(f"subset: indices must be in [0, {len(self)}), got {int(idx.min())}..{int(idx.max())}")

        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[idx]

        return DownstreamData(images=self.images[idx], segmentation=pick(self.segmentation),
                              keypoints=pick(self.keypoints), depth=pick(self.depth), weights=pick(self.weights))


def images_to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 `[N, H, W, 3]` -> float `[N, 3, H, W]` in [0, 1], the models' input (normalised inside)."""
    return images.permute(0, 3, 1, 2).float().div_(255.0)


def valid_depth(depth: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(depth) & (depth > 0)


def mean_log_depth(depth: torch.Tensor, indices: torch.Tensor) -> float | None:
    """Mean log-depth over the valid pixels of `depth[indices]`; None when no pixel is valid."""
    total, count = 0.0, 0
    for idx in indices.split(EVAL_CHUNK):
        d = depth[idx]
        valid = valid_depth(d)
        total += float(torch.log(d[valid].double()).sum())
        count += int(valid.sum())
    return total / count if count else None
