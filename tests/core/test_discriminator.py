"""The StyleGAN2 residual discriminator (core/discriminator.py).

    python -m pytest -q tests/core/test_discriminator.py
"""

from __future__ import annotations

import pytest
import torch

from handsoff_ray.core.discriminator import Discriminator


class TestDiscriminator:
    @pytest.mark.parametrize("res", [8, 16, 32])
    def test_logits_per_image(self, res):
        D = Discriminator(res, channel_base=256, channel_max=32)
        assert D(torch.randn(4, 3, res, res)).shape == (4,)

    def test_bf16_autocast_matches_fp32(self):
        # the bf16 path filters every pixel and drops the odd ones instead of a strided blur
        torch.manual_seed(0)
        D = Discriminator(16, channel_base=256, channel_max=32)
        x = torch.randn(4, 3, 16, 16)
        with torch.autocast("cpu", torch.bfloat16):
            low = D(x).float()
        assert torch.allclose(low, D(x), atol=0.05 * D(x).abs().max().item() + 0.05)

    @pytest.mark.parametrize(("res", "match"), [(12, "power of two"), (4, "power of two")])
    def test_rejects_bad_resolution(self, res, match):
        with pytest.raises(ValueError, match=match):
            Discriminator(res)

    def test_rejects_wrong_image_size(self):
        with pytest.raises(ValueError, match=r"expected images \[N, 3, 16, 16\]"):
            Discriminator(16, channel_base=256)(torch.randn(2, 3, 32, 32))
