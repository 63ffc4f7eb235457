"""What a label generator head predicts: `TaskSpec`, and each task's target encoding and decoding.

Tasks and their targets (given to `fit_label_generator` at the output resolution `out_size`):
- segmentation: `[N, H, W]` int class ids; `ignore_index` pixels are skipped; cross-entropy with
  optional class weights; per image, classes 1.. with fewer than `min_pixels` pixels become background
  (the reference cleanup; 0 turns it off). Decoded label: majority vote of the members' arg-max maps.
- keypoints: `[N, J, 3]` (x, y, v) in output pixels, pixel centres at integer coordinates, v as in
  keypoints.json (0 unlabeled, 1 occluded, 2 visible). The head regresses J heatmaps
  `exp(-d^2 / (2 sigma^2))` with MSE; keypoints with v < `min_visibility` are masked out of the loss.
  Decoding (`decode_keypoints`, on the member-mean heatmaps): arg-max, then a parabola through the
  log-heatmap at the peak and its two neighbours per axis (exact for a Gaussian peak); v = 2 when
  the peak height reaches `visibility_threshold`, else 0.
- depth: `[N, H, W]` in the dataset's units, 0 = invalid. SCALE CONVENTION: the head regresses
  normalised log-depth `(log d - mu) / sd`, where mu and sd are the mean and standard deviation of
  log-depth over the valid training pixels; they are stored with the model (buffer `target_norm`,
  and in the saved JSON header), and `decode` returns `exp(mu + sd * mean_members)` in the dataset's
  units. MSE on valid pixels only. Ensemble variance is therefore in normalised log-depth units.

Tests: `python -m pytest -q tests/core/test_label_generator.py`.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any, Literal, Mapping

import torch

TaskKind = Literal["segmentation", "keypoints", "depth"]
_KINDS = ("segmentation", "keypoints", "depth")


@dataclass(frozen=True)
class TaskSpec:
    """One output head. Defaults follow the reference faces setup where it has one."""

    kind: TaskKind
    num_outputs: int  # K classes, J keypoints, or 1 for depth
    hidden: tuple[int, int] = (256, 32)  # reference: faces (256, 32), cars (512, 256)
    # segmentation
    class_weights: tuple[float, ...] | None = None  # cross-entropy weights, one per class
    min_pixels: int = 30  # per image, smaller classes (ids >= 1) become background; 0 = keep all
    ignore_index: int = 255  # target value that is never trained on
    # keypoints
    sigma: float = 3.0  # Gaussian heatmap std in output pixels; larger for coarse labels
    min_visibility: int = 2  # train keypoints with v >= this; 1 also trains occluded positions
    visibility_threshold: float = 0.5  # decoded v = 2 when the heatmap peak reaches this
    positive_fraction: float = 0.5  # share of each batch drawn within 3 sigma of a keypoint

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if self.class_weights is not None:
            object.__setattr__(self, "class_weights", tuple(float(w) for w in self.class_weights))
        if self.kind not in _KINDS:
            raise ValueError(f"TaskSpec.kind must be one of {_KINDS}, got {self.kind!r}")
        if self.num_outputs < 1:
            raise ValueError(f"TaskSpec.num_outputs must be >= 1, got {self.num_outputs}")
        if self.kind == "depth" and self.num_outputs != 1:
            raise ValueError(f"a depth head has one output, got num_outputs={self.num_outputs}; pass num_outputs=1")
        if len(self.hidden) != 2 or min(self.hidden) < 1:
            raise ValueError(f"TaskSpec.hidden must be two positive widths like (256, 32), got {self.hidden}")
        if self.class_weights is not None and len(self.class_weights) != self.num_outputs:
            raise ValueError(f"class_weights has {len(self.class_weights)} entries but num_outputs="
                             f"{self.num_outputs}; give one weight per class")
        if self.sigma <= 0:
            raise ValueError(f"TaskSpec.sigma must be > 0 pixels, got {self.sigma}")
        if not 0.0 <= self.positive_fraction < 1.0:
            raise ValueError(f"TaskSpec.positive_fraction must be in [0, 1), got {self.positive_fraction}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TaskSpec":
        return cls(**d)


# Every seed (member init, pixel sampling, the validation split) derives from (spec seed, task, member,
# purpose), so a member's weights do not depend on which other members a worker fits.
def derive_seed(*parts: object) -> int:
    """A 63-bit seed from its parts, stable across processes (unlike hash())."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)



def clean_small_classes(masks: torch.Tensor, min_pixels: int, *, ignore_index: int = 255) -> torch.Tensor:
    """Per image, set classes >= 1 (not ignore_index) covering fewer than min_pixels pixels to 0."""
    out = masks.clone()
    if min_pixels <= 0:
        return out
    for i in range(out.shape[0]):
        ids, counts = torch.unique(out[i], return_counts=True)
        for cls, cnt in zip(ids.tolist(), counts.tolist()):
            if cls not in (0, ignore_index) and cnt < min_pixels:
                out[i][out[i] == cls] = 0
    return out


def render_heatmaps(keypoints: torch.Tensor, out_size: tuple[int, int], sigma: float) -> torch.Tensor:
    """Gaussian heatmaps `[N, J, H, W]` for keypoints `[N, J, 2 or 3]` (x, y[, v]) in output pixels."""
    height, width = out_size
    ys = torch.arange(height, dtype=torch.float32, device=keypoints.device)
    xs = torch.arange(width, dtype=torch.float32, device=keypoints.device)
    dy = (ys[None, None, :] - keypoints[..., 1:2].float()) ** 2  # [N, J, H]
    dx = (xs[None, None, :] - keypoints[..., 0:1].float()) ** 2  # [N, J, W]
    return torch.exp(-(dy[..., :, None] + dx[..., None, :]) / (2 * sigma**2))


def decode_keypoints(heatmaps: torch.Tensor, *, threshold: float = 0.5) -> torch.Tensor:
    """Sub-pixel keypoints `[N, J, 3]` (x, y, v) from heatmaps `[N, J, H, W]`; v = 2 if peak >= threshold else 0."""
    n, j, height, width = heatmaps.shape
    flat = heatmaps.reshape(n, j, -1).float()
    peak, arg = flat.max(dim=2)
    py, px = arg // width, arg % width

    def offset(center: torch.Tensor, size: int, stride: int) -> torch.Tensor:
        # Parabola through log-values at -1, 0, +1 (exact for a Gaussian); 0 at borders or flat peaks.
        has = (center > 0) & (center < size - 1)
        lo = flat.gather(2, (arg - stride * has.long()).unsqueeze(2)).squeeze(2)
        hi = flat.gather(2, (arg + stride * has.long()).unsqueeze(2)).squeeze(2)
        tiny = torch.finfo(torch.float32).tiny
        lm, l0, lp = (torch.log(v.clamp_min(tiny)) for v in (lo, peak, hi))
        curvature = lm - 2 * l0 + lp
        ok = has & (curvature < 0) & (lo > 0) & (hi > 0) & (peak > 0)
        delta = torch.where(ok, 0.5 * (lm - lp) / torch.where(ok, curvature, torch.ones_like(curvature)),
                            torch.zeros_like(curvature))
        return delta.clamp(-0.5, 0.5)

    x = px.float() + offset(px, width, 1)
    y = py.float() + offset(py, height, width)
    v = torch.where(peak >= threshold, 2.0, 0.0)
    return torch.stack([x, y, v], dim=2)

