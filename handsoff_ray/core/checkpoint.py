"""Load and save StyleGAN2 generators: rosinality `.pt`, NVlabs `.pkl`, handsoff_ray `.safetensors`.

    from handsoff_ray.core.checkpoint import load_generator, save_generator
    G = load_generator("stylegan2-ffhq-config-f.pt", device="cuda")   # or an NVlabs .pkl
    img = G(z, truncation_psi=0.7, noise_mode="const")                # same image as the original
    save_generator(G, "ffhq.safetensors")                             # the project's own format

The format is chosen from the file's first bytes, never from its extension:
- zip or legacy torch.save -> rosinality `{"g_ema": state_dict, "latent_avg": [D]}`, read with
  `torch.load(weights_only=True)`; the architecture is inferred from key names and shapes.
- any other pickle -> NVlabs stylegan2-ada-pytorch network pickle (`G_ema`), read by the restricted
  unpickler in `_nvlabs_pickle.py`, which runs no code from the file; the architecture comes from
  the pickled `init_kwargs`, the mapping depth from the tensors.
- safetensors -> this project's format: the weights plus a JSON `GeneratorConfig` and provenance in
  the safetensors metadata.
Every tensor is checked against the inferred architecture; a missing, unexpected or misshapen key
fails with a one-line `CheckpointError` that names it. The loaded generator is in eval mode with
`requires_grad=False`; `G.metadata` records where it came from.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import struct
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from handsoff_ray.core._files import atomic_write
from handsoff_ray.core._nvlabs_pickle import (
    PersistentRecord,
    UnsafePickleError,
    flat_state,
    load_nvlabs_pickle,
)
from handsoff_ray.core._ops import setup_filter
from handsoff_ray.core.stylegan2 import Generator, GeneratorConfig, z_from_seeds

__all__ = ["CheckpointError", "load_generator", "save_generator", "detect_format", "FORMAT_VERSION"]

FORMAT_VERSION = "1"
META_CONFIG = "handsoff_ray.generator"
META_VERSION = "handsoff_ray.format_version"
META_PROVENANCE = "handsoff_ray.provenance"
# Samples for the truncation centre of rosinality files that carry no latent_avg.
LATENT_AVG_SAMPLES = 4096

_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first object of a pre-1.6 torch.save file


class CheckpointError(ValueError):
    """A checkpoint cannot be loaded; the message is one line that names the cause."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always one line


# ----------------------------------------------------------------------------------------------
# Public API


def detect_format(path: str | os.PathLike) -> str:
    """'rosinality', 'nvlabs' or 'safetensors', from the file's first bytes."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(32)
        size = os.fstat(f.fileno()).st_size
    if not head:
        raise CheckpointError(f"{path} is truncated or corrupt: the file is empty")
    if head.startswith(b"PK\x03\x04"):
        return "rosinality"
    # safetensors first: its first 8 bytes are the header length, whose low byte may well be 0x80 (the
    # pickle PROTO opcode), so "starts with 0x80" alone would call a safetensors file a pickle.
    if len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] <= size:
        return "safetensors"
    if head[:1] == b"\x80" and len(head) >= 14 and head[2] == 0x8A and head[3] == 10:
        if int.from_bytes(head[4:14], "little") == _TORCH_LEGACY_MAGIC:
            return "rosinality"
    if head[:1] == b"\x80":
        return "nvlabs"
    if len(head) >= 9 and head[8:9] == b"{":
        raise CheckpointError(f"{path} is truncated or corrupt: its safetensors header runs past the end of the file")
    raise CheckpointError(
        f"{path} is not a StyleGAN2 checkpoint: expected a rosinality .pt (torch.save), an NVlabs "
        f".pkl (pickle) or a handsoff_ray .safetensors file; first bytes are {head[:8]!r}"
    )


def load_generator(path: str | os.PathLike, device: str | torch.device = "cpu") -> Generator:
    """Load a generator from any supported checkpoint (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"generator checkpoint {path} does not exist (pass a .pt, .pkl or .safetensors file)")
    fmt = detect_format(path)
    loader = {"rosinality": _load_rosinality, "nvlabs": _load_nvlabs, "safetensors": _load_own}[fmt]
    cfg, state, metadata = loader(path)
    G = _build(cfg, state, device, source=str(path))
    G.metadata = {"source_format": fmt, "source_path": str(path), **metadata}
    if "mapping.latent_avg" not in state:
        G.latent_avg = _mean_latent(G)
        G.metadata["latent_avg"] = (
            f"computed: mean of mapping over {LATENT_AVG_SAMPLES} z from z_from_seeds(range"
            f"({LATENT_AVG_SAMPLES})); the checkpoint had no latent_avg"
        )
    return G


