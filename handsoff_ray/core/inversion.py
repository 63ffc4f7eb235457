"""Batched W+ inversion: find the per-layer latents that make a frozen StyleGAN2 reproduce given images.

    lp = load_lpips("vgg")                                   # core/lpips_offline.py
    res = invert(G, images, lpips_model=lp, steps=499, loss_resolution=512)
    res.ws                                                   # [N, n_latent, D], best latent per image
    res.psnr, res.lpips, res.final_loss                      # [N] each
    # optional: start from an encoder's guess (core/encoder.py) instead of latent_avg
    res = invert(G, images, lpips_model=lp, init_ws=encoder.invert(G, images))

Objective for image i (HandsOff's `run_embedding_optimization`, see research dossier section 1.4):

    L_i(w) = lpips_weight * LPIPS(G(w)v, x_i v) + mse_weight * MSE01(G(w)v, x_i v) + reg_weight * mean((w - w_init)^2)

with `v` the resize to `loss_resolution` (the reference uses 512 for its 1024 generator), MSE01 the
mean squared error of the images mapped to [0, 1] (as the reference computes it), LPIPS v0.1 on
[-1, 1] inputs, noise fixed (`noise_mode="const"`) and the generator frozen. Adam optimises the latent
only. As in the reference, the latent kept is the one with the lowest *reconstruction* loss seen
(the first two terms; the regulariser is a means, not the goal), and that is what `loss_curve` and
`final_loss` record. (The reference means to do this but stores `latent.detach()`, which shares
storage with the latent Adam keeps updating, so it actually returns the last iterate.)

Batching: the N latents are one [N, L, D] tensor updated by one Adam; the backward pass is taken on
sum_i L_i. L_i depends only on w_i and Adam is elementwise, so image i follows the trajectory it
would follow alone -- batching only buys throughput. "Alone" holds up to float rounding (~1e-7):
at lr 0.1 Adam's sign-like first steps and the nonconvex objective amplify such differences, so
batched and single runs reach the same loss *level*, not bitwise the same latents. Within a batch,
an image's result does not depend at all on which other images share it (tested bit for bit).
The LPIPS trunk runs on the fixed targets once per batch, not every step (`OfflineLPIPS.target_features`).

Step convention: `steps` Adam updates; update k (0-based) uses lr_schedule(t=(k+1)/(steps+1)), i.e.
the interior points of the reference's grid, whose `--steps 500` runs 499 updates at t = 1/500 ..
499/500. So `steps=499` here is the reference schedule exactly. The objective is evaluated before
every update and once after the last, so `loss_curve` has steps + 1 columns.

Differences from the reference, on purpose: both images are resized with an antialiased filter
(the reference downsamples the generator output with plain bilinear, which aliases; dossier
section 10, item 4); inputs of another aspect are centre-cropped (or letterboxed with fit="pad", the
reference's treatment of 4:3 car photos) by `prepare_images` rather than stretched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from handsoff_ray.core.images import from_uint8
from handsoff_ray.core.lpips_offline import OfflineLPIPS
from handsoff_ray.core.metrics import psnr as _psnr

__all__ = [
    "crop_box",
    "InversionResult",
    "InversionStep",
    "invert",
    "lr_schedule",
    "prepare_images",
    "reconstruction_losses",
]

Images = np.ndarray | torch.Tensor | Sequence[np.ndarray | torch.Tensor]


@dataclass
class InversionResult:
    """Per-image outcome of `invert`; all tensors on the CPU, row i is image i."""

    ws: torch.Tensor  # [N, L, D] latent with the lowest objective seen
    psnr: torch.Tensor  # [N] dB, G(ws) vs target at the generator's resolution, images in [0, 1]
    lpips: torch.Tensor  # [N] LPIPS(G(ws), target) at the loss resolution
    final_loss: torch.Tensor  # [N] reconstruction loss at ws (= loss_curve.min(1))
    loss_curve: torch.Tensor  # [N, steps + 1] reconstruction loss after 0, 1, ..., steps updates
    init_ws: torch.Tensor  # [N, L, D] starting latents (also the regulariser's anchor)
    best_step: torch.Tensor  # [N] int64, how many updates the returned latent had received


@dataclass(frozen=True)
class InversionStep:
    """What `callback` receives after each update."""

    step: int  # 1-based count of updates done in this batch
    steps: int
    lr: float
    loss: torch.Tensor  # [n] reconstruction loss of this batch's images before the update
    index: torch.Tensor  # [n] their positions in the `images` given to `invert`


def lr_schedule(t: float, *, lr: float, rampup: float = 0.05, rampdown: float = 0.25) -> float:
    """StyleGAN2-projector learning rate at progress t in [0, 1]: linear warm-up over the first
    `rampup` fraction, cosine decay to 0 over the last `rampdown` fraction, `lr` in between."""
    down = min(1.0, (1.0 - t) / rampdown) if rampdown > 0 else 1.0
    up = min(1.0, t / rampup) if rampup > 0 else 1.0
    return lr * (0.5 - 0.5 * math.cos(math.pi * down)) * up


def prepare_images(
    images: Images, size: int | tuple[int, int], *, fit: Literal["crop", "pad"] = "crop"
) -> torch.Tensor:
    """Bring images to the generator's frame: float [N, 3, H, W] in [-1, 1].

    images: uint8 numpy [N, h, w, 3], float tensor [N, 3, h, w] in [-1, 1], or a sequence of single
    images in either layout (they may differ in size). size: H, or (H, W) for non-square generators.
    Policy: match the aspect ratio first -- fit="crop" cuts the centre, fit="pad" letterboxes with
    black (-1) -- then resize with antialiased bilinear filtering (no aliasing when shrinking).
    """
    out_h, out_w = (size, size) if isinstance(size, int) else size
    if isinstance(images, np.ndarray | torch.Tensor):
        if images.ndim != 4:
            raise ValueError(
                f"images must be 4-D ([N, H, W, 3] uint8 or [N, 3, H, W] float), got shape {tuple(images.shape)}"
            )
        batch = [_to_chw(images[i]) for i in range(images.shape[0])]
    else:
        batch = [_to_chw(im) for im in images]
    if not batch:
        raise ValueError("images is empty")
    return torch.stack([_fit(im, out_h, out_w, fit) for im in batch])


def _to_chw(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """One image as float [3, h, w] in [-1, 1]."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"numpy images must be uint8 [H, W, 3], got {image.dtype} {image.shape}; "
                "pass float tensors [3, H, W] in [-1, 1] otherwise"
            )
        return from_uint8(image[None])[0]
    if image.dtype == torch.uint8:
        raise ValueError(
            "uint8 tensors are ambiguous about layout; pass a uint8 numpy [H, W, 3] or a float tensor [3, H, W] in [-1, 1]"
        )
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"float images must be [3, H, W], got shape {tuple(image.shape)}")
    lo, hi = float(image.min()), float(image.max())
    if lo < -1.001 or hi > 1.001:
        raise ValueError(
            f"float images must lie in [-1, 1], got range [{lo:.3f}, {hi:.3f}]; rescale (x / 127.5 - 1) or clamp first"
        )
    return image.float()


