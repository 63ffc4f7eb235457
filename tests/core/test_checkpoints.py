"""Tests for handsoff_ray.core.checkpoint: the three formats, safety, and one-line failures.

Run: .venv/bin/python -m pytest tests/core/test_checkpoints.py -x -q
Checkpoints are written by `tests/core/formats.py` from the published layouts (no NVlabs or
rosinality code), and every loaded generator is compared with `formats.reference_forward`.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys

import pytest
import torch
from safetensors import safe_open

from handsoff_ray.core.checkpoint import CheckpointError, detect_format, load_generator, save_generator
from handsoff_ray.core.stylegan2 import GeneratorConfig, z_from_seeds
from tests.core.formats import (
    Arch,
    random_rosinality_state,
    reference_forward,
    rosinality_to_nvlabs,
    write_nvlabs_pkl,
    write_rosinality_pt,
)

ARCH = Arch(resolution=16, style_dim=16, n_mlp=3, channel_base=128, channel_max=16)


@pytest.fixture(scope="module")
def weights():
    sd, latent_avg = random_rosinality_state(ARCH, seed=7)
    return sd, latent_avg, rosinality_to_nvlabs(sd, latent_avg, ARCH)


@pytest.fixture(scope="module")
def files(tmp_path_factory, weights):
    """One checkpoint of each format holding the same weights (read-only: tests copy to edit)."""
    sd, latent_avg, nv = weights
    tmp_path = tmp_path_factory.mktemp("formats")
    ros = write_rosinality_pt(tmp_path / "g.pt", sd, latent_avg)
    nvl = write_nvlabs_pkl(tmp_path / "g.pkl", nv, ARCH)
    own = save_generator(load_generator(ros), tmp_path / "g.safetensors", metadata={"note": "test"})
    return {"rosinality": ros, "nvlabs": nvl, "safetensors": own}


def _max_diff(G, sd, latent_avg, psi, **ref_kwargs) -> float:
    z = z_from_seeds([0, 1, 2], ARCH.style_dim)
    ref, _ = reference_forward(sd, latent_avg, z, psi=psi, **ref_kwargs)
    with torch.no_grad():
        img = G(z, truncation_psi=psi, noise_mode="const")
    assert img.shape == ref.shape
    return (img - ref).abs().max().item()


class TestFormatsAgree:
    @pytest.mark.parametrize("psi", [1.0, 0.7])
    def test_every_format_matches_the_reference(self, files, weights, psi):
        sd, latent_avg, _ = weights
        z = z_from_seeds([0, 1, 2], ARCH.style_dim)
        ref, _ = reference_forward(sd, latent_avg, z, psi=psi)
        for fmt, path in files.items():
            assert detect_format(path) == fmt
            G = load_generator(path)
            assert G.metadata["source_format"] == fmt
            with torch.no_grad():
                img = G(z, truncation_psi=psi, noise_mode="const")
            assert (img - ref).abs().max().item() < 1e-4, fmt

    def test_safetensors_whose_header_length_starts_with_the_pickle_opcode(self, tmp_path, files):
        """The header length's low byte may be 0x80 (pickle's PROTO opcode): still a safetensors file."""
        G = load_generator(files["safetensors"])
        for pad in range(256):  # provenance of growing length until the header length's low byte is 0x80
            path = save_generator(G, tmp_path / "g.safetensors", metadata={"pad": "x" * pad})
            if path.read_bytes()[0] == 0x80:
                break
        else:
            pytest.fail("no padding gave a header length with low byte 0x80")
        assert detect_format(path) == "safetensors"
        assert load_generator(path).metadata["pad"] == "x" * pad

    def test_nvlabs_conv_clamp_is_applied(self, tmp_path, weights):
        sd, latent_avg, nv = weights
        G = load_generator(write_nvlabs_pkl(tmp_path / "clamp.pkl", nv, ARCH, conv_clamp=0.5, num_fp16_res=2))
        assert G.cfg.conv_clamp == 0.5 and G.metadata["nvlabs_num_fp16_res"] == 2
        assert _max_diff(G, sd, latent_avg, 0.7, conv_clamp=0.5) < 1e-4
        assert _max_diff(G, sd, latent_avg, 0.7) > 1e-2  # the clamp really bites

    def test_nvlabs_rectangular_generator(self, tmp_path):
        arch = Arch(resolution=16, aspect=2)
        sd, latent_avg = random_rosinality_state(arch, seed=3)
        nv = rosinality_to_nvlabs(sd, latent_avg, arch)
        G = load_generator(write_nvlabs_pkl(tmp_path / "human.pkl", nv, arch, generator_extra={"square": False}))
        assert G.cfg.init_aspect == 2
        z = z_from_seeds([0, 1], arch.style_dim)
        ref, _ = reference_forward(sd, latent_avg, z)
        with torch.no_grad():
            assert (G(z) - ref).abs().max().item() < 1e-4

    def test_dispatch_reads_content_not_extension(self, files, tmp_path):
        for fmt, path in files.items():
            renamed = tmp_path / f"{fmt}.bin"
            renamed.write_bytes(path.read_bytes())
            assert load_generator(renamed).metadata["source_format"] == fmt

    def test_legacy_torch_save_and_training_checkpoint(self, tmp_path, weights):
        sd, latent_avg, _ = weights
        legacy = tmp_path / "legacy.pt"
        torch.save({"g_ema": sd, "latent_avg": latent_avg}, legacy, _use_new_zipfile_serialization=False)
        # rosinality train.py layout: g, d, g_ema, optimizers, argparse args, ada_aug_p
        train = write_rosinality_pt(
            tmp_path / "train.pt", sd, None, g=sd, d={"w": torch.ones(2)}, g_optim={"state": {}, "param_groups": []},
            args=argparse.Namespace(size=16, lr=0.002), ada_aug_p=0.1,
        )
        assert _max_diff(load_generator(legacy), sd, latent_avg, 0.7) < 1e-4
        assert load_generator(train).cfg.n_mlp == 3

    def test_missing_latent_avg_is_computed_deterministically(self, tmp_path, weights):
        sd, _, _ = weights
        G = load_generator(write_rosinality_pt(tmp_path / "noavg.pt", sd, None))
        assert "computed" in G.metadata["latent_avg"] and "4096" in G.metadata["latent_avg"]
        with torch.no_grad():
            expected = G.mapping(z_from_seeds(range(4096), ARCH.style_dim))[:, 0].mean(0)
        assert torch.allclose(G.latent_avg, expected, atol=1e-5)
        assert torch.equal(load_generator(tmp_path / "noavg.pt").latent_avg, G.latent_avg)


class TestOwnFormat:
    def test_header_holds_config_version_and_provenance(self, files):
        with safe_open(str(files["safetensors"]), framework="pt") as f:
            meta = f.metadata()
        cfg = GeneratorConfig.from_dict(json.loads(meta["handsoff_ray.generator"]))
        assert cfg == GeneratorConfig(resolution=16, style_dim=16, n_mlp=3, channel_base=128, channel_max=16)
        assert meta["handsoff_ray.format_version"] == "1"
        provenance = json.loads(meta["handsoff_ray.provenance"])
        assert provenance["note"] == "test" and provenance["source_format"] == "rosinality"
        G = load_generator(files["safetensors"])
        assert G.metadata["note"] == "test" and G.metadata["original_source_format"] == "rosinality"

    def test_loaded_generator_is_frozen_and_in_eval_mode(self, files):
        G = load_generator(files["safetensors"])
        assert not G.training and not any(p.requires_grad for p in G.parameters())


class TestNoCodeRuns:
    def test_nvlabs_module_source_is_never_executed(self, tmp_path, weights):
        sentinel = tmp_path / "module_src_ran"
        src = f"open({str(sentinel)!r}, 'w').write('ran')\n"
        path = write_nvlabs_pkl(tmp_path / "g.pkl", weights[2], ARCH, module_src=src)
        for name in ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util"):
            assert name not in sys.modules
        load_generator(path)
        assert not sentinel.exists()
        assert not any(m == "torch_utils" or m.startswith(("torch_utils.", "dnnlib", "_imported_module_")) for m in sys.modules)

    @pytest.mark.parametrize("name", ["evil.pkl", "evil.pt"])
    def test_pickle_with_shell_command_is_refused(self, tmp_path, name):
        sentinel = tmp_path / "pwned"

        class Payload:
            def __reduce__(self):
                return (os.system, (f"touch {sentinel}",))

        path = tmp_path / name
        path.write_bytes(pickle.dumps({"G_ema": Payload()}, protocol=4))
        with pytest.raises(CheckpointError, match=r"refusing to load global '(posix|os|nt)\.system' from .*may only reference tensors and module state"):
            load_generator(path)
        assert not sentinel.exists()

    def test_payload_inside_module_state_is_refused(self, tmp_path):
        sentinel = tmp_path / "pwned"

        class Payload:
            def __reduce__(self):
                return (eval, (f"open({str(sentinel)!r}, 'w')",))

        meta = {"type": "class", "version": 6, "module_src": "", "class_name": "Generator", "state": {"x": Payload()}}
        body = pickle.dumps({"G_ema": meta}, protocol=4)
        path = tmp_path / "nested.pkl"
        path.write_bytes(body)
        with pytest.raises(CheckpointError, match=r"refusing to load global 'builtins\.eval'"):
            load_generator(path)
        assert not sentinel.exists()

    def test_pt_with_code_payload_is_refused(self, tmp_path):
        sentinel = tmp_path / "pwned"

        class Payload:
            def __reduce__(self):
                return (os.system, (f"touch {sentinel}",))

        path = tmp_path / "evil.pt"
        torch.save({"g_ema": Payload(), "latent_avg": torch.zeros(4)}, path)
        with pytest.raises(CheckpointError, match=r"refusing to load .*evil\.pt: it references global '(posix|os|nt)\.system'"):
            load_generator(path)
        assert not sentinel.exists()

    def test_protocol0_pickle_is_not_even_parsed(self, tmp_path):
        path = tmp_path / "old.pkl"
        path.write_bytes(b"cos\nsystem\n(S'touch x'\ntR.")
        with pytest.raises(CheckpointError, match="is not a StyleGAN2 checkpoint"):
            load_generator(path)


class TestOneLineFailures:
    @pytest.mark.parametrize("fmt", ["rosinality", "nvlabs", "safetensors"])
    @pytest.mark.parametrize("keep", [0.5, 0.02])
    def test_truncated_file(self, files, tmp_path, fmt, keep):
        data = files[fmt].read_bytes()
        path = tmp_path / f"cut_{fmt}"
        path.write_bytes(data[: max(16, int(len(data) * keep))])
        with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
            load_generator(path)
        assert "\n" not in str(info.value)

    @pytest.mark.parametrize(
        ("edit", "match"),
        [
            (lambda sd: sd.pop("convs.1.conv.weight"), r"missing key 'g_ema\.convs\.1\.conv\.weight'"),
            (lambda sd: sd.update(extra=torch.zeros(1)), r"unexpected key 'g_ema\.extra'"),
            (lambda sd: sd.update({"conv1.conv.modulation.weight": torch.zeros(16, 8)}), r"tensor 'synthesis\.b4\.conv1\.affine\.weight' has shape \[16, 8\], expected \[16, 16\]"),
            (lambda sd: sd.update({"convs.0.conv.blur.kernel": torch.ones(4, 4)}), r"not the \[1,3,3,1\] blur filter"),
            (lambda sd: sd.pop("style.1.weight"), r"missing key 'g_ema\.style\.1\.weight'"),
        ],
        ids=["missing", "unexpected", "shape", "blur", "no-mapping"],
    )
    def test_rosinality_of_another_architecture(self, tmp_path, weights, edit, match):
        sd = dict(weights[0])
        edit(sd)
        path = write_rosinality_pt(tmp_path / "other.pt", sd, weights[1])
        with pytest.raises(CheckpointError, match=match) as info:
            load_generator(path)
        assert "\n" not in str(info.value)

    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({"synthesis_extra": {"architecture": "resnet"}}, r"architecture='resnet'; only the unconditional StyleGAN2 'skip'"),
            ({"generator_extra": {"c_dim": 10}}, r"c_dim=10 \(a conditional generator\)"),
            ({"generator_extra": {"mapping_kwargs": {"num_layers": 8}}}, r"num_layers=8 but the file holds 3 mapping layers"),
        ],
        ids=["resnet", "conditional", "mapping-depth"],
    )
    def test_nvlabs_of_another_architecture(self, tmp_path, weights, kwargs, match):
        path = write_nvlabs_pkl(tmp_path / "other.pkl", weights[2], ARCH, **kwargs)
        with pytest.raises(CheckpointError, match=match):
            load_generator(path)

    def test_own_format_with_a_lying_header(self, files, tmp_path):
        from safetensors.torch import load_file, save_file

        with safe_open(str(files["safetensors"]), framework="pt") as f:
            meta = dict(f.metadata())
        cfg = json.loads(meta["handsoff_ray.generator"])
        meta["handsoff_ray.generator"] = json.dumps({**cfg, "resolution": 32})
        path = tmp_path / "lying.safetensors"
        save_file(load_file(str(files["safetensors"])), str(path), metadata=meta)
        with pytest.raises(CheckpointError, match=r"missing tensor 'synthesis\.b32\.conv0\.weight' for a 32x32 generator"):
            load_generator(path)

    def test_not_a_generator(self, tmp_path):
        torch.save({"model": {"w": torch.zeros(2)}}, tmp_path / "resnet.pt")
        with pytest.raises(CheckpointError, match=r"not a rosinality StyleGAN2 checkpoint: no 'g_ema' entry \(found \['model'\]\)"):
            load_generator(tmp_path / "resnet.pt")
        (tmp_path / "empty.pt").write_bytes(b"")
        with pytest.raises(CheckpointError, match="truncated or corrupt: the file is empty"):
            load_generator(tmp_path / "empty.pt")
        (tmp_path / "x.txt").write_text("hello world, not a checkpoint")
        with pytest.raises(CheckpointError, match="is not a StyleGAN2 checkpoint"):
            load_generator(tmp_path / "x.txt")
        with pytest.raises(FileNotFoundError, match="does not exist"):
            load_generator(tmp_path / "nope.pt")
