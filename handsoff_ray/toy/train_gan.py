"""Train the project's StyleGAN2 on the procedural toy world; resumable, exportable with a model card.

    python -m handsoff_ray.toy.train_gan --out .toygan/run1 --max-minutes 100 --threads 1   # train/resume
    python -m handsoff_ray.toy.train_gan --out .toygan/run1 --export toy.safetensors --grid toy.png

Training writes `state.pt` (everything needed to continue bit for bit) every `--ckpt-every` seconds and
on exit, a sample grid `samples_<kimg>.png` every `--grid-every` seconds, and one JSON line per log
interval. Rerunning the same command resumes; `--max-minutes` bounds one invocation's wall time and
`--kimg` the whole run. `--export` reads the state (no other option needed), writes the EMA generator
with `core.checkpoint.save_generator` and the model card (config, images seen, wall time, machine,
KID from `toy/quality.py`) as its metadata.

The recipe is StyleGAN2's, scaled down: non-saturating logistic loss, lazy R1 on reals every 16 steps
(gamma by StyleGAN2-ADA's auto rule 0.0002 * res^2 / batch), style mixing, an EMA generator, the W
average tracked for truncation, Adam(0, 0.99). No path-length regulariser: it costs a second generator
pass and buys interpolation smoothness, which nothing downstream depends on. The toy world renders
fresh faces on the fly (seeds advance with the images seen), so D never sees a repeat and needs no
augmentation; rendering the next batch overlaps the current step in a helper thread.

Speed on CPU: images per CPU-second of one training step, AMD EPYC (Zen 4) 1 thread, 64x64, batch 16,
torch 2.14 (`img_per_cpu_s` in the log; CPU time because wall time depends on who else shares the box):
    the first version (fp32, D convolving at full resolution, then dropping pixels)    8.5
    D blurs, then convolves with stride 2 (StyleGAN2's own order: 4x fewer FLOPs)     ~12
    + no weight gradients for the network not being updated                           ~14
    + channels_last (oneDNN is faster in NHWC at 32-128 channels)                     ~15
    + bf16 autocast (Zen 4 has avx512_bf16; R1 and losses stay fp32)                   ~24
In a real run, with rendering the toy faces in a helper thread, that is 21 img/CPU-s at 64x64 and 34
at 32x32; what is left is ~75% convolutions. Two torch threads on a machine shared with other jobs
were 5-10x *slower* than one (OpenMP spin-waiting), hence `--threads 1` there. On a GPU the same
code runs with bf16 autocast; nothing here is CPU-specific.

Toy config (the defaults): 64x64, channels min(128, 2048 // res) (128 down to 16x16, 64 at 32x32, 32 at
64x64), style_dim 128, 4 mapping layers, batch 16: a 1.1 M-parameter generator, 4.6 MB as safetensors.
Resolution chosen by running 64 and 32 side by side for 14 minutes on the shared 2-core machine
(270 CPU-s each), then measuring KID with `toy/quality.py` (lower is better; real vs real 0.0000 +-
0.0001, a random-init 64x64 generator 0.181): 64x64 saw 5.8 kimg and reached KID 0.120, 32x32 saw
9.2 kimg and reached 0.890 (high-frequency noise at that point). So 64, which the issue prefers and
which keeps eyes and mouths several pixels wide for the label generator. The shipped checkpoint's
model card holds its own KID, images seen, wall time and machine.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from handsoff_ray.core._files import atomic_write
from handsoff_ray.core.device import resolve_device
from handsoff_ray.core.images import mosaic, to_uint8
from handsoff_ray.core.stylegan2 import Generator, GeneratorConfig, z_from_seeds
from handsoff_ray.core.discriminator import Discriminator
from handsoff_ray.toy.reals import real_images

__all__ = [
    "GanTrainConfig",
    "train_gan",
    "load_state_generator",
    "model_card",
    "export_generator",
    "sample_grid",
    "machine_description",
    "main",
]

STATE_FILE = "state.pt"
# The W average (truncation centre) follows the mapping output with this per-step decay, as in StyleGAN2.
W_AVG_BETA = 0.995
# Options that may change between invocations of one run; everything else must match to resume.
_RUN_OPTIONS = ("out", "kimg", "ckpt_every", "grid_every", "log_every", "max_minutes", "max_cpu_s", "device",
                "threads", "precision")


@dataclass
class GanTrainConfig:
    out: str
    resolution: int = 64  # 32 trains ~1.7x faster per image; 64 keeps eyes and mouths several pixels wide
    channel_base: int = 2048  # channels = min(channel_max, channel_base // res): 64 at 32x32, 32 at 64x64
    channel_max: int = 128
    style_dim: int = 128
    n_mlp: int = 4  # StyleGAN2-ADA's small-data configs use 2; 8 buys little on a world this simple
    batch_size: int = 16
    kimg: float = 1000.0  # thousands of real images shown to D over the whole run
    lr: float = 0.002
    r1_gamma: float | None = None  # None: StyleGAN2-ADA's auto rule 0.0002 * res^2 / batch (0.05 at 64, bs 16)
    r1_interval: int = 16
    mixing_prob: float = 0.9
    ema_kimg: float = 5.0  # half-life of the EMA generator in thousands of images (ADA: batch * 10 / 32)
    ema_rampup: float | None = 0.05  # early on the half-life is at most this fraction of the images seen
    seed: int = 0
    device: str = "auto"  # auto: cuda if available, else cpu
    precision: str = "auto"  # auto: bf16 autocast where the hardware has it (CUDA, Zen 4 / Sapphire Rapids), else fp32
    threads: int | None = None  # torch CPU threads; 1 is fastest on a machine shared with other jobs
    ckpt_every: float = 300.0  # seconds between state.pt writes
    grid_every: float = 600.0  # seconds between sample grids (samples_<kimg>.png)
    log_every: float = 60.0  # seconds between JSON log lines
    max_minutes: float | None = None  # wall-time limit of this invocation; checkpoints and returns
    max_cpu_s: float | None = None  # stop once the whole run has used this much CPU time (benchmarks)
    world_seed_offset: int = 10_000_000  # toy faces for training use seeds far from the demo's labeled ones
    # "stylegan2": the residual D trained from scratch (logistic loss + lazy R1); "projected": small
    # discriminators over frozen ImageNet features (Projected GANs; hinge loss, no R1), which refined the
    # shipped generator's small parts in 56 kimg (benchmarks/gan_recipes.py measures both).
    discriminator: str = "stylegan2"
    projected_trunk: str = "alex"  # with discriminator=projected: "alex" (3x cheaper on CPU) or "vgg"
    # A generator checkpoint (same architecture) to start G and G_ema from instead of random weights,
    # "toy" names the shipped 82-kimg toy generator: a new discriminator then refines what G draws.
    init: str | None = None

    def __post_init__(self) -> None:
        self.generator_config()  # validates resolution and channels with GeneratorConfig's messages
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (minibatch std needs a group), got {self.batch_size}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be auto, bf16 or fp32, got {self.precision!r}")
        if self.discriminator not in ("stylegan2", "projected"):
            raise ValueError(f"discriminator must be stylegan2 or projected, got {self.discriminator!r}")
        if self.r1_interval < 1:
            raise ValueError(f"r1_interval must be >= 1, got {self.r1_interval}")

    def generator_config(self) -> GeneratorConfig:
        return GeneratorConfig(
            resolution=self.resolution, style_dim=self.style_dim, n_mlp=self.n_mlp,
            channel_base=self.channel_base, channel_max=self.channel_max,
        )

    def gamma(self) -> float:
        return self.r1_gamma if self.r1_gamma is not None else 0.0002 * self.resolution**2 / self.batch_size

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GanTrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class _Progress:
    step: int = 0
    images_seen: int = 0
    wall_s: float = 0.0  # summed over invocations
    cpu_s: float = 0.0  # process CPU time, summed over invocations (wall time lies on a shared machine)
    history: list = field(default_factory=list)


@dataclass
class _Nets:
    G: Generator
    D: Discriminator
    G_ema: Generator
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 where it is native (measured 1.6x per CPU step on Zen 4), else None = fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported() else None


def _build(cfg: GanTrainConfig, device: torch.device) -> _Nets:
    torch.manual_seed(cfg.seed)
    # channels_last: oneDNN's convolutions and depthwise blurs are 1.1-2.5x faster in NHWC at these widths
    G = Generator(cfg.generator_config()).to(device, memory_format=torch.channels_last)
    if cfg.discriminator == "projected":
        from handsoff_ray.core.projected_discriminator import ProjectedDiscriminator

        D = ProjectedDiscriminator(cfg.resolution, trunk=cfg.projected_trunk).to(
            device, memory_format=torch.channels_last)
    else:
        D = Discriminator(cfg.resolution, channel_base=cfg.channel_base, channel_max=cfg.channel_max).to(
            device, memory_format=torch.channels_last)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    # Lazy regularisation: D's optimiser also takes the R1 step every r1_interval steps, so its
    # hyper-parameters are adjusted as in StyleGAN2 to keep the effective update the same.
    c = cfg.r1_interval / (cfg.r1_interval + 1) if cfg.discriminator == "stylegan2" else 1.0
    opt_G = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(0.0, 0.99), eps=1e-8)
    opt_D = torch.optim.Adam(D.parameters(), lr=cfg.lr * c, betas=(0.0, 0.99**c), eps=1e-8)
    return _Nets(G, D, G_ema, opt_G, opt_D)


def _init_from(nets: _Nets, cfg: GanTrainConfig, path: str) -> dict[str, Any]:
    """G and G_ema <- a saved generator's weights (W average included); returns its model card.

    Refuses another architecture."""
    from handsoff_ray.core.checkpoint import load_generator

    src = load_generator(_resolve_init(path))
    if src.cfg.to_dict() != cfg.generator_config().to_dict():
        raise ValueError(f"--init {path} is a {src.cfg.to_dict()} generator; this run builds "
                         f"{cfg.generator_config().to_dict()}: pass matching --resolution/--channel-*/--style-dim")
    state = src.state_dict()
    nets.G.load_state_dict(state)
    nets.G_ema.load_state_dict(state)
    return src.metadata.get("model_card") or {}


def _mixed_ws(G: Generator, z: torch.Tensor, mixing_prob: float, gen: torch.Generator) -> torch.Tensor:
    """Mapping with style mixing: with probability mixing_prob, ws from a cutoff on come from a second z."""
    ws = G.mapping(z)  # [N, L, D]
    if mixing_prob > 0 and torch.rand((), generator=gen).item() < mixing_prob:
        z2 = torch.randn(z.shape, generator=gen).to(z.device)
        cutoff = int(torch.randint(1, G.n_latent, (), generator=gen))
        ws = torch.cat([ws[:, :cutoff], G.mapping(z2)[:, cutoff:]], 1)
    return ws


def _losses(cfg: GanTrainConfig):
    """(D loss on fake logits, D loss on real logits, G loss on fake logits), each a mean over logits."""
    if cfg.discriminator == "projected":  # hinge, as Projected GANs train
        return (lambda f: F.relu(1 + f).mean(), lambda r: F.relu(1 - r).mean(), lambda f: -f.mean())
    return (lambda f: F.softplus(f).mean(), lambda r: F.softplus(-r).mean(), lambda f: F.softplus(-f).mean())


def _d_step(cfg: GanTrainConfig, nets: _Nets, real: torch.Tensor, gen: torch.Generator,
            amp: torch.dtype | None, do_r1: bool) -> float:
    """Logistic loss on fakes and reals; on R1 steps the real pass runs in fp32 with a gradient penalty.

    With the projected discriminator: the hinge loss, and never R1.
    """
    G, D = nets.G, nets.D
    d_fake, d_real, _ = _losses(cfg)
    do_r1 = do_r1 and cfg.discriminator == "stylegan2"  # spectral norm bounds the projected D instead
    G.requires_grad_(False)
    D.requires_grad_(True)
    device = real.device
    z = torch.randn(real.shape[0], cfg.style_dim, generator=gen).to(device)
    with torch.no_grad(), torch.autocast(device.type, amp or torch.float32, enabled=amp is not None):
        fake = G.synthesis(_mixed_ws(G, z, cfg.mixing_prob, gen), noise_mode="random")
    with torch.autocast(device.type, amp or torch.float32, enabled=amp is not None):
        fake_logits = D(fake).float()
    loss = d_fake(fake_logits)
    # The R1 double backward stays in fp32: a squared gradient norm is where bf16's 8 bits would show.
    with torch.autocast(device.type, amp or torch.float32, enabled=amp is not None and not do_r1):
        real = real.detach().requires_grad_(do_r1)
        real_logits = D(real).float()
    loss = loss + d_real(real_logits)
    if do_r1:
        (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
        r1 = grad.square().sum(dim=(1, 2, 3)).mean()
        loss = loss + r1 * (cfg.gamma() / 2) * cfg.r1_interval
    nets.opt_D.zero_grad(set_to_none=True)
    loss.backward()
    nets.opt_D.step()
    return float(loss.detach())


def _g_step(cfg: GanTrainConfig, nets: _Nets, batch: int, gen: torch.Generator,
            amp: torch.dtype | None, device: torch.device) -> float:
    """Non-saturating loss; also moves the W average (truncation centre) towards this batch's mean w."""
    G, D = nets.G, nets.D
    G.requires_grad_(True)
    D.requires_grad_(False)  # D's weight gradients would be thrown away: skipping them saves ~15%
    z = torch.randn(batch, cfg.style_dim, generator=gen).to(device)
    ws = _mixed_ws(G, z, cfg.mixing_prob, gen)  # mapping in fp32: tiny, and W is what inversion optimises
    with torch.autocast(device.type, amp or torch.float32, enabled=amp is not None):
        logits = D(G.synthesis(ws, noise_mode="random")).float()
    loss = _losses(cfg)[2](logits)
    nets.opt_G.zero_grad(set_to_none=True)
    loss.backward()
    nets.opt_G.step()
    with torch.no_grad():
        G.mapping.latent_avg.lerp_(ws[:, 0].mean(0), 1 - W_AVG_BETA)
    return float(loss.detach())


