"""`handsoff train-gan` (pipeline/gan): data, DDP equality on Ray Train, resume after a kill, export, bad input.

    python -m pytest -q tests/pipeline/test_train_gan.py

A tiny recipe (16 px, 32 channels, batch 8) trains in well under a second per step, so every test trains
for real: nothing here is mocked. The Ray tests start a private local Ray with 2 workers (gloo).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from handsoff_ray.cli import main
from handsoff_ray.config import parse_spec
from handsoff_ray.pipeline.context import open_run
from handsoff_ray.pipeline.gan import TrainImages, latest_state, train_gan

TINY = {"resolution": 16, "channel_base": 256, "channel_max": 32, "style_dim": 32, "n_mlp": 2, "batch_size": 8,
        "kimg": 0.048, "checkpoint_kimg": 0.016, "log_kimg": 0.016, "precision": "fp32", "kid": {"images": 16}}
TOY_DATA = {"format": "toy", "seeds": "10000000-10000039", "holdout": 8}
HANDSOFF = str(Path(sys.executable).parent / "handsoff")


def _spec_dict(out, *, data=None, workers: int = 1, **gan) -> dict:
    return {"name": "gan-test", "storage": {"output": str(out)},
            "resources": {"torch_threads": 1, "num_workers": workers},
            "gan": {**TINY, "data": data or TOY_DATA, **gan}}


def _spec(out, **kw):
    return parse_spec(_spec_dict(out, **kw), source="test")


def _g_ema(spec) -> dict[str, torch.Tensor]:
    return latest_state(open_run(spec))["nets"]["G_ema"]


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The tiny recipe trained through to 0.048 kimg in this process (local engine), and its spec."""
    spec = _spec(tmp_path_factory.mktemp("gan-ref"))
    result = train_gan(spec, engine="local", log=lambda s: None)
    return spec, result


class TestData:
    def test_each_epoch_shows_every_training_image_once_and_never_a_held_out_one(self, tmp_path):
        gan = _spec(tmp_path).gan
        data = TrainImages.open(gan)
        n = len(data.train)
        assert (n, len(data.holdout)) == (32, 8)
        assert not {it.id for it in data.train} & {it.id for it in data.holdout}
        stream = data.positions(0, 3 * n)
        for e in range(3):
            assert sorted(stream[e * n:(e + 1) * n]) == list(range(n))
        assert not np.array_equal(stream[:n], stream[n:2 * n])  # a new order each epoch
        # positions depend only on the images seen: any split into batches gives the same stream
        assert np.array_equal(np.concatenate([data.positions(s, 8) for s in range(0, 3 * n, 8)]), stream)

    def test_a_folder_of_odd_sized_images_is_centre_cropped_and_resized(self, tmp_path):
        rng = np.random.default_rng(0)
        for i, (h, w) in enumerate([(40, 60), (33, 20), (16, 16)] * 4):
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"im{i:02d}.png")
        gan = _spec(tmp_path / "out", data={"path": str(tmp_path), "holdout": 2}).gan
        data = TrainImages.open(gan)
        batch = data.load(data.positions(0, 8))
        assert batch.shape == (8, 3, 16, 16) and batch.min() >= -1 and batch.max() <= 1
        assert data.load_holdout().shape == (2, 3, 16, 16)

    def test_the_toy_stream_shows_fresh_faces(self, tmp_path):
        gan = _spec(tmp_path, data={"format": "toy", "seeds": "10000000-10000000", "stream": True, "holdout": 0}).gan
        data = TrainImages.open(gan)
        assert list(data.positions(5, 3)) == [10000005, 10000006, 10000007]
        assert data.load(data.positions(0, 2)).shape == (2, 3, 16, 16)


