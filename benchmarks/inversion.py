"""Batched vs one-image-at-a-time W+ inversion on the same images and generator; prints one JSON object.

    python benchmarks/inversion.py --json                     # CPU defaults, < 3 min on 2 cores
    python benchmarks/inversion.py --json --device cuda --batch 32 --resolution 256 --steps 100
    python benchmarks/inversion.py --json --encoder           # + reconstruction with / without encoder start

The generator is random (no checkpoint needed) but shaped like a trained one: latent_avg is the mean
mapped z and the ToRGB layers are scaled so its images lie in [-1, 1]. Targets are its own images
from random seeds, so the inversion is well posed. The losses are those of the reference (10 *
LPIPS-VGG + MSE + latent regulariser) at --loss-resolution.

Batched and single runs optimise the same per-image objectives, so their losses agree up to float
rounding at the start (`max_rel_diff_first_steps`); over many steps at lr 0.1 those ~1e-7
differences are amplified by the optimisation, so compare the mean final losses
(`final_loss_batched` vs `final_loss_single`) rather than expecting bitwise equality.
With --json nothing but the JSON goes to stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from handsoff_ray.core.encoder import train_encoder
from handsoff_ray.core.inversion import invert
from handsoff_ray.core.lpips_offline import load_lpips
from handsoff_ray.core.stylegan2 import Generator, GeneratorConfig, z_from_seeds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true", help="print only the JSON result on stdout")
    p.add_argument("--device", default="cpu", metavar="DEV", help="cpu | cuda (default: cpu)")
    p.add_argument("--resolution", type=int, default=64, metavar="PX", help="generator resolution (default: 64)")
    p.add_argument("--style-dim", type=int, default=128, metavar="D", help="w dimension (default: 128)")
    p.add_argument("--channel-max", type=int, default=64, metavar="C", help="generator channel cap (default: 64)")
    p.add_argument("--batch", type=int, default=16, metavar="N", help="images inverted together (default: 16)")
    p.add_argument("--steps", type=int, default=20, metavar="K", help="Adam updates per image (default: 20)")
    p.add_argument(
        "--loss-resolution", type=int, default=None, metavar="PX",
        help="loss height (default: half the generator's, the reference's 512-for-1024 ratio)",
    )
    p.add_argument("--lpips-net", default="vgg", choices=["vgg", "alex"], help="LPIPS trunk (default: vgg)")
    # One thread by default: on a shared 2-core CI box a second intra-op thread mostly adds
    # contention (measured up to 6x slower) and blurs the batched/single comparison. 0 = torch's default.
    p.add_argument(
        "--threads", type=int, default=1, metavar="T", help="torch intra-op threads; 0 = torch's (default: 1)"
    )
    p.add_argument("--seed", type=int, default=0, metavar="S", help="generator init and target seeds (default: 0)")
    p.add_argument("--encoder", action="store_true", help="also train an encoder and compare inversion starts")
    p.add_argument(
        "--encoder-steps", type=int, default=200, metavar="K", help="encoder training batches (default: 200)"
    )
    p.add_argument("--encoder-batch", type=int, default=8, metavar="N", help="encoder training batch (default: 8)")
    p.add_argument("--encoder-iters", type=int, default=2, metavar="K", help="ReStyle iterations (default: 2)")
    p.add_argument("--encoder-input", type=int, default=32, metavar="PX", help="encoder input height (default: 32)")
    # 0 = latent loss only: the training samples come with their exact W+, and skipping the image
    # term skips the backward pass through G (about 3x cheaper per step on CPU).
    p.add_argument(
        "--encoder-image-weight", type=float, default=0.0, metavar="X", help="image MSE weight (default: 0)"
    )
    return p.parse_args(argv)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_generator(args: argparse.Namespace, device: torch.device) -> Generator:
    torch.manual_seed(args.seed)
    cfg = GeneratorConfig(
        resolution=args.resolution, style_dim=args.style_dim, n_mlp=2,
        channel_base=args.channel_max * 32, channel_max=args.channel_max,
    )
    G = Generator(cfg).to(device)
    with torch.no_grad():
        G.latent_avg = G.mapping(z_from_seeds(range(4096), cfg.style_dim, device=device)).mean((0, 1))
        peak = G.synthesis(G.mapping(z_from_seeds(range(10_000, 10_256), cfg.style_dim, device=device))).abs().max()
        for block in G.synthesis.blocks():
            block.torgb.weight.mul_(0.95 / peak)  # images of typical seeds now lie in [-1, 1]
    return G


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def summary(res) -> dict[str, float]:
    return {
        "psnr": float(res.psnr.mean()),
        "lpips": float(res.lpips.mean()),
        "final_loss": float(res.final_loss.mean()),
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.loss_resolution is None:
        args.loss_resolution = args.resolution // 2
    device = torch.device(args.device)
    G = make_generator(args, device)
    lp = load_lpips(args.lpips_net, device=device)
    log(f"generator {G.cfg.to_dict()}; LPIPS trunk from {lp.trunk_source.kind}")
    seeds = range(10_000 + args.seed * 1000, 10_000 + args.seed * 1000 + args.batch)
    with torch.no_grad():
        targets = G.synthesis(G.mapping(z_from_seeds(seeds, G.cfg.style_dim, device=device))).clamp(-1, 1).cpu()
    kw = dict(lpips_model=lp, steps=args.steps, loss_resolution=args.loss_resolution)

    # Warm-up: first calls pay for kernel selection / allocator growth in both modes alike.
    invert(G, targets[:2], **{**kw, "steps": 2})
    invert(G, targets[:1], **{**kw, "steps": 2})

    log(f"batched: {args.batch} images x {args.steps} steps")
    batched, t_batched = timed(lambda: invert(G, targets, **kw), device)
    log(f"  {t_batched:.1f} s; single: {args.batch} runs of 1 image")
    singles, t_single = timed(lambda: [invert(G, targets[i : i + 1], **kw) for i in range(args.batch)], device)
    log(f"  {t_single:.1f} s")
    single_loss = torch.cat([s.final_loss for s in singles])
    single_curve = torch.cat([s.loss_curve for s in singles])
    result = {
        "images_per_s_batched": args.batch / t_batched,
        "images_per_s_single": args.batch / t_single,
        "speedup": t_single / t_batched,
        "final_loss_batched": float(batched.final_loss.mean()),
        "final_loss_single": float(single_loss.mean()),
        # Before any update the two differ only by float rounding; after, Adam's sign-like first
        # steps and the nonconvex objective amplify it, so compare loss levels from there on.
        "max_rel_diff_initial_loss": float(
            ((batched.loss_curve[:, 0] - single_curve[:, 0]).abs() / single_curve[:, 0]).max()
        ),
        "max_rel_diff_final_loss": float(((batched.final_loss - single_loss).abs() / single_loss).max()),
        "psnr_batched": float(batched.psnr.mean()),
        "psnr_single": float(torch.cat([s.psnr for s in singles]).mean()),
        "seconds_batched": t_batched,
        "seconds_single": t_single,
        "settings": {
            "resolution": args.resolution,
            "loss_resolution": args.loss_resolution,
            "style_dim": args.style_dim,
            "n_latent": G.n_latent,
            "channel_max": args.channel_max,
            "batch": args.batch,
            "steps": args.steps,
            "lpips_net": args.lpips_net,
            "lpips_trunk_source": lp.trunk_source.kind,
            "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
    }
    if args.encoder:
        result["encoder"] = encoder_comparison(G, targets, args, kw, device, plain=batched)
    return result


def encoder_comparison(G, targets, args, kw, device, *, plain) -> dict:
    """Reconstruction after the same number of steps, starting from latent_avg vs from the encoder."""
    log(f"encoder: training {args.encoder_steps} batches")
    enc, t_train = timed(
        lambda: train_encoder(
            G, steps=args.encoder_steps, batch_size=args.encoder_batch, seed=args.seed, n_iters=args.encoder_iters,
            input_resolution=args.encoder_input, image_weight=args.encoder_image_weight,
            callback=lambda s: s.step % 25 == 0 and log(f"  step {s.step}: loss {s.loss:.4f}"),
        ),
        device,
    )
    init = enc.invert(G, targets)
    encoder_only = invert(G, targets, **{**kw, "steps": 0}, init_ws=init)
    started = invert(G, targets, **kw, init_ws=init)
    avg_only = invert(G, targets, **{**kw, "steps": 0})
    return {
        "train_seconds": t_train,
        "train_steps": args.encoder_steps,
        "train_batch": args.encoder_batch,
        "n_iters": args.encoder_iters,
        "input_resolution": args.encoder_input,
        "image_weight": args.encoder_image_weight,
        "steps": args.steps,
        "latent_avg_start": {"after_0_steps": summary(avg_only), f"after_{args.steps}_steps": summary(plain)},
        "encoder_start": {"after_0_steps": summary(encoder_only), f"after_{args.steps}_steps": summary(started)},
    }


if __name__ == "__main__":
    args = parse_args()
    out = main()
    print(json.dumps(out, indent=None if args.json else 2))
