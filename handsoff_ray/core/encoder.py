"""A small ReStyle-style iterative encoder: a starting point for `inversion.invert`, trained on G's own samples.

    enc = train_encoder(G, steps=2000, batch_size=16, seed=0)      # no labels, no real images needed
    init = enc.invert(G, images)                                   # [N, n_latent, D] W+
    res = invert(G, images, lpips_model=lp, init_ws=init)          # optimisation starts from it
    enc.save("encoder.safetensors"); enc = Encoder.load("encoder.safetensors")

Mechanics (ReStyle, Alaluf et al. 2021; the reference inverts with a pretrained ReStyle-pSp): start
at w_0 = latent_avg at every layer and the image G(w_0); each iteration feeds concat(target, current
reconstruction) -- 6 channels -- to a CNN that predicts a W+ correction, w_{t+1} = w_t + E(x, G(w_t)).
The CNN here is small (strided convs with GroupNorm, then an MLP head whose last layer starts at
zero, so an untrained encoder returns latent_avg) because it only has to get inversion started;
the reference's IR-SE50 backbone needs far more data and time than a synthetic-sample run offers.

Training data: z -> mapping -> W+ (with style mixing and optional W+ jitter, so the encoder sees
per-layer codes like those of inverted real images) -> G.synthesis(noise_mode="const"). The known
W+ is the latent target; the loss per iteration is latent MSE (divided by the variance of w, so the
weight does not depend on the generator's scale) + image MSE (+ LPIPS if a model is given).
GroupNorm rather than BatchNorm: an image's code must not depend on the rest of its batch.

What to expect: on a tiny generator (tests) 60 batches halve the latent error; on the benchmark's
64 px generator 200 CPU batches (`benchmarks/inversion.py --encoder`) only edge out latent_avg as a
start. A useful encoder for a real 512-1024 px generator needs thousands of batches on a GPU.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from handsoff_ray.core.inversion import Images, prepare_images, reconstruction_losses, resize_antialiased

__all__ = ["Encoder", "EncoderConfig", "EncoderStep", "sample_training_ws", "train_encoder"]


@dataclass(frozen=True)
class EncoderConfig:
    """Architecture of an `Encoder`, and the generator geometry it was trained for."""

    # Generator it belongs to: output (height, width), W+ shape.
    resolution: int
    width: int
    n_latent: int
    style_dim: int
    # Height the 6-channel input is resized to before the CNN (ReStyle: 256); <= resolution.
    input_resolution: int = 64
    # Channels after the stem; doubled at each 2x downsample up to max_channels.
    channels: int = 32
    max_channels: int = 256
    # Hidden width of the MLP head.
    head_dim: int = 512
    # Refinement iterations at inference (ReStyle uses 5; returns diminish after 3).
    n_iters: int = 3

    def __post_init__(self) -> None:
        r = self.input_resolution
        if r < 4 or r & (r - 1) or r > self.resolution:
            raise ValueError(f"input_resolution must be a power of two in 4..{self.resolution}, got {r}")
        if self.n_iters < 1:
            raise ValueError(f"n_iters must be >= 1, got {self.n_iters}")

    @property
    def input_size(self) -> tuple[int, int]:
        return self.input_resolution, self.input_resolution * self.width // self.resolution


class Encoder(nn.Module):
    """(target, current reconstruction) [N, 6, h, w] in [-1, 1] -> W+ correction [N, n_latent, D]."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = [nn.Conv2d(6, cfg.channels, 3, padding=1), nn.LeakyReLU(0.2)]
        c, h = cfg.channels, cfg.input_resolution
        while h > 4:  # halve until the height is 4
            c_out = min(cfg.max_channels, c * 2)
            layers += [
                nn.Conv2d(c, c_out, 3, stride=2, padding=1),
                nn.GroupNorm(min(8, c_out), c_out),
                nn.LeakyReLU(0.2),
                nn.Conv2d(c_out, c_out, 3, padding=1),
                nn.LeakyReLU(0.2),
            ]
            c, h = c_out, h // 2
        self.features = nn.Sequential(*layers)
        in_h, in_w = cfg.input_size
        flat = c * 4 * (4 * in_w // in_h)  # the height is 4 now, the width 4 / aspect
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, cfg.head_dim), nn.LeakyReLU(0.2),
            nn.Linear(cfg.head_dim, cfg.n_latent * cfg.style_dim),
        )
        # Zero last layer: the untrained encoder predicts no correction, i.e. latent_avg.
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, target: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        x = torch.cat([target, current], dim=1)  # [N, 3+3, h, w]
        delta = self.head(self.features(x))  # [N, L*D]
        return delta.reshape(-1, self.cfg.n_latent, self.cfg.style_dim)  # [N, L*D] -> [N, L, D]

    def iterate(self, G: nn.Module, targets: torch.Tensor, n_iters: int | None = None) -> Iterator[torch.Tensor]:
        """ReStyle iterations on prepared targets [N, 3, H, W]: yields the W+ [N, L, D] after each."""
        self._check_generator(G)
        n_iters = self.cfg.n_iters if n_iters is None else n_iters
        ws, current = _start(G, self.cfg, targets.shape[0])
        small = resize_antialiased(targets, self.cfg.input_size)
        for i in range(n_iters):
            ws = ws + self(small, current)
            yield ws
            if i + 1 < n_iters:
                current = resize_antialiased(G.synthesis(ws, noise_mode="const"), self.cfg.input_size)

    @torch.no_grad()
    def invert(
        self,
        G: nn.Module,
        images: Images,
        *,
        n_iters: int | None = None,
        batch_size: int = 16,
        fit: Literal["crop", "pad"] = "crop",
    ) -> torch.Tensor:
        """W+ codes [N, n_latent, D] (on the CPU) for images in any form `prepare_images` accepts."""
        was_training = self.training
        self.eval()
        device = G.latent_avg.device
        targets = prepare_images(images, (self.cfg.resolution, self.cfg.width), fit=fit)
        try:
            chunks = [
                list(self.iterate(G, targets[i : i + batch_size].to(device), n_iters))[-1].cpu()
                for i in range(0, targets.shape[0], batch_size)
            ]
        finally:
            self.train(was_training)
        return torch.cat(chunks)

    def save(self, path: str | os.PathLike) -> None:
        """One .safetensors file: the weights, and the config as JSON in its metadata."""
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        meta = {"format": "handsoff_ray.encoder/1", "config": json.dumps(asdict(self.cfg))}
        save_file(state, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | torch.device = "cpu") -> Encoder:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != "handsoff_ray.encoder/1":
            raise ValueError(f"{path} is not an encoder saved by Encoder.save (metadata format={meta.get('format')!r})")
        enc = cls(EncoderConfig(**json.loads(meta["config"])))
        enc.load_state_dict(load_file(str(path)))
        return enc.to(device)

    def _check_generator(self, G: nn.Module) -> None:
        c, g = self.cfg, G.cfg
        if (c.resolution, c.width, c.n_latent, c.style_dim) != (g.resolution, g.width, g.n_latent, g.style_dim):
            raise ValueError(
                f"encoder was trained for a {c.resolution}x{c.width} generator with W+ [{c.n_latent}, {c.style_dim}], "
                f"got {g.resolution}x{g.width} with [{g.n_latent}, {g.style_dim}]; train an encoder for this generator"
            )


