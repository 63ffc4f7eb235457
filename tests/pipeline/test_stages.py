"""invert -> fit -> synthesize on one machine: outputs, resume, spec guards, bad input before compute.

One package-scoped run (conftest.py) does the expensive work once; tests that change outputs work on copies of it.
"""

from __future__ import annotations

import os
import shutil

import pyarrow.parquet as pq
import pytest

from handsoff_ray.core.label_generator import load_label_generator
from handsoff_ray.datasets.labeled_folder import LabeledSetError
from handsoff_ray.pipeline.errors import UserError
from handsoff_ray.pipeline.dataset.schema import decode_row, schema_meta
from handsoff_ray.pipeline.context import open_run
from handsoff_ray.pipeline.run import run_stage
from handsoff_ray.pipeline.outputs import read_latent
from tests.pipeline.runs import copy_run as _copy_of
from tests.pipeline.runs import label_generator_folder, latent_file
from tests.pipeline.runs import make_spec as _spec
from tests.support import private_ray_args


class TestInvert:
    def test_writes_one_latent_per_image_and_an_index(self, finished):
        spec, results = finished
        assert results["invert"]["images"] == 4 and results["invert"]["inverted_now"] == 4
        store = open_run(spec)
        assert sorted(store.read_json("latents/_refs.json")["latents"]) == [f"{i:06d}" for i in range(4)]
        assert all(os.path.isfile(latent_file(store, f"{i:06d}")) for i in range(4))  # in <output>/_artifacts
        ws, meta = read_latent(store, "000002")
        assert ws.shape == (6, 32)  # n_latent of a 16x16 generator, style_dim 32
        assert set(meta) >= {"psnr", "lpips", "final_loss", "stage_hash"}
        assert store.read_json("latents/_index.json")["images"] == 4

    def test_rerun_redoes_only_missing_images(self, finished, tmp_path):
        spec = _copy_of(finished, tmp_path)
        store = open_run(spec)
        os.remove(latent_file(store, "000001"))  # as if the run died before writing it
        with open(latent_file(store, "000000"), "rb") as f:
            before = f.read()
        assert run_stage(spec, "invert", engine="local")["inverted_now"] == 1
        with open(latent_file(store, "000000"), "rb") as f:
            assert f.read() == before

    def test_other_spec_under_same_run_id_is_refused(self, finished, tmp_path):
        spec = _copy_of(finished, tmp_path, inversion={"steps": 5})
        with pytest.raises(UserError, match="holds invert output of another spec"):
            run_stage(spec, "invert", engine="local")

    def test_bad_labeled_set_fails_before_anything_is_written(self, tmp_path, tiny_generator_path, toy_labeled_path):
        bad = tmp_path / "bad"
        shutil.copytree(toy_labeled_path, bad)
        os.remove(bad / "masks" / "000001.png")
        with pytest.raises(LabeledSetError, match="000001"):
            run_stage(_spec(tmp_path / "runs", tiny_generator_path, str(bad)), "invert", engine="local")
        assert not (tmp_path / "runs").exists()

    def test_unknown_image_id(self, tmp_path, tiny_generator_path, toy_labeled_path):
        spec = _spec(tmp_path / "runs", tiny_generator_path, toy_labeled_path, data={"ids": ["000000", "nope"]})
        with pytest.raises(UserError, match="not in"):
            run_stage(spec, "invert", engine="local")
        assert not (tmp_path / "runs").exists()


class TestFit:
    def test_fit_needs_inversion_first(self, tmp_path, tiny_generator_path, toy_labeled_path):
        with pytest.raises(UserError, match="run `handsoff invert SPEC` first"):
            run_stage(_spec(tmp_path / "runs", tiny_generator_path, toy_labeled_path), "fit", engine="local")

    def test_fit_writes_a_loadable_label_generator(self, finished):
        spec, results = finished
        assert results["fit"]["tasks"] == ["segmentation", "keypoints", "depth"]
        lg = load_label_generator(os.path.join(label_generator_folder(open_run(spec)), "label_generator.safetensors"))
        assert lg.out_size == (16, 16) and lg.ensemble_size == 2
        assert lg.tasks["segmentation"].num_outputs == 8

    def test_rerun_is_skipped(self, finished):
        assert run_stage(finished[0], "fit", engine="local")["skipped"] is True