class TestTrainLocal:
    def test_finishes_exports_a_loadable_generator_with_its_card(self, reference):
        from handsoff_ray.core.checkpoint import load_generator

        spec, result = reference
        assert result["finished"] and result["images_seen"] == 48
        G = load_generator(result["generator"])
        card = G.metadata["model_card"]
        assert card["images_seen"] == 48 and card["steps"] == 6 and card["epochs"] == 1.5
        assert card["data"]["images"] == 32 and card["data"]["held_out"] == 8
        assert card["config"]["resolution"] == 16 and "torch threads" in card["machine"]
        assert {"kid_proxy", "kid_proxy_train_vs_holdout", "kid"} <= card["quality"].keys()
        assert _max_diff(G.state_dict(), {k: v for k, v in _g_ema(spec).items()}) == 0
        store = open_run(spec)
        assert store.exists("gan/card.json") and store.exists("gan/samples.png")
        assert len([n for n in os.listdir(store.path("gan")) if n.startswith("checkpoint_")]) == 2  # keep_checkpoints

    def test_the_same_spec_trains_the_same_weights(self, reference, tmp_path):
        spec, _ = reference
        again = parse_spec({**spec.model_dump(mode="json"), "storage": {"output": str(tmp_path)}})
        train_gan(again, engine="local", export=False, log=lambda s: None)
        assert _max_diff(_g_ema(again), _g_ema(spec)) == 0

    def test_diffaugment_changes_the_training_and_stays_finite(self, reference, tmp_path):
        spec, _ = reference
        aug = _spec(tmp_path, augment="diffaugment")
        train_gan(aug, engine="local", export=False, log=lambda s: None)
        diff = _max_diff(_g_ema(aug), _g_ema(spec))
        assert diff > 0 and all(torch.isfinite(v).all() for v in _g_ema(aug).values())

    def test_a_killed_run_resumes_and_ends_where_an_uninterrupted_one_does(self, reference, tmp_path):
        spec, _ = reference
        path = tmp_path / "spec.yaml"
        path.write_text(yaml.safe_dump(_spec_dict(tmp_path / "out")))
        env = {**os.environ, "HANDSOFF_TEST_GAN_KILL": str(tmp_path), "HANDSOFF_TEST_GAN_KILL_STEP": "3",
               "HANDSOFF_TEST_GAN_KILL_WHERE": "driver",
               "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent / "gan_fault"), os.environ.get("PYTHONPATH", "")])}
        first = subprocess.run([HANDSOFF, "train-gan", str(path), "--engine", "local"], env=env, capture_output=True,
                               text=True)
        assert first.returncode == 137, first.stderr[-2000:]
        killed = _spec(tmp_path / "out")
        assert latest_state(open_run(killed))["progress"]["images_seen"] == 16  # the checkpoint before step 3
        second = subprocess.run([HANDSOFF, "train-gan", str(path), "--engine", "local"], env=env, capture_output=True,
                                text=True)
        assert second.returncode == 0, second.stderr[-2000:]
        assert '"resumed_at_kimg": 0.016' in second.stderr
        assert json.loads(second.stdout.strip().splitlines()[-1])["finished"]
        assert _max_diff(_g_ema(killed), _g_ema(spec)) == 0  # bit for bit: draws are seeded by step, not state

    def test_a_longer_run_continues_from_the_finished_one(self, reference, tmp_path):
        spec, _ = reference
        short = _spec(tmp_path, kimg=0.024)
        train_gan(short, engine="local", export=False, log=lambda s: None)
        longer = _spec(tmp_path)  # gan.kimg may change between invocations; the recipe may not
        lines = []
        train_gan(longer, engine="local", export=False, log=lines.append)
        assert any('"resumed_at_kimg": 0.024' in ln for ln in lines)
        assert _max_diff(_g_ema(longer), _g_ema(spec)) == 0


class TestRecipes:
    def test_projected_discriminator_trains_with_finite_hinge_losses_and_a_small_state(self, tmp_path):
        spec = _spec(tmp_path, discriminator="projected", kimg=0.024)
        lines = []
        train_gan(spec, engine="local", export=False, log=lines.append)
        state = latest_state(open_run(spec))
        assert all(k.startswith("discs.") for k in state["nets"]["D"])  # no frozen trunk in the state
        recs = [json.loads(s) for s in lines if '"loss_G"' in s]
        assert recs and all(abs(r["loss_D"]) < 1e3 and abs(r["loss_G"]) < 1e3 for r in recs)

    def test_init_starts_from_a_checkpoint_and_the_card_counts_both_runs(self, reference, tmp_path):
        _, result = reference
        spec = _spec(tmp_path, init=result["generator"], kimg=0.016)
        from handsoff_ray.core.checkpoint import load_generator

        src = load_generator(result["generator"]).state_dict()
        start = _spec(tmp_path / "zero", init=result["generator"], kimg=0.008, lr=1e-12)  # one step, ~no change
        train_gan(start, engine="local", export=False, log=lambda s: None)
        weights = {k: v for k, v in _g_ema(start).items() if k != "mapping.latent_avg"}  # the W average moves anyway
        assert _max_diff(weights, {k: src[k] for k in weights}) < 1e-5
        card = train_gan(spec, engine="local", log=lambda s: None)["card"]
        assert card["initialised_from"]["images_seen"] == 48 and card["images_seen"] == 16
        assert card["images_seen_total"] == 64

    def test_init_refuses_another_architecture(self, reference, tmp_path):
        from handsoff_ray.pipeline.errors import UserError

        _, result = reference
        with pytest.raises(UserError, match="set gan.resolution / channel_base"):
            train_gan(_spec(tmp_path, init=result["generator"], style_dim=16), engine="local", log=lambda s: None)

    def test_max_minutes_checkpoints_and_stops(self, tmp_path):
        spec = _spec(tmp_path, kimg=100)
        out = train_gan(spec, engine="local", max_minutes=1e-9, log=lambda s: None)
        assert out == {"images_seen": 8, "finished": False, "generator": None, "card": None}

    def test_sample_grid_is_row_major_uint8(self):
        from handsoff_ray.core.stylegan2 import Generator, GeneratorConfig
        from handsoff_ray.pipeline.gan.card import sample_grid

        G = Generator(GeneratorConfig(resolution=16, style_dim=32, n_mlp=2, channel_base=256, channel_max=32)).eval()
        grid = sample_grid(G, n=6, columns=4)
        assert grid.shape == (32, 64, 3) and grid.dtype.name == "uint8"
        assert (grid[16:, 32:] == 255).all()  # the two empty cells stay white


class TestObjectStorage:
    def test_images_and_checkpoints_on_s3_resume_from_object_storage(self, reference, tmp_path, s3_endpoint, aws_env):
        """Training images read from s3:// (moto's real S3 API), checkpoints and the generator written there;
        a second invocation resumes from the checkpoint in the bucket and ends as the local run does."""
        import io

        import boto3

        s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
        from handsoff_ray.toy.world import render_face

        for seed in range(10000000, 10000040):  # the same faces the reference trains on, as PNG objects
            buf = io.BytesIO()
            Image.fromarray(render_face(seed, 16).image).save(buf, format="png")
            s3.put_object(Bucket="handsoff-test", Key=f"gan-images/{seed}.png", Body=buf.getvalue())
        raw = _spec_dict("s3://handsoff-test/runs", data={"path": "s3://handsoff-test/gan-images", "holdout": 8})
        raw["storage"]["s3"] = {"endpoint_url": s3_endpoint}
        first = train_gan(parse_spec({**raw, "gan": {**raw["gan"], "kimg": 0.024}}), engine="local",
                          export=False, log=lambda s: None)
        assert first["images_seen"] == 24
        lines = []
        spec = parse_spec(raw)
        result = train_gan(spec, engine="local", log=lines.append)
        assert any('"resumed_at_kimg": 0.024' in ln for ln in lines)
        assert result["generator"] == "s3://handsoff-test/runs/gan-test/gan/generator.safetensors"
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket="handsoff-test", Prefix="runs/")["Contents"]}
        assert "runs/gan-test/gan/card.json" in keys and any("/checkpoint_" in k for k in keys)
        assert _max_diff(_g_ema(spec), _g_ema(reference[0])) < 1e-5  # PNG round trip of the same faces