def crop_box(h: int, w: int, out_h: int, out_w: int) -> tuple[int, int, int, int]:
    """(top, left, crop_h, crop_w): the largest centred window of an h x w image with the target aspect.

    The window `prepare_images(fit="crop")` cuts; label alignment (core/label_alignment.py) uses it too, so
    that images and labels stay registered.
    """
    crop_h, crop_w = min(h, round(w * out_h / out_w)), min(w, round(h * out_w / out_h))
    return (h - crop_h) // 2, (w - crop_w) // 2, crop_h, crop_w


def _fit(image: torch.Tensor, out_h: int, out_w: int, fit: str) -> torch.Tensor:
    _, h, w = image.shape
    if fit == "crop":
        top, left, crop_h, crop_w = crop_box(h, w, out_h, out_w)
        image = image[:, top : top + crop_h, left : left + crop_w]
    elif fit == "pad":
        # Smallest centred canvas with the target aspect; the border is black (-1).
        pad_h, pad_w = max(h, round(w * out_h / out_w)), max(w, round(h * out_w / out_h))
        canvas = image.new_full((3, pad_h, pad_w), -1.0)
        top, left = (pad_h - h) // 2, (pad_w - w) // 2
        canvas[:, top : top + h, left : left + w] = image
        image = canvas
    else:
        raise ValueError(f"fit must be 'crop' or 'pad', got {fit!r}")
    return resize_antialiased(image[None], (out_h, out_w))[0]


