"""core.images: the [-1, 1] -> uint8 conversion synthesized shards store, and the mosaic the tools write."""

from __future__ import annotations

import numpy as np
import torch

from handsoff_ray.core.images import from_uint8, mosaic, to_uint8


def test_to_uint8_clamps_rounds_and_moves_channels_last():
    # 0.7764706611633301 (float32): (x + 1) * 127.5 rounds to 227, x * 127.5 + 127.5 to 226; the shards store
    # the first, so the operation order is pinned
    x = torch.tensor([-2.0, -1.0, -1 + 1 / 255, 0.0, 1.0, 3.0, 0.7764706611633301]).view(1, 1, 1, 7).expand(2, 3, 1, 7)
    out = to_uint8(x)
    assert out.dtype == np.uint8 and out.shape == (2, 1, 7, 3)
    # 0.5 and 127.5 round half to even
    assert out[0, 0, :, 0].tolist() == [0, 0, 0, 128, 255, 255, 227]


def test_mosaic_is_row_major_with_empty_cells_filled():
    images = np.stack([np.full((2, 3, 1), v, np.uint8) for v in (10, 20, 30)])  # [3, 2, 3, 1]
    near_square = mosaic(images)  # ceil(sqrt(3)) = 2 columns, 2 rows
    assert near_square.shape == (4, 6, 1)
    assert near_square[::2, ::3, 0].tolist() == [[10, 20], [30, 0]]
    wide = mosaic(images, 4, fill=255)
    assert wide.shape == (2, 12, 1) and wide[0, ::3, 0].tolist() == [10, 20, 30, 255]


def test_from_uint8_is_the_generator_range_and_round_trips():
    images = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)  # [1, 16, 16, 3]
    x = from_uint8(images)
    assert x.dtype == torch.float32 and x.shape == (1, 3, 16, 16)
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    # x / 127.5 - 1, the operation order inversion and GAN training read images with
    assert torch.equal(x, torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0)
    np.testing.assert_array_equal(to_uint8(x), images)  # every byte comes back


def test_from_uint8_takes_read_only_arrays_without_a_warning():
    import warnings

    images = np.zeros((1, 2, 2, 3), np.uint8)
    images.flags.writeable = False  # as a decoded PIL image can be
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert from_uint8(images).shape == (1, 3, 2, 2)
