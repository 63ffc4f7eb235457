"""Preview grids: per pair, image | class overlay | keypoints | uncertainty, pairs in `columns` per row,
and a legend of the class colours below. One renderer for `handsoff preview` and the demo's preview.png.

    grid = preview_grid(images, segmentation=seg, keypoints=kps, uncertainty=js_maps, classes=names)
    Image.fromarray(grid).save("preview.png")

Drawing is torchvision.utils' (draw_segmentation_masks, draw_keypoints, make_grid). Small images are
enlarged (nearest neighbour) to at least `min_size` pixels a side first, so 64 px toy pairs stay
readable. The uncertainty panel is the per-pixel map when given (the demo has it), else the pair's
image score (the Parquet datasets store that) as a flat colour on the same ramp, its value written on it.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["PALETTE", "heat", "preview_grid"]

# Distinct colours for class ids 0..23 (background first, dark so the parts stand out).
PALETTE = np.array(
    [[0, 0, 0], [230, 190, 150], [220, 60, 60], [60, 120, 230], [120, 70, 30], [240, 160, 40],
     [200, 40, 160], [90, 200, 90], [0, 200, 200], [250, 250, 90], [150, 150, 255], [255, 120, 120],
     [120, 255, 200], [180, 90, 255], [255, 200, 200], [90, 90, 160], [200, 255, 120], [255, 150, 60],
     [60, 60, 60], [160, 220, 255], [255, 90, 200], [150, 100, 60], [40, 160, 120], [200, 200, 200]],
    dtype=np.uint8,
)
KEYPOINT_COLOUR = (255, 255, 255)  # visible (v > 0)
HIDDEN_KEYPOINT_COLOUR = (255, 60, 60)  # v = 0: occluded or unlabeled; in synthetic pairs, below confidence


def heat(values: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """A [H, W] map in [0, vmax] -> an RGB 'inferno-like' ramp (black -> red -> yellow -> white)."""
    v = values / (vmax if vmax else max(float(values.max()), 1e-12))
    v = np.clip(v, 0, 1)[..., None]
    stops = np.array([[0, 0, 0], [180, 30, 40], [250, 190, 40], [255, 255, 255]], np.float32)
    pos = v * (len(stops) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(stops) - 2)
    frac = pos - lo
    return ((1 - frac) * stops[lo[..., 0]] + frac * stops[lo[..., 0] + 1]).astype(np.uint8)


def _chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)  # [H, W, 3] -> [3, H, W], a copy


def _colour(k: int) -> tuple[int, int, int]:
    return tuple(int(c) for c in PALETTE[k % len(PALETTE)])


def _overlay(image: torch.Tensor, segmentation: np.ndarray) -> torch.Tensor:
    from torchvision.utils import draw_segmentation_masks

    ids = [k for k in np.unique(segmentation) if k != 255]  # 255: ignored (padding rows)
    seg = torch.from_numpy(segmentation.astype(np.int64))
    masks = torch.stack([seg == k for k in ids]) if ids else torch.zeros((0, *seg.shape), dtype=torch.bool)
    return draw_segmentation_masks(image, masks, alpha=0.55, colors=[_colour(k) for k in ids])


def _keypoints(image: torch.Tensor, keypoints: np.ndarray, scale: int) -> torch.Tensor:
    from torchvision.utils import draw_keypoints

    for points, colour in ((keypoints[keypoints[:, 2] == 0], HIDDEN_KEYPOINT_COLOUR),
                           (keypoints[keypoints[:, 2] > 0], KEYPOINT_COLOUR)):
        if len(points):
            xy = torch.from_numpy((points[:, :2].astype(np.float32) + 0.5) * scale - 0.5)[None]  # [1, K, 2]
            image = draw_keypoints(image, xy, colors=colour, radius=max(1, scale))
    return image


def _score_panel(score: float, vmax: float, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image, ImageDraw

    # the largest score at 85 % of the ramp: yellow, not white like the grid's padding
    panel = np.broadcast_to(heat(np.array([[score]]), vmax / 0.85), (*size, 3)).copy()
    img = Image.fromarray(panel)
    ImageDraw.Draw(img).text((3, 3), f"{score:.3g}", fill=(255, 255, 255) if score < 0.6 * vmax else (0, 0, 0))
    return np.asarray(img)


def _legend(entries: list[tuple[str, tuple[int, int, int]]], width: int) -> np.ndarray:
    """Rows of colour swatches with their names, `width` pixels wide, on white."""
    from PIL import Image, ImageDraw

    cell, swatch = 110, 12
    per_row = max(1, width // cell)
    rows = -(-len(entries) // per_row)
    img = Image.new("RGB", (width, rows * 18 + 6), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for k, (name, colour) in enumerate(entries):
        x, y = 4 + (k % per_row) * cell, 4 + (k // per_row) * 18
        draw.rectangle([x, y, x + swatch, y + swatch], fill=colour, outline=(0, 0, 0))
        draw.text((x + swatch + 4, y), name[:16], fill=(0, 0, 0))
    return np.asarray(img)


def preview_grid(images: np.ndarray, *, segmentation: np.ndarray | None = None,
                 keypoints: np.ndarray | None = None, uncertainty: np.ndarray | None = None,
                 uncertainty_scores: np.ndarray | None = None, classes: list[str] | None = None,
                 columns: int = 2, min_size: int = 128) -> np.ndarray:
    """uint8 [N, H, W, 3] (+ labels [N, H, W], keypoints [N, J, 3], uncertainty maps [N, h, w] or image
    scores [N]) -> one uint8 [H', W', 3] grid: `columns` pairs per row, each pair image | overlay |
    keypoints | uncertainty (those given), then a legend of the class and keypoint colours. Keypoints with
    v = 0 (occluded, unlabeled, or below confidence in synthetic pairs) are drawn too, in another colour."""
    from torchvision.utils import make_grid

    n, h, w = images.shape[:3]
    scale = max(1, -(-min_size // min(h, w)))  # ceil: enlarge small images to >= min_size
    up = lambda a: a.repeat(scale, 0).repeat(scale, 1)  # noqa: E731 - nearest-neighbour enlargement
    vmax = None
    if uncertainty is not None:
        vmax = float(np.quantile(uncertainty, 0.99)) or 1e-12
    elif uncertainty_scores is not None:
        vmax = float(np.max(uncertainty_scores)) or 1e-12
    panels = []
    for i in range(n):
        image = _chw(up(images[i]))
        row = [image]
        if segmentation is not None:
            row.append(_overlay(image, up(segmentation[i])))
        if keypoints is not None:
            row.append(_keypoints(image, keypoints[i], scale))
        if uncertainty is not None:
            u = heat(uncertainty[i], vmax)
            if u.shape[:2] != (h, w):  # maps at the label resolution, images at another
                from PIL import Image

                u = np.asarray(Image.fromarray(u).resize((w, h), Image.NEAREST))
            row.append(_chw(up(u)))
        elif uncertainty_scores is not None:
            row.append(_chw(_score_panel(float(uncertainty_scores[i]), vmax, (h * scale, w * scale))))
        panels += row
    per_pair = len(panels) // n
    grid = make_grid(panels, nrow=per_pair * max(1, min(columns, n)), padding=2, pad_value=255)
    grid = grid.permute(1, 2, 0).numpy()
    entries = [(f"{k} {name}", _colour(k)) for k, name in enumerate(classes or [])] if segmentation is not None else []
    if keypoints is not None:
        entries += [("keypoint", KEYPOINT_COLOUR), ("keypoint, v=0", HIDDEN_KEYPOINT_COLOUR)]
    if entries:
        grid = np.concatenate([grid, _legend(entries, grid.shape[1])], axis=0)
    return np.ascontiguousarray(grid)
