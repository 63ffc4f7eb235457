"""Test-side writers of the public StyleGAN2 checkpoint formats, and a reference forward pass.

Written from the published layouts only -- no rosinality or NVlabs code is imported -- and on
purpose without using `handsoff_ray.core` so that a mistake in the loader cannot cancel out here:

- `random_rosinality_state(arch)`: a random `g_ema` state dict in rosinality/stylegan2-pytorch's
  key layout (`style.N`, `input.input`, `conv1`, `convs.N`, `to_rgbs.N`, `noises.noise_N`, ...).
- `rosinality_to_nvlabs(state, latent_avg)`: the same weights under stylegan2-ada-pytorch names
  (the mapping of its `export_weights.py`, run backwards).
- `write_rosinality_pt` / `write_nvlabs_pkl`: the files. The NVlabs pickle is built the way
  `torch_utils.persistence` writes it: every network module becomes
  `torch_utils.persistence._reconstruct_persistent_obj(dict(type='class', version=6,
  module_src=..., class_name=..., state=<module __dict__>))`, kwargs are `dnnlib.util.EasyDict`.
  The fake `torch_utils` / `dnnlib` modules exist in `sys.modules` only while pickling.
- `reference_forward(state, latent_avg, z, ...)`: StyleGAN2 written straight from rosinality's
  semantics (fused per-sample grouped convolutions, explicit zero-insertion FIR resampling), to
  check the generator against something that is not the generator.
"""

from __future__ import annotations

import contextlib
import math
import pickle
import sys
import types
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

SQRT2 = math.sqrt(2.0)


