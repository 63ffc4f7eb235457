"""The manifest is the truth: damaged, missing, foreign and unrecorded shards, and lost manifests.

Each test damages a copy of the package's finished run (3 shards of 4, 4 and 2 pairs) the way a crash, a
full disk or a careless copy would, then checks that readers refuse it naming the file, that
`handsoff verify` reports it, and that rerunning synthesize repairs it to the undisturbed bytes.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
from click.testing import CliRunner

from handsoff_ray.cli import main
from handsoff_ray.pipeline.dataset.reader import SyntheticDataset
from handsoff_ray.pipeline.errors import UserError
from handsoff_ray.pipeline.dataset.manifest import DatasetError
from handsoff_ray.pipeline.context import open_run
from handsoff_ray.pipeline.run import run_stage
from tests.pipeline.runs import copy_run

SHARDS = [f"part-{k:06d}.parquet" for k in range(3)]


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def run(finished, tmp_path):
    """(spec, dataset folder, {shard name: bytes}, manifest) of a private copy of the finished run."""
    spec = copy_run(finished, tmp_path)
    root = open_run(spec).path("dataset")
    shards = {n: open(os.path.join(root, "data", n), "rb").read() for n in SHARDS}
    manifest = json.loads(open(os.path.join(root, "_manifest.json")).read())
    return spec, root, shards, manifest


def _shard(root, name):
    return os.path.join(root, "data", name)


def _edit_manifest(root, edit):
    path = os.path.join(root, "_manifest.json")
    manifest = json.loads(open(path).read())
    edit(manifest)
    open(path, "w").write(json.dumps(manifest))


def _assert_repaired(spec, root, shards, written_now: int):
    assert run_stage(spec, "synthesize", engine="local")["shards_written_now"] == written_now
    assert {n: open(_shard(root, n), "rb").read() for n in SHARDS} == shards
    assert cli("verify", root).exit_code == 0


class TestReadersRefuse:
    def test_truncated_shard_is_named_by_every_reader(self, run):
        spec, root, shards, _ = run
        with open(_shard(root, SHARDS[1]), "r+b") as f:
            f.truncate(100)
        with pytest.raises(DatasetError, match=r"data/part-000001.parquet: 100 bytes, the manifest records \d+"):
            SyntheticDataset(root)
        for args in (["inspect", root], ["export", root, "--format", "coco", "--out", f"{root}-x"],
                     ["filter", root, "--out", f"{root}-f", "--keep", "0.5"], ["verify", root]):
            res = cli(*args)
            assert res.exit_code == 2 and "part-000001.parquet: 100 bytes" in res.output, (args, res.output)
            assert "Traceback" not in res.output
        assert not os.path.exists(f"{root}-x") and not os.path.exists(f"{root}-f")

    def test_interrupted_run_is_refused_unless_allow_incomplete(self, run):
        _, root, _, _ = run
        os.remove(_shard(root, SHARDS[2]))
        os.remove(os.path.join(root, "_SUCCESS"))
        with pytest.raises(DatasetError, match="_SUCCESS: missing, so the dataset is incomplete"):
            SyntheticDataset(root)
        with pytest.warns(UserWarning, match="part-000002.parquet: missing"):
            ds = SyntheticDataset(root, uncertainty_filter=None, allow_incomplete=True)
        assert len(ds) == 8
        res = cli("inspect", root, "--allow-incomplete")
        assert res.exit_code == 0 and "rows: 8" in res.output and "Warning: reading an incomplete dataset" in res.output

    def test_tampered_row_count_is_caught_at_the_parquet_footer(self, run):
        _, root, _, _ = run
        _edit_manifest(root, lambda m: m["shards"]["0"].update(rows=5))
        with pytest.raises(DatasetError, match="part-000000.parquet: 4 rows, the manifest records 5"):
            SyntheticDataset(root)
        res = cli("verify", root)
        assert res.exit_code == 2 and "part-000000.parquet: 4 rows, the manifest records 5" in res.output

    def test_shard_missing_from_the_manifest_is_refused(self, run):
        _, root, _, _ = run
        _edit_manifest(root, lambda m: m["shards"].pop("1"))
        with pytest.raises(DatasetError, match="part-000001.parquet: not in the manifest"):
            SyntheticDataset(root)

    @pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe", b'{"shards": {"0": {"rows": 4}}}'])
    def test_unreadable_manifest_is_named(self, run, content):
        _, root, _, _ = run
        open(os.path.join(root, "_manifest.json"), "wb").write(content)
        res = cli("inspect", root)
        assert res.exit_code == 2 and "_manifest.json: not" in res.output and "Traceback" not in res.output


class TestVerify:
    def test_a_whole_dataset_verifies(self, run):
        _, root, _, _ = run
        res = cli("verify", root)
        assert res.exit_code == 0 and "ok: true" in res.output and "verified: 3" in res.output

    def test_tampered_sha256_fails_verify_and_is_rewritten(self, run):
        spec, root, shards, _ = run
        _edit_manifest(root, lambda m: m["shards"]["2"].update(sha256="0" * 64))
        res = cli("verify", root)
        assert res.exit_code == 2 and "part-000002.parquet: sha256" in res.output
        _assert_repaired(spec, root, shards, written_now=1)

    def test_a_valid_shard_of_another_dataset_is_caught_and_replaced(self, run):
        spec, root, shards, _ = run
        shutil.copyfile(_shard(root, SHARDS[0]), _shard(root, SHARDS[1]))  # a whole shard, but not shard 1
        assert cli("verify", root).exit_code == 2
        _assert_repaired(spec, root, shards, written_now=1)


class TestRerunRepairs:
    def test_truncated_shard_is_rewritten_and_success_stays_honest(self, run):
        spec, root, shards, _ = run
        with open(_shard(root, SHARDS[0]), "r+b") as f:
            f.truncate(10)
        _assert_repaired(spec, root, shards, written_now=1)

    @pytest.mark.parametrize("damage", ["delete", "garble"])
    def test_lost_manifest_is_rebuilt_from_the_verified_shards(self, run, damage):
        spec, root, shards, manifest = run
        path = os.path.join(root, "_manifest.json")
        os.remove(path) if damage == "delete" else open(path, "w").write("{garbage")
        _assert_repaired(spec, root, shards, written_now=0)
        rebuilt = json.loads(open(path).read())
        for k, entry in manifest["shards"].items():
            got = rebuilt["shards"][k]
            assert {f: got[f] for f in ("file", "rows", "bytes", "sha256", "start", "stop", "class_pixels")} == \
                {f: entry[f] for f in ("file", "rows", "bytes", "sha256", "start", "stop", "class_pixels")}
            assert {t: h["count"] for t, h in got["uncertainty"].items()} == \
                {t: h["count"] for t, h in entry["uncertainty"].items()}

    def test_shard_committed_but_unrecorded_is_taken_in_without_recompute(self, run):
        spec, root, shards, _ = run
        _edit_manifest(root, lambda m: m["shards"].pop("1"))  # the driver died between commit and manifest
        _assert_repaired(spec, root, shards, written_now=0)

    def test_a_stranger_file_in_data_stops_the_run_and_is_kept(self, run):
        spec, root, _, _ = run
        open(_shard(root, "mine.parquet"), "wb").write(b"my own file")
        with pytest.raises(UserError, match="data/mine.parquet: not a shard of this dataset"):
            run_stage(spec, "synthesize", engine="local")
        assert open(_shard(root, "mine.parquet"), "rb").read() == b"my own file"


class TestExportsAppearWhole:
    def test_failed_export_leaves_nothing_and_a_retry_succeeds(self, run, tmp_path, monkeypatch):
        import handsoff_ray.pipeline.dataset.export as export

        _, root, _, _ = run
        real = export._write_coco

        def fail_midway(out, rows, meta):
            real(out, (r for i, r in enumerate(rows) if i < 3 or 1 / 0), meta)

        monkeypatch.setattr(export, "_write_coco", fail_midway)
        with pytest.raises(ZeroDivisionError):
            export.export_dataset(root, str(tmp_path / "coco"), "coco", uncertainty_filter=None)
        assert sorted(os.listdir(tmp_path)) == ["runs"]  # neither the export nor its staging folder
        monkeypatch.setattr(export, "_write_coco", real)
        assert export.export_dataset(root, str(tmp_path / "coco"), "coco", uncertainty_filter=None)["rows"] == 10
        assert (tmp_path / "coco" / "annotations.json").exists()

    def test_filtered_dataset_carries_a_verifiable_manifest(self, run, tmp_path):
        _, root, _, _ = run
        assert cli("filter", root, "--out", tmp_path / "f", "--keep", 0.5).exit_code == 0
        res = cli("verify", tmp_path / "f")
        assert res.exit_code == 0 and "verified: 3" in res.output


class TestReaderPolicy:
    """reader.* is read-time policy: the manifest records it, no stage hash covers it (but evaluate's)."""

    def test_a_new_policy_needs_no_regeneration_and_readers_apply_it(self, finished, tmp_path):
        import torch

        from handsoff_ray.core.uncertainty import filter_indices
        from handsoff_ray.config import stage_hash

        spec = copy_run(finished, tmp_path, reader={"filter_portion": 0.5, "drop_most_certain": 1})
        old = finished[0]
        assert [stage_hash(spec, s) for s in ("invert", "fit", "synthesize")] == \
               [stage_hash(old, s) for s in ("invert", "fit", "synthesize")]
        assert stage_hash(spec, "evaluate") != stage_hash(old, "evaluate")  # evaluation reads with the policy
        before = {n: open(_shard(open_run(spec).path("dataset"), n), "rb").read() for n in SHARDS}
        result = run_stage(spec, "synthesize", engine="local")  # the same dataset: nothing is written again
        assert result["skipped"] is True and result["shards_written_now"] == 0
        root = open_run(spec).path("dataset")
        assert {n: open(_shard(root, n), "rb").read() for n in SHARDS} == before
        manifest = json.loads(open(os.path.join(root, "_manifest.json")).read())
        assert manifest["reader"] == {"filter_portion": 0.5, "drop_most_certain": 1}

        import pyarrow.parquet as pq

        table = pq.read_table(os.path.join(root, "data"), columns=["sample_id", "uncertainty_segmentation"])
        ids = table.column("sample_id").to_pylist()
        scores = torch.tensor(table.column("uncertainty_segmentation").to_pylist(), dtype=torch.float64)
        expected = {ids[i] for i in filter_indices(scores, portion=0.5, drop_most_certain=1).tolist()}
        assert SyntheticDataset(root, uncertainty_filter="reference").keep == expected
        assert len(expected) == 5  # 10 pairs, half dropped: the new policy, not the reference 0.1

    def test_old_key_says_where_it_moved(self):
        from handsoff_ray.config import SpecError, parse_spec

        with pytest.raises(SpecError, match=r"synthesis\.uncertainty\.filter_portion: unknown key; it moved to "
                                            r"`reader\.filter_portion`"):
            parse_spec({"synthesis": {"uncertainty": {"filter_portion": 0.2}}})