def save_generator(G: Generator, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> Path:
    """Write G as one .safetensors file: weights + JSON architecture header + provenance."""
    from safetensors.torch import save

    path = Path(path)
    provenance = {**G.metadata, **(metadata or {})}
    try:
        provenance_json = json.dumps(provenance, sort_keys=True, default=str)
    except (TypeError, ValueError) as e:
        raise ValueError(f"metadata must be JSON-serialisable: {e}") from e
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in G.state_dict().items()}
    header = {
        META_CONFIG: json.dumps(G.cfg.to_dict(), sort_keys=True),
        META_VERSION: FORMAT_VERSION,
        META_PROVENANCE: provenance_json,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as fh:  # a crash never leaves a truncated file under the final name
        fh.write(save(tensors, metadata=header))
    return path


# ----------------------------------------------------------------------------------------------
# Building and strict checking


def _build(cfg: GeneratorConfig, state: dict[str, torch.Tensor], device, *, source: str) -> Generator:
    """Check `state` (our key names) against `cfg` exactly, then build G on `device`."""
    with torch.device("meta"):
        expected = Generator(cfg).state_dict()
    optional = {"mapping.latent_avg"}
    for key in expected:
        if key not in state and key not in optional:
            raise CheckpointError(f"{source}: missing tensor '{key}' for {_describe(cfg)}")
    for key, value in state.items():
        if key not in expected:
            raise CheckpointError(f"{source}: unexpected tensor '{key}' for {_describe(cfg)}")
        if tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(
                f"{source}: tensor '{key}' has shape {list(value.shape)}, expected "
                f"{list(expected[key].shape)} for {_describe(cfg)}"
            )
        if not value.is_floating_point():
            raise CheckpointError(f"{source}: tensor '{key}' has dtype {value.dtype}, expected a float type")
    with torch.device(device):
        G = Generator(cfg)
    G.load_state_dict(state, strict=False)  # keys were checked above; latent_avg may be absent
    return G.eval().requires_grad_(False)


def _describe(cfg: GeneratorConfig) -> str:
    return (
        f"a {cfg.resolution}x{cfg.width} generator (style_dim={cfg.style_dim}, n_mlp={cfg.n_mlp}, "
        f"channel_base={cfg.channel_base}, channel_max={cfg.channel_max})"
    )


@torch.no_grad()
def _mean_latent(G: Generator) -> torch.Tensor:
    device = G.latent_avg.device
    total = torch.zeros(G.style_dim, dtype=torch.float64, device=device)
    seeds = list(range(LATENT_AVG_SAMPLES))
    for i in range(0, len(seeds), 1024):
        z = z_from_seeds(seeds[i : i + 1024], G.style_dim, device=device)
        total += G.mapping(z)[:, 0].double().sum(dim=0)
    return (total / len(seeds)).float()


def _check_filter(source: str, key: str, value: torch.Tensor, gain: float) -> None:
    """Resampling filters are fixed to [1,3,3,1]; refuse files that trained with another one."""
    want = setup_filter() * gain
    if tuple(value.shape) != tuple(want.shape) or not torch.allclose(value.float().cpu(), want, atol=1e-6):
        raise CheckpointError(
            f"{source}: '{key}' is not the [1,3,3,1] blur filter StyleGAN2 uses; custom resampling "
            "filters are not supported"
        )


def _solve_channels(source: str, channels: dict[int, int]) -> tuple[int, int]:
    """(channel_base, channel_max) with min(channel_max, channel_base // r) == channels[r]."""
    cmax = max(channels.values())
    below = [r for r in sorted(channels) if channels[r] < cmax]
    candidates = [32768, 16384, 65536] + ([channels[below[0]] * below[0]] if below else [])
    for base in candidates:
        if all(min(cmax, base // r) == c for r, c in channels.items()):
            return base, cmax
    if not below:
        return cmax * max(channels), cmax
    plan = ", ".join(f"{r}:{c}" for r, c in sorted(channels.items()))
    raise CheckpointError(
        f"{source}: channel plan {{{plan}}} is not min(channel_max, channel_base // r) for any "
        "channel_base/channel_max; this generator's architecture is not supported"
    )


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


# ----------------------------------------------------------------------------------------------
# rosinality/stylegan2-pytorch .pt


def _torch_load(path: Path) -> Any:
    try:
        # argparse.Namespace is the `args` entry of rosinality train.py checkpoints: plain data.
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types; we report one line
        text = str(e)
        m = re.search(r"GLOBAL ([\w.]+)|global '?([\w.]+)", text)
        if isinstance(e, pickle.UnpicklingError) and ("Weights only load failed" in text or m):
            name = (m.group(1) or m.group(2)) if m else "an unknown object"
            raise CheckpointError(
                f"refusing to load {path}: it references global '{name}', and a .pt generator "
                "checkpoint may only hold tensors and plain containers (torch.load weights_only)"
            ) from e
        raise CheckpointError(f"{path} is truncated or corrupt: {_first_line(e)}") from e


def _load_rosinality(path: Path) -> tuple[GeneratorConfig, dict[str, torch.Tensor], dict[str, Any]]:
    ckpt = _torch_load(path)
    src = str(path)
    if not isinstance(ckpt, dict) or "g_ema" not in ckpt:
        found = sorted(map(str, ckpt))[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{src} is not a rosinality StyleGAN2 checkpoint: no 'g_ema' entry (found {found})")
    sd = ckpt["g_ema"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{src}: 'g_ema' must be a state dict of tensors")
    cfg = _rosinality_config(src, sd)
    table = _rosinality_table(cfg)
    state = _apply_table(src, sd, table, what="key 'g_ema.{}'")
    latent_avg = ckpt.get("latent_avg")
    if latent_avg is not None:
        if not isinstance(latent_avg, torch.Tensor) or latent_avg.numel() != cfg.style_dim:
            raise CheckpointError(f"{src}: 'latent_avg' must hold {cfg.style_dim} values")
        state["mapping.latent_avg"] = latent_avg.reshape(cfg.style_dim).float()
    return cfg, state, {"latent_avg": "from checkpoint"} if latent_avg is not None else {}


def _count(sd: Mapping[str, Any], pattern: str, start: int) -> int:
    n = 0
    while pattern.format(start + n) in sd:
        n += 1
    return n


def _rosinality_config(src: str, sd: dict[str, torch.Tensor]) -> GeneratorConfig:
    for key in ("style.1.weight", "input.input", "conv1.conv.weight", "to_rgb1.conv.weight"):
        if key not in sd:
            raise CheckpointError(f"{src}: missing key 'g_ema.{key}'; not a rosinality StyleGAN2 generator")
    n_mlp = _count(sd, "style.{}.weight", 1)
    n_rgb = _count(sd, "to_rgbs.{}.conv.weight", 0)
    if n_rgb < 1:
        raise CheckpointError(f"{src}: missing key 'g_ema.to_rgbs.0.conv.weight'; resolutions below 8 are not supported")
    resolution = 2 ** (n_rgb + 2)
    style_dim = sd["style.1.weight"].shape[-1]
    const = sd["input.input"]
    if const.ndim != 4 or const.shape[2] != 4 or const.shape[3] not in (2, 4):
        raise CheckpointError(f"{src}: 'g_ema.input.input' has shape {list(const.shape)}, expected [1, C, 4, 4]")
    channels = {4: const.shape[1]}
    for i in range(n_rgb):
        key = f"convs.{2 * i}.conv.weight"
        if key not in sd or sd[key].ndim != 5:
            raise CheckpointError(f"{src}: missing or malformed key 'g_ema.{key}'")
        channels[2 ** (i + 3)] = sd[key].shape[1]
    base, cmax = _solve_channels(src, channels)
    return GeneratorConfig(
        resolution=resolution,
        style_dim=style_dim,
        n_mlp=n_mlp,
        channel_base=base,
        channel_max=cmax,
        init_aspect=4 // const.shape[3],
    )


# A table row: (source key, our key or None to only validate, transform).
_Row = tuple[str, "str | None", Callable[[torch.Tensor], torch.Tensor]]


def _keep(t: torch.Tensor) -> torch.Tensor:
    return t


def _squeeze0(t: torch.Tensor) -> torch.Tensor:
    return t.squeeze(0) if t.ndim > 0 and t.shape[0] == 1 else t


def _scalar(t: torch.Tensor) -> torch.Tensor:
    return t.reshape([]) if t.numel() == 1 else t


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1)


def _rosinality_table(cfg: GeneratorConfig) -> list[_Row]:
    rows: list[_Row] = []
    for i in range(cfg.n_mlp):
        rows += [(f"style.{i + 1}.{p}", f"mapping.fcs.{i}.{p}", _keep) for p in ("weight", "bias")]
    rows.append(("input.input", "synthesis.b4.const", _squeeze0))

    def styled(src: str, dst: str, noise_idx: int) -> list[_Row]:
        return [
            (f"{src}.conv.weight", f"{dst}.weight", _squeeze0),  # [1, O, I, 3, 3] -> [O, I, 3, 3]
            (f"{src}.conv.modulation.weight", f"{dst}.affine.weight", _keep),
            (f"{src}.conv.modulation.bias", f"{dst}.affine.bias", _keep),
            (f"{src}.noise.weight", f"{dst}.noise_strength", _scalar),  # [1] -> []
            (f"{src}.activate.bias", f"{dst}.bias", _keep),
            (f"noises.noise_{noise_idx}", f"{dst}.noise_const", _keep),
        ]

    def torgb(src: str, dst: str) -> list[_Row]:
        return [
            (f"{src}.conv.weight", f"{dst}.weight", _squeeze0),  # [1, 3, C, 1, 1] -> [3, C, 1, 1]
            (f"{src}.conv.modulation.weight", f"{dst}.affine.weight", _keep),
            (f"{src}.conv.modulation.bias", f"{dst}.affine.bias", _keep),
            (f"{src}.bias", f"{dst}.bias", _flat),  # [1, 3, 1, 1] -> [3]
        ]

    rows += styled("conv1", "synthesis.b4.conv1", 0) + torgb("to_rgb1", "synthesis.b4.torgb")
    for i, res in enumerate(cfg.block_resolutions[1:]):
        b = f"synthesis.b{res}"
        rows += styled(f"convs.{2 * i}", f"{b}.conv0", 2 * i + 1)
        rows += styled(f"convs.{2 * i + 1}", f"{b}.conv1", 2 * i + 2)
        rows += torgb(f"to_rgbs.{i}", f"{b}.torgb")
        # Blur kernels are buffers in rosinality files: validate (x4 = up-sampling gain), drop.
        rows += [(f"convs.{2 * i}.conv.blur.kernel", None, _keep), (f"to_rgbs.{i}.upsample.kernel", None, _keep)]
    return rows


def _apply_table(src: str, sd: Mapping[str, torch.Tensor], table: list[_Row], *, what: str) -> dict[str, torch.Tensor]:
    known = {row[0] for row in table}
    for key in sd:
        if key not in known:
            raise CheckpointError(f"{src}: unexpected {what.format(key)} for this architecture")
    out: dict[str, torch.Tensor] = {}
    for key, dst, fn in table:
        if key not in sd:
            raise CheckpointError(f"{src}: missing {what.format(key)}")
        if dst is None:
            gain = 4.0 if key.endswith("kernel") else 1.0
            _check_filter(src, key, sd[key], gain)
            continue
        out[dst] = fn(sd[key]).float()
    return out


# ----------------------------------------------------------------------------------------------
# NVlabs stylegan2-ada-pytorch .pkl


def _load_nvlabs(path: Path) -> tuple[GeneratorConfig, dict[str, torch.Tensor], dict[str, Any]]:
    src = str(path)
    try:
        with open(path, "rb") as f:
            top = load_nvlabs_pickle(f, source=src)
    except UnsafePickleError as e:
        raise CheckpointError(str(e)) from e
    except Exception as e:  # noqa: BLE001 - EOFError, UnpicklingError, RuntimeError from set_ ...
        raise CheckpointError(f"{src} is truncated or corrupt: {_first_line(e)}") from e
    if not isinstance(top, dict) or not isinstance(top.get("G_ema"), PersistentRecord):
        found = sorted(map(str, top))[:8] if isinstance(top, dict) else type(top).__name__
        raise CheckpointError(f"{src} is not an NVlabs network pickle: no 'G_ema' network (found {found})")
    g = top["G_ema"]
    sd = flat_state(g)
    cfg, notes = _nvlabs_config(src, g, sd)
    state = _apply_table(src, sd, _nvlabs_table(cfg), what="tensor 'G_ema.{}'")
    return cfg, state, {"latent_avg": "from checkpoint (mapping.w_avg)", **notes}


def _nvlabs_config(src: str, g: PersistentRecord, sd: dict[str, torch.Tensor]) -> tuple[GeneratorConfig, dict[str, Any]]:
    kw = g.init_kwargs
    mk = dict(kw.get("mapping_kwargs") or {})
    sk = dict(kw.get("synthesis_kwargs") or {})
    if "synthesis.b4.const" not in sd:
        if any(k.startswith("synthesis.L") or k.startswith("synthesis.input") for k in sd):
            raise CheckpointError(f"{src}: G_ema is a StyleGAN3 generator; only StyleGAN2 is supported")
        raise CheckpointError(f"{src}: missing tensor 'G_ema.synthesis.b4.const'; not a StyleGAN2 generator")

    def refuse(what: str) -> None:
        raise CheckpointError(f"{src}: G_ema has {what}; only the unconditional StyleGAN2 'skip' generator is supported")

    if kw.get("c_dim", 0):
        refuse(f"c_dim={kw['c_dim']} (a conditional generator)")
    if kw.get("img_channels", 3) != 3:
        refuse(f"img_channels={kw['img_channels']}")
    if sk.get("architecture", "skip") != "skip":
        refuse(f"architecture={sk['architecture']!r}")
    if list(sk.get("resample_filter", [1, 3, 3, 1])) != [1, 3, 3, 1]:
        refuse(f"resample_filter={sk['resample_filter']!r}")
    for key, default in (("use_noise", True), ("activation", "lrelu"), ("kernel_size", 3)):
        if sk.get(key, default) != default:
            refuse(f"{key}={sk[key]!r}")
    n_mlp = _count(sd, "mapping.fc{}.weight", 0)
    if n_mlp == 0:
        raise CheckpointError(f"{src}: missing tensor 'G_ema.mapping.fc0.weight'")
    if "num_layers" in mk and mk["num_layers"] != n_mlp:
        raise CheckpointError(f"{src}: mapping_kwargs.num_layers={mk['num_layers']} but the file holds {n_mlp} mapping layers")
    w_dim = kw.get("w_dim", sd["mapping.fc0.weight"].shape[0])
    if kw.get("z_dim", w_dim) != w_dim or mk.get("layer_features") not in (None, w_dim):
        refuse(f"z_dim={kw.get('z_dim')} / layer_features={mk.get('layer_features')} different from w_dim={w_dim}")

    mapping = g.child("mapping")
    fc0 = mapping.child("fc0") if mapping else None
    # The forward uses the gains stored on the layers; the init kwargs are the fallback.
    lr_mlp = fc0.state.get("bias_gain") if fc0 else None
    lr_mlp = float(lr_mlp if lr_mlp is not None else mk.get("lr_multiplier", 0.01))
    conv_clamp = sk.get("conv_clamp")
    b4 = g.child("synthesis").child("b4") if g.child("synthesis") else None
    layer = b4.child("conv1") if b4 else None
    if layer is not None and "conv_clamp" in layer.state:
        conv_clamp = layer.state["conv_clamp"]
    square = kw.get("square", sk.get("square", True))
    const = sd["synthesis.b4.const"]
    aspect = 1 if const.ndim == 3 and const.shape[1] == const.shape[2] else 2
    if not square and aspect != 2:
        refuse(f"square=False with a constant of shape {list(const.shape)}")
    resolution = kw.get("img_resolution")
    if not isinstance(resolution, int):
        raise CheckpointError(f"{src}: G_ema init_kwargs lack img_resolution; not a stylegan2-ada-pytorch pickle")
    try:
        cfg = GeneratorConfig(
            resolution=resolution,
            style_dim=int(w_dim),
            n_mlp=n_mlp,
            channel_base=int(sk.get("channel_base", 32768)),
            channel_max=int(sk.get("channel_max", 512)),
            lr_mlp=lr_mlp,
            conv_clamp=None if conv_clamp is None else float(conv_clamp),
            init_aspect=aspect,
        )
    except ValueError as e:
        raise CheckpointError(f"{src}: unsupported G_ema architecture: {e}") from e
    notes = {
        "nvlabs_num_fp16_res": int(sk.get("num_fp16_res", 0)),
        "precision": "fp32 (NVlabs runs num_fp16_res top resolutions in fp16 on CUDA; we match force_fp32=True)",
    }
    return cfg, notes


def _nvlabs_table(cfg: GeneratorConfig) -> list[_Row]:
    rows: list[_Row] = [("mapping.w_avg", "mapping.latent_avg", _keep)]
    for i in range(cfg.n_mlp):
        rows += [(f"mapping.fc{i}.{p}", f"mapping.fcs.{i}.{p}", _keep) for p in ("weight", "bias")]
    for res in cfg.block_resolutions:
        b = f"synthesis.b{res}"
        rows.append((f"{b}.resample_filter", None, _keep))
        layers = ["conv1"] if res == 4 else ["conv0", "conv1"]
        if res == 4:
            rows.append((f"{b}.const", f"{b}.const", _keep))
        for name in layers:
            p = f"{b}.{name}"
            rows += [(f"{p}.{k}", f"{p}.{k}", _keep) for k in ("weight", "bias", "noise_strength", "affine.weight", "affine.bias")]
            rows.append((f"{p}.noise_const", f"{p}.noise_const", lambda t: t[None, None]))  # [h, w] -> [1, 1, h, w]
            rows.append((f"{p}.resample_filter", None, _keep))
        rows += [(f"{b}.torgb.{k}", f"{b}.torgb.{k}", _keep) for k in ("weight", "bias", "affine.weight", "affine.bias")]
    return rows


# ----------------------------------------------------------------------------------------------
# handsoff_ray .safetensors


def _load_own(path: Path) -> tuple[GeneratorConfig, dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open

    src = str(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - SafetensorError and friends
        raise CheckpointError(f"{src} is truncated or corrupt: {_first_line(e)}") from e
    if META_CONFIG not in header:
        raise CheckpointError(f"{src} is a safetensors file without a '{META_CONFIG}' header; write it with save_generator")
    if header.get(META_VERSION) != FORMAT_VERSION:
        raise CheckpointError(f"{src}: format version {header.get(META_VERSION)!r} is not supported (expected {FORMAT_VERSION!r})")
    try:
        cfg = GeneratorConfig.from_dict(json.loads(header[META_CONFIG]))
        provenance = json.loads(header.get(META_PROVENANCE, "{}"))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{src}: invalid '{META_CONFIG}' header: {e}") from e
    state = {k: v.float() for k, v in state.items()}
    prior = {f"original_{k}": v for k, v in provenance.items() if k in ("source_format", "source_path")}
    rest = {k: v for k, v in provenance.items() if k not in ("source_format", "source_path")}
    return cfg, state, {**rest, **prior}

