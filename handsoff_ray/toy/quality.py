"""How good is a toy generator? KID in the feature space of a small CNN trained on the toy world.

    python -m handsoff_ray.toy.quality --train-extractor handsoff_ray/toy/assets/toy_kid_features.safetensors
    python -m handsoff_ray.toy.quality --generator toy.safetensors           # KID + real-vs-real baseline, JSON

    from handsoff_ray.toy.quality import measure_kid
    measure_kid(G)   # {"kid": ..., "kid_std": ..., "kid_real_vs_real": ..., ...}

Inception features know nothing about a procedural world, so the embedding comes from `FeatureNet`, a
~0.3 M-parameter CNN trained for a few CPU-minutes to predict what the world knows exactly: the
8-class segmentation and 32 global parameters (pose, scale, skin / hair / background colours, hair
style, glasses, hat). Its embedding is the globally pooled 256-channel layer before the parameter
head. The trained net ships as `assets/toy_kid_features.safetensors`, so every KID in this project is
measured in the same space; retraining with the same seed, thread count and machine reproduces it.

KID (Binkowski et al. 2018) is the unbiased MMD^2 with the polynomial kernel k(x, y) = (x.y / d + 1)^3,
averaged over random subsets; unlike FID it has no bias at small sample sizes, so a few thousand
images suffice. `measure_kid` always reports a real-vs-real baseline (two disjoint sets of toy faces)
next to it: that is the noise floor, about 0 +- kid_real_vs_real_std, so a number is read relative to
it. For scale (n=2000, 50 subsets of 1000): real vs real 0.0000 +- 0.0001, a random-init 64x64 toy
generator 0.181, the toy config after 14 CPU-minutes (5.8 kimg) 0.120. Images of another
resolution are resized to 64x64 (antialiased bilinear), reals the same way.
Seed ranges: reals for KID at 30,000,000+, the baseline's second set at 40,000,000+, the extractor's
training faces at 50,000,000+, none overlapping the GAN's training faces (10,000,000+) or the demo's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from handsoff_ray.core.kid import kid
from handsoff_ray.toy.reals import real_images

__all__ = [
    "FeatureNet",
    "EXTRACTOR_PATH",
    "param_targets",
    "train_feature_net",
    "save_feature_net",
    "load_feature_net",
    "embed",
    "measure_kid",
    "main",
]

EXTRACTOR_PATH = Path(__file__).parent / "assets" / "toy_kid_features.safetensors"
INPUT_SIZE = 64
N_CLASSES = 8
REAL_SEED0, BASELINE_SEED0, EXTRACTOR_SEED0 = 30_000_000, 40_000_000, 50_000_000
_HAIR_STYLES = ("bald", "buzz", "short", "medium", "long")
N_PARAMS = 32  # len(param_targets(...))


def param_targets(p: dict[str, Any]) -> list[float]:
    """The global facts the extractor regresses, from `params.sample_params` (N_PARAMS = 32 numbers)."""
    return [
        p["scale_img"], *p["center_img"], p["roll"], p["yaw"], p["head_height"],
        *p["skin"], *p["hair_colour"], *(float(p["hair_style"] == s) for s in _HAIR_STYLES),
        float(p["glasses"]), float(p["glasses"] and p["sunglasses"]), float(p["hat"]), float(p["mouth_open"] > 0),
        p["eye_half_height"] / p["eye_half_width"], *p["bg_colours"][0], *p["bg_colours"][1],
        *p["clothes_colour"], p["ambient"],
    ]


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class FeatureNet(nn.Module):
    """[N, 3, H, W] in [-1, 1] -> embedding [N, 256]; forward also gives segmentation and parameters.

    64 -> 32 -> 16 -> 8 with 16/32/64/128 channels. The segmentation head reads the 16x16 and 8x8
    maps (so the trunk must know where the parts are); the embedding is the pooled 1x1 layer that the
    parameter head reads (so it must know what the face looks like).
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = _conv(3, 16)
        self.down1 = nn.Sequential(_conv(16, 32, 2), _conv(32, 32))
        self.down2 = nn.Sequential(_conv(32, 64, 2), _conv(64, 64))
        self.down3 = nn.Sequential(_conv(64, 128, 2), _conv(128, 128))
        self.seg_head = nn.Conv2d(64 + 128, N_CLASSES, 1)
        self.embed_conv = nn.Sequential(nn.Conv2d(128, 256, 1), nn.ReLU(inplace=True))
        self.param_head = nn.Linear(256, N_PARAMS)
        # standardisation of the parameter targets, set from the training set
        self.register_buffer("param_mean", torch.zeros(N_PARAMS))
        self.register_buffer("param_std", torch.ones(N_PARAMS))

    def _trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = _to_input(x)
        f16 = self.down2(self.down1(self.stem(x)))  # [N, 64, 16, 16]
        return f16, self.down3(f16)  # [N, 128, 8, 8]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed_conv(self._trunk(x)[1]).mean(dim=(2, 3))  # [N, 256, 8, 8] -> [N, 256]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (segmentation logits [N, 8, 64, 64], standardised parameters [N, 32])."""
        f16, f8 = self._trunk(x)
        seg = self.seg_head(torch.cat([f16, F.interpolate(f8, scale_factor=2.0, mode="nearest")], 1))
        seg = F.interpolate(seg, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        return seg, self.param_head(self.embed_conv(f8).mean(dim=(2, 3)))


def _to_input(x: torch.Tensor) -> torch.Tensor:
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected images [N, 3, H, W] in [-1, 1], got {list(x.shape)}")
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x.float(), size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False,
                          antialias=x.shape[-1] > INPUT_SIZE)
    return x.float()


