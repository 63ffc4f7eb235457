"""invert and fit on one machine: outputs, idempotence, spec guards, bad input before compute."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from handsoff_ray.config import parse_spec
from handsoff_ray.core.label_generator import load_label_generator
from handsoff_ray.datasets.labeled_folder import LabeledSetError
from handsoff_ray.pipeline.errors import UserError
from handsoff_ray.pipeline.stages import read_latent, run_fit, run_invert, open_run


def _spec(tmp_path, generator, labeled, **sections):
    base = {
        "name": "t",
        "generator": {"checkpoint": generator},
        "data": {"path": labeled, "limit": 4},
        "inversion": {"steps": 4, "batch_size": 3},
        "label_generator": {
            "ensemble_size": 2, "max_steps": 12, "batch_pixels": 64, "patience": 2,
            "tasks": {"segmentation": {"hidden": [16, 8], "min_pixels": 0},
                      "keypoints": {"hidden": [16, 8]}, "depth": {"hidden": [16, 8]}},
        },
        "storage": {"output": str(tmp_path / "runs")},
    }
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v}
    return parse_spec(base)


@pytest.fixture
def spec(tmp_path, tiny_generator_path, toy_labeled_path):
    return _spec(tmp_path, tiny_generator_path, toy_labeled_path)


class TestInvert:
    def test_writes_one_latent_per_image_and_an_index(self, spec):
        out = run_invert(spec)
        assert out["images"] == 4 and out["inverted_now"] == 4
        store = open_run(spec)
        names = store.list("latents")
        assert sorted(n for n in names if not n.startswith("_")) == [f"{i:06d}.safetensors" for i in range(4)]
        ws, meta = read_latent(store, "000002")
        assert ws.shape == (6, 32)  # n_latent of a 16x16 generator, style_dim 32
        assert set(meta) >= {"psnr", "lpips", "final_loss", "stage_hash"}
        assert store.read_json("latents/_index.json")["images"] == 4

    def test_rerun_skips_finished_images(self, spec):
        run_invert(spec)
        store = open_run(spec)
        os.remove(store.path("latents/000001.safetensors"))  # as if the run died before it
        before = store.read_bytes("latents/000000.safetensors")
        out = run_invert(spec)
        assert out["inverted_now"] == 1
        assert store.read_bytes("latents/000000.safetensors") == before

    def test_other_spec_under_same_run_id_is_refused(self, spec, tmp_path, tiny_generator_path, toy_labeled_path):
        run_invert(spec)
        other = _spec(tmp_path, tiny_generator_path, toy_labeled_path, inversion={"steps": 5})
        with pytest.raises(UserError, match="holds invert output of another spec"):
            run_invert(other)

    def test_bad_labeled_set_fails_before_anything_is_written(self, tmp_path, tiny_generator_path, toy_labeled_path):
        bad = tmp_path / "bad"
        shutil.copytree(toy_labeled_path, bad)
        os.remove(bad / "masks" / "000001.png")
        spec = _spec(tmp_path, tiny_generator_path, str(bad))
        with pytest.raises(LabeledSetError, match="000001"):
            run_invert(spec)
        assert not (tmp_path / "runs").exists()

    def test_unknown_image_id(self, tmp_path, tiny_generator_path, toy_labeled_path):
        spec = _spec(tmp_path, tiny_generator_path, toy_labeled_path, data={"ids": ["000000", "nope"]})
        with pytest.raises(UserError, match="not in"):
            run_invert(spec)


class TestFit:
    def test_fit_needs_inversion_first(self, spec):
        with pytest.raises(UserError, match="run `handsoff invert SPEC` first"):
            run_fit(spec)

    def test_fit_writes_a_loadable_label_generator(self, spec):
        run_invert(spec)
        out = run_fit(spec)
        assert out["tasks"] == ["segmentation", "keypoints", "depth"]
        store = open_run(spec)
        lg = load_label_generator(store.path("label_generator/label_generator.safetensors"))
        assert lg.out_size == (16, 16) and lg.ensemble_size == 2
        assert lg.tasks["segmentation"].num_outputs == 8
        again = run_fit(spec)
        assert again["skipped"] is True
