"""The `handsoff` command: help everywhere, clean one-line errors, real work on tiny inputs."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from handsoff_ray.cli import main

COMMANDS = [
    [], ["validate"], ["run"], ["invert"], ["fit"], ["synthesize"], ["evaluate"], ["export"], ["filter"], ["demo"], ["train-gan"], ["inspect"], ["preview"],
    ["checkpoint"], ["checkpoint", "info"],
    ["checkpoint", "convert"], ["checkpoint", "sample"], ["data"], ["data", "check"],
]


@pytest.fixture
def runner():
    return CliRunner()


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "handsoff")
def test_every_command_has_help(runner, cmd):
    res = runner.invoke(main, [*cmd, "--help"])
    assert res.exit_code == 0, res.output
    assert "usage:" in res.output.lower()


class TestValidate:
    def test_prints_resolved_plan(self, runner, tmp_path, tiny_generator_path, toy_labeled_path):
        spec = tmp_path / "s.yaml"
        spec.write_text(f"name: demo\ngenerator: {{checkpoint: {tiny_generator_path}}}\n"
                        f"data: {{path: {toy_labeled_path}}}\nsynthesis: {{num_samples: 25000, shard_size: 10000}}\n")
        res = runner.invoke(main, ["validate", str(spec)])
        assert res.exit_code == 0, res.output
        plan = yaml.safe_load(res.output)
        assert plan["problems"] == []
        assert plan["run_id"] == "demo"
        assert plan["stages"]["synthesize"]["shards"] == 3

    def test_missing_inputs_are_reported(self, runner, tmp_path):
        spec = tmp_path / "s.yaml"
        spec.write_text(f"generator: {{checkpoint: {tmp_path}/none.pt}}\ndata: {{path: {tmp_path}/nodata}}\n")
        res = runner.invoke(main, ["validate", str(spec)])
        assert res.exit_code == 2  # bad input (module docstring of cli.py)
        assert "2 problem(s)" in res.output and "none.pt" in res.output and "nodata" in res.output

    def test_unknown_key_fails_with_dotted_path(self, runner, tmp_path):
        spec = tmp_path / "s.yaml"
        spec.write_text("inversion:\n  stepz: 3\n")
        res = runner.invoke(main, ["validate", str(spec)])
        assert res.exit_code == 2
        assert "inversion.stepz: unknown key" in res.output

    def test_set_overrides(self, runner, tmp_path):
        spec = tmp_path / "s.yaml"
        spec.write_text("{}\n")
        res = runner.invoke(main, ["run", str(spec), "--dry-run", "--set", "inversion.steps=7"])
        assert res.exit_code == 0, res.output
        assert yaml.safe_load(res.output)["stages"]["invert"]["steps"] == 7

    def test_bad_set_syntax(self, runner, tmp_path):
        spec = tmp_path / "s.yaml"
        spec.write_text("{}\n")
        res = runner.invoke(main, ["validate", str(spec), "--set", "nokey"])
        assert res.exit_code == 2 and "KEY=VALUE" in res.output


class TestCheckpointCommands:
    def test_info(self, runner, tiny_generator_path):
        res = runner.invoke(main, ["checkpoint", "info", tiny_generator_path])
        assert res.exit_code == 0, res.output
        info = yaml.safe_load(res.output)
        assert info["format"] == "safetensors" and info["resolution"] == [16, 16]
        assert info["hypercolumn_channels"] == sum(int(f.split(": ")[1].split(" x")[0]) for f in info["features"])

    def test_convert_round_trip_is_exact(self, runner, tiny_generator_path, tmp_path):
        out = tmp_path / "copy.safetensors"
        res = runner.invoke(main, ["checkpoint", "convert", tiny_generator_path, str(out)])
        assert res.exit_code == 0, res.output
        assert json.loads(res.output)["max_abs_diff"] == 0.0

    def test_convert_refuses_to_overwrite_without_force_and_writes_0644(self, runner, tiny_generator_path, tmp_path):
        import os
        import stat

        out = tmp_path / "copy.safetensors"
        old = os.umask(0o022)
        try:
            assert runner.invoke(main, ["checkpoint", "convert", tiny_generator_path, str(out)]).exit_code == 0
            assert stat.S_IMODE(out.stat().st_mode) == 0o644
            out.write_bytes(b"mine")
            res = runner.invoke(main, ["checkpoint", "convert", tiny_generator_path, str(out)])
            assert res.exit_code == 2 and "pass --force to overwrite it" in res.output
            assert out.read_bytes() == b"mine"
            res = runner.invoke(main, ["checkpoint", "convert", tiny_generator_path, str(out), "--force"])
            assert res.exit_code == 0, res.output
            assert json.loads(res.output)["max_abs_diff"] == 0.0
        finally:
            os.umask(old)

    def test_sample_writes_grid(self, runner, tiny_generator_path, tmp_path):
        from PIL import Image

        out = tmp_path / "grid.png"
        res = runner.invoke(main, ["checkpoint", "sample", tiny_generator_path, "--seeds", "0-3", "--out", str(out)])
        assert res.exit_code == 0, res.output
        assert Image.open(out).size == (32, 32)  # 2x2 tiles of 16x16

    def test_bad_seeds(self, runner, tiny_generator_path):
        res = runner.invoke(main, ["checkpoint", "sample", tiny_generator_path, "--seeds", "a-b"])
        assert res.exit_code == 2 and "--seeds" in res.output

    def test_corrupt_checkpoint_is_one_line(self, runner, tmp_path):
        bad = tmp_path / "bad.pt"
        bad.write_bytes(b"PK\x03\x04 not really a zip")
        res = runner.invoke(main, ["checkpoint", "info", str(bad)])
        assert res.exit_code == 2
        assert res.output.startswith("Error: ") and res.output.count("\n") == 1


class TestDataCheck:
    def test_summary_counts_what_the_renderer_drew(self, runner, toy_labeled_path):
        """The YAML summary of the six toy faces matches counts taken from the renderer itself."""
        import numpy as np

        from handsoff_ray.toy.world import CLASSES, KEYPOINT_NAMES, render_face

        res = runner.invoke(main, ["data", "check", toy_labeled_path])
        assert res.exit_code == 0, res.output
        summary = yaml.safe_load(res.output)
        assert {k: summary[k] for k in ("format", "root", "images", "image_size", "tasks")} == {
            "format": "folder", "root": toy_labeled_path, "images": 6, "image_size": [32, 32],
            "tasks": ["segmentation", "keypoints", "depth"]}
        faces = [render_face(seed, 32) for seed in range(6)]
        seg = summary["segmentation"]
        assert seg["classes"] == list(CLASSES)
        assert seg["images_with_class"] == {
            c: sum(bool((f.segmentation == k).any()) for f in faces) for k, c in enumerate(CLASSES)}
        assert sum(seg["pixel_fraction"].values()) == pytest.approx(1, abs=1e-5)
        visibility = summary["keypoints"]["visibility"]
        assert list(visibility) == list(KEYPOINT_NAMES)
        for j, name in enumerate(KEYPOINT_NAMES):
            flags = [int(f.keypoints[j, 2]) for f in faces]
            assert visibility[name] == {"unlabeled": flags.count(0), "occluded": flags.count(1),
                                        "visible": flags.count(2)}, name
        depth = np.concatenate([f.depth.ravel() for f in faces])
        assert summary["depth"]["min"] == pytest.approx(depth.min(), abs=1e-3)
        assert summary["depth"]["max"] == pytest.approx(depth.max(), abs=1e-3)

    def test_problems_listed(self, runner, toy_labeled_path, tmp_path):
        import shutil

        bad = tmp_path / "bad"
        shutil.copytree(toy_labeled_path, bad)
        (bad / "images" / "000003.png").write_bytes(b"not a png")
        res = runner.invoke(main, ["data", "check", str(bad)])
        assert res.exit_code == 2
        assert "000003.png" in res.output


def test_validate_makes_the_plan_once(monkeypatch):
    """The plan reads the labeled set's listing and the checkpoint: validate (and run) make it once and hand it
    to preflight instead of preflight making it again."""
    import handsoff_ray.pipeline.resolved as plan_module

    calls, real = [], plan_module.resolved_plan
    monkeypatch.setattr(plan_module, "resolved_plan", lambda spec: calls.append(1) or real(spec))
    from pathlib import Path

    res = CliRunner().invoke(main, ["validate", str(Path(__file__).parents[1] / "jobs" / "specs" / "toy.yaml")])
    assert res.exit_code == 0, res.output
    assert len(calls) == 1