def _render(seeds: Sequence[int], size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images [N,3,S,S] in [-1,1], segmentation [N,64,64] long, targets [N,32]) for the extractor."""
    from handsoff_ray.core.images import from_uint8
    from handsoff_ray.toy.world import render_batch

    b = render_batch(list(seeds), size=size)
    img = from_uint8(b.images)
    seg = torch.from_numpy(b.segmentation).long()
    if size != INPUT_SIZE:  # labels of other sizes: nearest, matching the bilinear resize of the image
        seg = F.interpolate(seg[:, None].float(), size=(INPUT_SIZE, INPUT_SIZE), mode="nearest")[:, 0].long()
    targets = torch.tensor([param_targets(p) for p in b.params], dtype=torch.float32)
    return img, seg, targets


def train_feature_net(*, seed: int = 0, n_images: int = 4096, steps: int = 800, batch: int = 32,
                      lr: float = 2e-3, log: Callable[[str], None] = print) -> tuple[FeatureNet, dict[str, Any]]:
    """Train FeatureNet on freshly rendered toy faces; deterministic for a seed (and thread count).

    A quarter of the faces are rendered at 32x32 and resized, so 32x32 generators are measured by a
    net that has seen that blur. Returns the net (eval mode) and a dict describing the run.
    """
    t0 = time.time()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    base = EXTRACTOR_SEED0 + seed * 1_000_000
    n32 = n_images // 4
    img64, seg64, tgt64 = _render(range(base, base + n_images - n32), INPUT_SIZE)
    img32, seg32, tgt32 = _render(range(base + n_images - n32, base + n_images), 32)
    imgs = torch.cat([img64, _to_input(img32)])
    segs, tgts = torch.cat([seg64, seg32]), torch.cat([tgt64, tgt32])
    val_imgs, val_segs, val_tgts = _render(range(base + n_images, base + n_images + 256), INPUT_SIZE)
    log(json.dumps({"extractor_data": len(imgs), "render_s": round(time.time() - t0, 1)}))

    net = FeatureNet()
    net.param_mean.copy_(tgts.mean(0))
    net.param_std.copy_(tgts.std(0).clamp_min(1e-3))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    net.train()
    for step in range(steps):
        idx = torch.from_numpy(rng.choice(len(imgs), size=batch, replace=False))
        seg_logits, params = net(imgs[idx])
        target = (tgts[idx] - net.param_mean) / net.param_std
        loss = F.cross_entropy(seg_logits, segs[idx]) + F.mse_loss(params, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % 200 == 0 or step + 1 == steps:
            log(json.dumps({"extractor_step": step + 1, "loss": round(float(loss.detach()), 4)}))
    net.eval()
    with torch.no_grad():
        seg_logits, params = net(val_imgs)
        pixel_acc = float((seg_logits.argmax(1) == val_segs).float().mean())
        param_r2 = float(1 - F.mse_loss(params, (val_tgts - net.param_mean) / net.param_std))
    info = {"seed": seed, "n_images": n_images, "steps": steps, "batch": batch, "lr": lr,
            "val_pixel_accuracy": round(pixel_acc, 4), "val_param_r2": round(param_r2, 4),
            "train_s": round(time.time() - t0, 1), "threads": torch.get_num_threads()}
    log(json.dumps({"extractor": info}))
    return net, info


def save_feature_net(net: FeatureNet, path: str | os.PathLike, info: dict[str, Any]) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path),
              metadata={"handsoff_ray.feature_net": json.dumps(info, sort_keys=True)})
    return path


def load_feature_net(path: str | os.PathLike = EXTRACTOR_PATH) -> tuple[FeatureNet, dict[str, Any]]:
    """The extractor and its info (training run + the weights' sha256, which names the feature space)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; train it with "
                                f"`python -m handsoff_ray.toy.quality --train-extractor {path}`")
    with safe_open(str(path), framework="pt", device="cpu") as f:
        info = json.loads((f.metadata() or {}).get("handsoff_ray.feature_net", "{}"))
        state = {k: f.get_tensor(k) for k in f.keys()}
    net = FeatureNet()
    net.load_state_dict(state)
    info = {**info, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:16]}
    return net.eval().requires_grad_(False), info


