"""Tests for handsoff_ray.core.stylegan2: config, feature spec, forward semantics, W+ routing.

Run: .venv/bin/python -m pytest tests/core/test_stylegan2.py -x -q
The forward pass is checked against `tests/core/formats.reference_forward`, an independent
implementation of rosinality's semantics (fused per-sample weights, explicit zero insertion).
"""

from __future__ import annotations

import pytest
import torch

from handsoff_ray.core.checkpoint import load_generator
from handsoff_ray.core.stylegan2 import (
    FeatureSpec,
    Generator,
    GeneratorConfig,
    feature_spec,
    z_from_seeds,
)
from tests.core.formats import Arch, random_rosinality_state, reference_forward, write_rosinality_pt

TINY = GeneratorConfig(resolution=16, style_dim=16, n_mlp=2, channel_base=128, channel_max=16)


@pytest.fixture(scope="module", params=[Arch(), Arch(aspect=2)], ids=["square16", "aspect2_16x8"])
def rosinality_case(request, tmp_path_factory):
    """(generator loaded from a random rosinality state, that state, its latent_avg, arch)."""
    arch = request.param
    sd, latent_avg = random_rosinality_state(arch, seed=1)
    path = write_rosinality_pt(tmp_path_factory.mktemp("ckpt") / "g.pt", sd, latent_avg)
    return load_generator(path), sd, latent_avg, arch


class TestGeneratorConfig:
    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({"resolution": 48}, "power of two in 8..1024"),
            ({"resolution": 4}, "power of two in 8..1024"),
            ({"resolution": 2048}, "power of two in 8..1024"),
            ({"resolution": 64, "n_mlp": 0}, "n_mlp must be >= 1"),
            ({"resolution": 64, "channel_base": 32}, "channel_base"),
            ({"resolution": 64, "lr_mlp": 0.0}, "lr_mlp must be > 0"),
            ({"resolution": 64, "conv_clamp": -1.0}, "conv_clamp must be None or > 0"),
            ({"resolution": 64, "init_aspect": 3}, "init_aspect must be 1"),
        ],
    )
    def test_rejects_invalid_fields(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            GeneratorConfig(**kwargs)

    def test_dict_round_trip_and_unknown_field(self):
        cfg = GeneratorConfig(resolution=256, channel_base=16384, conv_clamp=256.0, init_aspect=2)
        assert GeneratorConfig.from_dict(cfg.to_dict()) == cfg
        with pytest.raises(ValueError, match=r"unknown GeneratorConfig field\(s\) \['size'\]"):
            GeneratorConfig.from_dict({**cfg.to_dict(), "size": 256})

    def test_channel_plan_matches_rosinality_channel_multiplier(self):
        # rosinality: 512 up to 32, then 256*cm, 128*cm, ... ; channel_base = 16384 * cm
        for cm in (1, 2):
            cfg = GeneratorConfig(resolution=1024, channel_base=16384 * cm)
            ros = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * cm, 128: 128 * cm, 256: 64 * cm, 512: 32 * cm, 1024: 16 * cm}
            assert {r: cfg.channels(r) for r in ros} == ros
        assert GeneratorConfig(resolution=1024).n_latent == 18
        assert GeneratorConfig(resolution=512).n_latent == 16


class TestFeatureSpec:
    @pytest.mark.parametrize(("resolution", "total", "n_maps"), [(1024, 6080, 18), (512, 6016, 16)])
    def test_config_f_totals_on_meta_device(self, resolution, total, n_maps):
        cfg = GeneratorConfig(resolution=resolution)  # config-f: channel_base 32768, max 512
        with torch.device("meta"):
            G = Generator(cfg)
        spec = feature_spec(G)
        assert spec == feature_spec(cfg)
        assert sum(s.channels for s in spec) == total
        assert len(spec) == n_maps
        assert spec[:4] == [
            FeatureSpec("b4.const", 512, 4, 4),
            FeatureSpec("b4.conv1", 512, 4, 4),
            FeatureSpec("b8.conv0", 512, 8, 8),
            FeatureSpec("b8.conv1", 512, 8, 8),
        ]
        assert spec[-1] == FeatureSpec(f"b{resolution}.conv1", 32 if resolution == 1024 else 64, resolution, resolution)
        # Parameters agree with the spec: every styled conv outputs the listed channels.
        for s in spec[1:]:
            block, layer = s.name.split(".")
            conv = getattr(getattr(G.synthesis, block), layer)
            assert conv.weight.shape[0] == s.channels
            assert tuple(conv.noise_const.shape) == (1, 1, s.height, s.width)

    def test_non_square_maps_are_half_width(self):
        spec = feature_spec(GeneratorConfig(resolution=1024, init_aspect=2))
        assert [(s.height, s.width) for s in spec[:3]] == [(4, 2), (4, 2), (8, 4)]
        assert (spec[-1].height, spec[-1].width) == (1024, 512)

    def test_features_have_listed_shapes_in_order(self):
        G = Generator(TINY).eval()
        with torch.no_grad():
            img, feats = G.synthesis(G.mapping(z_from_seeds([0, 1], 16)), return_features=True)
        assert img.shape == (2, 3, 16, 16)
        assert [tuple(f.shape) for f in feats] == [(2, s.channels, s.height, s.width) for s in feature_spec(G)]
        assert torch.equal(feats[0][1], G.synthesis.b4.const)


