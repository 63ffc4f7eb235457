"""Batched W+ inversion: per-image bookkeeping, best-latent selection, schedule, frozen generator, image policy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from handsoff_ray.core.inversion import (
    InversionStep,
    invert,
    lr_schedule,
    prepare_images,
    reconstruction_losses,
)
from handsoff_ray.core.lpips_offline import load_lpips
from handsoff_ray.core.stylegan2 import Generator, GeneratorConfig, z_from_seeds

STYLE_DIM = 32




def tiny_generator(resolution: int = 16, init_aspect: int = 1) -> Generator:
    """A random generator shaped like a trained one: latent_avg is the mean mapped z (a fresh one
    holds zeros) and the ToRGB layers are scaled so that the images of seeds 0..255 lie in [-1, 1]."""
    torch.manual_seed(0)
    G = Generator(
        GeneratorConfig(
            resolution=resolution, style_dim=STYLE_DIM, n_mlp=2, channel_base=512, channel_max=32,
            init_aspect=init_aspect,
        )
    )
    with torch.no_grad():
        G.latent_avg = G.mapping(z_from_seeds(range(1000), STYLE_DIM)).mean((0, 1))
        peak = G.synthesis(G.mapping(z_from_seeds(range(256), STYLE_DIM))).abs().max()
        for block in G.synthesis.blocks():
            block.torgb.weight.mul_(0.95 / peak)  # the RGB path is linear in these (biases are 0)
    return G


def generated_targets(G: Generator, seeds) -> torch.Tensor:
    """Images G reproduces exactly (seeds < 256 stay in [-1, 1]), so the inversion is well posed."""
    with torch.no_grad():
        return G.synthesis(G.mapping(z_from_seeds(seeds, STYLE_DIM)))


@pytest.fixture(scope="module")
def lp():
    return load_lpips("vgg")


@pytest.fixture(scope="module")
def G():
    return tiny_generator()


@pytest.fixture(scope="module")
def targets(G):
    return generated_targets(G, [100, 101, 102])


@pytest.fixture(scope="module")
def result(G, targets, lp):
    return invert(G, targets, lpips_model=lp, steps=20)


class TestLrSchedule:
    @pytest.mark.parametrize(
        "t, expected",
        [
            (0.0, 0.0),  # warm-up starts at zero
            (0.025, 0.05),  # half-way up the 5% linear warm-up
            (0.05, 0.1),
            (0.5, 0.1),  # plateau
            (0.75, 0.1),  # cosine decay starts at 1 - rampdown
            (0.875, 0.05),  # half-way down the cosine: 0.5 - 0.5 cos(pi / 2) = 0.5
            (1.0, 0.0),
        ],
    )
    def test_reference_ramp(self, t, expected):
        assert lr_schedule(t, lr=0.1, rampup=0.05, rampdown=0.25) == pytest.approx(expected, abs=1e-12)

    def test_cosine_shape_inside_rampdown(self):
        t = 0.9
        expected = 0.1 * (0.5 - 0.5 * math.cos(math.pi * (1 - t) / 0.25))
        assert lr_schedule(t, lr=0.1) == pytest.approx(expected)

    def test_zero_ramps_mean_constant(self):
        assert lr_schedule(0.0, lr=0.3, rampup=0.0, rampdown=0.0) == pytest.approx(0.3)

    def test_invert_uses_interior_points_of_the_grid(self, G, targets):
        seen: list[InversionStep] = []
        invert(G, targets[:1], lpips_model=None, lpips_weight=0.0, steps=4, callback=seen.append)
        assert [s.step for s in seen] == [1, 2, 3, 4]
        assert [s.lr for s in seen] == pytest.approx([lr_schedule(k / 5, lr=0.1) for k in range(1, 5)])
        assert seen[0].loss.shape == (1,) and seen[0].index.tolist() == [0]


class TestPrepareImages:
    def test_wide_uint8_image_is_centre_cropped(self):
        image = np.full((1, 20, 40, 3), 128, np.uint8)
        image[:, :, :10] = 255  # left quarter: cut away
        image[:, :, 30:] = 0  # right quarter: cut away
        out = prepare_images(image, 16)
        assert out.shape == (1, 3, 16, 16) and out.dtype == torch.float32
        torch.testing.assert_close(out, torch.full_like(out, 128 / 127.5 - 1))

    def test_tall_image_is_letterboxed_with_black_when_padding(self):
        image = np.full((1, 40, 20, 3), 255, np.uint8)
        out = prepare_images(image, 16, fit="pad")
        assert out.shape == (1, 3, 16, 16)
        torch.testing.assert_close(out[..., :, 6:10], torch.ones(1, 3, 16, 4))  # the centre columns are the image
        black = torch.full((1, 3, 16, 3), -1.0)
        torch.testing.assert_close(out[..., :, :3], black)  # the bars
        torch.testing.assert_close(out[..., :, -3:], black)

    def test_non_square_generator_frame(self):
        image = torch.zeros(2, 3, 64, 64)
        image[:, :, :, 16:48] = 1.0  # the centre half-width strip survives a 2:1 tall crop
        out = prepare_images(image, (32, 16))
        assert out.shape == (2, 3, 32, 16)
        torch.testing.assert_close(out, torch.ones_like(out))

    def test_list_of_differently_sized_images(self):
        out = prepare_images([np.zeros((10, 10, 3), np.uint8), np.zeros((30, 50, 3), np.uint8)], 8)
        torch.testing.assert_close(out, torch.full((2, 3, 8, 8), -1.0))

    def test_downsampling_is_antialiased(self):
        checker = (torch.arange(64)[:, None] + torch.arange(64)[None, :]) % 2  # 1-pixel checkerboard
        image = (checker.float() * 2 - 1).expand(1, 3, 64, 64)
        out = prepare_images(image, 16)
        assert out.abs().max() < 0.05  # averages to grey; plain bilinear would alias it

    @pytest.mark.parametrize(
        "images, match",
        [
            (torch.full((1, 3, 8, 8), 255.0), r"must lie in \[-1, 1\]"),
            (torch.zeros(1, 8, 8, 3, dtype=torch.uint8), "ambiguous about layout"),
            (np.zeros((1, 8, 8, 3), np.float32), "must be uint8"),
            (np.zeros((8, 8, 3), np.uint8), "must be 4-D"),
            ([], "empty"),
        ],
    )
    def test_rejects_unclear_inputs(self, images, match):
        with pytest.raises(ValueError, match=match):
            prepare_images(images, 8)


class TestInvert:
    def test_loss_goes_down(self, result):
        assert result.loss_curve.shape == (3, 21)
        assert torch.all(result.loss_curve[:, -1] < 0.5 * result.loss_curve[:, 0])

    def test_best_latent_is_kept(self, G, targets, lp, result):
        # The kept latent is the one with the lowest reconstruction loss (10 LPIPS + MSE) seen.
        torch.testing.assert_close(result.final_loss, result.loss_curve.min(1).values)
        assert torch.all(result.final_loss <= result.loss_curve[:, -1])
        # Re-scoring the returned latents gives the recorded loss, and best_step points at it.
        with torch.no_grad():
            lpips_d, mse = reconstruction_losses(G.synthesis(result.ws), targets, lpips_model=lp, loss_size=(16, 16))
        torch.testing.assert_close(10 * lpips_d + mse, result.final_loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(result.lpips, lpips_d, rtol=1e-5, atol=1e-6)
        picked = result.loss_curve.gather(1, result.best_step[:, None])[:, 0]
        torch.testing.assert_close(picked, result.final_loss)

    def test_reports_shapes_and_psnr(self, G, result):
        assert result.ws.shape == (3, G.n_latent, STYLE_DIM)
        assert result.init_ws.shape == result.ws.shape
        for field in (result.psnr, result.lpips, result.final_loss, result.best_step):
            assert field.shape == (3,)
        assert torch.all(result.psnr > 10) and torch.all(torch.isfinite(result.psnr))

    def test_starts_from_latent_avg(self, G, result):
        torch.testing.assert_close(result.init_ws, G.latent_avg.expand(3, G.n_latent, -1))

    def test_batched_matches_one_image_at_a_time(self, G, targets, lp):
        # lr 0.02 keeps the trajectories stable: at lr 0.1 the ~1e-7 rounding differences between a
        # batched and a single convolution grow to ~1e-2 within 20 steps (the optimisation is
        # chaotic there), which would test the float noise, not the bookkeeping.
        batched = invert(G, targets, lpips_model=lp, steps=15, lr=0.02)
        for i in range(3):
            single = invert(G, targets[i : i + 1], lpips_model=lp, steps=15, lr=0.02)
            torch.testing.assert_close(single.loss_curve[0], batched.loss_curve[i], rtol=1e-4, atol=0)
            torch.testing.assert_close(single.ws[0], batched.ws[i], rtol=0, atol=1e-4)
            assert single.best_step[0] == batched.best_step[i]

    def test_an_image_is_unaffected_by_the_rest_of_its_batch(self, G, targets, lp):
        others = generated_targets(G, [200, 201])
        a = invert(G, targets, lpips_model=lp, steps=10)
        b = invert(G, torch.cat([targets[:1], others]), lpips_model=lp, steps=10)
        assert torch.equal(a.ws[0], b.ws[0]) and torch.equal(a.loss_curve[0], b.loss_curve[0])

    def test_deterministic(self, G, targets, lp):
        a = invert(G, targets[:2], lpips_model=lp, steps=5)
        b = invert(G, targets[:2], lpips_model=lp, steps=5)
        assert torch.equal(a.ws, b.ws) and torch.equal(a.loss_curve, b.loss_curve)

    def test_chunks_give_the_batch_result(self, G, targets, lp):
        whole = invert(G, targets, lpips_model=lp, steps=5, lr=0.02)
        chunked = invert(G, targets, lpips_model=lp, steps=5, lr=0.02, batch_size=2)
        torch.testing.assert_close(chunked.loss_curve, whole.loss_curve, rtol=1e-4, atol=1e-6)

    def test_generator_is_untouched_and_its_flags_restored(self, targets, lp):
        G = tiny_generator()
        G.mapping.requires_grad_(False)  # a mixed state, to check it is restored as it was
        flags = {n: p.requires_grad for n, p in G.named_parameters()}
        before = {n: t.clone() for n, t in G.state_dict().items()}
        invert(G, targets[:1], lpips_model=lp, steps=3)
        assert {n: p.requires_grad for n, p in G.named_parameters()} == flags
        assert all(torch.equal(before[n], t) for n, t in G.state_dict().items())
        assert all(p.grad is None for p in G.parameters())

    def test_flags_restored_when_inversion_fails(self, targets):
        G = tiny_generator()

        def boom(step):
            raise RuntimeError("stop")

        with pytest.raises(RuntimeError, match="stop"):
            invert(G, targets[:1], lpips_model=None, lpips_weight=0.0, steps=2, callback=boom)
        assert all(p.requires_grad for p in G.parameters())

    def test_regulariser_anchors_to_init_ws(self, G, targets):
        kw = dict(lpips_model=None, lpips_weight=0.0, steps=10, lr=0.02)
        free = invert(G, targets[:2], reg_weight=0.0, **kw)
        held = invert(G, targets[:2], reg_weight=100.0, **kw)
        moved = lambda r: (r.ws - r.init_ws).square().mean()  # noqa: E731
        assert moved(held) < 0.2 * moved(free)

    def test_init_ws_is_the_start(self, G, targets, lp):
        init = G.mapping(z_from_seeds([100, 7, 8], STYLE_DIM)).detach()  # image 0's own latent
        res = invert(G, targets, lpips_model=lp, steps=0, init_ws=init)
        torch.testing.assert_close(res.ws, init)
        assert res.final_loss[0] < 1e-6  # its exact latent: nothing left to reconstruct
        assert torch.all(res.final_loss[1:] > 1e-3)

    def test_loss_at_lower_resolution(self, targets, lp):
        G = tiny_generator(resolution=32)
        big = generated_targets(G, [5, 6])
        res = invert(G, big, lpips_model=lp, steps=3, loss_resolution=16)
        assert res.ws.shape == (2, G.n_latent, STYLE_DIM) and torch.isfinite(res.final_loss).all()

    def test_non_square_generator(self):
        G = tiny_generator(resolution=16, init_aspect=2)
        photos = np.random.default_rng(0).integers(0, 256, (2, 30, 20, 3), dtype=np.uint8)
        res = invert(G, photos, lpips_model=None, lpips_weight=0.0, steps=3)
        assert res.ws.shape == (2, G.n_latent, STYLE_DIM)

    @pytest.mark.parametrize(
        "kwargs, match",
        [
            (dict(lpips_model=None), "lpips_model is None"),
            (dict(lpips_model=None, lpips_weight=0.0, loss_resolution=64), "loss_resolution must be"),
            (dict(lpips_model=None, lpips_weight=0.0, init_ws=torch.zeros(1, 2, 3)), "init_ws must be"),
            (dict(lpips_model=None, lpips_weight=0.0, steps=-1), "steps must be"),
            (dict(lpips_model=None, lpips_weight=0.0, batch_size=0), "batch_size must be"),
        ],
    )
    def test_rejects_bad_arguments(self, G, targets, kwargs, match):
        with pytest.raises(ValueError, match=match):
            invert(G, targets, **kwargs)
