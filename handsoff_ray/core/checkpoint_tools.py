"""What a user does with a generator checkpoint besides loading it: look inside, convert, sample.

    checkpoint_summary("stylegan2-ffhq-config-f.pt")            # handsoff checkpoint info
    convert_checkpoint("network-snapshot.pkl", "ffhq.safetensors")   # handsoff checkpoint convert
    sample_grid("ffhq.safetensors", [0, 1, 2, 3], "grid.png", 0.7, "const", "auto")   # handsoff checkpoint sample

Problems the user must fix (a destination that exists or cannot be written) are CheckpointErrors.
Tests: `python -m pytest -q tests/core/test_checkpoints.py tests/test_cli.py`.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import torch
from PIL import Image

from handsoff_ray.core.checkpoint import CheckpointError, load_generator, save_generator
from handsoff_ray.core.device import resolve_device
from handsoff_ray.core.images import mosaic, to_uint8
from handsoff_ray.core.stylegan2 import feature_spec, z_from_seeds

__all__ = ["checkpoint_summary", "convert_checkpoint", "sample_grid", "file_sha256"]


def file_sha256(path: str) -> str:
    """The hex sha256 of a local file, read in 8 MiB blocks (a checkpoint can be gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(8 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_summary(path: str) -> dict:
    """`handsoff checkpoint info`: what PATH holds (format, architecture, the hypercolumn it gives)."""
    G = load_generator(path)
    spec = feature_spec(G)
    return {
        "path": path,
        "format": G.metadata.get("source_format"),
        "sha256": file_sha256(path),
        "resolution": [G.cfg.resolution, G.cfg.width],
        "n_latent": G.n_latent,
        "architecture": G.cfg.to_dict(),
        "parameters": sum(p.numel() for p in G.parameters()),
        "latent_avg": G.metadata.get("latent_avg", "stored in the checkpoint"),
        "hypercolumn_channels": sum(f.channels for f in spec),
        "features": [f"{f.name}: {f.channels} x {f.height}x{f.width}" for f in spec],
        "metadata": {k: v for k, v in G.metadata.items() if k not in ("source_format", "source_path", "latent_avg")},
    }


def convert_checkpoint(src: str, dst: str, *, force: bool = False) -> dict:
    """Convert src to the project's .safetensors at dst; an existing dst is replaced only with `force`."""
    if os.path.exists(dst) and os.path.samefile(src, dst):
        raise CheckpointError(f"{dst} is the source checkpoint; choose another destination")
    if os.path.exists(dst) and not force:
        raise CheckpointError(f"{dst} exists; pass --force to overwrite it, or choose another destination")
    G = load_generator(src)
    try:
        save_generator(G, dst, metadata={"converted_from": os.path.basename(src),
                                         "converted_from_sha256": file_sha256(src)})
    except OSError as err:
        raise CheckpointError(f"cannot write {dst}: {err.strerror or err}; pick another destination") from None
    # Prove the conversion: the written file must reproduce the source's images.
    z = torch.randn(2, G.style_dim, generator=torch.Generator().manual_seed(0))
    G2 = load_generator(dst)
    with torch.no_grad():
        diff = float((G(z, noise_mode="const") - G2(z, noise_mode="const")).abs().max())
    return {"src": src, "dst": dst, "format": G.metadata.get("source_format"), "max_abs_diff": diff,
            "bytes": os.path.getsize(dst)}


@torch.no_grad()
def sample_grid(path: str, seeds: list[int], out: str, truncation_psi: float, noise_mode: str, device: str) -> dict:
    """`handsoff checkpoint sample`: one image per seed, tiled into a PNG at `out`."""
    dev = resolve_device(device)
    G = load_generator(path, device=dev)
    images = []
    for start in range(0, len(seeds), 16):  # bounded memory for long seed lists
        z = z_from_seeds(seeds[start : start + 16], G.style_dim).to(dev)
        images.append(to_uint8(G(z, truncation_psi=truncation_psi, noise_mode=noise_mode)))
    grid = mosaic(np.concatenate(images))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    Image.fromarray(grid).save(out)
    return {"out": out, "seeds": len(seeds), "resolution": [G.cfg.resolution, G.cfg.width]}
