"""Preview grids: one row per pair, columns image | label overlay | uncertainty map.

    grid = preview_grid(images, segmentation=seg, keypoints=kps, uncertainty=js_maps)
    Image.fromarray(grid).save("preview.png")
"""

from __future__ import annotations

import numpy as np

__all__ = ["PALETTE", "overlay", "heat", "preview_grid"]

# Distinct colours for class ids 0..23 (background first, dark so the parts stand out).
PALETTE = np.array(
    [[0, 0, 0], [230, 190, 150], [220, 60, 60], [60, 120, 230], [120, 70, 30], [240, 160, 40],
     [200, 40, 160], [90, 200, 90], [0, 200, 200], [250, 250, 90], [150, 150, 255], [255, 120, 120],
     [120, 255, 200], [180, 90, 255], [255, 200, 200], [90, 90, 160], [200, 255, 120], [255, 150, 60],
     [60, 60, 60], [160, 220, 255], [255, 90, 200], [150, 100, 60], [40, 160, 120], [200, 200, 200]],
    dtype=np.uint8,
)


def overlay(image: np.ndarray, segmentation: np.ndarray | None, keypoints: np.ndarray | None,
            alpha: float = 0.55) -> np.ndarray:
    """Blend class colours over the image and mark visible keypoints with white crosses."""
    out = image.astype(np.float32)
    if segmentation is not None:
        colours = PALETTE[segmentation % len(PALETTE)].astype(np.float32)
        out = (1 - alpha) * out + alpha * colours
    out = out.clip(0, 255).astype(np.uint8)
    if keypoints is not None:
        h, w = out.shape[:2]
        for x, y, v in keypoints:
            if v > 0:
                cx, cy = int(round(x)), int(round(y))
                for dx, dy in ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)):
                    if 0 <= cx + dx < w and 0 <= cy + dy < h:
                        out[cy + dy, cx + dx] = (255, 255, 255)
    return out


def heat(values: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """A [H, W] map in [0, vmax] -> an RGB 'inferno-like' ramp (black -> red -> yellow -> white)."""
    v = values / (vmax if vmax else max(float(values.max()), 1e-12))
    v = np.clip(v, 0, 1)[..., None]
    stops = np.array([[0, 0, 0], [180, 30, 40], [250, 190, 40], [255, 255, 255]], np.float32)
    pos = v * (len(stops) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(stops) - 2)
    frac = pos - lo
    return ((1 - frac) * stops[lo[..., 0]] + frac * stops[lo[..., 0] + 1]).astype(np.uint8)


def preview_grid(images: np.ndarray, *, segmentation: np.ndarray | None = None,
                 keypoints: np.ndarray | None = None, uncertainty: np.ndarray | None = None,
                 zoom: int = 2) -> np.ndarray:
    """uint8 [N, H, W, 3] (+ labels) -> one uint8 image with a row of 2-3 panels per pair."""
    rows = []
    vmax = float(np.quantile(uncertainty, 0.99)) if uncertainty is not None else None
    for i, im in enumerate(images):
        panels = [im, overlay(im, None if segmentation is None else segmentation[i],
                              None if keypoints is None else keypoints[i])]
        if uncertainty is not None:
            panels.append(heat(uncertainty[i], vmax))
        row = np.concatenate([np.pad(p, ((1, 1), (1, 1), (0, 0)), constant_values=255) for p in panels], axis=1)
        rows.append(row)
    grid = np.concatenate(rows, axis=0)
    return grid.repeat(zoom, 0).repeat(zoom, 1) if zoom > 1 else grid
