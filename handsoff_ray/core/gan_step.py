"""One StyleGAN2 training step, data-parallel by construction: the same weights on 1 or N workers.

    nets = build_nets(recipe, device)                   # G, D, G_ema, two Adams (init from a checkpoint optional)
    stats = train_step(nets, recipe, real, step=s, indices=idx, amp=None)   # real: this worker's images
    state = nets_state(nets); load_nets_state(nets, state)

`recipe` is any object with the attributes of config.GanSpec (the core never reads the job spec itself):
resolution, channel_base, channel_max, style_dim, n_mlp, batch_size, lr, r1_gamma, r1_interval,
mixing_prob, ema_kimg, ema_rampup, discriminator, projected_trunk, augment, augment_policy, seed.

The recipe is StyleGAN2's, scaled down: non-saturating logistic loss, lazy R1 on reals every
r1_interval steps (gamma by StyleGAN2-ADA's auto rule 0.0002 * res^2 / batch), style mixing, an EMA
generator, the W average tracked for truncation, Adam(0, 0.99). No path-length regulariser: it costs a
second generator pass and buys interpolation smoothness, which nothing downstream depends on. With
`discriminator: projected` D is small heads over frozen ImageNet features, trained with the hinge loss
and no R1 (Projected GANs). With `augment: diffaugment` every image D sees goes through DiffAugment.

Why every random draw is per sample: sample i of step s draws its z, mixing cut-off, noise images and
augmentation from its own generator, seeded by (seed, step, i). Worker r of N holds the samples i = r,
r + N, ... of the global batch (strided, so the minibatch-std groups k, k + B/G, ... are the same as in
one process), computes the mean loss over them, and the gradients are averaged over workers with one
all-reduce per network (StyleGAN2-ADA's way: R1's double backward and the G/D alternation do not fit
DistributedDataParallel's hooks). The average of N local means over equal local batches is the global
mean, so N workers take the step one process takes, up to float summation order; and a resumed run
needs no RNG state, only the step. One exception: the projected D's BatchNorm sees the local batch.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from handsoff_ray.core.diffaugment import augment_params, diff_augment, parse_policy
from handsoff_ray.core.stylegan2 import Generator, GeneratorConfig

__all__ = ["GanNets", "build_nets", "generator_config", "r1_gamma", "autocast_dtype", "train_step",
           "nets_state", "load_nets_state", "W_AVG_BETA"]

# The W average (truncation centre) follows the mapping output with this per-step decay, as in StyleGAN2.
W_AVG_BETA = 0.995
_D_STEP, _G_STEP = 0, 1  # which pass a sample's draws are for (its seed includes this)


@dataclass
class GanNets:
    G: Generator
    D: torch.nn.Module
    G_ema: Generator
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer


def generator_config(recipe: Any) -> GeneratorConfig:
    return GeneratorConfig(resolution=recipe.resolution, style_dim=recipe.style_dim, n_mlp=recipe.n_mlp,
                           channel_base=recipe.channel_base, channel_max=recipe.channel_max)


def r1_gamma(recipe: Any) -> float:
    """The R1 weight: the recipe's, or StyleGAN2-ADA's auto rule 0.0002 * res^2 / batch (0.05 at 64, bs 16)."""
    return recipe.r1_gamma if recipe.r1_gamma is not None else 0.0002 * recipe.resolution**2 / recipe.batch_size


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 where it is native (measured 1.6x per CPU step on Zen 4), else None = fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported() else None


def build_nets(recipe: Any, device: torch.device, *, trunk_path: str | None = None) -> GanNets:
    """Fresh networks and optimisers; the weights depend only on recipe.seed."""
    from handsoff_ray.core.discriminator import Discriminator

    torch.manual_seed(recipe.seed)
    # channels_last: oneDNN's convolutions and depthwise blurs are 1.1-2.5x faster in NHWC at these widths
    G = Generator(generator_config(recipe)).to(device, memory_format=torch.channels_last)
    if recipe.discriminator == "projected":
        from handsoff_ray.core.projected_discriminator import ProjectedDiscriminator

        D = ProjectedDiscriminator(recipe.resolution, trunk=recipe.projected_trunk, trunk_path=trunk_path)
    else:
        D = Discriminator(recipe.resolution, channel_base=recipe.channel_base, channel_max=recipe.channel_max)
    D = D.to(device, memory_format=torch.channels_last)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    # Lazy regularisation: D's optimiser also takes the R1 step every r1_interval steps, so its
    # hyper-parameters are adjusted as in StyleGAN2 to keep the effective update the same.
    c = recipe.r1_interval / (recipe.r1_interval + 1) if recipe.discriminator == "stylegan2" else 1.0
    opt_G = torch.optim.Adam(G.parameters(), lr=recipe.lr, betas=(0.0, 0.99), eps=1e-8)
    opt_D = torch.optim.Adam(D.parameters(), lr=recipe.lr * c, betas=(0.0, 0.99**c), eps=1e-8)
    return GanNets(G, D, G_ema, opt_G, opt_D)


def nets_state(nets: GanNets) -> dict[str, Any]:
    return {name: getattr(nets, name).state_dict() for name in ("G", "D", "G_ema", "opt_G", "opt_D")}


def load_nets_state(nets: GanNets, state: dict[str, Any]) -> None:
    for name in ("G", "D", "G_ema", "opt_G", "opt_D"):
        getattr(nets, name).load_state_dict(state[name])


# ------------------------------------------------------------------------------------------ draws


@dataclass
class _Draws:
    z: torch.Tensor  # [n, D]
    z2: torch.Tensor  # [n, D] the mixing partner
    cutoff: torch.Tensor  # [n] first W+ index taken from z2 (n_latent: no mixing)
    noise: list[torch.Tensor]  # per styled conv [n, 1, h, w]
    aug: torch.Tensor  # [n, N_PARAMS] for the generated image
    aug_real: torch.Tensor  # [n, N_PARAMS] for the real image (D step)


def _sample_seed(seed: int, step: int, index: int, phase: int) -> int:
    return int(np.random.SeedSequence([seed, step, index, phase]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _draws(recipe: Any, G: Generator, step: int, indices: Sequence[int], phase: int) -> _Draws:
    """Everything random about these samples of this step, each from its own generator (CPU)."""
    sizes = [conv.map_size for conv in G.synthesis.conv_layers()]
    z, z2, cut, noise, aug, aug_real = [], [], [], [[] for _ in sizes], [], []
    for i in indices:
        g = torch.Generator().manual_seed(_sample_seed(recipe.seed, step, int(i), phase))
        z.append(torch.randn(recipe.style_dim, generator=g))
        z2.append(torch.randn(recipe.style_dim, generator=g))
        mix = float(torch.rand((), generator=g)) < recipe.mixing_prob
        c = int(torch.randint(1, G.n_latent, (), generator=g))
        cut.append(c if mix else G.n_latent)
        for k, hw in enumerate(sizes):
            noise[k].append(torch.randn(1, *hw, generator=g))
        aug.append(augment_params(g))
        aug_real.append(augment_params(g))
    return _Draws(torch.stack(z), torch.stack(z2), torch.tensor(cut), [torch.stack(n) for n in noise],
                  torch.stack(aug), torch.stack(aug_real))


def _ws(G: Generator, d: _Draws, device: torch.device) -> torch.Tensor:
    """Mapping with style mixing: W+ entries from each sample's cut-off on come from its second z."""
    n = d.z.shape[0]
    both = G.mapping(torch.cat([d.z, d.z2]).to(device))  # [2n, L, D]; mapping in fp32: tiny, and W is what inversion optimises
    ws, ws2 = both[:n], both[n:]
    take2 = torch.arange(G.n_latent, device=device)[None, :] >= d.cutoff.to(device)[:, None]  # [n, L]
    return torch.where(take2[:, :, None], ws2, ws)


