"""DiffAugment and the data-parallel GAN step (core/diffaugment.py, core/gan_step.py).

    python -m pytest -q tests/core/test_gan_step.py

The end-to-end check (2 Ray Train workers equal one process) is tests/pipeline/test_train_gan.py; these
pin the properties it rests on.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from handsoff_ray.core.diffaugment import N_PARAMS, diff_augment, parse_policy
from handsoff_ray.core.gan_step import _draws, build_nets, train_step

RECIPE = SimpleNamespace(resolution=16, channel_base=256, channel_max=32, style_dim=32, n_mlp=2, batch_size=4,
                         lr=0.002, r1_gamma=None, r1_interval=2, mixing_prob=0.9, ema_kimg=5.0, ema_rampup=0.05,
                         discriminator="stylegan2", projected_trunk="alex", augment="diffaugment",
                         augment_policy="color,translation,cutout", seed=3)


class TestDiffAugment:
    def test_translation_shifts_content_and_pads_with_zeros(self):
        x = torch.arange(16.0).reshape(1, 1, 4, 4).repeat(1, 3, 1, 1) + 1
        # u = 1 -> shift +s (s = round(4 / 8) = 1) in both directions
        out = diff_augment(x, torch.tensor([[0.5, 0.5, 0.5, 0.999, 0.999, 0.0, 0.0]]), "translation")
        assert torch.equal(out[0, 0, 1:, 1:], x[0, 0, :3, :3]) and (out[0, 0, 0] == 0).all()
        assert torch.equal(diff_augment(x, torch.tensor([[0, 0, 0, 0.5, 0.5, 0, 0]]), "translation"), x)

    def test_cutout_zeroes_one_half_side_square(self):
        x = torch.ones(2, 3, 8, 8)
        out = diff_augment(x, torch.rand(2, N_PARAMS), "cutout")
        zeros = (out[:, 0] == 0).sum((1, 2))
        assert ((zeros > 0) & (zeros <= 16)).all() and ((out == 0) | (out == 1)).all()

    def test_each_sample_depends_only_on_its_own_parameters_and_gradients_flow(self):
        x, u = torch.randn(4, 3, 8, 8, requires_grad=True), torch.rand(4, N_PARAMS)
        out = diff_augment(x, u, "color,translation,cutout")
        assert torch.allclose(out[1:3], diff_augment(x[1:3], u[1:3], "color,translation,cutout"))
        out.sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0

    def test_unknown_policy_is_refused(self):
        with pytest.raises(ValueError, match="comma-separated subset"):
            parse_policy("color,zoom")


class TestStep:
    def test_a_sample_draws_the_same_whatever_batch_it_is_in(self):
        G = build_nets(RECIPE, torch.device("cpu")).G
        whole, part = _draws(RECIPE, G, 7, [0, 1, 2, 3], 0), _draws(RECIPE, G, 7, [1, 3], 0)
        assert torch.equal(whole.z[[1, 3]], part.z) and torch.equal(whole.aug[[1, 3]], part.aug)
        assert all(torch.equal(a[[1, 3]], b) for a, b in zip(whole.noise, part.noise))
        assert not torch.equal(_draws(RECIPE, G, 8, [1, 3], 0).z, part.z)  # another step, other draws

    def test_steps_are_deterministic_and_finite(self):
        def run():
            nets = build_nets(RECIPE, torch.device("cpu"))
            real = torch.rand(4, 3, 16, 16) * 2 - 1
            losses = [train_step(nets, RECIPE, real, step=s, indices=range(4)) for s in range(3)]
            return nets, losses

        torch.manual_seed(0)
        (a, la), (b, lb) = run(), run()
        assert la == lb and all(torch.isfinite(torch.tensor(list(x.values()))).all() for x in la)
        assert all(torch.equal(p, q) for p, q in zip(a.G_ema.parameters(), b.G_ema.parameters()))

    def test_real_images_must_match_the_positions(self):
        nets = build_nets(RECIPE, torch.device("cpu"))
        with pytest.raises(ValueError, match="3 real images for 4 batch positions"):
            train_step(nets, RECIPE, torch.zeros(3, 3, 16, 16), step=0, indices=range(4))
