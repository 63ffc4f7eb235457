"""Pure-PyTorch StyleGAN2 operators: FIR resampling, bias + activation, modulated convolution.

These are the reference semantics of the CUDA kernels shipped with rosinality/stylegan2-pytorch
(`op/upfirdn2d`, `op/fused_act`) and NVlabs/stylegan2-ada-pytorch (`torch_utils/ops`), written
with stock PyTorch ops only, so they run on CPU, CUDA and under `torch.autocast` with nothing to
compile. Used by `handsoff_ray.core.stylegan2`; nothing here knows about checkpoints.

    x = upsample2d(img, setup_filter())             # [N, C, H, W] -> [N, C, 2H, 2W]
    y = modulated_conv2d(x, w, styles, padding=1)   # StyleGAN2 weight (de)modulation
    y = bias_act(y, bias, act="lrelu", clamp=256)   # + bias, leaky ReLU(0.2) * sqrt(2), clamp
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "setup_filter",
    "upfirdn2d",
    "upsample2d",
    "bias_act",
    "modulated_conv2d",
    "no_autocast",
    "LRELU_SLOPE",
    "LRELU_GAIN",
]

LRELU_SLOPE = 0.2
# Gain that keeps the activation variance of leaky ReLU(0.2) close to that of its input.
LRELU_GAIN = math.sqrt(2.0)
# Demodulation epsilon of both original implementations.
DEMOD_EPS = 1e-8


def setup_filter(taps: Sequence[float] = (1.0, 3.0, 3.0, 1.0), *, device=None) -> torch.Tensor:
    """Separable low-pass FIR filter: outer product of `taps`, normalised to sum 1. -> [k, k]."""
    t = torch.as_tensor(list(taps), dtype=torch.float32, device=device)
    f = t[:, None] * t[None, :]
    return f / f.sum()


def no_autocast(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """A context that turns autocast off for `x`'s device type (a no-op when it is off)."""
    device_type = x.device.type
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def upfirdn2d(
    x: torch.Tensor,
    f: torch.Tensor,
    *,
    up: int = 1,
    down: int = 1,
    pad: tuple[int, int, int, int] = (0, 0, 0, 0),
    gain: float = 1.0,
) -> torch.Tensor:
    """Upsample by zero insertion, pad, convolve with the FIR filter `f`, then decimate.

    x: [N, C, H, W]; f: [kh, kw]; pad: (x0, x1, y0, y1), negative values crop.
    The filter is applied as a true convolution (flipped), as both reference kernels do; the
    StyleGAN filters are symmetric, so this only matters for custom filters.
    """
    n, c, h, w = x.shape
    px0, px1, py0, py1 = pad
    if up > 1:
        # [N, C, H, W] -> [N, C, H, 1, W, 1] -> zero-pad the unit dims -> [N, C, H*up, W*up]
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0) : x.shape[2] - max(-py1, 0), max(-px0, 0) : x.shape[3] - max(-px1, 0)]
    kernel = (f * gain).flip([0, 1]).to(dtype=x.dtype, device=x.device)
    # One depthwise filter per channel: [C, 1, kh, kw].
    x = F.conv2d(x, kernel[None, None].expand(c, 1, *kernel.shape), groups=c)
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


def upsample2d(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """2x FIR upsampling with the padding StyleGAN2 uses for the ToRGB skip path.

    The filter is normalised to sum 1; the gain of 4 (= up**2) keeps the mean after zero insertion.
    """
    kw = f.shape[-1]
    p0, p1 = (kw + 1) // 2, (kw - 2) // 2  # (2, 1) for the 4-tap filter
    return upfirdn2d(x, f, up=2, pad=(p0, p1, p0, p1), gain=4.0)


def bias_act(
    x: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    act: str = "lrelu",
    clamp: float | None = None,
) -> torch.Tensor:
    """x + bias (per channel, dim 1), then leaky ReLU(0.2) * sqrt(2) or identity, then clamp.

    The clamp is applied after the activation gain, as NVlabs' `bias_act(clamp=...)` does.
    """
    if bias is not None:
        shape = [1, -1] + [1] * (x.ndim - 2)
        x = x + bias.to(x.dtype).reshape(shape)
    if act == "lrelu":
        x = F.leaky_relu(x, LRELU_SLOPE) * LRELU_GAIN
    elif act != "linear":
        raise ValueError(f"unknown activation {act!r}: use 'lrelu' or 'linear'")
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def _reduced_precision(x: torch.Tensor) -> bool:
    if x.dtype == torch.float16:
        return True
    dt = x.device.type
    return (
        dt in ("cpu", "cuda")
        and torch.is_autocast_enabled(dt)
        and torch.get_autocast_dtype(dt) == torch.float16
    )


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    *,
    demodulate: bool = True,
    up: int = 1,
    padding: int = 0,
    resample_filter: torch.Tensor | None = None,
) -> torch.Tensor:
    """StyleGAN2 modulated convolution, with the equalised-lr scale already folded into `weight`.

    x: [N, I, H, W]; weight: [O, I, k, k]; styles: [N, I]. up=2 is a stride-2 transposed
    convolution followed by the FIR blur (pad 1 each side, gain 4), like both originals.

    Computed "unfused": scale the activations by the styles, run one ordinary convolution for the
    whole batch, scale the outputs by the demodulation coefficients. This is the same arithmetic as
    convolving with per-sample weights w[n] = weight * styles[n] / ||weight * styles[n]||, but a
    sample's result does not depend on the rest of the batch and large batches stay fast.
    """
    n, in_ch = styles.shape
    if demodulate and _reduced_precision(x):
        # fp16 only: demodulation is invariant to positive rescaling of styles and of each output
        # filter, so normalise both by their max to keep x * styles far from fp16 overflow
        # (the same trick NVlabs applies in fp16).
        weight = weight / weight.detach().abs().amax(dim=[1, 2, 3], keepdim=True)
        styles = styles / styles.detach().abs().amax(dim=1, keepdim=True)

    dcoefs = None
    if demodulate:
        # Sums of squares in fp32 even under autocast: in fp16 they under/overflow.
        with no_autocast(x):
            w2 = weight.float().square().sum(dim=[2, 3])  # [O, I]
            # ||weight * styles[n]||^2 per output channel: [N, I] @ [I, O] -> [N, O]
            dcoefs = (styles.float().square() @ w2.t() + DEMOD_EPS).rsqrt()

    x = x * styles.to(x.dtype).reshape(n, in_ch, 1, 1)
    if up == 1:
        x = F.conv2d(x, weight.to(x.dtype), padding=padding)
    elif up == 2:
        if resample_filter is None:
            raise ValueError("modulated_conv2d(up=2) needs resample_filter")
        # conv_transpose2d wants [in, out, k, k]
        x = F.conv_transpose2d(x, weight.transpose(0, 1).to(x.dtype), stride=2)
        # [N, O, 2H+k-2, 2W+k-2] -> blur -> [N, O, 2H, 2W]; (1, 1) for k=3 and the 4-tap filter
        p = (resample_filter.shape[-1] - 2) - (weight.shape[-1] - 1)
        p0, p1 = (p + 1) // 2 + 1, p // 2 + 1
        x = upfirdn2d(x, resample_filter, pad=(p0, p1, p0, p1), gain=4.0)
    else:
        raise ValueError(f"modulated_conv2d supports up=1 or up=2, got up={up}")
    if dcoefs is not None:
        x = x * dcoefs.to(x.dtype).reshape(n, -1, 1, 1)
    return x