class TestTrainRay:
    def test_two_workers_equal_one_process_and_survive_a_killed_worker(self, reference, tmp_path):
        """2 Ray Train workers (DDP over gloo, global batch 8 split 4 + 4), one killed at step 3: Ray Train
        replaces the group, it resumes from the checkpoint in the run's storage, and the weights equal the
        one-process run's up to float summation order. The engine changes nothing else: same card fields."""
        spec, result = reference
        path = tmp_path / "spec.yaml"
        path.write_text(yaml.safe_dump(_spec_dict(tmp_path / "out", workers=2)))
        env = {**os.environ, "HANDSOFF_TEST_GAN_KILL": str(tmp_path), "HANDSOFF_TEST_GAN_KILL_STEP": "3",
               "HANDSOFF_TEST_GAN_KILL_WHERE": "worker", "RAY_ADDRESS": "",
               "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent / "gan_fault"), os.environ.get("PYTHONPATH", "")])}
        run = subprocess.run([HANDSOFF, "train-gan", str(path), "--engine", "ray"], env=env, capture_output=True,
                             text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        assert (tmp_path / "killed").exists()  # a worker did die mid-run
        ray_spec = _spec(tmp_path / "out", workers=2)
        assert _max_diff(_g_ema(ray_spec), _g_ema(spec)) < 1e-4
        store = open_run(ray_spec)
        assert store.exists("gan/checkpoint_manager_snapshot.json")  # written through Ray Train's checkpoint API
        card = json.loads(store.read_bytes("gan/card.json"))
        local_card = json.loads(open_run(spec).read_bytes("gan/card.json"))
        assert card["workers"] == 2 and card["images_seen"] == local_card["images_seen"]
        assert card.keys() == local_card.keys() and card["config"] == local_card["config"]


class TestBadInput:
    def _cli(self, tmp_path, spec: dict, *args, engine: str = "local"):
        path = tmp_path / "spec.yaml"
        path.write_text(yaml.safe_dump(spec))
        return CliRunner().invoke(main, ["train-gan", str(path), "--engine", engine, *args])

    @pytest.mark.parametrize("data, words", [
        ({"path": "/nonexistent/images"}, "no such file or folder"),
        ({"format": "folder"}, "gan.data: name the training images"),
        ({"format": "toy", "seeds": "10000000-10000009", "holdout": 5}, "fewer than one batch"),
    ])
    def test_a_bad_data_source_is_one_line_and_writes_nothing(self, tmp_path, data, words):
        res = self._cli(tmp_path, _spec_dict(tmp_path / "out", data=data))
        assert res.exit_code == 2 and words in res.output and len(res.output.strip().splitlines()) == 1, res.output
        assert not (tmp_path / "out").exists()

    def test_a_batch_that_does_not_split_over_the_workers_is_refused(self, tmp_path):
        res = self._cli(tmp_path, _spec_dict(tmp_path / "out", workers=3), engine="ray")
        assert res.exit_code == 2 and "does not split over 3 workers" in res.output, res.output
        assert not (tmp_path / "out").exists()  # refused before Ray starts or anything is written

    def test_a_changed_recipe_does_not_resume_a_checkpoint(self, reference, tmp_path):
        spec, _ = reference
        res = self._cli(tmp_path, {**_spec_dict(Path(spec.storage.output)), "gan": {**_spec_dict(".")["gan"], "lr": 0.01}})
        assert res.exit_code == 2 and "gan.lr=0.002 (now 0.01)" in res.output, res.output

    def test_bad_gan_fields_name_their_path(self, tmp_path):
        res = self._cli(tmp_path, _spec_dict(tmp_path / "out", resolution=48, augment_policy="color,zoom"))
        assert res.exit_code == 2 and "gan.resolution" in res.output and "gan.augment_policy" in res.output

    def test_dry_run_says_where_checkpoints_go_and_trains_nothing(self, tmp_path):
        res = self._cli(tmp_path, _spec_dict(tmp_path / "out"), "--dry-run")
        assert res.exit_code == 0, res.output
        plan = yaml.safe_load(res.output)
        assert plan["data"]["images"] == 32 and plan["checkpoints"].endswith("gan-test/gan")
        assert plan["resumes_at_kimg"] == 0 and not (tmp_path / "out").exists()