@torch.no_grad()
def embed(net: FeatureNet, images: torch.Tensor, *, batch: int = 256) -> torch.Tensor:
    """[N, 3, H, W] in [-1, 1] -> [N, 256] float64 embeddings (on CPU)."""
    dev = next(net.parameters()).device
    out = [net.embed(images[i:i + batch].to(dev)).double().cpu() for i in range(0, len(images), batch)]
    return torch.cat(out)


@torch.no_grad()
def _generate(G, n: int, *, batch: int = 64, truncation_psi: float = 1.0) -> torch.Tensor:
    from handsoff_ray.core.stylegan2 import z_from_seeds

    dev = next(G.parameters()).device
    out = []
    for i in range(0, n, batch):
        z = z_from_seeds(range(i, min(i + batch, n)), G.style_dim, device=dev)
        out.append(G(z, truncation_psi=truncation_psi, noise_mode="const").float().clamp(-1, 1).cpu())
    return torch.cat(out)  # [n, 3, R, R]


def _reals(seed0: int, n: int, size: int) -> torch.Tensor:
    return torch.cat([real_images(np.arange(s, min(s + 256, seed0 + n)), size) for s in range(seed0, seed0 + n, 256)])


def measure_kid(G, *, n: int = 2000, n_subsets: int = 50, subset_size: int = 1000, truncation_psi: float = 1.0,
                extractor: str | os.PathLike = EXTRACTOR_PATH, log: Callable[[str], None] = print) -> dict[str, Any]:
    """KID of G's images (z seeds 0..n-1, const noise) against n toy faces, plus the real-vs-real floor.

    Generated images are quantised to uint8 first, like every image a user would save.
    """
    t0 = time.time()
    net, info = load_feature_net(extractor)
    res = G.resolution
    fake = _generate(G, n, truncation_psi=truncation_psi)
    fake = (fake * 127.5 + 127.5).round().div(127.5).sub(1.0)  # through uint8, like the reals
    f_fake = embed(net, fake)
    f_real = embed(net, _reals(REAL_SEED0, n, res))
    f_base = embed(net, _reals(BASELINE_SEED0, n, res))
    k, k_std = kid(f_fake, f_real, n_subsets=n_subsets, subset_size=subset_size)
    b, b_std = kid(f_base, f_real, n_subsets=n_subsets, subset_size=subset_size)
    out = {"kid": k, "kid_std": k_std, "kid_real_vs_real": b, "kid_real_vs_real_std": b_std,
           "n": n, "n_subsets": n_subsets, "subset_size": min(subset_size, n),
           "truncation_psi": truncation_psi, "resolution": res, "feature_net": info,
           "seconds": round(time.time() - t0, 1)}
    log(json.dumps({k: out[k] for k in ("kid", "kid_std", "kid_real_vs_real")}))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m handsoff_ray.toy.quality",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-extractor", metavar="PATH", help="train FeatureNet and write it here")
    ap.add_argument("--generator", metavar="PATH", help="measure KID of this generator checkpoint (any format)")
    ap.add_argument("--extractor", metavar="PATH", default=str(EXTRACTOR_PATH),
                    help="FeatureNet weights (default: the shipped ones)")
    ap.add_argument("--n", metavar="N", type=int, default=2000, help="images per set (default %(default)s)")
    ap.add_argument("--steps", metavar="N", type=int, default=800,
                    help="extractor training steps (default %(default)s)")
    ap.add_argument("--seed", metavar="S", type=int, default=0, help="extractor seed (default %(default)s)")
    ap.add_argument("--threads", metavar="N", type=int, default=None, help="torch CPU threads")
    a = ap.parse_args(argv)
    if not (a.train_extractor or a.generator):
        ap.error("pass --train-extractor PATH and/or --generator PATH")
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.train_extractor:
        net, info = train_feature_net(seed=a.seed, steps=a.steps)
        save_feature_net(net, a.train_extractor, info)
        a.extractor = a.train_extractor
    if a.generator:
        from handsoff_ray.core.checkpoint import load_generator

        print(json.dumps(measure_kid(load_generator(a.generator), n=a.n, extractor=a.extractor, log=lambda s: None)))


if __name__ == "__main__":
    main()