def _ema_update(cfg: GanTrainConfig, nets: _Nets, images_seen: int) -> None:
    """G_ema <- G with a half-life of ema_kimg thousand images (shorter early on: ema_rampup)."""
    ema_nimg = cfg.ema_kimg * 1000
    if cfg.ema_rampup:
        ema_nimg = min(ema_nimg, images_seen * cfg.ema_rampup)
    beta = 0.5 ** (cfg.batch_size / max(ema_nimg, 1e-8))
    with torch.no_grad():
        for p_ema, p in zip(nets.G_ema.parameters(), nets.G.parameters()):
            p_ema.lerp_(p, 1 - beta)
        for b_ema, b in zip(nets.G_ema.buffers(), nets.G.buffers()):
            b_ema.copy_(b)


def _rng_state(gen: torch.Generator) -> dict[str, Any]:
    # Every random draw of a step: z and mixing (gen), the per-layer noise (torch's global generators).
    state = {"gen": gen.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(gen: torch.Generator, state: dict[str, Any]) -> None:
    # generator states are CPU byte tensors, whatever map_location the state was loaded with
    gen.set_state(state["gen"].cpu())
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def machine_description(device: torch.device | str = "cpu", threads: int | None = None) -> str:
    """CPU model, cores and threads used, accelerator, torch version: the model card's `machine`."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    dev = torch.device(device)
    acc = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "no accelerator"
    used = threads or torch.get_num_threads()
    return f"{cpu}, {os.cpu_count()} cores ({used} torch threads), {acc}, torch {torch.__version__}"


def _check_resumable(saved: dict[str, Any], cfg: GanTrainConfig, path: str) -> None:
    # states written before the projected discriminator existed were all "stylegan2"
    ours = _identity(asdict(cfg))
    theirs = _identity({"discriminator": "stylegan2", "projected_trunk": "alex", "init": None, **saved})
    diff = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    if diff:
        pairs = ", ".join(f"{k}={theirs.get(k)!r} (now {ours.get(k)!r})" for k in diff)
        raise ValueError(f"{path} was trained with another configuration: {pairs}; "
                         f"pass the same options or another --out")


def train_gan(cfg: GanTrainConfig, *, log: Callable[[str], None] = print) -> Generator:
    """Train (or resume) until cfg.kimg or cfg.max_minutes; return the EMA generator.

    State lives in cfg.out/state.pt. A run interrupted and resumed computes the same weights as one
    that ran through (same device, threads and precision): data, latents, noise and mixing all come
    from saved generator states and the number of images seen.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    amp = _autocast_dtype(cfg.precision, device)
    os.makedirs(cfg.out, exist_ok=True)
    nets = _build(cfg, device)
    prog = _Progress()
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed + 1)  # the global generator draws the per-layer noise

    state_path = os.path.join(cfg.out, STATE_FILE)
    init_card = ""  # the starting generator's model card (JSON), kept in every state: "toy" may change later
    if cfg.init and not os.path.exists(state_path):
        init_card = json.dumps(_init_from(nets, cfg, cfg.init))
        log(json.dumps({"initialised_from": cfg.init}))
    if os.path.exists(state_path):
        state = torch.load(state_path, map_location=device, weights_only=True)
        init_card = state.get("init_card", "")
        _check_resumable(state["config"], cfg, state_path)
        for name in ("G", "D", "G_ema", "opt_G", "opt_D"):
            getattr(nets, name).load_state_dict(state[name])
        _set_rng_state(gen, state["rng"])
        prog = _Progress(**state["progress"])
        log(json.dumps({"resumed": state_path, "kimg": prog.images_seen / 1000, "step": prog.step}))
    log(json.dumps({"start": asdict(cfg), "device": str(device), "precision": str(amp or "fp32"),
                    "r1_gamma": cfg.gamma(), "G_params": sum(p.numel() for p in nets.G.parameters()),
                    "D_params": sum(p.numel() for p in nets.D.parameters())}))

    def save() -> None:
        with atomic_write(state_path) as fh:  # a kill mid-write never leaves a truncated state.pt
            torch.save({
                "config": asdict(cfg), "G": nets.G.state_dict(), "D": nets.D.state_dict(),
                "G_ema": nets.G_ema.state_dict(), "opt_G": nets.opt_G.state_dict(), "opt_D": nets.opt_D.state_dict(),
                "rng": _rng_state(gen), "progress": asdict(prog),
                "machine": machine_description(device, cfg.threads), "precision": str(amp or "fp32"),
                "init_card": init_card,
            }, fh)

    total = round(cfg.kimg * 1000)
    bs = cfg.batch_size
    t_start = time.time()
    deadline = t_start + cfg.max_minutes * 60 if cfg.max_minutes is not None else math.inf
    t_ckpt = t_log = t_grid = t_start
    wall0, cpu0 = prog.wall_s, prog.cpu_s
    since = (prog.images_seen, prog.wall_s, prog.cpu_s)
    c_start = time.process_time()
    pending: concurrent.futures.Future | None = None
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        # Seeds of real images advance with images_seen, so a resumed run sees exactly the same data.
        def render(images_seen: int) -> concurrent.futures.Future:
            seeds = cfg.world_seed_offset + images_seen + np.arange(bs)
            return pool.submit(real_images, seeds, cfg.resolution)

        loss_G = loss_D = float("nan")
        cpu_limit = cfg.max_cpu_s if cfg.max_cpu_s is not None else math.inf
        while prog.images_seen < total and time.time() < deadline and prog.cpu_s < cpu_limit:
            real = (pending or render(prog.images_seen)).result()
            pending = render(prog.images_seen + bs) if prog.images_seen + bs < total else None
            real = real.to(device, memory_format=torch.channels_last)

            loss_D = _d_step(cfg, nets, real, gen, amp, do_r1=prog.step % cfg.r1_interval == 0)
            loss_G = _g_step(cfg, nets, bs, gen, amp, device)
            _ema_update(cfg, nets, prog.images_seen)

            prog.step += 1
            prog.images_seen += bs
            now = time.time()
            prog.wall_s = wall0 + now - t_start
            prog.cpu_s = cpu0 + time.process_time() - c_start
            if not (math.isfinite(loss_G) and math.isfinite(loss_D)):
                raise FloatingPointError(f"loss became {loss_G=}, {loss_D=} at step {prog.step}; "
                                         f"resume from the last state.pt with a lower --lr or --precision fp32")
            if now - t_log >= cfg.log_every:
                since = _log_progress(prog, loss_G, loss_D, since, log)
                t_log = now
            if now - t_grid >= cfg.grid_every:
                _write_grid(nets.G_ema, cfg.out, prog.images_seen)
                t_grid = now
            if now - t_ckpt >= cfg.ckpt_every:
                save()
                t_ckpt = now
        if pending is not None:
            pending.cancel()
    _log_progress(prog, loss_G, loss_D, since, log)
    save()
    _write_grid(nets.G_ema, cfg.out, prog.images_seen)
    return nets.G_ema


