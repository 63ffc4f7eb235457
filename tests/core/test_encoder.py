"""ReStyle-style encoder: learns from generator samples, helps inversion start, saves and loads."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from handsoff_ray.core.encoder import Encoder, EncoderConfig, EncoderStep, sample_training_ws, train_encoder
from handsoff_ray.core.inversion import invert
from handsoff_ray.core.stylegan2 import z_from_seeds
from tests.core.test_inversion import STYLE_DIM, generated_targets, tiny_generator

HELD_OUT = list(range(200, 232))  # never drawn by training: it samples z from its own torch.Generator




@pytest.fixture(scope="module")
def G():
    return tiny_generator()


@pytest.fixture(scope="module")
def trained(G):
    log: list[EncoderStep] = []
    enc = train_encoder(G, steps=60, batch_size=12, lr=1e-3, seed=0, n_iters=2, channels=16, callback=log.append)
    return enc, log


def latent_error(ws: torch.Tensor, truth: torch.Tensor) -> float:
    return float((ws - truth).square().mean())


class TestTraining:
    def test_reduces_latent_error_on_held_out_samples(self, G, trained):
        enc, _ = trained
        with torch.no_grad():
            truth = G.mapping(z_from_seeds(HELD_OUT, STYLE_DIM))
            images = G.synthesis(truth)
        baseline = latent_error(G.latent_avg.expand_as(truth), truth)
        predicted = enc.invert(G, images)
        assert predicted.shape == truth.shape
        assert latent_error(predicted, truth) < 0.75 * baseline
        with torch.no_grad():
            avg_image = G.synthesis(G.latent_avg.expand_as(truth))
            assert (G.synthesis(predicted) - images).square().mean() < 0.8 * (avg_image - images).square().mean()

    def test_callback_sees_every_step(self, trained):
        _, log = trained
        assert [s.step for s in log] == list(range(1, 61))
        assert all(s.steps == 60 for s in log)
        assert sum(s.loss for s in log[-10:]) < sum(s.loss for s in log[:10])

    def test_returns_eval_mode_and_restores_generator_flags(self, G, trained):
        enc, _ = trained
        assert not enc.training
        assert all(p.requires_grad for p in G.parameters())

    def test_seeded_training_is_repeatable_and_leaves_global_rng_alone(self, G):
        state = torch.random.get_rng_state()
        a = train_encoder(G, steps=2, batch_size=2, seed=3, n_iters=1, channels=8)
        b = train_encoder(G, steps=2, batch_size=2, seed=3, n_iters=1, channels=8)
        assert torch.equal(torch.random.get_rng_state(), state)
        for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(pa, pb), name

    def test_rejects_bad_arguments(self, G):
        with pytest.raises(ValueError, match="steps and batch_size must be >= 1"):
            train_encoder(G, steps=0)


class TestInference:
    def test_untrained_encoder_predicts_latent_avg(self, G):
        cfg = EncoderConfig(resolution=16, width=16, n_latent=G.n_latent, style_dim=STYLE_DIM, input_resolution=16)
        ws = Encoder(cfg).invert(G, generated_targets(G, [1, 2]))
        torch.testing.assert_close(ws, G.latent_avg.expand(2, G.n_latent, -1))

    def test_an_image_code_does_not_depend_on_its_batch(self, G, trained):
        enc, _ = trained
        images = generated_targets(G, [1, 2, 3])
        together = enc.invert(G, images)
        alone = enc.invert(G, images[:1])
        torch.testing.assert_close(alone[0], together[0], rtol=1e-5, atol=1e-6)

    def test_more_iterations_refine(self, G, trained):
        enc, _ = trained
        with torch.no_grad():
            truth = G.mapping(z_from_seeds(HELD_OUT, STYLE_DIM))
            images = G.synthesis(truth)
        one, two = enc.invert(G, images, n_iters=1), enc.invert(G, images, n_iters=2)
        assert latent_error(two, truth) < latent_error(one, truth)

    def test_encoder_start_beats_latent_avg_at_equal_steps(self, G, trained):
        enc, _ = trained
        images = generated_targets(G, HELD_OUT[:6])
        plain = invert(G, images, lpips_model=None, lpips_weight=0.0, steps=5)
        started = invert(G, images, lpips_model=None, lpips_weight=0.0, steps=5, init_ws=enc.invert(G, images))
        assert started.final_loss.mean() < plain.final_loss.mean()
        assert started.psnr.mean() > plain.psnr.mean()

    def test_rejects_a_different_generator(self, trained):
        enc, _ = trained
        other = tiny_generator(resolution=32)
        with pytest.raises(ValueError, match="train an encoder for this generator"):
            enc.invert(other, generated_targets(other, [1]))


class TestSaveLoad:
    def test_roundtrip(self, G, trained, tmp_path):
        enc, _ = trained
        path = tmp_path / "enc.safetensors"
        enc.save(path)
        loaded = Encoder.load(path)
        assert loaded.cfg == enc.cfg
        images = generated_targets(G, [4, 5])
        assert torch.equal(loaded.invert(G, images), enc.invert(G, images))

    def test_refuses_foreign_safetensors(self, tmp_path):
        path = tmp_path / "other.safetensors"
        save_file({"x": torch.zeros(1)}, str(path))
        with pytest.raises(ValueError, match="not an encoder saved by Encoder.save"):
            Encoder.load(path)


class TestSampling:
    def test_style_mixing_switches_code_once(self, G):
        gen = torch.Generator().manual_seed(0)
        ws = sample_training_ws(G, 16, gen, mixing_prob=1.0, w_jitter=0.0, w_std=1.0)
        changes = (ws[:, 1:] != ws[:, :-1]).any(-1).sum(1)  # [16]: layer boundaries where the code changes
        assert torch.all(changes == 1)

    def test_no_mixing_no_jitter_is_plain_w(self, G):
        gen = torch.Generator().manual_seed(0)
        ws = sample_training_ws(G, 4, gen, mixing_prob=0.0, w_jitter=0.0, w_std=1.0)
        assert torch.equal(ws, ws[:, :1].expand_as(ws))

    def test_jitter_is_per_layer(self, G):
        gen = torch.Generator().manual_seed(0)
        ws = sample_training_ws(G, 4, gen, mixing_prob=0.0, w_jitter=0.1, w_std=2.0)
        spread = (ws - ws.mean(1, keepdim=True)).std()
        assert 0.1 < spread < 0.3  # about w_jitter * w_std = 0.2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(input_resolution=24), "power of two"),
        (dict(input_resolution=32), "power of two in 4..16"),
        (dict(input_resolution=16, n_iters=0), "n_iters must be >= 1"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EncoderConfig(resolution=16, width=16, n_latent=6, style_dim=8, **kwargs)
