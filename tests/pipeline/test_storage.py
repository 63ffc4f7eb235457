"""RunStore on local disk and on a real HTTP S3 API (moto's server on 127.0.0.1)."""

from __future__ import annotations

import boto3
import pytest

from handsoff_ray.pipeline.storage import RunStore, StorageError, resolve_filesystem


def _stores(tmp_path, s3_endpoint):
    return [RunStore.open(str(tmp_path / "out"), run_id="r1"),
            RunStore.open("s3://handsoff-test/out", run_id="r1", endpoint_url=s3_endpoint)]


class TestRunStore:
    def test_write_read_list_exists(self, tmp_path, s3_endpoint, aws_env):
        for store in _stores(tmp_path, s3_endpoint):
            assert not store.exists("latents/a.bin") and store.list("latents") == []
            store.write_bytes("latents/a.bin", b"alpha")
            store.write_bytes("latents/b.bin", b"beta" * 1000)
            store.write_json("latents/_index.json", {"n": 2})
            assert store.read_bytes("latents/a.bin") == b"alpha"
            assert store.list("latents") == ["_index.json", "a.bin", "b.bin"]
            assert store.read_json("latents/_index.json") == {"n": 2}
            assert store.read_json("latents/none.json") is None

    def test_local_writes_leave_no_temporary_files(self, tmp_path):
        store = RunStore.open(str(tmp_path / "out"), run_id="r1")
        store.write_bytes("x/y.bin", b"1")
        assert sorted(p.name for p in (tmp_path / "out" / "r1" / "x").iterdir()) == ["y.bin"]

    def test_large_object_multipart_round_trip(self, s3_endpoint, aws_env):
        store = RunStore.open("s3://handsoff-test/big", run_id="r1", endpoint_url=s3_endpoint)
        blob = bytes(range(256)) * (24 * 2**20 // 256)  # 24 MiB: a multipart upload
        store.write_bytes("dataset/data/part-000000.parquet", blob)
        assert store.read_bytes("dataset/data/part-000000.parquet") == blob
        assert store.uri("dataset") == "s3://handsoff-test/big/r1/dataset"

    def test_files_put_copied_and_hashed_across_chunks(self, tmp_path, s3_endpoint, aws_env):
        """put_file, local_copy and sha256 stream in 8 MiB chunks; a file of 2.5 chunks comes through whole."""
        import hashlib
        import os

        blob = os.urandom(20 * 2**20 + 123)
        src = tmp_path / "src.bin"
        src.write_bytes(blob)
        for store in _stores(tmp_path, s3_endpoint):
            store.put_file("label_generator/g.bin", str(src))
            assert store.sha256("label_generator/g.bin") == (hashlib.sha256(blob).hexdigest(), len(blob))
            copy = store.local_copy("label_generator/g.bin", str(tmp_path / "copies"))
            assert open(copy, "rb").read() == blob
            store.write_bytes("empty", b"")
            assert store.sha256("empty") == (hashlib.sha256(b"").hexdigest(), 0)

    def test_endpoint_from_environment(self, s3_endpoint, aws_env, monkeypatch):
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
        store = RunStore.open("s3://handsoff-test/env", run_id="r1")
        store.write_bytes("k", b"v")
        assert store.read_bytes("k") == b"v"

    def test_unsupported_scheme(self):
        with pytest.raises(StorageError, match="unsupported storage URI"):
            resolve_filesystem("gs://bucket/x")


def test_whole_pipeline_on_s3(s3_endpoint, aws_env, tiny_generator_path, toy_labeled_path):
    """invert -> fit -> synthesize with the run in S3, then read the dataset back from S3."""
    from handsoff_ray.config import parse_spec
    from handsoff_ray.pipeline.dataset.reader import SyntheticDataset
    from handsoff_ray.pipeline.run import run_stage
    from handsoff_ray.pipeline.run import run_stage

    # The generator checkpoint is read from S3 too (downloaded once to a local cache).
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").upload_file(
        tiny_generator_path, "handsoff-test", "checkpoints/tiny.safetensors")
    spec = parse_spec({
        "name": "s3run", "generator": {"checkpoint": "s3://handsoff-test/checkpoints/tiny.safetensors"},
        "data": {"path": toy_labeled_path, "limit": 2}, "inversion": {"steps": 2},
        "label_generator": {"ensemble_size": 2, "max_steps": 4, "batch_pixels": 32,
                            "tasks": {"segmentation": {"hidden": [8, 4], "min_pixels": 0},
                                      "keypoints": {"enabled": False}, "depth": {"enabled": False}}},
        "synthesis": {"num_samples": 5, "shard_size": 3, "batch_size": 2},
        "storage": {"output": "s3://handsoff-test/runs", "s3": {"endpoint_url": s3_endpoint}},
        "resources": {"engine": "local"},
    })
    assert run_stage(spec, "invert", engine="local")["images"] == 2
    assert run_stage(spec, "fit", engine="local")["ensemble_size"] == 2
    assert run_stage(spec, "synthesize", engine="local")["shards"] == 2
    ds = SyntheticDataset("s3://handsoff-test/runs/s3run/dataset", endpoint_url=s3_endpoint, uncertainty_filter=None)
    assert sorted(int(r["sample_id"]) for r in ds) == list(range(5))


