"""Differentiable augmentation for GAN training on small sets (DiffAugment, Zhao et al. 2020).

    params = augment_params(gen)                       # [N_PARAMS] uniforms for one sample, its own generator
    x_aug = diff_augment(x, torch.stack(per_sample), "color,translation,cutout")

A discriminator trained on a finite set memorises it: its loss on reals drops to zero, its gradients
stop telling the generator anything, and samples degrade (StyleGAN2-ADA, Fig. 1). DiffAugment applies
the *same* family of random, differentiable transforms to every image D sees, real or generated, in both
the D and the G step, so D cannot tell the sets apart by the transforms and G gets gradients through
them. The three policies are the paper's: color (brightness, saturation, contrast), translation (up to
1/8 of the image, zero padding) and cutout (a square of half the side set to zero).

The randomness is a tensor of uniforms per sample (`augment_params`), drawn by the caller from that
sample's own generator: the transform of sample i never depends on which worker holds it or how many
samples share its batch, which is what makes data-parallel training equal to one process.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["POLICIES", "N_PARAMS", "augment_params", "diff_augment", "parse_policy"]

POLICIES = ("color", "translation", "cutout")
# uniforms per sample: brightness, saturation, contrast, translation x/y, cutout x/y
N_PARAMS = 7
TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5


def parse_policy(policy: str) -> tuple[str, ...]:
    """'color,translation' -> ('color', 'translation'); ValueError naming the unknown part."""
    parts = tuple(p.strip() for p in policy.split(",") if p.strip())
    unknown = [p for p in parts if p not in POLICIES]
    if unknown or not parts:
        raise ValueError(f"augment policy {policy!r}: use a comma-separated subset of {', '.join(POLICIES)}")
    return parts


def augment_params(gen: torch.Generator) -> torch.Tensor:
    """One sample's [N_PARAMS] uniforms in [0, 1), from its own generator (CPU)."""
    return torch.rand(N_PARAMS, generator=gen)


def diff_augment(x: torch.Tensor, params: torch.Tensor, policy: str | tuple[str, ...]) -> torch.Tensor:
    """x [N, C, H, W] (about [-1, 1]), params [N, N_PARAMS] -> augmented x, differentiable in x."""
    parts = parse_policy(policy) if isinstance(policy, str) else policy
    u = params.to(device=x.device, dtype=x.dtype)
    if "color" in parts:
        x = x + (u[:, 0, None, None, None] - 0.5)  # brightness
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * (u[:, 1, None, None, None] * 2) + mean  # saturation
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * (u[:, 2, None, None, None] + 0.5) + mean  # contrast
    if "translation" in parts:
        x = _translate(x, u[:, 3:5].float())
    if "cutout" in parts:
        x = _cutout(x, u[:, 5:7].float())
    return x


def _translate(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    # Shift each image by an integer (dy, dx) in [-s, s]; pixels shifted in from outside are zero.
    n, _, h, w = x.shape
    sy, sx = int(h * TRANSLATION_RATIO + 0.5), int(w * TRANSLATION_RATIO + 0.5)
    dy = (u[:, 0] * (2 * sy + 1)).floor().long().clamp_(max=2 * sy) - sy
    dx = (u[:, 1] * (2 * sx + 1)).floor().long().clamp_(max=2 * sx) - sx
    padded = F.pad(x, [sx, sx, sy, sy])  # [N, C, H + 2sy, W + 2sx]
    rows = (torch.arange(h, device=x.device)[None, :] - dy.to(x.device)[:, None] + sy)  # [N, H]
    cols = (torch.arange(w, device=x.device)[None, :] - dx.to(x.device)[:, None] + sx)  # [N, W]
    idx_n = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def _cutout(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    # Zero one square of half the side per image; its centre is anywhere in the image (it may be clipped).
    _, _, h, w = x.shape
    ch, cw = int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5)
    cy = (u[:, 0] * (h + (1 - ch % 2))).floor().long()
    cx = (u[:, 1] * (w + (1 - cw % 2))).floor().long()
    ys = torch.arange(h, device=x.device)[None, :]
    xs = torch.arange(w, device=x.device)[None, :]
    in_y = (ys >= (cy.to(x.device)[:, None] - ch // 2)) & (ys < (cy.to(x.device)[:, None] - ch // 2 + ch))
    in_x = (xs >= (cx.to(x.device)[:, None] - cw // 2)) & (xs < (cx.to(x.device)[:, None] - cw // 2 + cw))
    keep = ~(in_y[:, :, None] & in_x[:, None, :])  # [N, H, W]
    return x * keep[:, None].to(x.dtype)
