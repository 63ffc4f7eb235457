"""Tests for handsoff_ray.toy.quality: the KID estimator, the toy-world feature extractor, measure_kid.

Run: .venv/bin/python -m pytest tests/toy/test_quality.py -x -q
The extractor is trained for a few steps on a few dozen faces: these tests check plumbing and
determinism; the shipped extractor's accuracy is recorded in its own metadata.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from handsoff_ray.core.kid import kid
from handsoff_ray.core.stylegan2 import Generator, GeneratorConfig
from handsoff_ray.toy.quality import (
    N_PARAMS,
    FeatureNet,
    load_feature_net,
    measure_kid,
    param_targets,
    save_feature_net,
    train_feature_net,
)
from handsoff_ray.toy.params import sample_params



@pytest.fixture(scope="module")
def tiny_extractor(tmp_path_factory):
    torch.set_num_threads(1)
    net, info = train_feature_net(seed=3, n_images=32, steps=2, batch=8, log=lambda s: None)
    path = save_feature_net(net, tmp_path_factory.mktemp("fx") / "fx.safetensors", info)
    return net, info, path


def _naive_mmd2(a: torch.Tensor, b: torch.Tensor) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel, written as explicit sums over pairs."""
    d, m = a.shape[1], len(a)
    k = lambda x, y: (float(x @ y) / d + 1) ** 3  # noqa: E731
    xx = sum(k(a[i], a[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    yy = sum(k(b[i], b[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    xy = sum(k(a[i], b[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


class TestKid:
    def test_one_full_subset_equals_the_pairwise_definition(self):
        g = torch.Generator().manual_seed(0)
        a = torch.randn(7, 5, generator=g, dtype=torch.float64)
        b = torch.randn(7, 5, generator=g, dtype=torch.float64) + 0.5
        mean, std = kid(a, b, n_subsets=1, subset_size=7)
        assert mean == pytest.approx(_naive_mmd2(a, b), rel=1e-9) and std == 0.0

    def test_near_zero_for_one_distribution_and_grows_with_the_shift(self):
        g = torch.Generator().manual_seed(1)
        ref = torch.randn(600, 16, generator=g)
        same = kid(torch.randn(600, 16, generator=g), ref, n_subsets=20, subset_size=300)
        small = kid(torch.randn(600, 16, generator=g) + 0.3, ref, n_subsets=20, subset_size=300)
        large = kid(torch.randn(600, 16, generator=g) + 1.0, ref, n_subsets=20, subset_size=300)
        assert abs(same[0]) < 3 * same[1] + 1e-3
        assert large[0] > small[0] > same[0] + 3 * same[1]

    def test_deterministic_by_seed(self):
        a, b = torch.randn(50, 4), torch.randn(50, 4)
        assert kid(a, b, subset_size=20, seed=5) == kid(a, b, subset_size=20, seed=5)
        assert kid(a, b, subset_size=20, seed=5) != kid(a, b, subset_size=20, seed=6)

    def test_needs_two_samples(self):
        with pytest.raises(ValueError, match="at least 2 samples"):
            kid(torch.randn(1, 4), torch.randn(5, 4))


class TestFeatureNet:
    def test_param_targets_length(self):
        assert len(param_targets(sample_params(0))) == N_PARAMS

    @pytest.mark.parametrize("size", [32, 64, 128])
    def test_shapes_at_any_input_size(self, size):
        net = FeatureNet().eval()
        x = torch.rand(2, 3, size, size) * 2 - 1
        seg, params = net(x)
        assert seg.shape == (2, 8, 64, 64) and params.shape == (2, N_PARAMS)
        assert net.embed(x).shape == (2, 256)

    def test_rejects_non_rgb(self):
        with pytest.raises(ValueError, match=r"expected images \[N, 3, H, W\]"):
            FeatureNet().embed(torch.rand(2, 1, 64, 64))

    def test_training_is_deterministic_and_round_trips(self, tiny_extractor):
        net, info, path = tiny_extractor
        again, _ = train_feature_net(seed=3, n_images=32, steps=2, batch=8, log=lambda s: None)
        for (k, v), v2 in zip(net.state_dict().items(), again.state_dict().values()):
            assert torch.equal(v, v2), k
        loaded, loaded_info = load_feature_net(path)
        x = torch.rand(3, 3, 64, 64) * 2 - 1
        assert torch.equal(loaded.embed(x), net.embed(x))
        assert loaded_info["steps"] == 2 and len(loaded_info["sha256"]) == 16
        assert {"val_pixel_accuracy", "val_param_r2"} <= set(info)

    def test_missing_extractor_says_how_to_train(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="--train-extractor"):
            load_feature_net(tmp_path / "none.safetensors")


def test_measure_kid_reports_generator_and_real_baseline(tiny_extractor):
    _, _, path = tiny_extractor
    torch.manual_seed(0)
    G = Generator(GeneratorConfig(resolution=32, style_dim=32, n_mlp=2, channel_base=256, channel_max=16)).eval()
    out = measure_kid(G, n=12, n_subsets=3, subset_size=8, extractor=path, log=lambda s: None)
    assert {"kid", "kid_std", "kid_real_vs_real", "kid_real_vs_real_std", "feature_net"} <= set(out)
    assert out["n"] == 12 and out["subset_size"] == 8 and out["resolution"] == 32
    # a random generator is far further from the toy faces than other toy faces are
    assert out["kid"] > out["kid_real_vs_real"]
    assert out == {**measure_kid(G, n=12, n_subsets=3, subset_size=8, extractor=path, log=lambda s: None),
                   "seconds": out["seconds"]}