@dataclass(frozen=True)
class Arch:
    resolution: int = 16
    style_dim: int = 16
    n_mlp: int = 2
    channel_base: int = 128
    channel_max: int = 16
    aspect: int = 1  # 2 = StyleGAN-Human style 4x2 constant

    def channels(self, res: int) -> int:
        return min(self.channel_max, self.channel_base // res)

    @property
    def resolutions(self) -> list[int]:
        return [2**i for i in range(2, int(math.log2(self.resolution)) + 1)]

    @property
    def n_latent(self) -> int:
        return 2 * int(math.log2(self.resolution)) - 2

    def size(self, res: int) -> tuple[int, int]:
        return res, res // self.aspect


def blur_filter() -> torch.Tensor:
    t = torch.tensor([1.0, 3.0, 3.0, 1.0])
    k = torch.outer(t, t)
    return k / k.sum()


# ----------------------------------------------------------------------------------------------
# rosinality layout


def random_rosinality_state(arch: Arch, seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(g_ema state dict, latent_avg) with every parameter random and non-trivial."""
    gen = torch.Generator().manual_seed(seed)

    def rn(*shape: int, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * scale + shift

    d = arch.style_dim
    sd: dict[str, torch.Tensor] = {}
    for i in range(1, arch.n_mlp + 1):
        sd[f"style.{i}.weight"] = rn(d, d, scale=100.0)  # stored as randn / lr_mul
        sd[f"style.{i}.bias"] = rn(d, scale=10.0)

    def styled(prefix: str, cin: int, cout: int, up: bool) -> None:
        sd[f"{prefix}.conv.weight"] = rn(1, cout, cin, 3, 3)
        sd[f"{prefix}.conv.modulation.weight"] = rn(cin, d)
        sd[f"{prefix}.conv.modulation.bias"] = rn(cin, scale=0.2, shift=1.0)
        if up:
            sd[f"{prefix}.conv.blur.kernel"] = blur_filter() * 4
        sd[f"{prefix}.noise.weight"] = rn(1, scale=0.3)
        sd[f"{prefix}.activate.bias"] = rn(cout, scale=0.2)

    def torgb(prefix: str, cin: int, up: bool) -> None:
        if up:
            sd[f"{prefix}.upsample.kernel"] = blur_filter() * 4
        sd[f"{prefix}.conv.weight"] = rn(1, 3, cin, 1, 1)
        sd[f"{prefix}.conv.modulation.weight"] = rn(cin, d)
        sd[f"{prefix}.conv.modulation.bias"] = rn(cin, scale=0.2, shift=1.0)
        sd[f"{prefix}.bias"] = rn(1, 3, 1, 1, scale=0.2)

    c4 = arch.channels(4)
    sd["input.input"] = rn(1, c4, *arch.size(4))
    styled("conv1", c4, c4, up=False)
    torgb("to_rgb1", c4, up=False)
    cin = c4
    for i, res in enumerate(arch.resolutions[1:]):
        cout = arch.channels(res)
        styled(f"convs.{2 * i}", cin, cout, up=True)
        styled(f"convs.{2 * i + 1}", cout, cout, up=False)
        torgb(f"to_rgbs.{i}", cout, up=True)
        cin = cout
    for k in range(2 * len(arch.resolutions) - 1):
        sd[f"noises.noise_{k}"] = rn(1, 1, *arch.size(2 ** ((k + 5) // 2)))
    return sd, rn(d, scale=0.5)


def write_rosinality_pt(path: Path, state: dict, latent_avg: torch.Tensor | None = None, **extra: Any) -> Path:
    ckpt: dict[str, Any] = {"g_ema": state, **extra}
    if latent_avg is not None:
        ckpt["latent_avg"] = latent_avg
    torch.save(ckpt, path)
    return path


# ----------------------------------------------------------------------------------------------
# NVlabs layout


def rosinality_to_nvlabs(sd: dict[str, torch.Tensor], latent_avg: torch.Tensor, arch: Arch) -> dict[str, torch.Tensor]:
    nv: dict[str, torch.Tensor] = {"mapping.w_avg": latent_avg.clone()}
    for i in range(arch.n_mlp):
        nv[f"mapping.fc{i}.weight"] = sd[f"style.{i + 1}.weight"]
        nv[f"mapping.fc{i}.bias"] = sd[f"style.{i + 1}.bias"]

    def layer(dst: str, src: str, noise: str) -> None:
        nv[f"{dst}.weight"] = sd[f"{src}.conv.weight"][0]
        nv[f"{dst}.bias"] = sd[f"{src}.activate.bias"]
        nv[f"{dst}.affine.weight"] = sd[f"{src}.conv.modulation.weight"]
        nv[f"{dst}.affine.bias"] = sd[f"{src}.conv.modulation.bias"]
        nv[f"{dst}.noise_strength"] = sd[f"{src}.noise.weight"][0]
        nv[f"{dst}.noise_const"] = sd[noise][0, 0]
        nv[f"{dst}.resample_filter"] = blur_filter()

    def rgb(dst: str, src: str) -> None:
        nv[f"{dst}.weight"] = sd[f"{src}.conv.weight"][0]
        nv[f"{dst}.bias"] = sd[f"{src}.bias"].reshape(3)
        nv[f"{dst}.affine.weight"] = sd[f"{src}.conv.modulation.weight"]
        nv[f"{dst}.affine.bias"] = sd[f"{src}.conv.modulation.bias"]

    nv["synthesis.b4.const"] = sd["input.input"][0]
    nv["synthesis.b4.resample_filter"] = blur_filter()
    layer("synthesis.b4.conv1", "conv1", "noises.noise_0")
    rgb("synthesis.b4.torgb", "to_rgb1")
    for i, res in enumerate(arch.resolutions[1:], start=1):
        b = f"synthesis.b{res}"
        nv[f"{b}.resample_filter"] = blur_filter()
        layer(f"{b}.conv0", f"convs.{2 * i - 2}", f"noises.noise_{2 * i - 1}")
        layer(f"{b}.conv1", f"convs.{2 * i - 1}", f"noises.noise_{2 * i}")
        rgb(f"{b}.torgb", f"to_rgbs.{i - 1}")
    return nv


class _Persistent:
    """A module as persistence.py pickles it: class name + the module's __dict__."""

    def __init__(self, class_name: str, state: dict[str, Any], module_src: str):
        self.class_name, self.state, self.module_src = class_name, state, module_src


def _module_state(params: dict, buffers: dict, modules: dict, attrs: dict, init_kwargs: dict) -> dict:
    state = dict(torch.nn.Module().__dict__)  # the real nn.Module bookkeeping of this torch
    state.update(
        training=False,
        _parameters=OrderedDict((k, torch.nn.Parameter(v.clone(), requires_grad=False)) for k, v in params.items()),
        _buffers=OrderedDict((k, v.clone()) for k, v in buffers.items()),
        _modules=OrderedDict(modules),
        _init_args=(),
        _init_kwargs=init_kwargs,
        **attrs,
    )
    return state


@contextlib.contextmanager
def _fake_nvlabs_modules():
    """Install importable `torch_utils.persistence` / `dnnlib.util` just for pickling."""
    names = ["torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util"]
    saved = {n: sys.modules.get(n) for n in names}
    mods = {n: types.ModuleType(n) for n in names}

    def _reconstruct_persistent_obj(meta):  # never called: the loader must not import this
        raise AssertionError("the fake persistence module was called")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    easydict = type("EasyDict", (dict,), {"__module__": "dnnlib.util", "__qualname__": "EasyDict"})
    mods["torch_utils.persistence"]._reconstruct_persistent_obj = _reconstruct_persistent_obj
    mods["torch_utils"].persistence = mods["torch_utils.persistence"]
    mods["dnnlib.util"].EasyDict = easydict
    mods["dnnlib"].util = mods["dnnlib.util"]
    mods["dnnlib"].EasyDict = easydict
    sys.modules.update(mods)
    try:
        yield _reconstruct_persistent_obj, easydict
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


def nvlabs_records(
    nv: dict[str, torch.Tensor],
    arch: Arch,
    *,
    easydict: type,
    module_src: str,
    conv_clamp: float | None = None,
    num_fp16_res: int = 0,
    synthesis_extra: dict | None = None,
    generator_extra: dict | None = None,
    lr_multiplier: float = 0.01,
) -> _Persistent:
    """The G_ema object tree, with the attributes stylegan2-ada-pytorch's modules carry."""

    def rec(name: str, **kw: Any) -> _Persistent:
        return _Persistent(name, _module_state(**kw), module_src)

    def fc(prefix: str, in_f: int, lr: float, act: str, bias_init: float) -> _Persistent:
        return rec(
            "FullyConnectedLayer",
            params={"weight": nv[f"{prefix}.weight"], "bias": nv[f"{prefix}.bias"]},
            buffers={},
            modules={},
            attrs={"activation": act, "weight_gain": np.float64(lr / np.sqrt(in_f)), "bias_gain": lr},
            init_kwargs={"bias_init": bias_init} if act == "linear" else {"activation": act, "lr_multiplier": lr},
        )

    d = arch.style_dim
    mapping = rec(
        "MappingNetwork",
        params={},
        buffers={"w_avg": nv["mapping.w_avg"]},
        modules={f"fc{i}": fc(f"mapping.fc{i}", d, lr_multiplier, "lrelu", 0.0) for i in range(arch.n_mlp)},
        attrs={"z_dim": d, "c_dim": 0, "w_dim": d, "num_ws": arch.n_latent, "num_layers": arch.n_mlp, "w_avg_beta": 0.995},
        init_kwargs={"z_dim": d, "c_dim": 0, "w_dim": d, "num_ws": arch.n_latent, "num_layers": arch.n_mlp},
    )

    def layer(prefix: str, res: int, up: int) -> _Persistent:
        cout, cin = nv[f"{prefix}.weight"].shape[:2]
        return rec(
            "SynthesisLayer",
            params={k: nv[f"{prefix}.{k}"] for k in ("weight", "noise_strength", "bias")},
            buffers={"resample_filter": nv[f"{prefix}.resample_filter"], "noise_const": nv[f"{prefix}.noise_const"]},
            modules={"affine": fc(f"{prefix}.affine", d, 1.0, "linear", 1.0)},
            attrs={
                "resolution": res, "up": up, "use_noise": True, "activation": "lrelu",
                "conv_clamp": conv_clamp, "padding": 1, "act_gain": np.float64(np.sqrt(2)),
            },
            init_kwargs={"in_channels": cin, "out_channels": cout, "w_dim": d, "resolution": res, "up": up, "conv_clamp": conv_clamp},
        )

    def torgb(prefix: str) -> _Persistent:
        cin = nv[f"{prefix}.weight"].shape[1]
        return rec(
            "ToRGBLayer",
            params={"weight": nv[f"{prefix}.weight"], "bias": nv[f"{prefix}.bias"]},
            buffers={},
            modules={"affine": fc(f"{prefix}.affine", d, 1.0, "linear", 1.0)},
            attrs={"conv_clamp": conv_clamp, "weight_gain": np.float64(1 / np.sqrt(cin))},
            init_kwargs={"in_channels": cin, "out_channels": 3, "w_dim": d, "conv_clamp": conv_clamp},
        )

    blocks = {}
    for res in arch.resolutions:
        b = f"synthesis.b{res}"
        modules = {} if res == 4 else {"conv0": layer(f"{b}.conv0", res, 2)}
        modules.update(conv1=layer(f"{b}.conv1", res, 1), torgb=torgb(f"{b}.torgb"))
        blocks[f"b{res}"] = rec(
            "SynthesisBlock",
            params={"const": nv[f"{b}.const"]} if res == 4 else {},
            buffers={"resample_filter": nv[f"{b}.resample_filter"]},
            modules=modules,
            attrs={"resolution": res, "architecture": "skip", "use_fp16": False, "num_conv": len(modules) - 1, "num_torgb": 1},
            init_kwargs={"resolution": res, "img_channels": 3, "is_last": res == arch.resolution, "conv_clamp": conv_clamp},
        )
    synthesis_kwargs = easydict(
        channel_base=arch.channel_base, channel_max=arch.channel_max, num_fp16_res=num_fp16_res, conv_clamp=conv_clamp,
        **(synthesis_extra or {}),
    )
    synthesis = rec(
        "SynthesisNetwork",
        params={},
        buffers={},
        modules=blocks,
        attrs={"w_dim": d, "img_resolution": arch.resolution, "num_ws": arch.n_latent},
        init_kwargs={"w_dim": d, "img_resolution": arch.resolution, "img_channels": 3, **synthesis_kwargs},
    )
    g_kwargs = {
        "z_dim": d, "w_dim": d, "c_dim": 0, "img_resolution": arch.resolution, "img_channels": 3,
        "mapping_kwargs": easydict(num_layers=arch.n_mlp), "synthesis_kwargs": synthesis_kwargs,
        **(generator_extra or {}),
    }
    return rec(
        "Generator",
        params={},
        buffers={},
        modules={"synthesis": synthesis, "mapping": mapping},
        attrs={"z_dim": d, "c_dim": 0, "w_dim": d, "img_resolution": arch.resolution, "img_channels": 3, "num_ws": arch.n_latent},
        init_kwargs=easydict(g_kwargs),
    )


def write_nvlabs_pkl(
    path: Path,
    nv: dict[str, torch.Tensor],
    arch: Arch,
    *,
    module_src: str = "# network source would be here\n",
    **record_kwargs: Any,
) -> Path:
    """Pickle dict(training_set_kwargs, G, D, G_ema, augment_pipe) the way NVlabs snapshots do."""
    with _fake_nvlabs_modules() as (reconstruct, easydict):
        g_ema = nvlabs_records(nv, arch, easydict=easydict, module_src=module_src, **record_kwargs)
        disc = _Persistent(
            "Discriminator",
            _module_state({"b4.fc.weight": torch.randn(4, 4)}, {}, {}, {}, {"c_dim": 0}),
            module_src,
        )
        snapshot = {
            "training_set_kwargs": easydict(class_name="training.dataset.ImageFolderDataset", path="x.zip", resolution=arch.resolution),
            "G": g_ema,
            "D": disc,
            "G_ema": g_ema,
            "augment_pipe": None,
        }

        class _Pickler(pickle.Pickler):
            def reducer_override(self, obj: Any) -> Any:
                if isinstance(obj, _Persistent):
                    meta = dict(type="class", version=6, module_src=obj.module_src, class_name=obj.class_name, state=obj.state)
                    return reconstruct, (meta,)
                return NotImplemented

        with open(path, "wb") as f:
            _Pickler(f, protocol=4).dump(snapshot)
    return path


# ----------------------------------------------------------------------------------------------
# Reference forward pass (rosinality semantics, fused per-sample weights)


def _upfirdn(x: torch.Tensor, kernel: torch.Tensor, up: int, pad0: int, pad1: int) -> torch.Tensor:
    n, c, h, w = x.shape
    u = x.new_zeros(n, c, h * up, w * up)
    u[:, :, ::up, ::up] = x  # zero insertion
    u = F.pad(u, [pad0, pad1, pad0, pad1])
    k = torch.flip(kernel, [0, 1])[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(u, k, groups=c)


def reference_forward(
    sd: dict[str, torch.Tensor],
    latent_avg: torch.Tensor,
    z: torch.Tensor | None,
    *,
    ws: torch.Tensor | None = None,
    psi: float = 1.0,
    cutoff: int | None = None,
    conv_clamp: float | None = None,
    lr_mul: float = 0.01,
    noise: bool = True,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(image, HandsOff features) of the rosinality-layout generator `sd` with fixed noise.

    From z (mapping + truncation), or from a given W+ `ws` [N, n_latent, D] (psi is then unused).
    """
    n_mlp = sum(1 for k in sd if k.startswith("style.") and k.endswith(".weight"))
    d = sd["style.1.weight"].shape[1]
    n_rgb = sum(1 for k in sd if k.startswith("to_rgbs.") and k.endswith(".conv.weight"))
    n_latent = 2 * (n_rgb + 2) - 2
    if ws is None:
        x = z * torch.rsqrt(torch.mean(z**2, dim=1, keepdim=True) + 1e-8)
        for i in range(1, n_mlp + 1):
            x = F.linear(x, sd[f"style.{i}.weight"] * (lr_mul / math.sqrt(d)))
            x = F.leaky_relu(x + sd[f"style.{i}.bias"] * lr_mul, 0.2) * SQRT2
        cut = n_latent if cutoff is None else cutoff
        ws = [latent_avg + psi * (x - latent_avg) if (psi != 1 and j < cut) else x for j in range(n_latent)]
    else:
        ws = list(ws.unbind(dim=1))

    def modconv(x: torch.Tensor, prefix: str, w: torch.Tensor, demod: bool, up: bool) -> torch.Tensor:
        weight = sd[f"{prefix}.conv.weight"]  # [1, O, I, k, k]
        _, o, i, k, _ = weight.shape
        style = F.linear(w, sd[f"{prefix}.conv.modulation.weight"] / math.sqrt(d), sd[f"{prefix}.conv.modulation.bias"])
        wt = weight / math.sqrt(i * k * k) * style[:, None, :, None, None]  # [N, O, I, k, k]
        if demod:
            wt = wt * torch.rsqrt(wt.pow(2).sum([2, 3, 4]) + 1e-8)[:, :, None, None, None]
        n, _, h, wd = x.shape
        if up:
            wt = wt.transpose(1, 2).reshape(n * i, o, k, k)
            out = F.conv_transpose2d(x.reshape(1, n * i, h, wd), wt, stride=2, groups=n)
            out = out.reshape(n, o, out.shape[2], out.shape[3])
            return _upfirdn(out, blur_filter() * 4, 1, 1, 1)
        out = F.conv2d(x.reshape(1, n * i, h, wd), wt.reshape(n * o, i, k, k), padding=k // 2, groups=n)
        return out.reshape(n, o, h, wd)

    def styled(x: torch.Tensor, prefix: str, w: torch.Tensor, noise_key: str, up: bool) -> torch.Tensor:
        out = modconv(x, prefix, w, True, up)
        if noise:
            out = out + sd[f"{prefix}.noise.weight"] * sd[noise_key]
        out = F.leaky_relu(out + sd[f"{prefix}.activate.bias"][None, :, None, None], 0.2) * SQRT2
        return out if conv_clamp is None else out.clamp(-conv_clamp, conv_clamp)

    def rgb(x: torch.Tensor, prefix: str, w: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        out = modconv(x, prefix, w, False, False) + sd[f"{prefix}.bias"]
        if conv_clamp is not None:
            out = out.clamp(-conv_clamp, conv_clamp)
        return out if skip is None else out + _upfirdn(skip, blur_filter() * 4, 2, 2, 1)

    batch = ws[0].shape[0]
    out = sd["input.input"].repeat(batch, 1, 1, 1)
    feats = [out]
    out = styled(out, "conv1", ws[0], "noises.noise_0", False)
    feats.append(out)
    skip = rgb(out, "to_rgb1", ws[1], None)
    for b in range(n_rgb):
        j = 2 * b + 1
        out = styled(out, f"convs.{2 * b}", ws[j], f"noises.noise_{j}", True)
        feats.append(out)
        out = styled(out, f"convs.{2 * b + 1}", ws[j + 1], f"noises.noise_{j + 1}", False)
        feats.append(out)
        skip = rgb(out, f"to_rgbs.{b}", ws[j + 2], skip)
    return skip, feats
