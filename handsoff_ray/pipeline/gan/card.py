"""What a trained generator says about itself: the proxy KID, sample grids and the model card.

    kid = KidProxy(spec, data, device); kid.measure(G_ema)     # {"kid_proxy", "kid_proxy_std", ...} or None
    uri, card = export_generator(spec, state)                   # <run>/gan/generator.safetensors + card.json

The proxy KID (core/kid.py) compares `gan.kid.images` generated images (z seeds 0.., const noise, no
truncation, through uint8 like any saved image) with the images held out of training, in the ImageNet
trunk the discriminator does not use. It works for any domain and is a proxy: texture and shape
statistics, not whether the parts a label generator needs are drawn right. On the toy world the card
also carries KID in the toy feature space (toy/quality.py, trained on the world's exact parameters), so
the two can be compared.

The card (the exported checkpoint's `model_card` metadata, and card.json beside it): the data (source,
images, held out, listing digest), the recipe (gan.*), images seen, epochs, steps, wall and CPU time
(summed over workers), workers, machine, precision, the KID curve measured during training, the final
KID(s), and the card of the generator it started from (`gan.init`).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Callable
from typing import Any

import torch

from handsoff_ray.config import JobSpec
from handsoff_ray.core.gan_step import generator_config, r1_gamma
from handsoff_ray.core.images import mosaic, to_uint8
from handsoff_ray.core.stylegan2 import Generator, z_from_seeds
from handsoff_ray.pipeline.context import open_run
from handsoff_ray.pipeline.gan.checkpoints import GAN_DIR
from handsoff_ray.pipeline.gan.data import TrainImages

__all__ = ["KidProxy", "grid_png", "sample_grid", "model_card", "export_generator", "kid_feature"]


def kid_feature(gan) -> str:
    """The trunk of the proxy KID: gan.kid.feature, or (auto) the one the discriminator does not look through."""
    if gan.kid.feature != "auto":
        return gan.kid.feature
    return "alex" if gan.discriminator == "projected" and gan.projected_trunk == "vgg" else "vgg"


@torch.no_grad()
def generate(G: Generator, n: int, *, batch: int = 64) -> torch.Tensor:
    """G's images for z seeds 0..n-1 (const noise, no truncation), through uint8, as [n, 3, R, R] in [-1, 1]."""
    dev = next(G.parameters()).device
    out = []
    for i in range(0, n, batch):
        z = z_from_seeds(range(i, min(i + batch, n)), G.style_dim, device=dev)
        img = G(z, noise_mode="const").float().clamp(-1, 1).cpu()
        out.append((img * 127.5 + 127.5).round().div(127.5).sub(1.0))
    return torch.cat(out)