def _start(G: nn.Module, cfg: EncoderConfig, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Iteration 0's inputs: latent_avg at every layer [N, L, D] and its image at the CNN's input size."""
    ws = G.latent_avg.detach().reshape(1, 1, -1).expand(n, cfg.n_latent, -1)  # [D] -> [N, L, D]
    with torch.no_grad():
        image = resize_antialiased(G.synthesis(ws[:1], noise_mode="const"), cfg.input_size)
    return ws, image.expand(n, -1, -1, -1)  # [1, 3, h, w] -> [N, 3, h, w], a view


@dataclass(frozen=True)
class EncoderStep:
    """What `train_encoder`'s callback receives after each batch."""

    step: int  # 1-based
    steps: int
    loss: float  # total over the refinement iterations
    latent_loss: float  # normalised latent MSE of the last iteration
    image_mse: float  # image MSE ([0, 1] scale) of the last iteration


def sample_training_ws(
    G: nn.Module,
    n: int,
    gen: torch.Generator,
    *,
    mixing_prob: float,
    w_jitter: float,
    w_std: float,
) -> torch.Tensor:
    """[n, L, D] W+ training codes: mapped z, style-mixed at a random layer with probability
    `mixing_prob`, plus Gaussian jitter of `w_jitter` * w_std per entry. Draws from `gen` only."""
    d, L = G.cfg.style_dim, G.cfg.n_latent
    device = G.latent_avg.device
    z = torch.randn(2, n, d, generator=gen).to(device)
    mix = torch.rand(n, generator=gen) < mixing_prob
    cut = torch.randint(1, L, (n,), generator=gen)
    jitter = torch.randn(n, L, d, generator=gen).to(device) * (w_jitter * w_std)
    with torch.no_grad():
        ws, ws2 = G.mapping(z[0]), G.mapping(z[1])  # [n, L, D] each
        layer = torch.arange(L)
        use2 = (mix[:, None] & (layer[None, :] >= cut[:, None])).to(device)  # [n, L]
        ws = torch.where(use2[..., None], ws2, ws)
    return ws + jitter


def train_encoder(
    G: nn.Module,
    *,
    steps: int = 2000,
    batch_size: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
    n_iters: int = 3,
    input_resolution: int | None = None,
    channels: int = 32,
    latent_weight: float = 1.0,
    image_weight: float = 1.0,
    lpips_model: nn.Module | None = None,
    lpips_weight: float = 0.8,
    mixing_prob: float = 0.5,
    w_jitter: float = 0.0,
    callback: Callable[[EncoderStep], None] | None = None,
) -> Encoder:
    """Train an `Encoder` for G on G's own samples (see the module docstring); returns it in eval mode.

    input_resolution: CNN input height (default min(64, G.resolution)). lpips_model: optional
    perceptual term (ReStyle trains with lpips_lambda=0.8). image_weight=0 without lpips_model
    trains on the latent loss alone, which skips the backward pass through G (about 3x cheaper).
    Deterministic for a given seed on CPU.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps}, {batch_size}")
    if latent_weight <= 0 and image_weight <= 0 and lpips_model is None:
        raise ValueError("nothing to train on: set latent_weight > 0, image_weight > 0 or pass lpips_model")
    g = G.cfg
    device = G.latent_avg.device
    cfg = EncoderConfig(
        resolution=g.resolution, width=g.width, n_latent=g.n_latent, style_dim=g.style_dim,
        input_resolution=input_resolution or min(64, g.resolution), channels=channels, n_iters=n_iters,
    )
    with torch.random.fork_rng(devices=[]):  # seed the weight init without touching the caller's RNG
        torch.manual_seed(seed)
        enc = Encoder(cfg).to(device).train()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        # Scale of w around its centre: normalises the latent loss and sizes the jitter.
        w = G.mapping(torch.randn(1024, g.style_dim, generator=gen).to(device))[:, 0]  # [1024, D]
        w_var = (w - G.latent_avg).square().mean()
    opt = torch.optim.Adam(enc.parameters(), lr=lr)
    requires_grad = [p.requires_grad for p in G.parameters()]
    G.requires_grad_(False)
    try:
        for step in range(1, steps + 1):
            ws = sample_training_ws(
                G, batch_size, gen, mixing_prob=mixing_prob, w_jitter=w_jitter, w_std=math.sqrt(w_var)
            )
            with torch.no_grad():
                target = G.synthesis(ws, noise_mode="const").clamp(-1, 1)
            small = resize_antialiased(target, cfg.input_size)
            it_ws, current = _start(G, cfg, batch_size)
            total = 0.0
            # Without image terms the generator is only needed for the next iteration's input, so
            # it runs without autograd (about 3x cheaper per step).
            image_terms = image_weight != 0 or lpips_model is not None
            for _ in range(n_iters):
                # ReStyle: the previous latent and reconstruction are inputs (no gradient through
                # them), and the optimiser steps once per iteration.
                it_ws = it_ws.detach() + enc(small, current)
                latent = (it_ws - ws).square().mean() / w_var
                with torch.set_grad_enabled(image_terms):
                    image = G.synthesis(it_ws, noise_mode="const")
                    lp, mse = reconstruction_losses(
                        image, target, lpips_model=lpips_model, loss_size=tuple(target.shape[-2:])
                    )
                loss = latent_weight * latent
                if image_terms:
                    loss = loss + image_weight * mse.mean() + lpips_weight * lp.mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item()
                current = resize_antialiased(image.detach(), cfg.input_size)
            if callback is not None:
                callback(EncoderStep(step, steps, total, latent.item(), mse.mean().item()))
    finally:
        for p, flag in zip(G.parameters(), requires_grad):
            p.requires_grad_(flag)
    return enc.eval()