def resize_antialiased(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[N, C, h, w] -> [N, C, *size], antialiased bilinear (a no-op at the same size)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def reconstruction_losses(
    image: torch.Tensor,
    target: torch.Tensor,
    *,
    lpips_model: nn.Module | None,
    loss_size: tuple[int, int],
    target_features: list[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image (LPIPS, MSE on [0, 1] images), both [N], at `loss_size`; LPIPS is 0 without a model.

    `target` should already be at `loss_size` (resized once by the caller, not every step), and
    `target_features`, if given, be `lpips_model.target_features(target)` (an `OfflineLPIPS`).
    """
    image = resize_antialiased(image, loss_size)
    mse = ((image - target) / 2).square().flatten(1).mean(1)  # [-1, 1] -> [0, 1] scale, as the reference
    if lpips_model is None:
        return torch.zeros_like(mse), mse
    if target_features is not None:
        return lpips_model.distance_to(image, target_features), mse
    return lpips_model(image, target).reshape(-1), mse


def invert(
    G: nn.Module,
    images: Images,
    *,
    lpips_model: nn.Module | None,
    steps: int = 500,
    lr: float = 0.1,
    lpips_weight: float = 10.0,
    mse_weight: float = 1.0,
    reg_weight: float = 1.0,
    rampup: float = 0.05,
    rampdown: float = 0.25,
    loss_resolution: int | None = None,
    init_ws: torch.Tensor | None = None,
    batch_size: int | None = None,
    fit: Literal["crop", "pad"] = "crop",
    crop_rows: tuple[int, int] | None = None,
    callback: Callable[[InversionStep], None] | None = None,
) -> InversionResult:
    """Invert `images` into G's W+ space; see the module docstring for the objective and conventions.

    lpips_model: `load_lpips("vgg")` (reference) or None when lpips_weight == 0.
    loss_resolution: height at which the losses are computed (default: the generator's).
    init_ws: [N, L, D] starting latents (e.g. from an encoder); default G.latent_avg at every layer.
    batch_size: images optimised together (default all); only memory and speed depend on it.
    crop_rows: (start, stop) content rows of the generator canvas (LSUN-car 512: (64, 448)). The images
    are fitted to the content frame (stop - start rows by the generator's width) and only those rows of
    G's output enter the losses and the PSNR; the padding rows above and below are free.
    Deterministic: nothing here draws random numbers.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if lpips_model is None and lpips_weight != 0:
        raise ValueError(
            "lpips_model is None but lpips_weight != 0; pass lpips_model=load_lpips('vgg') or lpips_weight=0"
        )
    device = G.latent_avg.device
    cfg = G.cfg
    gen_size = (cfg.resolution, cfg.width)  # (H, W); W = H / 2 for init_aspect=2 generators
    if crop_rows is not None:
        if not 0 <= crop_rows[0] < crop_rows[1] <= cfg.resolution:
            raise ValueError(f"crop_rows must satisfy 0 <= start < stop <= {cfg.resolution}, got {tuple(crop_rows)}")
        gen_size = (crop_rows[1] - crop_rows[0], cfg.width)  # the content frame the images are compared in
    if loss_resolution is None:
        loss_size = gen_size
    elif 1 <= loss_resolution <= cfg.resolution:
        # Same scale as the full canvas: the content rows shrink by loss_resolution / resolution too.
        loss_size = (round(gen_size[0] * loss_resolution / cfg.resolution), loss_resolution // cfg.init_aspect)
    else:
        raise ValueError(f"loss_resolution must be in 1..{cfg.resolution} (the generator's), got {loss_resolution}")

    targets = prepare_images(images, gen_size, fit=fit).to(device)  # [N, 3, H, W]
    n = targets.shape[0]
    if init_ws is None:
        init_ws = G.latent_avg.detach().reshape(1, 1, -1).expand(n, cfg.n_latent, -1)  # [D] -> [N, L, D]
    if tuple(init_ws.shape) != (n, cfg.n_latent, cfg.style_dim):
        raise ValueError(f"init_ws must be [{n}, {cfg.n_latent}, {cfg.style_dim}], got {list(init_ws.shape)}")
    init_ws = init_ws.detach().to(device=device, dtype=torch.float32).clone()

    chunk = n if batch_size is None else batch_size
    if chunk < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    weights = (lpips_weight, mse_weight, reg_weight)
    parts = []
    # Freeze G for the optimisation (gradients flow through it to w, never into it); restore after.
    requires_grad = [p.requires_grad for p in G.parameters()]
    G.requires_grad_(False)
    try:
        for start in range(0, n, chunk):
            index = torch.arange(start, min(start + chunk, n))
            parts.append(
                _invert_batch(
                    G, targets[index], init_ws[index], index,
                    lpips_model=lpips_model, weights=weights, steps=steps, lr=lr, rampup=rampup,
                    rampdown=rampdown, loss_size=loss_size, crop_rows=crop_rows,
                    callback=callback,
                )
            )
    finally:
        for p, flag in zip(G.parameters(), requires_grad):
            p.requires_grad_(flag)
    fields = InversionResult.__dataclass_fields__
    return InversionResult(**{name: torch.cat([getattr(p, name) for p in parts]) for name in fields})


def _invert_batch(
    G: nn.Module,
    targets: torch.Tensor,
    init_ws: torch.Tensor,
    index: torch.Tensor,
    *,
    lpips_model: nn.Module | None,
    weights: tuple[float, float, float],
    steps: int,
    lr: float,
    rampup: float,
    rampdown: float,
    loss_size: tuple[int, int],
    crop_rows: tuple[int, int] | None = None,
    callback: Callable[[InversionStep], None] | None,
) -> InversionResult:
    lpips_weight, mse_weight, reg_weight = weights
    targets_small = resize_antialiased(targets, loss_size)
    target_features = None
    if isinstance(lpips_model, OfflineLPIPS):  # the targets never change: run the trunk on them once
        with torch.no_grad():
            target_features = lpips_model.target_features(targets_small)

    def objective(ws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per image: (objective [n], reconstruction loss [n], LPIPS [n]), and the generated images."""
        image = G.synthesis(ws, noise_mode="const")
        if crop_rows is not None:
            image = image[:, :, crop_rows[0] : crop_rows[1]]  # [n, 3, H, W] -> [n, 3, content rows, W]
        lp, mse = reconstruction_losses(
            image, targets_small, lpips_model=lpips_model, loss_size=loss_size, target_features=target_features
        )
        recon = lpips_weight * lp + mse_weight * mse
        reg = (ws - init_ws).square().flatten(1).mean(1)  # [n, L, D] -> [n]
        return recon + reg_weight * reg, recon, lp, image

    ws = init_ws.clone().requires_grad_(True)
    opt = torch.optim.Adam([ws], lr=lr)
    n = ws.shape[0]
    curve = torch.empty(n, steps + 1, device=ws.device)  # stays on the device: no sync per step
    best_loss = torch.full((n,), math.inf, device=ws.device)
    best_ws = init_ws.clone()
    best_step = torch.zeros(n, dtype=torch.long, device=ws.device)
    for k in range(steps + 1):
        last = k == steps  # the latent after the final update is scored, never updated
        with torch.set_grad_enabled(not last):
            loss, recon, _, _ = objective(ws)
        with torch.no_grad():
            curve[:, k] = recon
            better = recon < best_loss  # [n], each image keeps its own best
            best_loss = torch.where(better, recon, best_loss)
            best_ws = torch.where(better[:, None, None], ws, best_ws)
            best_step = torch.where(better, k, best_step)
        if last:
            break
        step_lr = lr_schedule((k + 1) / (steps + 1), lr=lr, rampup=rampup, rampdown=rampdown)
        for group in opt.param_groups:
            group["lr"] = step_lr
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()  # sum: each image's gradient is its own loss's gradient
        opt.step()
        if callback is not None:
            callback(InversionStep(step=k + 1, steps=steps, lr=step_lr, loss=recon.detach().cpu(), index=index))

    with torch.no_grad():
        _, _, lp, image = objective(best_ws)
        quality = _psnr(image.clamp(-1, 1), targets, data_range=2.0)  # [-1, 1] range 2 == [0, 1] range 1
    return InversionResult(
        ws=best_ws.cpu(),
        psnr=quality.cpu(),
        lpips=lp.cpu(),
        final_loss=best_loss.cpu(),
        loss_curve=curve.cpu(),
        init_ws=init_ws.cpu(),
        best_step=best_step.cpu(),
    )
