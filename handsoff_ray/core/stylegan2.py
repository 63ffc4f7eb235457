"""StyleGAN2 generator (config-e/f "skip" architecture) in plain PyTorch, with HandsOff features.

One module computes what both public implementations compute -- rosinality/stylegan2-pytorch
`Generator(..., randomize_noise=False)` and NVlabs/stylegan2-ada-pytorch `G_ema(z, None, psi,
noise_mode='const')` -- so checkpoints of either kind (see `checkpoint.py`) give the same images.
It needs no compiled extension: it runs on CPU, CUDA and under `torch.autocast` (fp16/bf16).

    cfg = GeneratorConfig(resolution=256, channel_base=16384)
    G = Generator(cfg)                                   # random init, like the originals
    z = z_from_seeds([0, 1, 2], cfg.style_dim)           # [3, 512], independent of batch size
    ws = G.mapping(z, truncation_psi=0.7)                # [3, n_latent, 512]  (W+)
    img, feats = G.synthesis(ws, noise_mode="const", return_features=True)
    feature_spec(cfg)                                    # names / channels / sizes of `feats`

W+ index usage (same as rosinality and NVlabs): b4.conv1 <- w[0], b4.torgb <- w[1]; block b at
resolution 2^(b+2), b >= 1: conv0 <- w[2b-1], conv1 <- w[2b], torgb <- w[2b+1]. So each ToRGB shares
its w with the next block's upsampling conv, and n_latent = 2*log2(resolution) - 2.

Precision: NVlabs checkpoints run their top `num_fp16_res` resolutions in fp16 on CUDA; this module
computes in fp32 unless you wrap it in `torch.autocast`, i.e. it matches NVlabs with
`force_fp32=True` (and exactly rosinality, which is fp32 throughout).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from handsoff_ray.core._ops import (
    bias_act,
    modulated_conv2d,
    no_autocast,
    setup_filter,
    upsample2d,
)

__all__ = [
    "GeneratorConfig",
    "Generator",
    "MappingNetwork",
    "SynthesisNetwork",
    "FeatureSpec",
    "feature_spec",
    "z_from_seeds",
    "truncate",
    "NOISE_MODES",
]

NOISE_MODES = ("const", "random", "none")


@dataclass(frozen=True)
class GeneratorConfig:
    """Architecture of a StyleGAN2 generator; everything a checkpoint needs beyond its tensors."""

    # Output height in pixels: a power of two in 8..1024 (FFHQ config-f: 1024, LSUN car: 512).
    resolution: int
    # Dimension of z and w (512 in every public StyleGAN2 checkpoint).
    style_dim: int = 512
    # Depth of the mapping MLP (8 for config-f; NVlabs `--cfg auto` trains with 2).
    n_mlp: int = 8
    # Channels at resolution r are min(channel_max, channel_base // r); rosinality's
    # channel_multiplier cm is channel_base = 16384 * cm, so config-f (cm=2) is 32768.
    channel_base: int = 32768
    channel_max: int = 512
    # Learning-rate multiplier of the mapping layers (equalised lr: it also scales the forward).
    lr_mlp: float = 0.01
    # Clamp conv / ToRGB outputs to +-conv_clamp (NVlabs trains with 256; rosinality: None).
    conv_clamp: float | None = None
    # 1 = square; 2 = a 4x2 constant and maps of [r, r/2] (StyleGAN-Human 1024x512).
    init_aspect: int = 1

    def __post_init__(self) -> None:
        r = self.resolution
        if not isinstance(r, int) or r < 8 or r > 1024 or r & (r - 1):
            raise ValueError(f"resolution must be a power of two in 8..1024, got {r!r}")
        if self.style_dim < 1 or self.n_mlp < 1:
            raise ValueError(f"style_dim and n_mlp must be >= 1, got {self.style_dim}, {self.n_mlp}")
        if self.channel_max < 1 or self.channel_base < r:
            raise ValueError(
                f"channel_base ({self.channel_base}) must be >= resolution ({r}) and channel_max "
                f"({self.channel_max}) >= 1, so that every layer has at least one channel"
            )
        if not self.lr_mlp > 0:
            raise ValueError(f"lr_mlp must be > 0, got {self.lr_mlp}")
        if self.conv_clamp is not None and not self.conv_clamp > 0:
            raise ValueError(f"conv_clamp must be None or > 0, got {self.conv_clamp}")
        if self.init_aspect not in (1, 2):
            raise ValueError(f"init_aspect must be 1 (square) or 2 (height = 2 * width), got {self.init_aspect}")

    @property
    def log2_resolution(self) -> int:
        return int(math.log2(self.resolution))

    @property
    def n_latent(self) -> int:
        """Number of w vectors in W+ (18 at 1024, 16 at 512)."""
        return 2 * self.log2_resolution - 2

    @property
    def num_conv_layers(self) -> int:
        """Styled convolutions = noise inputs (17 at 1024)."""
        return 2 * self.log2_resolution - 3

    @property
    def block_resolutions(self) -> list[int]:
        return [2**i for i in range(2, self.log2_resolution + 1)]

    @property
    def width(self) -> int:
        return self.resolution // self.init_aspect

    def channels(self, res: int) -> int:
        return min(self.channel_max, self.channel_base // res)

    def map_size(self, res: int) -> tuple[int, int]:
        """(height, width) of the feature maps of the block at resolution `res`."""
        return res, res // self.init_aspect

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GeneratorConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown GeneratorConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**d)


class FeatureSpec(NamedTuple):
    """One per-layer feature map of the hypercolumn: name, channels, height, width."""

    name: str
    channels: int
    height: int
    width: int


def feature_spec(g_or_cfg: Generator | GeneratorConfig) -> list[FeatureSpec]:
    """The maps `synthesis(..., return_features=True)` returns, in HandsOff order.

    b4.const, b4.conv1, then b8.conv0, b8.conv1, ... up to the output resolution; config-f channels
    sum to 6080 at 1024 and 6016 at 512.
    """
    cfg = g_or_cfg.cfg if isinstance(g_or_cfg, Generator) else g_or_cfg
    c4, (h4, w4) = cfg.channels(4), cfg.map_size(4)
    spec = [FeatureSpec("b4.const", c4, h4, w4), FeatureSpec("b4.conv1", c4, h4, w4)]
    for res in cfg.block_resolutions[1:]:
        c, (h, w) = cfg.channels(res), cfg.map_size(res)
        spec += [FeatureSpec(f"b{res}.conv0", c, h, w), FeatureSpec(f"b{res}.conv1", c, h, w)]
    return spec


def z_from_seeds(
    seeds: Iterable[int], dim: int, *, device: torch.device | str | None = None
) -> torch.Tensor:
    """[len(seeds), dim] standard-normal latents, one `torch.Generator` per seed.

    Sample i depends only on seeds[i], so results never change with batch size or worker count.
    """
    rows = []
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seeds must be non-negative ints, got {seed!r}")
        gen = torch.Generator(device="cpu").manual_seed(seed)
        rows.append(torch.randn(dim, generator=gen, dtype=torch.float32))
    if not rows:
        return torch.empty(0, dim, device=device)
    return torch.stack(rows).to(device)


class EqualLinear(nn.Module):
    """Fully connected layer with equalised learning rate.

    Stored weight = randn / lr_mul; forward uses weight * lr_mul / sqrt(in) and bias * lr_mul
    (the convention of both rosinality EqualLinear and NVlabs FullyConnectedLayer).
    """

    def __init__(self, in_dim: int, out_dim: int, *, lr_mul: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.weight_gain = lr_mul / math.sqrt(in_dim)
        self.bias_gain = lr_mul

    def forward(self, x: torch.Tensor, act: str = "linear") -> torch.Tensor:
        x = F.linear(x, self.weight * self.weight_gain)
        return bias_act(x, self.bias * self.bias_gain, act=act)


class MappingNetwork(nn.Module):
    """z [N, D] -> W+ [N, n_latent, D]: pixel norm, n_mlp EqualLinear + lrelu, broadcast, truncation.

    Holds the truncation centre `latent_avg` [D] (rosinality `latent_avg`, NVlabs `mapping.w_avg`).
    """

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.n_latent = cfg.n_latent
        self.fcs = nn.ModuleList(
            EqualLinear(cfg.style_dim, cfg.style_dim, lr_mul=cfg.lr_mlp) for _ in range(cfg.n_mlp)
        )
        self.register_buffer("latent_avg", torch.zeros(cfg.style_dim))

    def forward(
        self,
        z: torch.Tensor,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
    ) -> torch.Tensor:
        # Pixel norm = normalize_2nd_moment: unit mean square per sample.
        x = z.float() * (z.float().square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()
        for fc in self.fcs:
            x = fc(x, act="lrelu")
        ws = x.unsqueeze(1).repeat(1, self.n_latent, 1)  # [N, D] -> [N, n_latent, D]
        return truncate(ws, self.latent_avg, truncation_psi, truncation_cutoff)


def truncate(
    ws: torch.Tensor, center: torch.Tensor, psi: float, cutoff: int | None = None
) -> torch.Tensor:
    """center + psi * (ws - center) on the first `cutoff` latents (all when None).

    NVlabs semantics: any psi != 1 applies (rosinality's forward ignores psi > 1; same for psi <= 1).
    """
    if psi == 1:
        return ws
    cut = ws.shape[1] if cutoff is None else cutoff
    head = center + psi * (ws[:, :cut] - center)
    return torch.cat([head, ws[:, cut:]], dim=1)


class StyledConv(nn.Module):
    """Modulated 3x3 conv (optionally 2x up) -> noise -> bias + lrelu(0.2)*sqrt(2) [-> clamp].

    Parameters: weight [O, I, 3, 3]; affine (w -> per-input-channel style, bias init 1);
    noise_strength [] (0 at init); bias [O]; buffer noise_const [1, 1, h, w] (the fixed noise image).
    """

    def __init__(self, cfg: GeneratorConfig, in_ch: int, out_ch: int, res: int, *, up: int = 1):
        super().__init__()
        self.up = up
        self.conv_clamp = cfg.conv_clamp
        self.map_size = cfg.map_size(res)
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, 3, 3))
        self.weight_gain = 1.0 / math.sqrt(in_ch * 9)
        self.affine = EqualLinear(cfg.style_dim, in_ch, bias_init=1.0)
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.register_buffer("noise_const", torch.randn(1, 1, *self.map_size))
        self.register_buffer("resample_filter", setup_filter(), persistent=False)

    def forward(
        self,
        x: torch.Tensor,
        w: torch.Tensor,
        noise_mode: str = "const",
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        styles = self.affine(w)  # [N, I]
        x = modulated_conv2d(
            x,
            self.weight * self.weight_gain,
            styles,
            up=self.up,
            padding=1,
            resample_filter=self.resample_filter,
        )
        if noise is None:
            if noise_mode == "const":
                noise = self.noise_const
            elif noise_mode == "random":
                noise = torch.randn(x.shape[0], 1, *self.map_size, device=x.device, dtype=x.dtype)
        if noise is not None:
            x = x + (noise * self.noise_strength).to(x.dtype)
        return bias_act(x, self.bias, act="lrelu", clamp=self.conv_clamp)


class ToRGB(nn.Module):
    """Modulated 1x1 conv to RGB without demodulation, + bias [-> clamp]."""

    def __init__(self, cfg: GeneratorConfig, in_ch: int):
        super().__init__()
        self.conv_clamp = cfg.conv_clamp
        self.weight = nn.Parameter(torch.randn(3, in_ch, 1, 1))
        self.weight_gain = 1.0 / math.sqrt(in_ch)
        self.affine = EqualLinear(cfg.style_dim, in_ch, bias_init=1.0)
        self.bias = nn.Parameter(torch.zeros(3))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = modulated_conv2d(x, self.weight * self.weight_gain, self.affine(w), demodulate=False)
        return bias_act(x, self.bias, act="linear", clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution: (const | conv0 with 2x up), conv1, torgb."""

    def __init__(self, cfg: GeneratorConfig, res: int):
        super().__init__()
        self.res = res
        out_ch = cfg.channels(res)
        if res == 4:
            self.const = nn.Parameter(torch.randn(out_ch, *cfg.map_size(4)))
        else:
            self.conv0 = StyledConv(cfg, cfg.channels(res // 2), out_ch, res, up=2)
        self.conv1 = StyledConv(cfg, out_ch, out_ch, res)
        self.torgb = ToRGB(cfg, out_ch)

    def convs(self) -> list[StyledConv]:
        return [self.conv1] if self.res == 4 else [self.conv0, self.conv1]


class SynthesisNetwork(nn.Module):
    """W+ [N, n_latent, D] -> image [N, 3, H, W] (+ per-layer features for HandsOff)."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.cfg = cfg
        self.block_resolutions = cfg.block_resolutions
        for res in self.block_resolutions:
            setattr(self, f"b{res}", SynthesisBlock(cfg, res))
        self.register_buffer("resample_filter", setup_filter(), persistent=False)

    def blocks(self) -> list[SynthesisBlock]:
        return [getattr(self, f"b{res}") for res in self.block_resolutions]

    def conv_layers(self) -> list[StyledConv]:
        """The styled convolutions in W+ / noise order (b4.conv1, b8.conv0, b8.conv1, ...)."""
        return [conv for block in self.blocks() for conv in block.convs()]

    def forward(
        self,
        ws: torch.Tensor,
        noise_mode: str = "const",
        return_features: bool = False,
        noise: Sequence[torch.Tensor | None] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """ws: [N, n_latent, D]. noise_mode: 'const' (stored noise_const buffers), 'random', 'none'.

        `noise`, if given, is one tensor (or None) per styled conv in `conv_layers()` order and
        overrides noise_mode for that layer (e.g. for noise optimisation during inversion).
        Returns the image, or (image, features) with features as listed by `feature_spec`.
        """
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        cfg = self.cfg
        if ws.ndim != 3 or ws.shape[1] != cfg.n_latent or ws.shape[2] != cfg.style_dim:
            raise ValueError(
                f"ws must be [N, {cfg.n_latent}, {cfg.style_dim}] for this generator, "
                f"got {list(ws.shape)}"
            )
        layers_noise = list(noise) if noise is not None else [None] * cfg.num_conv_layers
        if len(layers_noise) != cfg.num_conv_layers:
            raise ValueError(f"noise must hold {cfg.num_conv_layers} entries, got {len(layers_noise)}")

        n = ws.shape[0]
        features: list[torch.Tensor] = []
        b4 = self.b4
        x = b4.const.unsqueeze(0).expand(n, -1, -1, -1)  # [C, 4, w4] -> [N, C, 4, w4], a view
        features.append(x)
        x = b4.conv1(x, ws[:, 0], noise_mode, layers_noise[0])
        features.append(x)
        img = self._rgb(b4.torgb(x, ws[:, 1]), None)

        w_idx, noise_idx = 1, 1
        for block in self.blocks()[1:]:
            x = block.conv0(x, ws[:, w_idx], noise_mode, layers_noise[noise_idx])
            features.append(x)
            x = block.conv1(x, ws[:, w_idx + 1], noise_mode, layers_noise[noise_idx + 1])
            features.append(x)
            img = self._rgb(block.torgb(x, ws[:, w_idx + 2]), img)
            w_idx += 2
            noise_idx += 2

        return (img, features) if return_features else img

    def _rgb(self, y: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        # The RGB skip path stays fp32 under autocast (as NVlabs keeps `img` fp32): it sums
        # contributions of every resolution and holds the output.
        with no_autocast(y):
            y = y.float()
            return y if skip is None else upsample2d(skip, self.resample_filter) + y


class Generator(nn.Module):
    """StyleGAN2 generator: `G(z, truncation_psi, noise_mode='const')` -> image in about [-1, 1].

    Attributes: `cfg`, `resolution`, `n_latent`, `latent_avg` (the truncation centre, [D]) and
    `metadata` (a dict of provenance notes filled by the checkpoint loader).
    """

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.cfg = cfg
        self.mapping = MappingNetwork(cfg)
        self.synthesis = SynthesisNetwork(cfg)
        self.metadata: dict[str, Any] = {}

    @property
    def resolution(self) -> int:
        return self.cfg.resolution

    @property
    def n_latent(self) -> int:
        return self.cfg.n_latent

    @property
    def style_dim(self) -> int:
        return self.cfg.style_dim

    @property
    def latent_avg(self) -> torch.Tensor:
        return self.mapping.latent_avg

    @latent_avg.setter
    def latent_avg(self, value: torch.Tensor) -> None:
        with torch.no_grad():
            self.mapping.latent_avg.copy_(value.reshape(self.cfg.style_dim))

    def forward(
        self,
        z: torch.Tensor,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        noise_mode: str = "const",
    ) -> torch.Tensor:
        ws = self.mapping(z, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, noise_mode=noise_mode)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.cfg.to_dict().items())

