"""StyleGAN2 residual discriminator, trained by `handsoff train-gan` (core/gan_step.py).

    D = Discriminator(64, channel_base=2048, channel_max=128)
    logits = D(img)                       # img [N, 3, 64, 64] in [-1, 1] -> [N]

FromRGB (1x1) at full resolution, then one residual block per resolution down to 4x4 (a 3x3 conv,
then [1,3,3,1] blur + stride-2 3x3 conv; a blurred, stride-2 1x1 skip; the sum scaled by 1/sqrt(2)),
minibatch standard deviation, a 3x3 conv and two equalized linear layers. Equalized learning rate
everywhere, like the generator, so one Adam learning rate suits every layer.

Down-sampling follows StyleGAN2's `conv2d_resample`: blur first, then a strided convolution, so the
down-sampling conv runs at the output resolution. (Convolving at full resolution and dropping every
other pixel afterwards is the same filter up to the borders, but costs 4x the FLOPs; it was 60% of a
64x64 training step on CPU.)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Discriminator"]

_SQRT2 = math.sqrt(2.0)


def _blur(x: torch.Tensor, kernel: torch.Tensor, pad: int, stride: int) -> torch.Tensor:
    """Depthwise [1,3,3,1] low-pass, zero padding `pad` on each side, optional stride."""
    c = x.shape[1]
    k = kernel.to(x.dtype).expand(c, 1, 4, 4)
    x = F.pad(x, (pad, pad, pad, pad))
    if stride > 1 and _cpu_bf16(x):
        # oneDNN's strided depthwise backward in bf16 is 5-20x slower on CPU than filtering every
        # pixel and dropping the odd ones (measured on Zen 4, torch 2.14); same values either way.
        return F.conv2d(x, k, groups=c)[:, :, ::stride, ::stride]
    return F.conv2d(x, k, stride=stride, groups=c)


def _cpu_bf16(x: torch.Tensor) -> bool:
    """True when a conv on `x` runs in bf16 on CPU (bf16 input, or autocast casts it there)."""
    if x.device.type != "cpu":
        return False
    autocast_bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    return x.dtype == torch.bfloat16 or autocast_bf16


class _EqConv(nn.Module):
    """Equalized-lr conv; `down=True` blurs then convolves with stride 2 (output H/2 x W/2)."""

    def __init__(self, cin: int, cout: int, k: int, *, bias: bool = True, act: bool = True, down: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.scale = 1 / math.sqrt(cin * k * k)
        self.k, self.act, self.down = k, act, down
        taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
        self.register_buffer("blur", taps[:, None] * taps[None, :] / taps.sum() ** 2, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight * self.scale
        if not self.down:
            x = F.conv2d(x, w, padding=self.k // 2)
        elif self.k == 1:
            # 1x1: blur with stride 2 (pad 1: [H+2] -> 4-tap -> every other -> H/2), then the 1x1 conv
            x = F.conv2d(_blur(x, self.blur, 1, 2), w)
        else:
            # 3x3: blur with pad 2 ([H] -> [H+1]), then a stride-2 conv without padding -> H/2
            x = F.conv2d(_blur(x, self.blur, 2, 1), w, stride=2)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).view(1, -1, 1, 1)  # keep autocast's bf16: no fp32 round trip
        return F.leaky_relu(x, 0.2) * _SQRT2 if self.act else x


class _EqLinear(nn.Module):
    def __init__(self, cin: int, cout: int, *, act: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.scale, self.act = 1 / math.sqrt(cin), act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.scale, self.bias.to(x.dtype))
        return F.leaky_relu(x, 0.2) * _SQRT2 if self.act else x


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv0 = _EqConv(cin, cin, 3)
        self.conv1 = _EqConv(cin, cout, 3, down=True)
        self.skip = _EqConv(cin, cout, 1, bias=False, act=False, down=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.skip(x) + self.conv1(self.conv0(x))) / _SQRT2


class Discriminator(nn.Module):
    """D(img [N, 3, H, W] in [-1, 1]) -> logits [N]. Channels at resolution r: min(channel_max, channel_base // r)."""

    def __init__(self, resolution: int, *, channel_base: int = 2048, channel_max: int = 256, mbstd_group: int = 4):
        super().__init__()
        if resolution < 8 or resolution & (resolution - 1):
            raise ValueError(f"resolution must be a power of two >= 8, got {resolution}")
        if channel_base < resolution:
            raise ValueError(f"channel_base ({channel_base}) must be >= resolution ({resolution})")
        ch = lambda r: min(channel_max, channel_base // r)  # noqa: E731
        self.resolution = resolution
        self.from_rgb = _EqConv(3, ch(resolution), 1)
        blocks, r = [], resolution
        while r > 4:
            blocks.append(_ResBlock(ch(r), ch(r // 2)))
            r //= 2
        self.blocks = nn.Sequential(*blocks)
        self.mbstd_group = mbstd_group
        self.final_conv = _EqConv(ch(4) + 1, ch(4), 3)
        self.fc = _EqLinear(ch(4) * 16, ch(4))
        self.out = _EqLinear(ch(4), 1, act=False)

    def _minibatch_std(self, x: torch.Tensor) -> torch.Tensor:
        # one extra feature map: how much the samples of a small group differ -> discourages mode collapse
        n, c, h, w = x.shape
        g = min(self.mbstd_group, n)
        while n % g:
            g -= 1
        y = x.reshape(g, -1, c, h, w)  # [N, C, H, W] -> [G, N/G, C, H, W]; group k = samples k, k+N/G, ...
        y = (y.var(0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # [N/G]
        y = y.reshape(-1, 1, 1, 1).repeat(g, 1, h, w)  # [N, 1, H, W]
        return torch.cat([x, y], 1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if img.ndim != 4 or img.shape[1] != 3 or img.shape[2] != self.resolution or img.shape[3] != self.resolution:
            raise ValueError(f"expected images [N, 3, {self.resolution}, {self.resolution}], got {list(img.shape)}")
        x = self.blocks(self.from_rgb(img))
        x = self.final_conv(self._minibatch_std(x))
        return self.out(self.fc(x.flatten(1))).squeeze(1)