class TestFailsFast:
    """Unreachable, unresolvable and refusing object stores; unwritable local paths."""

    @pytest.mark.parametrize("endpoint, cause", [
        ("http://127.0.0.1:{dead}", "Could not connect"),
        ("http://no-such-host.invalid:9000", "resolve"),
    ])
    def test_unreachable_endpoint_is_reported_at_the_first_failure_then_ends(self, endpoint, cause, capsys, aws_env):
        from tests.support import free_port

        store = RunStore.open("s3://b/out", run_id="r", endpoint_url=endpoint.format(dead=free_port()),
                              retry_seconds=2)
        with pytest.raises(StorageError, match=rf"stat s3://b/out/r/x failed for \d+ s .*{cause}.*rerun the same"):
            store.exists("x")
        err = capsys.readouterr().err
        # One line at the first failure says what is retried and for how long, before the run ends.
        assert err.count("retrying for up to 2 s (storage.s3.retry_seconds)") == 1 and cause in err

    def test_rejected_credentials_fail_at_once_without_retries(self, denying_endpoint, capsys, aws_env):
        store = RunStore.open("s3://b/out", run_id="r", endpoint_url=denying_endpoint, retry_seconds=600)
        with pytest.raises(StorageError, match="refused the credentials: set AWS_ACCESS_KEY_ID"):
            store.write_bytes("x", b"1")
        assert "retrying" not in capsys.readouterr().err

    def test_missing_bucket_fails_at_once(self, s3_endpoint, aws_env, capsys):
        store = RunStore.open("s3://no-such-bucket/out", run_id="r", endpoint_url=s3_endpoint, retry_seconds=600)
        with pytest.raises(StorageError, match="bucket does not exist: create it"):
            store.write_bytes("x", b"1")
        assert "retrying" not in capsys.readouterr().err

    def test_retry_budget_is_a_spec_field_of_about_a_minute(self, tmp_path):
        from handsoff_ray.config import parse_spec
        from handsoff_ray.pipeline.context import open_run

        assert parse_spec({}).storage.s3.retry_seconds == 60
        spec = parse_spec({"storage": {"output": str(tmp_path), "s3": {"retry_seconds": 5}}})
        assert open_run(spec).retry_seconds == 5

    @pytest.mark.parametrize("output, cause", [
        ("{file}/runs", "Not a directory"),                    # a file where a folder should be
        ("/proc/handsoff-runs", "a parent folder cannot be created"),  # a folder nobody can create
    ])
    def test_unwritable_local_output_is_one_line(self, tmp_path, output, cause):
        (tmp_path / "file").write_text("")
        store = RunStore.open(output.format(file=tmp_path / "file"), run_id="r")
        with pytest.raises(StorageError, match=f"cannot write .*{cause}.*storage.output"):
            store.write_json("_stage.json", {})