class TestSynthesize:
    def test_a_run_fitted_before_fit_json_had_data_facts_gets_them_from_fit_not_from_synthesis(self, finished,
                                                                                              tmp_path):
        """Synthesis decodes no labeled image: on such a run it says to run fit, which records the facts
        without refitting; then synthesis goes on."""
        spec = _copy_of(finished, tmp_path)
        store = open_run(spec)
        from handsoff_ray.pipeline.layout import ARTIFACTS

        identity = store.read_json("label_generator/_ref.json")["identity"]
        for where, path in ((store, "label_generator/fit.json"),
                            (store.sibling(ARTIFACTS.root), ARTIFACTS.fit_summary(identity))):
            summary = where.read_json(path)
            facts = summary.pop("data")
            where.write_json(path, summary)
        with pytest.raises(UserError, match="run `handsoff fit SPEC` once"):
            run_stage(spec, "synthesize")
        fit = run_stage(spec, "fit")
        assert fit["skipped"] and store.read_json("label_generator/fit.json")["data"] == facts
        assert run_stage(spec, "synthesize")["stage"] == "synthesize"

    def test_shards_manifest_and_card(self, finished):
        spec, results = finished
        assert results["synthesize"]["shards"] == 3 and results["synthesize"]["shards_written_now"] == 3
        store = open_run(spec)
        assert store.list("dataset/data") == ["part-000000.parquet", "part-000001.parquet", "part-000002.parquet"]
        table = pq.read_table(store.path("dataset/data"))
        assert sorted(table.column("sample_id").to_pylist()) == list(range(10))
        row = decode_row(table.slice(0, 1).to_pylist()[0], schema_meta(table.schema))
        assert row["image"].shape == (16, 16, 3) and row["segmentation"].shape == (16, 16)
        assert row["keypoints"].shape == (5, 3) and row["depth"].dtype == "float32"
        assert store.exists("dataset/_SUCCESS")
        card = store.read_bytes("dataset/README.md").decode()
        assert "Uncertainty" in card and "Class frequencies" in card
        manifest = store.read_json("dataset/_manifest.json")
        assert sum(s["rows"] for s in manifest["shards"].values()) == 10

    def test_rerun_writes_only_missing_shards_with_identical_bytes(self, finished, tmp_path):
        spec = _copy_of(finished, tmp_path)
        store = open_run(spec)
        first = store.read_bytes("dataset/data/part-000001.parquet")
        os.remove(store.path("dataset/data/part-000001.parquet"))
        assert run_stage(spec, "synthesize", engine="local")["shards_written_now"] == 1
        assert store.read_bytes("dataset/data/part-000001.parquet") == first  # per-sample seeds

    def test_synthesize_command_runs_the_stage(self, finished, tmp_path):
        import json

        import yaml
        from click.testing import CliRunner

        from handsoff_ray.cli import main

        spec = _copy_of(finished, tmp_path)
        store = open_run(spec)
        first = store.read_bytes("dataset/data/part-000002.parquet")
        os.remove(store.path("dataset/data/part-000002.parquet"))
        (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json")))
        res = CliRunner().invoke(main, ["synthesize", str(tmp_path / "spec.yaml")])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["shards_written_now"] == 1  # stdout: one JSON line; progress is on stderr
        assert store.read_bytes("dataset/data/part-000002.parquet") == first


class TestLoadsOnce:
    """One run context loads what the stages share once: the generator, and the labeled set."""

    def test_a_run_loads_the_generator_and_opens_the_labeled_set_once(self, tmp_path, tiny_generator_path,
                                                                       toy_labeled_path, monkeypatch):
        import handsoff_ray.core.checkpoint as checkpoint
        import handsoff_ray.pipeline.labeled as labeled
        from handsoff_ray.pipeline.context import _load_generator
        from handsoff_ray.pipeline.run import run_stages

        loads, opens = [], []
        real_load, real_open = checkpoint.load_generator, labeled.open_spec_labeled_set
        monkeypatch.setattr(checkpoint, "load_generator", lambda *a, **k: loads.append(a) or real_load(*a, **k))
        monkeypatch.setattr(labeled, "open_spec_labeled_set", lambda *a, **k: opens.append(a) or real_open(*a, **k))
        _load_generator.cache_clear()  # this process may hold it from an earlier test
        spec = _spec(tmp_path / "runs", tiny_generator_path, toy_labeled_path)
        results = list(run_stages(spec, ["invert", "fit", "synthesize"], spec_hash="t"))
        assert [r["skipped"] for r in results] == [False, False, False]
        assert len(loads) == 1 and len(opens) == 1

    def test_prior_tau_moves_labels_towards_the_labeled_images_class_prior(self, finished, tmp_path):
        import numpy as np

        from handsoff_ray.config import stage_hash

        spec = _copy_of(finished, tmp_path, synthesis={"num_samples": 10, "shard_size": 4, "batch_size": 3,
                                                         "prior_tau": 2.0})
        assert stage_hash(spec, "synthesize") != stage_hash(finished[0], "synthesize")  # another dataset
        shutil.rmtree(open_run(spec).path("dataset"))
        run_stage(spec, "synthesize", engine="local")

        def shares(s):
            shards = open_run(s).read_json("dataset/_manifest.json")["shards"].values()
            total = np.sum([e["class_pixels"] for e in shards], axis=0)
            return total / total.sum()

        prior = np.asarray(open_run(spec).read_json("label_generator/fit.json")["data"]["class_pixels"])
        commonest = int(prior.argmax())
        before, after = shares(finished[0]), shares(spec)
        assert after[commonest] > before[commonest]  # the commonest class gains pixels from the rare ones

    def test_class_prior_shift_is_a_centred_scaled_log_prior(self):
        import numpy as np
        import torch

        from handsoff_ray.core.pairs import class_prior_shift

        shift = class_prior_shift([600, 300, 100, 0], 0.5)
        assert abs(float(shift.sum())) < 1e-5 and int(shift.argmax()) == 0 and int(shift.argmin()) == 3
        assert torch.allclose(shift[0] - shift[1], torch.tensor(0.5 * np.log(2.0)).float())
        assert torch.count_nonzero(class_prior_shift([600, 300, 100, 0], 0.0)) == 0

    def test_synthesis_decodes_no_labeled_image(self, finished, tmp_path, monkeypatch):
        import handsoff_ray.pipeline.labeled as labeled

        def refuse(*a, **k):
            raise AssertionError("synthesis opened the labeled set")

        spec = _copy_of(finished, tmp_path)
        shutil.rmtree(open_run(spec).path("dataset"))
        monkeypatch.setattr(labeled, "open_spec_labeled_set", refuse)
        assert run_stage(spec, "synthesize", engine="local")["shards_written_now"] == 3
        manifest = open_run(spec).read_json("dataset/_manifest.json")
        facts = open_run(spec).read_json("label_generator/fit.json")["data"]
        assert manifest["meta"] == {k: facts[k] for k in manifest["meta"]}
        assert manifest["meta"]["classes"] and manifest["meta"]["keypoint_names"]


def test_encoder_initialisation_is_trained_once_and_reused(tmp_path, tiny_generator_path, toy_labeled_path):
    spec = _spec(tmp_path / "runs", tiny_generator_path, toy_labeled_path, data={"limit": 2},
                 inversion={"steps": 2, "encoder": {"enabled": True, "steps": 3, "batch_size": 2, "n_iters": 1}})
    run_stage(spec, "invert", engine="local")
    store = open_run(spec)
    artifacts = store.sibling("_artifacts")
    [encoder] = artifacts.list("encoders")  # stored by the invert settings' and checkpoint's identity
    os.remove(latent_file(store, "000000"))
    encoder_bytes = artifacts.read_bytes(f"encoders/{encoder}")
    assert run_stage(spec, "invert", engine="local")["inverted_now"] == 1
    assert artifacts.list("encoders") == [encoder] and artifacts.read_bytes(f"encoders/{encoder}") == encoder_bytes


@pytest.mark.ray
def test_ray_data_actors_write_the_same_bytes(finished, tmp_path):
    """Two Ray Data actors rewrite deleted shards byte-identically to the in-process run."""
    import ray

    from handsoff_ray.pipeline.run import run_stage

    spec = _copy_of(finished, tmp_path, resources={"engine": "ray", "synthesis_actors": 2, "torch_threads": 1})
    store = open_run(spec)
    before = {n: store.read_bytes(f"dataset/data/{n}") for n in store.list("dataset/data")}
    for name in before:
        os.remove(store.path(f"dataset/data/{name}"))
    ray.init(**private_ray_args())
    try:
        out = run_stage(spec, "synthesize", engine="ray")
        # Ray Data reads the output directly.
        assert ray.data.read_parquet(store.path("dataset/data")).count() == 10
    finally:
        ray.shutdown()
    assert out["shards_written_now"] == 3
    assert {n: store.read_bytes(f"dataset/data/{n}") for n in store.list("dataset/data")} == before
    assert set(store.read_json("dataset/_manifest.json")["shards"]) == {"0", "1", "2"}


@pytest.mark.ray
def test_ray_train_workers_match_the_local_run(finished, tmp_path, monkeypatch):
    """Two Ray Train workers redo deleted latents and members; the merged label generator is bit-identical.

    The run folder is given relative to the driver's directory: workers must resolve it the same way.
    """
    import ray

    from handsoff_ray.pipeline.run import run_stage

    _copy_of(finished, tmp_path)
    monkeypatch.chdir(tmp_path)
    spec = _spec("runs", finished[0].generator.checkpoint, finished[0].data.path,
                 resources={"engine": "ray", "num_workers": 2, "torch_threads": 1})
    store = open_run(spec)
    lg_folder = label_generator_folder(store)

    def read(path):
        with open(path, "rb") as f:
            return f.read()

    latent = read(latent_file(store, "000003"))
    lg_before = read(f"{lg_folder}/label_generator.safetensors")
    os.remove(latent_file(store, "000003"))
    for name in ["label_generator.safetensors", "fit.json", "members/member-001.safetensors"]:
        os.remove(f"{lg_folder}/{name}")
    ray.init(**private_ray_args())
    try:
        assert run_stage(spec, "invert", engine="ray")["inverted_now"] == 1
        fit = run_stage(spec, "fit", engine="ray")
    finally:
        ray.shutdown()
    assert read(latent_file(store, "000003")) == latent
    assert fit["ensemble_size"] == 2
    assert read(f"{lg_folder}/label_generator.safetensors") == lg_before


class TestReaders:
    def test_synthetic_dataset_splits_workers_and_filters(self, finished):
        from torch.utils.data import DataLoader

        from handsoff_ray.pipeline.dataset.reader import SyntheticDataset

        spec, _ = finished
        root = open_run(spec).path("dataset")
        everything = SyntheticDataset(root, uncertainty_filter=None)
        assert len(everything) == 10
        seen = [int(b["sample_id"]) for b in DataLoader(everything, batch_size=None, num_workers=2)]
        assert sorted(seen) == list(range(10))  # each row once across workers
        first = next(iter(everything))
        assert first["image"].shape == (16, 16, 3) and first["keypoints"].shape == (5, 3)
        filtered = SyntheticDataset(root, uncertainty_filter="reference")
        assert len(filtered) == 9  # int(0.1 * 10) = 1 pair dropped
        assert len(list(filtered)) == 9

    def test_hugging_face_datasets_reads_the_shards(self, finished):
        import datasets
        spec, _ = finished
        data = open_run(spec).path("dataset/data")
        ds = datasets.load_dataset("parquet", data_files=f"{data}/*.parquet", split="train")
        assert sorted(ds["sample_id"]) == list(range(10))


def test_inspect_and_preview_commands(finished, tmp_path):
    import json

    import yaml
    from click.testing import CliRunner
    from PIL import Image

    from handsoff_ray.cli import main

    root = open_run(finished[0]).path("dataset")
    res = CliRunner().invoke(main, ["inspect", root])
    assert res.exit_code == 0, res.output
    info = yaml.safe_load(res.output)
    assert info["rows"] == 10 and info["shards"] == 3 and "uncertainty_segmentation" in info["uncertainty"]
    res = CliRunner().invoke(main, ["preview", root, "--out", str(tmp_path / "g.png"), "-n", "4"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["pairs"] == 4 and out["columns"] == 2 and out["uncertainty"] == "segmentation"
    assert Image.open(tmp_path / "g.png").size == tuple(out["size"])


def test_stages_record_their_metrics(monkeypatch, tmp_path, tiny_generator_path, toy_labeled_path):
    from prometheus_client import generate_latest

    from handsoff_ray.pipeline import telemetry

    # A registry of this test's own: the process-wide one also counts every other test's stage runs.
    monkeypatch.setattr(telemetry, "_BACKENDS", {})
    spec = _spec(tmp_path / "runs", tiny_generator_path, toy_labeled_path)
    for stage in ("invert", "fit", "synthesize"):
        run_stage(spec, stage, engine="local")
    m = telemetry.metrics()
    assert m.backend == "prometheus"  # no Ray worker here
    value = lambda name, **labels: m.registry.get_sample_value(name, {"run_id": "t", **labels})  # noqa: E731
    assert value("handsoff_samples_written_total") == 10
    assert value("handsoff_shards_committed_total") == 3
    assert value("handsoff_shards_planned") == 3
    assert value("handsoff_images_inverted_total") == 4
    assert value("handsoff_members_fitted_total") == 2
    assert value("handsoff_sample_uncertainty_count", task="segmentation") == 10
    text = generate_latest(m.registry).decode()
    assert "handsoff_shard_commit_seconds_bucket" in text and "handsoff_fit_loss" in text


def test_metric_labels_are_checked(monkeypatch):
    from handsoff_ray.pipeline.telemetry import metrics, push_to_gateway

    monkeypatch.delenv("HANDSOFF_PUSHGATEWAY", raising=False)
    with pytest.raises(ValueError, match="needs labels"):
        metrics().inc("samples_written", 1)
    assert push_to_gateway("job") is False  # no HANDSOFF_PUSHGATEWAY configured


class TestExport:
    """`handsoff export` / `handsoff filter` on the finished run's dataset."""

    @staticmethod
    def _source(finished):
        from handsoff_ray.pipeline.dataset.reader import SyntheticDataset

        root = open_run(finished[0]).path("dataset")
        rows = {int(r["sample_id"]): {k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in r.items()}
                for r in SyntheticDataset(root, uncertainty_filter=None)}
        return root, rows

    @staticmethod
    def _cli(*args):
        from click.testing import CliRunner

        from handsoff_ray.cli import main

        return CliRunner().invoke(main, [str(a) for a in args])

    def test_png_folder_is_a_labeled_set_the_pipeline_reads(self, finished, tmp_path):
        import numpy as np

        from handsoff_ray.datasets.labeled_folder import open_labeled_set

        root, rows = self._source(finished)
        res = self._cli("export", root, "--format", "png-folder", "--out", tmp_path / "x", "--policy", "none")
        assert res.exit_code == 0, res.output
        ls = open_labeled_set(tmp_path / "x", require=("segmentation", "keypoints", "depth"))
        meta = schema_meta(pq.read_schema(os.path.join(root, "data", "part-000000.parquet")))
        assert len(ls) == 10 and list(ls.classes) == meta["classes"]
        s = ls.load("00000007")
        np.testing.assert_array_equal(s.image, rows[7]["image"])
        np.testing.assert_array_equal(s.segmentation, rows[7]["segmentation"])
        np.testing.assert_allclose(s.keypoints[:, :2], rows[7]["keypoints"][:, :2])
        valid = rows[7]["depth"] > 0
        np.testing.assert_allclose(s.depth[valid], rows[7]["depth"][valid], atol=1e-3)
        assert (tmp_path / "x" / "uncertainty.csv").read_text().count("\n") == 11

    def test_coco_masks_and_keypoints_round_trip(self, finished, tmp_path):
        import numpy as np
        from pycocotools.coco import COCO

        root, rows = self._source(finished)
        res = self._cli("export", root, "--format", "coco", "--out", tmp_path / "c", "--policy", "none", "--limit", 4)
        assert res.exit_code == 0, res.output
        coco = COCO(str(tmp_path / "c" / "annotations.json"))
        assert sorted(coco.getImgIds()) == [0, 1, 2, 3]
        kp_cat = [c for c in coco.loadCats(coco.getCatIds()) if "keypoints" in c][0]
        assert len(kp_cat["keypoints"]) == 5
        for image_id in coco.getImgIds():
            seg = np.zeros_like(rows[image_id]["segmentation"])
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])):
                if "keypoints" in ann:
                    kp = np.asarray(ann["keypoints"]).reshape(-1, 3)
                    np.testing.assert_allclose(kp[:, :2], rows[image_id]["keypoints"][:, :2])
                else:
                    seg[coco.annToMask(ann) > 0] = ann["category_id"]
            np.testing.assert_array_equal(seg, rows[image_id]["segmentation"])

    def test_export_refuses_a_non_empty_folder_and_keeps_it(self, finished, tmp_path):
        root, _ = self._source(finished)
        (tmp_path / "x").mkdir()
        (tmp_path / "x" / "mine.txt").write_text("keep me")
        res = self._cli("export", root, "--format", "coco", "--out", tmp_path / "x")
        assert res.exit_code == 2 and "not empty" in res.output
        assert [p.name for p in (tmp_path / "x").iterdir()] == ["mine.txt"]

    def test_filter_writes_a_dataset_of_the_kept_rows(self, finished, tmp_path):
        from handsoff_ray.pipeline.dataset.reader import SyntheticDataset

        root, rows = self._source(finished)
        res = self._cli("filter", root, "--out", tmp_path / "f", "--keep", 0.5, "--task", "depth")
        assert res.exit_code == 0, res.output
        expected = SyntheticDataset(root, uncertainty_filter=0.5, filter_task="depth").keep
        got = sorted(int(r["sample_id"]) for r in SyntheticDataset(tmp_path / "f", uncertainty_filter=None))
        assert got == sorted(expected) and 0 < len(got) < 10
        scores = {i: rows[i]["uncertainty_depth"] for i in rows}
        assert max(scores[i] for i in got) <= min(scores[i] for i in rows if i not in got)
        again = self._cli("filter", root, "--out", tmp_path / "f", "--keep", 0.5)
        assert again.exit_code == 2 and "already holds" in again.output


