"""Preview grids: image | overlay | keypoints | uncertainty per pair, `columns` pairs a row, a class legend."""

from __future__ import annotations

import numpy as np

from handsoff_ray.pipeline.dataset.preview import HIDDEN_KEYPOINT_COLOUR, PALETTE, preview_grid

CLASSES = ["background", "skin", "eye"]


def _pairs(n: int = 3, size: int = 16):
    images = np.full((n, size, size, 3), 100, np.uint8)
    seg = np.zeros((n, size, size), np.uint8)
    seg[:, 4:12, 4:12] = 1
    seg[:, 6:8, 6:8] = 2
    kps = np.tile(np.array([[5.0, 5.0, 2], [10.0, 10.0, 0]], np.float32), (n, 1, 1))  # one visible, one not
    return images, seg, kps


def test_grid_has_four_panels_per_pair_in_columns_and_a_legend():
    images, seg, kps = _pairs()
    grid = preview_grid(images, segmentation=seg, keypoints=kps, uncertainty_scores=np.array([0.1, 0.5, 1.0]),
                        classes=CLASSES, columns=2, min_size=64)
    panel = 64 + 2  # 16 px enlarged 4x, plus make_grid's padding
    assert grid.dtype == np.uint8 and grid.shape[1] == 2 * 4 * panel + 2  # 2 pairs x 4 panels a row
    body = 2 * panel + 2  # 3 pairs in rows of 2
    assert grid.shape[0] > body  # the legend below
    image, overlay, keypoints, score = (grid[2:66, 2 + k * panel: 66 + k * panel] for k in range(4))
    assert (image == 100).all()
    assert (overlay[0, 0] == 45).all()  # background (id 0) is black, blended at 55 %
    assert (overlay[6 * 4, 6 * 4] == np.round(0.45 * 100 + 0.55 * PALETTE[2])).all()  # an eye pixel
    assert (keypoints[5 * 4 + 1, 5 * 4 + 1] == 255).all()  # visible: white
    assert tuple(keypoints[10 * 4 + 1, 10 * 4 + 1]) == HIDDEN_KEYPOINT_COLOUR  # v = 0: drawn in its own colour
    assert len(np.unique(score.reshape(-1, 3), axis=0)) >= 2  # a flat colour with its value written on it
    legend = grid[body:]
    for k in range(len(CLASSES)):
        assert (legend == PALETTE[k]).all(axis=-1).any(), CLASSES[k]
    assert (legend == HIDDEN_KEYPOINT_COLOUR).all(axis=-1).any()


def test_uncertainty_maps_and_one_column():
    images, seg, _ = _pairs(2)
    maps = np.zeros((2, 8, 8), np.float32)
    maps[:, :4] = 1.0  # label resolution half the image's
    grid = preview_grid(images, segmentation=seg, uncertainty=maps, columns=1, min_size=32)
    assert grid.shape == (2 * 34 + 2, 3 * 34 + 2, 3)  # image | overlay | uncertainty, one pair a row
    u = grid[2:34, 2 + 2 * 34: 34 + 2 * 34]
    assert (u[:16] == 255).all() and (u[16:] == 0).all()  # top half certain-white, bottom black
