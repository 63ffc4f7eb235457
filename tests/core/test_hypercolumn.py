"""Hypercolumn gathering and the factorized projection equal the materialised hypercolumn."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from handsoff_ray.core.hypercolumn import (
    PixelGatherer,
    bilinear_taps,
    gather_hypercolumn,
    iter_projected_rows,
    naive_hypercolumn,
)




def _features(sizes, channels=3, n=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(s, s) if isinstance(s, int) else s for s in sizes]
    return [torch.randn(n, channels + i % 3, h, w, generator=gen) for i, (h, w) in enumerate(shapes)]


# Coarse-to-fine stacks like a generator's, at two output sizes, one with maps larger than the output
# (the 1024 -> 512 downsample of the reference), plus non-integer ratios and a non-square generator.
CASES = [
    pytest.param([4, 4, 8, 8, 16, 16], (16, 16), id="upsample-to-16"),
    pytest.param([4, 4, 8, 8, 16, 16, 32, 32], (16, 16), id="downsample-32-to-16"),
    pytest.param([4, 8, 16, 32], (24, 24), id="non-integer-ratios"),
    pytest.param([(4, 2), (8, 4), (16, 8), (32, 16)], (16, 8), id="non-square"),
    pytest.param([8, 4, 16, 8, 4], (16, 16), id="interleaved-resolutions"),
]


class TestBilinearTaps:
    @pytest.mark.parametrize("in_size,out_size", [(4, 16), (16, 4), (7, 12), (12, 7), (8, 8), (1, 5), (5, 1)])
    def test_taps_reproduce_interpolate_linear(self, in_size, out_size):
        x = torch.randn(3, in_size, generator=torch.Generator().manual_seed(in_size * 100 + out_size))
        taps = bilinear_taps(in_size, out_size)
        ours = x[:, taps.index0] * taps.weight0 + x[:, taps.index1] * taps.weight1
        ref = F.interpolate(x[None], size=out_size, mode="linear", align_corners=False)[0]
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)

    def test_taps_are_not_grid_sample_without_coordinate_mapping(self):
        # align_corners=True puts source samples elsewhere: guard against mixing the conventions.
        x = torch.arange(4.0)[None, None]
        taps = bilinear_taps(4, 8)
        ours = x[0, 0, taps.index0] * taps.weight0 + x[0, 0, taps.index1] * taps.weight1
        assert not torch.allclose(ours, F.interpolate(x, size=8, mode="linear", align_corners=True)[0, 0])

    def test_rejects_empty_axis(self):
        with pytest.raises(ValueError, match="sizes must be >= 1"):
            bilinear_taps(0, 4)


class TestNaiveHypercolumn:
    def test_equals_interpolate_and_cat(self):
        feats = _features([4, 8, 32], n=1)
        ref = torch.cat([F.interpolate(f, size=(16, 16), mode="bilinear", align_corners=False) for f in feats], 1)
        torch.testing.assert_close(naive_hypercolumn(feats, (16, 16)), ref, rtol=0, atol=0)

    def test_power_of_two_scale_factor_equals_size(self):
        # The reference resizes with nn.Upsample(scale_factor=512 / r); for powers of two that is size=.
        f = torch.randn(1, 3, 8, 8)
        by_factor = torch.nn.Upsample(scale_factor=4, mode="bilinear")(f)
        torch.testing.assert_close(naive_hypercolumn([f], (32, 32)), by_factor, rtol=0, atol=1e-6)

    @pytest.mark.parametrize("bad,match", [([], "features is empty"),
                                           ([torch.zeros(1, 2, 4, 4), torch.zeros(2, 2, 8, 8)], "same N=1"),
                                           ([torch.zeros(2, 4, 4)], "must be \\[N, C, h, w\\]")])
    def test_rejects_bad_feature_lists(self, bad, match):
        with pytest.raises(ValueError, match=match):
            naive_hypercolumn(bad, (8, 8))


class TestGather:
    @pytest.mark.parametrize("sizes,out_size", CASES)
    def test_gather_equals_indexing_the_naive_hypercolumn(self, sizes, out_size):
        feats = _features(sizes)
        hc = naive_hypercolumn(feats, out_size)
        gen = torch.Generator().manual_seed(1)
        n = torch.randint(0, 2, (300,), generator=gen)
        ys = torch.randint(0, out_size[0], (300,), generator=gen)
        xs = torch.randint(0, out_size[1], (300,), generator=gen)
        got = gather_hypercolumn(feats, n, ys, xs, out_size)
        assert got.shape == (300, hc.shape[1])
        assert (got - hc[n, :, ys, xs]).abs().max() <= 1e-5 * hc.abs().max()

    def test_every_pixel_and_channels_last_storage(self):
        feats = _features([4, 8, 16, 32])
        out_size = (16, 16)
        hc = naive_hypercolumn(feats, out_size)
        n, ys, xs = torch.meshgrid(torch.arange(2), torch.arange(16), torch.arange(16), indexing="ij")
        gatherer = PixelGatherer([f.contiguous(memory_format=torch.channels_last) for f in feats], out_size)
        got = gatherer(n.flatten(), ys.flatten(), xs.flatten())  # [2*16*16, C]
        ref = hc.permute(0, 2, 3, 1).reshape(-1, hc.shape[1])
        assert (got - ref).abs().max() <= 1e-5 * ref.abs().max()

    def test_half_precision_features_are_gathered_in_float32(self):
        feats = [f.half() for f in _features([4, 8])]
        got = gather_hypercolumn(feats, torch.tensor([0, 1]), torch.tensor([0, 7]), torch.tensor([3, 5]), (8, 8))
        assert got.dtype == torch.float32

    def test_rejects_mismatched_indices(self):
        with pytest.raises(ValueError, match="same length"):
            gather_hypercolumn(_features([4]), torch.tensor([0]), torch.tensor([0, 1]), torch.tensor([0]), (8, 8))


class TestProjectedRows:
    @pytest.mark.parametrize("sizes,out_size", CASES)
    @pytest.mark.parametrize("chunk_rows,cache_bytes", [(1, 1), (3, 1), (5, 2**20), (64, 2**20)])
    def test_streamed_projection_equals_projecting_the_naive_hypercolumn(self, sizes, out_size, chunk_rows,
                                                                         cache_bytes):
        feats = _features(sizes)
        hc = naive_hypercolumn(feats, out_size)
        weight, bias = torch.randn(7, hc.shape[1]), torch.randn(7)
        ref = torch.einsum("oc,nchw->nhwo", weight, hc) + bias
        blocks = list(iter_projected_rows(feats, weight, bias, out_size, chunk_rows=chunk_rows,
                                          cache_bytes=cache_bytes))
        assert [r0 for r0, _, _ in blocks] == list(range(0, out_size[0], chunk_rows))
        got = torch.cat([b for _, _, b in blocks], dim=1)
        assert got.shape == ref.shape
        assert (got - ref).abs().max() <= 1e-5 * ref.abs().max()

    def test_rejects_weight_of_wrong_width(self):
        with pytest.raises(ValueError, match="weight must be \\[O, 3\\]"):
            next(iter_projected_rows(_features([4], channels=3), torch.zeros(2, 5), None, (8, 8)))