class TestStageOutput:
    EVAL = {"enabled": True, "test_format": "toy", "test_seeds": "1000000-1000003", "unet_width": 4,
            "max_steps": 2, "batch_size": 2}

    def test_evaluate_skips_when_its_report_exists_for_the_same_spec(self, finished, tmp_path):
        from handsoff_ray.pipeline.run import run_stage

        spec = _copy_of(finished, tmp_path, evaluation=self.EVAL)
        first = run_stage(spec, "evaluate")
        store = open_run(spec)
        report = store.read_bytes("eval/report.json")
        assert first["skipped"] is False and first["test_images"] == 4
        again = run_stage(spec, "evaluate")
        assert again["skipped"] is True and again["synthetic"] == first["synthetic"]
        assert store.read_bytes("eval/report.json") == report  # not retrained, not rewritten
        other = _copy_of(finished, tmp_path / "other", evaluation={**self.EVAL, "max_steps": 3})
        shutil.copytree(store.path("eval"), open_run(other).path("eval"))
        assert run_stage(other, "evaluate")["skipped"] is False  # another evaluation spec: redone

    def test_every_stage_command_prints_one_shape(self, finished, tmp_path):
        import json

        import yaml
        from click.testing import CliRunner

        from handsoff_ray.cli import main

        # engine ray with everything done: the summaries come back without starting Ray
        spec = _copy_of(finished, tmp_path, evaluation=self.EVAL, resources={"engine": "ray"})
        (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json")))
        assert CliRunner().invoke(main, ["evaluate", str(tmp_path / "spec.yaml")]).exit_code == 0
        res = CliRunner().invoke(main, ["run", str(tmp_path / "spec.yaml")])
        assert res.exit_code == 0, res.output
        from_run = [json.loads(line) for line in res.stdout.splitlines()]
        assert [r["stage"] for r in from_run] == ["invert", "fit", "synthesize", "evaluate"]
        for r in from_run:
            keys = list(r)
            assert keys[:4] == ["stage", "run", "output", "skipped"] and keys[-1] == "seconds", keys
            assert r["skipped"] is True and r["run"] == open_run(spec).uri()
            single = CliRunner().invoke(main, [r["stage"], str(tmp_path / "spec.yaml")])
            assert single.exit_code == 0, single.output
            lines = single.stdout.splitlines()
            assert len(lines) == 1 and list(json.loads(lines[0])) == keys  # one line, the same keys as in `run`
        import ray

        assert not ray.is_initialized()