class TestForwardSemantics:
    @pytest.mark.parametrize("psi", [1.0, 0.7])
    def test_matches_reference_forward(self, rosinality_case, psi):
        G, sd, latent_avg, arch = rosinality_case
        z = z_from_seeds([0, 1, 2], arch.style_dim)
        ref_img, ref_feats = reference_forward(sd, latent_avg, z, psi=psi)
        with torch.no_grad():
            img, feats = G.synthesis(G.mapping(z, truncation_psi=psi), return_features=True)
            assert torch.equal(G(z, truncation_psi=psi), img)
        assert img.shape == (3, 3, arch.resolution, arch.resolution // arch.aspect)
        assert (img - ref_img).abs().max().item() < 1e-4
        assert len(feats) == len(ref_feats)
        for f, r in zip(feats, ref_feats, strict=True):
            assert (f - r).abs().max().item() < 1e-4

    def test_matches_reference_for_a_mixed_w_plus(self, rosinality_case):
        # Distinct w per layer, as inversion produces: catches any W+ index mix-up.
        G, sd, latent_avg, arch = rosinality_case
        ws = torch.randn(2, G.n_latent, arch.style_dim, generator=torch.Generator().manual_seed(0))
        ref_img, ref_feats = reference_forward(sd, latent_avg, None, ws=ws)
        with torch.no_grad():
            img, feats = G.synthesis(ws, return_features=True)
        assert (img - ref_img).abs().max().item() < 1e-4
        assert max((f - r).abs().max().item() for f, r in zip(feats, ref_feats, strict=True)) < 1e-4

    def test_truncation_cutoff_only_touches_first_latents(self, rosinality_case):
        G, sd, latent_avg, arch = rosinality_case
        z = z_from_seeds([3], arch.style_dim)
        with torch.no_grad():
            full, cut = G.mapping(z), G.mapping(z, truncation_psi=0.5, truncation_cutoff=4)
            img = G(z, truncation_psi=0.5, truncation_cutoff=4)
        assert torch.allclose(cut[:, :4], latent_avg + 0.5 * (full[:, :4] - latent_avg), atol=1e-6)
        assert torch.equal(cut[:, 4:], full[:, 4:])
        ref_img, _ = reference_forward(sd, latent_avg, z, psi=0.5, cutoff=4)
        assert (img - ref_img).abs().max().item() < 1e-4

    def test_psi_zero_gives_the_average_image_for_every_z(self):
        G = Generator(TINY).eval()
        G.latent_avg = torch.randn(16)
        with torch.no_grad():
            img = G(z_from_seeds([0, 1, 2], 16), truncation_psi=0.0)
        assert torch.allclose(img[0], img[1], atol=1e-5) and torch.allclose(img[0], img[2], atol=1e-5)

    def test_noise_modes(self, rosinality_case):
        G, sd, latent_avg, arch = rosinality_case
        z = z_from_seeds([0], arch.style_dim)
        ws = G.mapping(z)
        with torch.no_grad():
            const = G.synthesis(ws, noise_mode="const")
            none = G.synthesis(ws, noise_mode="none")
            rand1, rand2 = G.synthesis(ws, noise_mode="random"), G.synthesis(ws, noise_mode="random")
        ref_none, _ = reference_forward(sd, latent_avg, z, noise=False)
        assert (none - ref_none).abs().max().item() < 1e-4
        assert not torch.allclose(const, none) and not torch.allclose(rand1, rand2)
        with pytest.raises(ValueError, match="noise_mode must be one of"):
            G.synthesis(ws, noise_mode="fixed")

    def test_explicit_noise_overrides_mode(self):
        G = Generator(TINY).eval()
        for conv in G.synthesis.conv_layers():
            conv.noise_strength.data.fill_(0.5)
        ws = G.mapping(z_from_seeds([0], 16))
        stored = [conv.noise_const for conv in G.synthesis.conv_layers()]
        with torch.no_grad():
            assert torch.equal(G.synthesis(ws, noise_mode="none", noise=stored), G.synthesis(ws, noise_mode="const"))
        with pytest.raises(ValueError, match="noise must hold 5 entries, got 3"):
            G.synthesis(ws, noise=stored[:3])


class TestWPlusRouting:
    """rosinality / NVlabs index usage: conv1<-w0, to_rgb1<-w1, block b: conv0<-w[2b-1], conv1<-w[2b], torgb<-w[2b+1]."""

    def _changed(self, G: Generator, k: int) -> tuple[list[bool], bool]:
        ws = G.mapping(z_from_seeds([0], 16))
        ws2 = ws.clone()
        ws2[:, k] += 1.0
        with torch.no_grad():
            img, feats = G.synthesis(ws, return_features=True)
            img2, feats2 = G.synthesis(ws2, return_features=True)
        return [not torch.equal(a, b) for a, b in zip(feats, feats2, strict=True)], not torch.equal(img, img2)

    def test_each_w_reaches_the_right_layers(self):
        G = Generator(TINY).eval()
        names = [s.name for s in feature_spec(G)]  # const, b4.conv1, b8.conv0, b8.conv1, b16.conv0, b16.conv1
        first_changed = {k: names[self._changed(G, k)[0].index(True)] if any(self._changed(G, k)[0]) else None for k in range(G.n_latent)}
        assert first_changed == {0: "b4.conv1", 1: "b8.conv0", 2: "b8.conv1", 3: "b16.conv0", 4: "b16.conv1", 5: None}
        # w[1] also drives b4's ToRGB, and the last w only the last ToRGB: both change the image.
        assert self._changed(G, 5)[1] and self._changed(G, 1)[1]


class TestDeterminismAndPrecision:
    def test_z_from_seeds_is_per_sample(self):
        assert torch.equal(z_from_seeds([5], 8)[0], z_from_seeds([3, 5, 7], 8)[1])
        assert z_from_seeds([], 8).shape == (0, 8)
        with pytest.raises(ValueError, match="non-negative ints"):
            z_from_seeds([-1], 8)

    def test_sample_does_not_depend_on_batch_size(self, rosinality_case):
        G, _, _, arch = rosinality_case
        with torch.no_grad():
            alone = G(z_from_seeds([11], arch.style_dim))
            in_batch = G(z_from_seeds([10, 11, 12, 13], arch.style_dim))
        assert torch.allclose(alone[0], in_batch[1], atol=1e-5)

    def test_bfloat16_autocast_stays_close_and_rgb_stays_fp32(self, rosinality_case):
        G, _, _, arch = rosinality_case
        z = z_from_seeds([0, 1], arch.style_dim)
        with torch.no_grad():
            ref = G(z)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                img, feats = G.synthesis(G.mapping(z), return_features=True)
        assert img.dtype == torch.float32 and feats[-1].dtype == torch.bfloat16
        assert torch.isfinite(img).all()
        assert (img - ref).abs().max().item() < 0.05 * ref.abs().max().item()

    def test_gradients_reach_ws_not_frozen_weights(self, rosinality_case):
        G = rosinality_case[0]
        ws = G.mapping(z_from_seeds([0], G.style_dim)).detach().requires_grad_(True)
        G.synthesis(ws).square().mean().backward()
        assert ws.grad is not None and ws.grad.abs().sum() > 0
        assert all(p.grad is None for p in G.parameters())

    def test_rejects_ws_of_wrong_shape(self):
        G = Generator(TINY)
        with pytest.raises(ValueError, match=r"ws must be \[N, 6, 16\]"):
            G.synthesis(torch.zeros(1, 5, 16))