def _log_progress(prog: _Progress, loss_G: float, loss_D: float, since: tuple[int, float, float],
                  log: Callable[[str], None]) -> tuple[int, float, float]:
    """One JSON line; rates are over the interval since the last line (images, wall s, CPU s)."""
    n, wall, cpu = prog.images_seen - since[0], prog.wall_s - since[1], prog.cpu_s - since[2]
    rec = {"step": prog.step, "kimg": round(prog.images_seen / 1000, 3), "loss_G": round(loss_G, 4),
           "loss_D": round(loss_D, 4), "img_per_s": round(n / max(wall, 1e-9), 2),
           "img_per_cpu_s": round(n / max(cpu, 1e-9), 2), "wall_s": round(prog.wall_s, 1),
           "cpu_s": round(prog.cpu_s, 1)}
    prog.history.append(rec)
    log(json.dumps(rec))
    return prog.images_seen, prog.wall_s, prog.cpu_s


def sample_grid(G: Generator, *, n: int = 64, columns: int = 8, seed0: int = 0, truncation_psi: float = 1.0,
                batch: int = 32) -> np.ndarray:
    """uint8 [rows*H, columns*W, 3]: G's images for seeds seed0..seed0+n-1 (const noise), row-major."""
    device = next(G.parameters()).device
    tiles = []
    with torch.no_grad():
        for i in range(0, n, batch):
            z = z_from_seeds(range(seed0 + i, seed0 + min(i + batch, n)), G.style_dim, device=device)
            img = G(z, truncation_psi=truncation_psi, noise_mode="const").float()  # [B, 3, H, W]
            tiles.append(to_uint8(img))
    return mosaic(np.concatenate(tiles), columns, fill=255)  # [n, H, W, 3] -> one picture