class KidProxy:
    """KID against the held-out images, their trunk features computed once."""

    def __init__(self, spec: JobSpec, data: TrainImages, device: torch.device):
        self.gan, self.data, self.device = spec.gan, data, device
        self.net = kid_feature(spec.gan)
        self._real: torch.Tensor | None = None
        self._lpips = None

    def _model(self):
        if self._lpips is None:
            from handsoff_ray.core.lpips_offline import load_lpips

            self._lpips = load_lpips(self.net, device=str(self.device))
        return self._lpips

    def measure(self, G: Generator) -> dict[str, Any] | None:
        """None when nothing is held out (gan.data.holdout 0, or the toy stream)."""
        if not self.data.holdout:
            return None
        return self._kid(generate(G, self.gan.kid.images))

    def floor(self) -> dict[str, Any] | None:
        """The same KID for training images instead of generated ones: how close a perfect generator gets."""
        if not self.data.holdout:
            return None
        n = min(self.gan.kid.images, len(self.data.train))
        point = self._kid(self.data.load(self.data.positions(0, n)))
        return {"kid_proxy_train_vs_holdout": point["kid_proxy"], "kid_proxy_train_vs_holdout_std": point["kid_proxy_std"]}

    def _kid(self, images: torch.Tensor) -> dict[str, Any]:
        from handsoff_ray.core.kid import kid, trunk_features

        if self._real is None:
            real = trunk_features(self._model(), self.data.load_holdout(self.gan.kid.images).to(self.device))
            # Centred on the held-out set and scaled by one number so its mean squared norm is d: KID's kernel
            # (x.y / d + 1)^3 assumes O(1) features per dimension, and the descriptors are scaled for distances
            # (norm ~ 1 per layer), where x.y / d would be ~0 and every KID ~0. One scale, not one per
            # dimension: near-constant dimensions of the reals would blow up any difference of the fakes.
            self._mu = real.mean(0)
            self._sd = ((real - self._mu).square().sum(1).mean() / real.shape[1]).sqrt().clamp_min(1e-12)
            self._real = (real - self._mu) / self._sd
        fake = (trunk_features(self._model(), images.to(self.device)) - self._mu) / self._sd
        m = min(len(fake), len(self._real))
        k, k_std = kid(fake, self._real, n_subsets=50, subset_size=max(2, m // 2))  # halves: a spread over subsets
        return {"kid_proxy": round(k, 5), "kid_proxy_std": round(k_std, 5), "kid_proxy_feature": self.net,
                "kid_proxy_n": [len(fake), len(self._real)]}


def sample_grid(G: Generator, *, n: int = 64, columns: int = 8, seed0: int = 0) -> "Any":
    """uint8 [rows*H, columns*W, 3]: G's images for z seeds seed0.. (const noise), row-major."""
    device = next(G.parameters()).device
    with torch.no_grad():
        z = z_from_seeds(range(seed0, seed0 + n), G.style_dim, device=device)
        img = torch.cat([G(z[i:i + 32], noise_mode="const").float() for i in range(0, n, 32)])
    return mosaic(to_uint8(img), columns, fill=255)


def grid_png(G: Generator) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(sample_grid(G)).save(buf, format="png")
    return buf.getvalue()


def model_card(state: dict, quality: dict[str, Any]) -> dict[str, Any]:
    """JSON-serialisable: how this generator was made and how good it is."""
    prog, gan = state["progress"], dict(state["gan"])
    data = state.get("data") or {}
    card = {
        "model": "handsoff_ray StyleGAN2 (handsoff train-gan)",
        "data": data,
        "config": gan,  # the recipe, gan.* (named `config` like the shipped toy generator's card)
        "r1_gamma_used": r1_gamma(_Recipe(gan)),
        "images_seen": prog["images_seen"],
        "epochs": round(prog["images_seen"] / data["images"], 2) if data.get("images") else None,
        "steps": prog["step"],
        "wall_time_s": round(prog["wall_s"], 1),
        "cpu_time_s": round(prog["cpu_s"], 1),
        "workers": state.get("workers", 1),
        "machine": state.get("machine", "unknown"),
        "precision": state.get("precision", "unknown"),
        "kid_curve": prog.get("kid_curve") or [],
        "quality": quality,
        "final_losses": prog["history"][-1] if prog["history"] else {},
    }
    parent = state.get("init_card") or {}
    if gan.get("init"):
        card["initialised_from"] = {"checkpoint": gan["init"], **{k: parent.get(k) for k in (
            "config", "images_seen", "wall_time_s", "cpu_time_s", "machine", "quality")}}
        card["images_seen_total"] = prog["images_seen"] + (parent.get("images_seen") or 0)
        card["cpu_time_s_total"] = round(prog["cpu_s"] + (parent.get("cpu_time_s") or 0), 1)
    return card


class _Recipe:
    def __init__(self, d: dict):
        self.__dict__.update(d)


def export_generator(spec: JobSpec, state: dict, *, log: Callable[[str], None] = print) -> tuple[str, dict]:
    """Write the state's EMA generator with its card to <run>/gan/generator.safetensors (+ card.json,
    samples.png); return (its URI, the card). Measures the final proxy KID, and on toy data the toy KID."""
    from handsoff_ray.core.checkpoint import save_generator

    G = Generator(generator_config(_Recipe(state["gan"])))
    G.load_state_dict(state["nets"]["G_ema"])
    G = G.eval().requires_grad_(False)
    data = TrainImages.open(spec.gan, storage=spec.storage)
    quality: dict[str, Any] = {}
    proxy = KidProxy(spec, data, torch.device("cpu"))
    point = proxy.measure(G)
    if point:
        quality.update(point, **proxy.floor())
    if spec.gan.data.format == "toy":
        from handsoff_ray.toy.quality import measure_kid

        toy = measure_kid(G, n=1000, subset_size=500, log=lambda s: None)
        quality.update({"kid": toy["kid"], "kid_std": toy["kid_std"], "kid_real_vs_real": toy["kid_real_vs_real"],
                        "kid_space": "toy feature net (toy/quality.py)"})
    card = model_card(state, quality)
    store = open_run(spec)
    with tempfile.TemporaryDirectory() as d:
        path = save_generator(G, os.path.join(d, "generator.safetensors"), metadata={"model_card": card})
        store.put_file(f"{GAN_DIR}/generator.safetensors", str(path))
    store.write_json(f"{GAN_DIR}/card.json", card)
    store.write_bytes(f"{GAN_DIR}/samples.png", grid_png(G))
    uri = store.uri(f"{GAN_DIR}/generator.safetensors")
    log(json.dumps({"exported": uri, "images_seen": card["images_seen"], "quality": quality}))
    return uri, card
