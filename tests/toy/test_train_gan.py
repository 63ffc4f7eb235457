"""Tests for handsoff_ray.toy.train_gan and toy.discriminator: training, exact resume, export.

Run: .venv/bin/python -m pytest tests/toy/test_train_gan.py -x -q
Tiny 16x16 networks and a handful of steps; one torch thread so that runs are bit-reproducible.
"""

from __future__ import annotations

import json
import os
import re

import pytest
import torch

from handsoff_ray.core.checkpoint import load_generator
from handsoff_ray.core.discriminator import Discriminator
from handsoff_ray.toy.train_gan import (
    GanTrainConfig,
    export_generator,
    load_state_generator,
    main,
    sample_grid,
    train_gan,
)

TINY = dict(resolution=16, channel_base=256, channel_max=32, style_dim=32, n_mlp=2, batch_size=4,
            r1_interval=2, threads=1, log_every=0.0, grid_every=1e9)



def _cfg(out, steps: int, **kw) -> GanTrainConfig:
    return GanTrainConfig(out=str(out), kimg=steps * TINY["batch_size"] / 1000, **{**TINY, **kw})


def _state(out) -> dict:
    return torch.load(os.path.join(out, "state.pt"), map_location="cpu", weights_only=True)


class TestDiscriminator:
    @pytest.mark.parametrize("res", [8, 16, 32])
    def test_logits_per_image(self, res):
        D = Discriminator(res, channel_base=256, channel_max=32)
        assert D(torch.randn(4, 3, res, res)).shape == (4,)

    def test_bf16_autocast_matches_fp32(self):
        # the bf16 path filters every pixel and drops the odd ones instead of a strided blur
        torch.manual_seed(0)
        D = Discriminator(16, channel_base=256, channel_max=32)
        x = torch.randn(4, 3, 16, 16)
        with torch.autocast("cpu", torch.bfloat16):
            low = D(x).float()
        assert torch.allclose(low, D(x), atol=0.05 * D(x).abs().max().item() + 0.05)

    @pytest.mark.parametrize(("res", "match"), [(12, "power of two"), (4, "power of two")])
    def test_rejects_bad_resolution(self, res, match):
        with pytest.raises(ValueError, match=match):
            Discriminator(res)

    def test_rejects_wrong_image_size(self):
        with pytest.raises(ValueError, match=r"expected images \[N, 3, 16, 16\]"):
            Discriminator(16, channel_base=256)(torch.randn(2, 3, 32, 32))


class TestTraining:
    def test_runs_with_finite_losses_and_writes_state_and_grid(self, tmp_path):
        lines = []
        G = train_gan(_cfg(tmp_path, 3), log=lines.append)
        st = _state(tmp_path)
        assert st["progress"]["step"] == 3 and st["progress"]["images_seen"] == 12
        recs = [json.loads(s) for s in lines if '"loss_G"' in s]
        assert recs and all(torch.isfinite(torch.tensor([r["loss_G"], r["loss_D"]])).all() for r in recs)
        assert any(f.startswith("samples_") and f.endswith(".png") for f in os.listdir(tmp_path))
        # the W average moved away from its zero init, so truncation has a centre
        assert G.latent_avg.abs().sum() > 0

    @pytest.mark.parametrize("precision", ["fp32", "bf16"])
    def test_resume_in_the_middle_equals_one_run(self, tmp_path, precision):
        train_gan(_cfg(tmp_path / "once", 4, precision=precision), log=lambda s: None)
        train_gan(_cfg(tmp_path / "twice", 2, precision=precision), log=lambda s: None)
        lines = []
        train_gan(_cfg(tmp_path / "twice", 4, precision=precision), log=lines.append)
        assert any('"resumed"' in s for s in lines)
        a, b = _state(tmp_path / "once"), _state(tmp_path / "twice")
        for net in ("G", "D", "G_ema"):
            for k in a[net]:
                assert torch.equal(a[net][k], b[net][k]), f"{net}.{k} differs after resume"
        assert a["progress"]["images_seen"] == b["progress"]["images_seen"] == 16

    def test_refuses_to_resume_another_config(self, tmp_path):
        train_gan(_cfg(tmp_path, 1), log=lambda s: None)
        with pytest.raises(ValueError, match=r"another configuration: lr=0\.002 \(now 0\.001\)"):
            train_gan(_cfg(tmp_path, 2, lr=0.001), log=lambda s: None)

    def test_max_minutes_checkpoints_and_stops(self, tmp_path):
        train_gan(_cfg(tmp_path, 1000, max_minutes=0.0), log=lambda s: None)
        assert _state(tmp_path)["progress"]["step"] == 0

    @pytest.mark.parametrize(("kw", "match"), [
        ({"precision": "fp16"}, "precision must be auto, bf16 or fp32"),
        ({"batch_size": 1}, "batch_size must be >= 2"),
        ({"resolution": 48}, "power of two"),
    ])
    def test_rejects_invalid_config(self, tmp_path, kw, match):
        with pytest.raises(ValueError, match=match):
            _cfg(tmp_path, 1, **kw)