def _write_grid(G: Generator, out: str, images_seen: int) -> str:
    from PIL import Image

    path = os.path.join(out, f"samples_{images_seen // 1000:06d}kimg.png")
    Image.fromarray(sample_grid(G)).save(path)
    return path


def load_state_generator(out: str, device: str | torch.device = "cpu") -> tuple[Generator, dict[str, Any]]:
    """The EMA generator of out/state.pt (eval, no grad, contiguous) and the raw state."""
    state_path = os.path.join(out, STATE_FILE)
    if not os.path.exists(state_path):
        raise FileNotFoundError(f"{state_path} does not exist; train first with --out {out}")
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    cfg = GanTrainConfig.from_dict(state["config"])
    G = Generator(cfg.generator_config())
    G.load_state_dict(state["G_ema"])
    return G.to(device).eval().requires_grad_(False), state


def model_card(state: dict[str, Any], quality: dict[str, Any] | None = None,
               kid_curve: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """What the shipped checkpoint carries about how it was made (JSON-serialisable).

    A run started from another generator (`init`) carries that generator's own card under
    `initialised_from`, and the totals over both runs: images seen and CPU time from random weights.
    """
    prog = state["progress"]
    cfg = dict(state["config"], out=None)
    card = {
        "model": "handsoff_ray toy StyleGAN2 (trained on handsoff_ray.toy.world)",
        "config": cfg,
        "r1_gamma_used": GanTrainConfig.from_dict(state["config"]).gamma(),
        "images_seen": prog["images_seen"],
        "steps": prog["step"],
        "wall_time_s": round(prog["wall_s"], 1),
        "cpu_time_s": round(prog["cpu_s"], 1),
        "machine": state.get("machine", "unknown"),
        "precision": state.get("precision", "unknown"),
        "quality": quality or {},
        "final_losses": prog["history"][-1] if prog["history"] else {},
    }
    if kid_curve:
        card["kid_curve"] = kid_curve
    if cfg.get("init"):
        if state.get("init_card"):
            parent = json.loads(state["init_card"])
        else:  # states written before init_card existed: the checkpoint as it is now
            from handsoff_ray.core.checkpoint import load_generator

            parent = load_generator(_resolve_init(cfg["init"])).metadata.get("model_card") or {}
        card["initialised_from"] = {"checkpoint": cfg["init"], **{k: parent.get(k) for k in (
            "config", "images_seen", "wall_time_s", "cpu_time_s", "machine", "quality")}}
        card["images_seen_total"] = prog["images_seen"] + (parent.get("images_seen") or 0)
        card["cpu_time_s_total"] = round(prog["cpu_s"] + (parent.get("cpu_time_s") or 0), 1)
    return card


def export_generator(out: str, path: str | os.PathLike, *, kid: bool = True, grid: str | None = None,
                     kid_curve: list[dict[str, Any]] | None = None,
                     log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write out/state.pt's EMA generator to `path` (own safetensors) with the model card; return the card."""
    from handsoff_ray.core.checkpoint import save_generator

    G, state = load_state_generator(out)
    quality: dict[str, Any] = {}
    if kid:
        from handsoff_ray.toy.quality import measure_kid

        quality = measure_kid(G, log=log)
    card = model_card(state, quality, kid_curve)
    G.metadata = {}
    written = save_generator(G, path, metadata={"model_card": card})
    size_mb = os.path.getsize(written) / 1e6
    if grid:
        from PIL import Image

        Path(grid).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(sample_grid(G)).save(grid)
    log(json.dumps({"exported": str(written), "size_mb": round(size_mb, 2), "grid": grid, "quality": quality}))
    return card


def _identity(config: dict[str, Any]) -> dict[str, Any]:
    # What must match to resume: everything but the length of the run and where/how fast it runs.
    return {k: v for k, v in config.items() if k not in _RUN_OPTIONS}


def _expected_time(cfg: GanTrainConfig) -> str:
    """What the run will take, from the shipped toy generator's measured rate when cfg trains the same
    network on a CPU; otherwise where to read the rate. Printed before training starts."""
    from handsoff_ray.core.checkpoint import load_generator

    shipped = load_generator(_resolve_init("toy")).metadata.get("model_card") or {}
    keys = ("resolution", "channel_base", "channel_max", "style_dim", "n_mlp", "batch_size", "discriminator")
    ours = {k: getattr(cfg, k) for k in keys}
    images = cfg.kimg * 1000
    # The shipped card and the card of the generator it was refined from (each stage has its own recipe)
    card = next((c for c in (shipped, shipped.get("initialised_from") or {})
                 if {k: (c.get("config") or {}).get(k, "stylegan2" if k == "discriminator" else None)
                     for k in keys} == ours), {})
    if card and resolve_device(cfg.device).type == "cpu" and card.get("wall_time_s"):
        rate = card["images_seen"] / card["wall_time_s"]
        hours = images / rate / 3600
        return (f"expected time: {cfg.kimg:g} kimg at {rate:.1f} images/s, the rate measured for the shipped toy "
                f"generator ({card.get('machine', 'CPU')}): about {hours:.1f} h in all (less when resuming). "
                f"--max-minutes M bounds this invocation; rerun the same command to resume.")
    return (f"expected time: {cfg.kimg:g} kimg; this network or device has no measured rate: the first progress "
            f"line (after --log-every s) reports img_per_s. --max-minutes M bounds this invocation; rerun the "
            f"same command to resume.")


def _resolve_init(init: str | None) -> str | None:
    from handsoff_ray.toy import resolve_alias  # 'toy': the shipped generator, by the name specs use for it

    return None if init is None else resolve_alias(init)


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m handsoff_ray.toy.train_gan") -> None:
    d = GanTrainConfig(out="")
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", metavar="DIR", required=True, help="run folder: state.pt, samples_*.png")
    ap.add_argument("--export", metavar="PATH",
                    help="write the EMA generator + model card (with KID) to this .safetensors and exit")
    ap.add_argument("--no-kid", action="store_true", help="with --export: skip measuring KID (~2 CPU-minutes)")
    ap.add_argument("--grid", metavar="PNG", help="with --export: also write an 8x8 sample grid")
    ap.add_argument("--kid-curve", metavar="JSON",
                    help="with --export: a benchmarks/gan_recipes.py --states result to store in the model card")
    ap.add_argument("--resolution", metavar="PX", type=int, default=d.resolution,
                    help="8..1024, power of two (default %(default)s)")
    ap.add_argument("--channel-base", metavar="N", type=int, default=d.channel_base, help="default %(default)s")
    ap.add_argument("--channel-max", metavar="N", type=int, default=d.channel_max, help="default %(default)s")
    ap.add_argument("--style-dim", metavar="N", type=int, default=d.style_dim, help="default %(default)s")
    ap.add_argument("--n-mlp", metavar="N", type=int, default=d.n_mlp, help="mapping layers (default %(default)s)")
    ap.add_argument("--batch-size", metavar="N", type=int, default=d.batch_size, help="default %(default)s")
    ap.add_argument("--kimg", metavar="K", type=float, default=d.kimg,
                    help="length of the whole run in 1000s of real images (default %(default)s)")
    ap.add_argument("--lr", metavar="LR", type=float, default=d.lr, help="default %(default)s")
    ap.add_argument("--r1-gamma", metavar="G", type=float, default=None, help="default: 0.0002 * res^2 / batch")
    ap.add_argument("--r1-interval", metavar="N", type=int, default=d.r1_interval, help="default %(default)s")
    ap.add_argument("--mixing-prob", metavar="P", type=float, default=d.mixing_prob, help="default %(default)s")
    ap.add_argument("--ema-kimg", metavar="K", type=float, default=d.ema_kimg, help="default %(default)s")
    ap.add_argument("--seed", metavar="S", type=int, default=d.seed, help="default %(default)s")
    ap.add_argument("--projected-trunk", choices=("alex", "vgg"), default=d.projected_trunk,
                    help="ImageNet trunk of the projected discriminator (default %(default)s)")
    ap.add_argument("--init", metavar="CKPT", default=None,
                    help="start G from this generator checkpoint (same architecture), e.g. toy")
    ap.add_argument("--discriminator", choices=("stylegan2", "projected"), default=d.discriminator,
                    help="stylegan2: trained from scratch; projected: over frozen ImageNet features (default %(default)s)")
    ap.add_argument("--device", metavar="DEV", default=d.device, help="auto | cpu | cuda[:i] (default %(default)s)")
    ap.add_argument("--precision", choices=("auto", "bf16", "fp32"), default=d.precision, help="default %(default)s")
    ap.add_argument("--threads", metavar="N", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--ckpt-every", metavar="S", type=float, default=d.ckpt_every, help="seconds (default %(default)s)")
    ap.add_argument("--grid-every", metavar="S", type=float, default=d.grid_every, help="seconds (default %(default)s)")
    ap.add_argument("--log-every", metavar="S", type=float, default=d.log_every, help="seconds (default %(default)s)")
    ap.add_argument("--max-minutes", metavar="M", type=float, default=None, help="stop this invocation after M minutes")
    a = ap.parse_args(argv)
    if a.export:
        curve = json.load(open(a.kid_curve))["curve"] if a.kid_curve else None
        export_generator(a.out, a.export, kid=not a.no_kid, grid=a.grid, kid_curve=curve)
        return
    if a.no_kid or a.grid or a.kid_curve:
        ap.error("--no-kid, --grid and --kid-curve go with --export PATH")
    cfg = GanTrainConfig(
        out=a.out, resolution=a.resolution, channel_base=a.channel_base, channel_max=a.channel_max,
        style_dim=a.style_dim, n_mlp=a.n_mlp, batch_size=a.batch_size, kimg=a.kimg, lr=a.lr, r1_gamma=a.r1_gamma,
        r1_interval=a.r1_interval, mixing_prob=a.mixing_prob, ema_kimg=a.ema_kimg, seed=a.seed, device=a.device,
        discriminator=a.discriminator, projected_trunk=a.projected_trunk, init=a.init,
        precision=a.precision, threads=a.threads, ckpt_every=a.ckpt_every, grid_every=a.grid_every,
        log_every=a.log_every, max_minutes=a.max_minutes,
    )
    print(_expected_time(cfg), file=sys.stderr, flush=True)
    train_gan(cfg, log=lambda s: print(s, flush=True))
    state = torch.load(os.path.join(cfg.out, STATE_FILE), map_location="cpu", weights_only=True)
    seen = state["progress"]["images_seen"]
    if seen < round(cfg.kimg * 1000):
        print(f"stopped at {seen / 1000:g} of {cfg.kimg:g} kimg; rerun the same command to resume",
              file=sys.stderr, flush=True)
    else:
        print(f"finished {cfg.kimg:g} kimg; export it with: {prog} --out {cfg.out} --export GENERATOR.safetensors",
              file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
