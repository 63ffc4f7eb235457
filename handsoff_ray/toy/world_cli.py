"""Looking at the toy world: a grid of (image | labels + keypoints | depth), and a speed measurement.

    python -m handsoff_ray.toy.world_cli --grid grid.png --n 16     # image | labels + keypoints | depth
    python -m handsoff_ray.toy.world_cli --bench                     # images/s on this core, as JSON

Tests: `python -m pytest -q tests/toy/test_world.py`.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from handsoff_ray.toy.world import ToySample, render_face

__all__ = ["CLASS_COLOURS", "make_grid", "main"]

# Overlay colours for the grid, one RGB uint8 row per class id.
CLASS_COLOURS = np.array(
    [[0, 0, 0], [230, 180, 140], [255, 90, 30], [40, 120, 255], [140, 40, 200], [40, 200, 90],
     [230, 20, 80], [250, 220, 40]],
    dtype=np.uint8,
)
KEYPOINT_COLOURS = ((0, 255, 255), (0, 160, 255), (255, 0, 255), (255, 255, 255), (255, 255, 0))


def make_grid(samples: Sequence[ToySample], *, zoom: int = 3, columns: int = 4) -> np.ndarray:
    """A uint8 [H, W, 3] picture: per sample, image | segmentation overlay with keypoints | depth.

    Visible keypoints are filled squares, occluded ones hollow, in KEYPOINT_COLOURS order.
    """
    tiles = []
    for s in samples:
        img = s.image.astype(np.float32)
        overlay = 0.35 * img + 0.65 * CLASS_COLOURS[s.segmentation].astype(np.float32)
        d = s.depth
        near, far = float(d.min()), float(d.max())
        grey = 255.0 * (far - d) / max(far - near, 1e-6)  # near = bright
        row = [np.repeat(np.repeat(t, zoom, 0), zoom, 1) for t in (img, overlay, np.repeat(grey[..., None], 3, 2))]
        over = row[1]
        for (x, y, vis), col in zip(s.keypoints, KEYPOINT_COLOURS):
            cx, cy = int(round((x + 0.5) * zoom - 0.5)), int(round((y + 0.5) * zoom - 0.5))
            r = max(1, zoom // 2 + 1)
            mark = over[max(cy - r, 0):cy + r + 1, max(cx - r, 0):cx + r + 1]  # a view: drawing on it draws on over
            if vis >= 2:
                mark[:] = col
            else:
                mark[[0, -1], :] = col
                mark[:, [0, -1]] = col
        gap = np.full((row[0].shape[0], 2, 3), 255.0, np.float32)
        tiles.append(np.concatenate([row[0], gap, row[1], gap, row[2]], axis=1))
    h, w = tiles[0].shape[:2]
    rows = math.ceil(len(tiles) / columns)
    pad = 6
    canvas = np.full((rows * (h + pad), min(columns, len(tiles)) * (w + pad), 3), 255.0, np.float32)
    for k, t in enumerate(tiles):
        r, c = divmod(k, columns)
        canvas[r * (h + pad): r * (h + pad) + h, c * (w + pad): c * (w + pad) + w] = t
    return np.clip(canvas, 0, 255).astype(np.uint8)


def _bench(size: int, n: int) -> dict[str, Any]:
    render_face(0, size)  # warm the grid cache
    wall, cpu = time.perf_counter(), time.process_time()
    for s in range(n):
        render_face(s, size)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    # CPU time is what one core costs; wall time also counts whatever else shares the machine.
    return {"size": size, "supersample": 3, "n": n, "images_per_cpu_s": round(n / cpu, 1),
            "images_per_wall_s": round(n / wall, 1), "ms_cpu_per_image": round(1000 * cpu / n, 3)}


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m handsoff_ray.toy.world_cli",
                                 description="Look at the toy world: a grid of labeled samples, a speed measurement.")
    ap.add_argument("--bench", action="store_true", help="print images/s on one core as JSON")
    ap.add_argument("--grid", metavar="PNG", type=Path, help="write a grid of samples to this PNG")
    ap.add_argument("--n", metavar="N", type=int, default=None,
                    help="samples in the grid (default 16) or renders to time (default 200)")
    ap.add_argument("--size", metavar="PX", type=int, default=64, help="output size, 16..256 (default 64)")
    ap.add_argument("--seed", metavar="S", type=int, default=0, help="first seed of the grid (default 0)")
    ap.add_argument("--zoom", metavar="Z", type=int, default=3, help="grid upscaling (default 3)")
    args = ap.parse_args(argv)
    if not (args.bench or args.grid):
        ap.error("pass --bench and/or --grid PNG")
    if args.grid:
        from PIL import Image

        samples = [render_face(args.seed + k, args.size) for k in range(args.n or 16)]
        args.grid.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(make_grid(samples, zoom=args.zoom)).save(args.grid)
        print(json.dumps({"grid": str(args.grid), "n": len(samples), "size": args.size}))
    if args.bench:
        print(json.dumps(_bench(args.size, args.n or 200)))


if __name__ == "__main__":
    main()