class TestExport:
    def test_export_writes_loadable_generator_with_model_card(self, tmp_path):
        run = tmp_path / "run"
        train_gan(_cfg(run, 2), log=lambda s: None)
        path = tmp_path / "toy.safetensors"
        card = export_generator(str(run), path, kid=False, grid=str(tmp_path / "grid.png"), log=lambda s: None)
        G = load_generator(path)
        G_state, _ = load_state_generator(str(run))
        z = torch.randn(2, G.style_dim)
        assert torch.equal(G(z), G_state(z))
        meta = G.metadata["model_card"]
        assert meta == json.loads(json.dumps(card))
        assert meta["images_seen"] == 8 and meta["config"]["resolution"] == 16 and meta["config"]["out"] is None
        assert {"wall_time_s", "machine", "quality", "precision"} <= set(meta)
        assert os.path.getsize(path) < 25e6 and (tmp_path / "grid.png").exists()

    def test_export_without_state_says_train_first(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="train first"):
            export_generator(str(tmp_path), tmp_path / "g.safetensors", kid=False)

    def test_handsoff_command_says_expected_time_and_how_to_resume(self, tmp_path):
        from click.testing import CliRunner

        from handsoff_ray.cli import main as handsoff

        res = CliRunner().invoke(handsoff, ["train-gan", "--help"])
        assert res.exit_code == 0 and res.output.startswith("usage: handsoff train-gan")
        # the shipped generator's network on the CPU: its measured rate gives the time; stopped at once
        res = CliRunner().invoke(handsoff, ["train-gan", "--out", str(tmp_path / "r"), "--kimg", "300",
                                            "--device", "cpu", "--threads", "1", "--max-minutes", "0"])
        assert res.exit_code == 0, res.output
        assert re.search(r"expected time: 300 kimg at [\d.]+ images/s, .* about [\d.]+ h in all", res.stderr)
        assert "stopped at 0 of 300 kimg; rerun the same command to resume" in res.stderr

    def test_cli_trains_then_exports(self, tmp_path, capsys):
        args = ["--out", str(tmp_path / "r"), "--resolution", "16", "--channel-base", "256", "--channel-max", "32",
                "--style-dim", "32", "--n-mlp", "2", "--batch-size", "2", "--kimg", "0.004", "--threads", "1"]
        main(args)
        main(["--out", str(tmp_path / "r"), "--export", str(tmp_path / "g.safetensors"), "--no-kid"])
        assert load_generator(tmp_path / "g.safetensors").metadata["model_card"]["images_seen"] == 4
        assert '"exported"' in capsys.readouterr().out


def test_sample_grid_is_row_major_uint8():
    from handsoff_ray.core.stylegan2 import Generator, GeneratorConfig

    G = Generator(GeneratorConfig(resolution=16, style_dim=32, n_mlp=2, channel_base=256, channel_max=32)).eval()
    grid = sample_grid(G, n=6, columns=4, batch=4)
    assert grid.shape == (32, 64, 3) and grid.dtype.name == "uint8"
    assert (grid[16:, 32:] == 255).all()  # the two empty cells stay white
