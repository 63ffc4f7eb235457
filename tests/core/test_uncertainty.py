"""Ensemble uncertainty, majority vote, image scores and the reference filtering policy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from handsoff_ray.core.uncertainty import (
    ensemble_variance,
    filter_by_threshold,
    filter_indices,
    image_scores,
    majority_vote,
    pixel_uncertainty,
    segmentation_js,
)


def _entropy(p: np.ndarray, axis: int) -> np.ndarray:
    return -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)).sum(axis=axis)


class TestSegmentationJS:
    def test_matches_entropy_of_mean_minus_mean_entropy(self):
        logits = torch.randn(5, 2, 4, 3, 6, dtype=torch.float64)  # [E, N, K, H, W]
        p = torch.softmax(logits, dim=2).numpy()
        ref = _entropy(p.mean(0), axis=1) - _entropy(p, axis=2).mean(0)
        np.testing.assert_allclose(segmentation_js(logits).numpy(), ref, atol=1e-6)

    def test_zero_when_members_agree_and_log2_for_confident_opposites(self):
        agree = torch.randn(1, 1, 3, 2, 2).repeat(4, 1, 1, 1, 1)
        assert segmentation_js(agree).abs().max() < 1e-6
        opposite = torch.tensor([[100.0, -100.0], [-100.0, 100.0]])[:, None, :, None, None]  # [2, 1, 2, 1, 1]
        assert segmentation_js(opposite).item() == pytest.approx(math.log(2), abs=1e-5)

    def test_uses_probabilities_not_logits(self):
        # Adding a per-member constant to the logits changes nothing in probability space.
        logits = torch.randn(3, 1, 4, 2, 2)
        shifted = logits + torch.tensor([0.0, 5.0, -7.0])[:, None, None, None, None]
        torch.testing.assert_close(segmentation_js(logits), segmentation_js(shifted), atol=1e-5, rtol=0)

    def test_rejects_wrong_rank(self):
        with pytest.raises(ValueError, match="\\[E, N, K, H, W\\]"):
            segmentation_js(torch.zeros(2, 3, 4, 4))


class TestMajorityVote:
    def test_equals_scipy_mode_of_member_argmax_with_ties_to_smallest_class(self):
        gen = torch.Generator().manual_seed(0)
        logits = torch.randn(4, 3, 5, 8, 8, generator=gen)  # 4 members: ties are common
        members = logits.argmax(dim=2).numpy()  # [E, N, H, W]
        ref = scipy.stats.mode(members, axis=0, keepdims=False).mode
        np.testing.assert_array_equal(majority_vote(logits).numpy(), ref)

    def test_explicit_tie(self):
        # Two members vote class 2, two vote class 1: the tie goes to class 1.
        logits = torch.zeros(4, 1, 3, 1, 1)
        logits[0, 0, 2] = logits[1, 0, 2] = logits[2, 0, 1] = logits[3, 0, 1] = 1.0
        assert majority_vote(logits).item() == 1


class TestRegressionVariance:
    def test_population_variance_averaged_over_channels(self):
        out = torch.randn(6, 2, 3, 4, 5, dtype=torch.float64)
        ref = out.numpy().var(axis=0, ddof=0).mean(axis=1)
        np.testing.assert_allclose(ensemble_variance(out).numpy(), ref, rtol=1e-6)

    @pytest.mark.parametrize("kind", ["keypoints", "depth"])
    def test_pixel_uncertainty_dispatches_regression_to_variance(self, kind):
        out = torch.randn(3, 1, 2, 4, 4)
        torch.testing.assert_close(pixel_uncertainty(kind, out), ensemble_variance(out))

    def test_pixel_uncertainty_rejects_unknown_kind(self):
        with pytest.raises(ValueError, match="unknown task kind 'normals'"):
            pixel_uncertainty("normals", torch.zeros(1, 1, 1, 1, 1))


class TestImageScores:
    def test_mean_of_top_tenth(self):
        pix = torch.arange(100.0).reshape(1, 10, 10)
        assert image_scores(pix).item() == pytest.approx(np.mean(np.arange(90, 100)))
        assert image_scores(pix, top_fraction=0.5).item() == pytest.approx(np.mean(np.arange(50, 100)))

    def test_at_least_one_pixel(self):
        pix = torch.tensor([[[0.0, 3.0], [1.0, 2.0]]])
        assert image_scores(pix, top_fraction=0.1).item() == 3.0

    def test_rejects_bad_fraction(self):
        with pytest.raises(ValueError, match="top_fraction must be in \\(0, 1\\]"):
            image_scores(torch.zeros(1, 2, 2), top_fraction=0.0)


def _reference_keep(scores: np.ndarray, portion: float) -> set[int]:
    """The reference train_deeplab.py slice, on (index, score) pairs sorted by score."""
    pairs = sorted(enumerate(scores.tolist()), key=lambda t: t[1])
    filter_out_num = int(len(pairs) * portion)
    return {i for i, _ in pairs[30: -filter_out_num + 30]}


class TestFilterIndices:
    @pytest.mark.parametrize("n", [600, 1000, 2500])
    def test_equals_reference_slice_for_large_n(self, n):
        scores = np.random.default_rng(n).random(n)
        keep = filter_indices(torch.from_numpy(scores), portion=0.1, drop_most_certain=30)
        assert set(keep.tolist()) == _reference_keep(scores, 0.1)
        assert keep.tolist() == sorted(keep.tolist())

    def test_small_n_removes_portion_from_both_ends(self):
        scores = torch.arange(100.0).flip(0)  # index 0 is the least certain
        keep = filter_indices(scores, portion=0.1, drop_most_certain=30)
        assert len(keep) == 90
        # 5 most certain (indices 95..99) and 5 least certain (0..4) go; the reference would keep nothing.
        assert keep.tolist() == list(range(5, 95))
        assert _reference_keep(scores.numpy(), 0.1) == set()

    def test_keeps_everything_when_portion_rounds_to_zero(self):
        assert filter_indices(torch.rand(5), portion=0.1).tolist() == [0, 1, 2, 3, 4]

    def test_ties_keep_index_order(self):
        keep = filter_indices(torch.zeros(10), portion=0.2, drop_most_certain=1)
        assert keep.tolist() == list(range(1, 9))

    @pytest.mark.parametrize("kwargs,match", [({"portion": 1.0}, "portion must be in \\[0, 1\\)"),
                                              ({"drop_most_certain": -1}, "drop_most_certain must be >= 0")])
    def test_rejects_bad_arguments(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            filter_indices(torch.rand(10), **kwargs)


class TestFilterByThreshold:
    def test_max_score_and_quantile(self):
        scores = torch.tensor([0.5, 0.1, 0.9, 0.3])
        assert filter_by_threshold(scores, max_score=0.4).tolist() == [1, 3]
        assert filter_by_threshold(scores, keep_quantile=0.5).tolist() == [1, 3]  # median 0.4

    def test_requires_exactly_one_rule(self):
        with pytest.raises(ValueError, match="exactly one of max_score or keep_quantile"):
            filter_by_threshold(torch.rand(3))