def _noise(d: _Draws, device: torch.device) -> list[torch.Tensor]:
    return [n.to(device) for n in d.noise]


# ------------------------------------------------------------------------------------------ step


def _losses(recipe: Any):
    """(D loss on fake logits, D loss on real logits, G loss on fake logits), each a mean over logits."""
    if recipe.discriminator == "projected":  # hinge, as Projected GANs train
        return (lambda f: F.relu(1 + f).mean(), lambda r: F.relu(1 - r).mean(), lambda f: -f.mean())
    return (lambda f: F.softplus(f).mean(), lambda r: F.softplus(-r).mean(), lambda f: F.softplus(-f).mean())


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _average_grads(module: torch.nn.Module) -> None:
    """Mean of every parameter's gradient over the workers: one flat all-reduce (a no-op alone)."""
    world = _world()
    if world == 1:
        return
    params = [p for p in module.parameters() if p.grad is not None]
    flat = torch.cat([p.grad.flatten() for p in params])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
        offset += p.numel()


def _augment(recipe: Any, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    if recipe.augment == "none":
        return x
    return diff_augment(x, params, parse_policy(recipe.augment_policy))


def _d_step(recipe: Any, nets: GanNets, real: torch.Tensor, step: int, indices: Sequence[int],
            amp: torch.dtype | None, do_r1: bool) -> float:
    G, D = nets.G, nets.D
    d_fake, d_real, _ = _losses(recipe)
    do_r1 = do_r1 and recipe.discriminator == "stylegan2"  # spectral norm bounds the projected D instead
    device = real.device
    G.requires_grad_(False)
    D.requires_grad_(True)
    draws = _draws(recipe, G, step, indices, _D_STEP)
    ac = dict(device_type=device.type, dtype=amp or torch.float32, enabled=amp is not None)
    with torch.no_grad(), torch.autocast(**ac):
        fake = G.synthesis(_ws(G, draws, device), noise=_noise(draws, device))
    with torch.autocast(**ac):
        fake_logits = D(_augment(recipe, fake, draws.aug)).float()
    loss = d_fake(fake_logits)
    # The R1 double backward stays in fp32: a squared gradient norm is where bf16's 8 bits would show.
    with torch.autocast(device_type=device.type, dtype=amp or torch.float32, enabled=amp is not None and not do_r1):
        real = real.detach().requires_grad_(do_r1)
        real_logits = D(_augment(recipe, real, draws.aug_real)).float()
    loss = loss + d_real(real_logits)
    if do_r1:
        (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
        # sum over the local samples / global batch * world: after the gradient mean, a mean over the global batch
        r1 = grad.square().sum(dim=(1, 2, 3)).mean()
        loss = loss + r1 * (r1_gamma(recipe) / 2) * recipe.r1_interval
    nets.opt_D.zero_grad(set_to_none=True)
    loss.backward()
    _average_grads(D)
    nets.opt_D.step()
    return float(loss.detach())


def _g_step(recipe: Any, nets: GanNets, step: int, indices: Sequence[int], amp: torch.dtype | None,
            device: torch.device) -> float:
    G, D = nets.G, nets.D
    G.requires_grad_(True)
    D.requires_grad_(False)  # D's weight gradients would be thrown away: skipping them saves ~15%
    draws = _draws(recipe, G, step, indices, _G_STEP)
    ws = _ws(G, draws, device)
    with torch.autocast(device_type=device.type, dtype=amp or torch.float32, enabled=amp is not None):
        fake = G.synthesis(ws, noise=_noise(draws, device))
        logits = D(_augment(recipe, fake, draws.aug)).float()
    loss = _losses(recipe)[2](logits)
    nets.opt_G.zero_grad(set_to_none=True)
    loss.backward()
    _average_grads(G)
    nets.opt_G.step()
    with torch.no_grad():  # the W average moves towards the global batch's mean w
        mean_w = ws[:, 0].mean(0)
        if _world() > 1:
            dist.all_reduce(mean_w)
            mean_w /= _world()
        G.mapping.latent_avg.lerp_(mean_w, 1 - W_AVG_BETA)
    return float(loss.detach())


def _ema_update(recipe: Any, nets: GanNets, images_seen: int) -> None:
    """G_ema <- G with a half-life of ema_kimg thousand images (shorter early on: ema_rampup)."""
    ema_nimg = recipe.ema_kimg * 1000
    if recipe.ema_rampup:
        ema_nimg = min(ema_nimg, images_seen * recipe.ema_rampup)
    beta = 0.5 ** (recipe.batch_size / max(ema_nimg, 1e-8))
    with torch.no_grad():
        for p_ema, p in zip(nets.G_ema.parameters(), nets.G.parameters()):
            p_ema.lerp_(p, 1 - beta)
        for b_ema, b in zip(nets.G_ema.buffers(), nets.G.buffers()):
            b_ema.copy_(b)


def train_step(nets: GanNets, recipe: Any, real: torch.Tensor, *, step: int, indices: Sequence[int],
               amp: torch.dtype | None = None) -> dict[str, float]:
    """One D step and one G step on this worker's share of the global batch, then the EMA update.

    real: [n, 3, R, R] in [-1, 1], the images of global batch positions `indices` (this worker's, strided);
    every worker calls this with the same `step`. Returns this worker's losses (local means).
    """
    if real.shape[0] != len(indices):
        raise ValueError(f"{real.shape[0]} real images for {len(indices)} batch positions")
    device = real.device
    loss_D = _d_step(recipe, nets, real, step, indices, amp, do_r1=step % recipe.r1_interval == 0)
    loss_G = _g_step(recipe, nets, step, indices, amp, device)
    _ema_update(recipe, nets, step * recipe.batch_size)
    return {"loss_D": loss_D, "loss_G": loss_G}
