"""Faults with real components: a synthesis actor killed with SIGKILL, an interrupted driver, an S3 outage.

Each test synthesises a larger dataset (hundreds of 16x16 pairs in 20 shards) from a copy of the
package's finished run and compares the result with an undisturbed in-process run of the same spec: every
sample id exactly once, byte-identical shards. The faults land at known points, not after a sleep: the Ray
tests hold the actors' commits after the first few shards (commit_gate/sitecustomize.py) and fault the run
while every actor waits mid-commit; the outage tests cut the store before the run or after its third shard.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from handsoff_ray.pipeline.context import open_run
from handsoff_ray.pipeline.storage import StorageError
from handsoff_ray.pipeline.run import run_stage
from tests.pipeline.runs import copy_run, make_spec
from tests.support import private_ray_args, wait_for

BIG = {"num_samples": 600, "shard_size": 30, "batch_size": 2}  # 20 shards, ~0.3 s each on one thread
FREE_COMMITS = 3  # shards the gated Ray actors commit before each stops mid-commit


def _fresh_dataset(spec):
    shutil.rmtree(open_run(spec).path("dataset"), ignore_errors=True)
    return spec


@pytest.fixture(scope="module")
def reference(finished, tmp_path_factory):
    """Shard name -> bytes of an undisturbed in-process run of the BIG spec."""
    spec = _fresh_dataset(copy_run(finished, tmp_path_factory.mktemp("ref"), synthesis=BIG))
    run_stage(spec, "synthesize", engine="local")
    store = open_run(spec)
    assert sorted(pq.read_table(store.path("dataset/data")).column("sample_id").to_pylist()) == list(range(600))
    return _shards(store)


def _shards(store) -> dict[str, bytes]:
    """Committed shards only: a writer killed mid-write may leave its hidden `.part-*.tmp` behind,
    which no reader sees and the next run deletes (`_assert_complete` checks that it did)."""
    return {n: store.read_bytes(f"dataset/data/{n}") for n in store.list("dataset/data") if not n.startswith(".")}


def _assert_complete(store, reference):
    """Byte-identical to the undisturbed run (which holds every id once), nothing else left, _SUCCESS last."""
    assert store.exists("dataset/_SUCCESS")
    assert _shards(store) == reference
    if not store.uri().startswith("s3://"):
        assert sorted(os.listdir(store.path("dataset/data"))) == sorted(reference)  # no hidden leftovers either


@pytest.fixture
def commit_gate(tmp_path):
    """(gate folder, environment): Ray workers started with this environment commit FREE_COMMITS shards between
    them, then each holds its next shard, written to a hidden temporary file, until gate/hold is deleted."""
    gate = tmp_path / "gate"
    gate.mkdir()
    (gate / "hold").touch()
    env = {"HANDSOFF_TEST_COMMIT_GATE": str(gate), "HANDSOFF_TEST_FREE_COMMITS": str(FREE_COMMITS),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent / "commit_gate"), os.environ.get("PYTHONPATH", "")])}
    yield gate, env
    (gate / "hold").unlink(missing_ok=True)  # no worker is left waiting, whatever the test did


def _held(gate: Path) -> list[int]:
    """Pids of the actors waiting mid-commit."""
    return sorted(int(p.name.removeprefix("held-")) for p in gate.glob("held-*"))


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _files(folder: str) -> tuple[list[str], list[str]]:
    """(committed shard names, hidden temporaries) in a local dataset folder."""
    names = sorted(os.listdir(folder))
    return [n for n in names if n.endswith(".parquet")], [n for n in names if n.startswith(".part-")]


class _VisibleShardWatcher(threading.Thread):
    """Reads every visible part-*.parquet while a run goes on; records any that is not a whole shard."""

    def __init__(self, folder: str):
        super().__init__(daemon=True)
        self.folder, self.stop, self.bad, self.seen = folder, threading.Event(), [], set()

    def run(self):
        while not self.stop.is_set():
            for name in os.listdir(self.folder) if os.path.isdir(self.folder) else []:
                if not name.endswith(".parquet") or name in self.seen:
                    continue
                try:
                    rows = pq.read_table(os.path.join(self.folder, name)).num_rows
                    if rows != BIG["shard_size"]:
                        self.bad.append(f"{name}: {rows} rows")
                except Exception as err:  # noqa: BLE001 - a partial file is exactly what we look for
                    self.bad.append(f"{name}: {err}")
                self.seen.add(name)
            time.sleep(0.02)


@pytest.mark.ray
def test_killed_synthesis_actor_is_replaced_and_no_partial_shard_is_visible(finished, tmp_path, reference,
                                                                             commit_gate, monkeypatch):
    import ray

    from handsoff_ray.pipeline.run import run_stage

    gate, gate_env = commit_gate
    for k, v in gate_env.items():  # the Ray workers started below inherit this process's environment
        monkeypatch.setenv(k, v)
    spec = _fresh_dataset(copy_run(finished, tmp_path, synthesis=BIG,
                                   resources={"engine": "ray", "synthesis_actors": 2, "torch_threads": 1}))
    store = open_run(spec)
    data = store.path("dataset/data")
    watcher = _VisibleShardWatcher(data)
    watcher.start()
    ray.init(**private_ray_args())
    result, errors = {}, []
    driver = threading.Thread(target=_capture, args=(_synthesize_on("ray"), spec, result, errors))
    try:
        driver.start()
        held = wait_for(lambda: len(_held(gate)) == 2 and _held(gate), 180, "both actors to hold a shard mid-commit")
        committed, temporaries = _files(data)
        # The kill lands mid-shard for certain: the victim has written its shard to a hidden temporary file.
        assert len(committed) == FREE_COMMITS and len(temporaries) == 2, (committed, temporaries)
        os.kill(held[0], signal.SIGKILL)
        (gate / "hold").unlink()
        driver.join(timeout=300)
        assert not driver.is_alive(), "the run did not finish after an actor was killed"
    finally:
        watcher.stop.set()
        ray.shutdown()
    assert not errors, errors
    assert result["shards_written_now"] == 20
    assert watcher.bad == [], watcher.bad
    _assert_complete(store, reference)  # the victim's shard redone, its temporary file swept


@pytest.mark.ray
def test_interrupted_driver_resumes_writing_only_missing_shards(finished, tmp_path, reference, commit_gate):
    """Ctrl-C to `python -m handsoff_ray run` (engine ray) while its actors are mid-commit, then the same
    command again."""
    gate, gate_env = commit_gate
    spec = _fresh_dataset(copy_run(finished, tmp_path, synthesis=BIG,
                                   resources={"engine": "ray", "synthesis_actors": 2, "torch_threads": 1}))
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    store = open_run(spec)
    data = store.path("dataset/data")
    cmd = [sys.executable, "-m", "handsoff_ray", "run", str(spec_file), "--stages", "synthesize"]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(cmd, env={**env, **gate_env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        held = wait_for(lambda: len(_held(gate)) == 2 and _held(gate), 180, "both actors to hold a shard mid-commit")
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, out[-2000:]
    # The driver's Ray goes with it: no actor of the first run is left to commit its held shard later.
    wait_for(lambda: not any(_alive(pid) for pid in held), 60, "the interrupted run's actors to exit")
    before = _shards(store)
    assert len(before) == FREE_COMMITS, sorted(before)
    assert not store.exists("dataset/_SUCCESS")
    assert all(reference[n] == b for n, b in before.items())  # what was committed is whole and final

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    summary = [json.loads(line) for line in rerun.stdout.splitlines() if line.startswith('{"stage"')]
    assert summary and summary[-1]["shards_written_now"] == 20 - FREE_COMMITS, rerun.stdout[-2000:]
    _assert_complete(store, reference)


class _Outage:
    """A TCP proxy in front of the S3 server that can drop every connection and refuse new ones.

    Stopping moto's server itself is not an outage for a client with keep-alive connections (their
    handler threads live on), so the network path is cut here instead, like a failed endpoint.
    """

    def __init__(self, upstream_port: int):
        self.upstream = ("127.0.0.1", upstream_port)
        self.down = threading.Event()
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.down.is_set():
                client.close()
                continue
            upstream = socket.create_connection(self.upstream)
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self):
        self.down.set()
        with self.lock:
            for sock in self.conns:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.conns.clear()

    def restore(self):
        self.down.clear()

    def close(self):
        self.cut()
        self.listener.close()


class TestObjectStoreOutage:
    """S3 (moto's server) behind a proxy that cuts every connection for a while."""

    @pytest.fixture
    def s3(self, aws_env, finished, tmp_path):
        import boto3
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
        server.start()
        host, port = server.get_host_and_port()
        client = boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1")
        # moto keeps buckets per process, across servers: one bucket per test.
        bucket = f"outage-{uuid.uuid4().hex[:12]}"
        client.create_bucket(Bucket=bucket)
        # The finished run's invert and fit outputs (its folder and the shared _artifacts they refer to),
        # uploaded: synthesis starts from them.
        local = copy_run(finished, tmp_path)
        root = open_run(local).root
        output = os.path.dirname(root)
        for dirpath, _, files in os.walk(output):
            for f in files:
                if not dirpath.startswith(os.path.join(root, "dataset")):
                    key = "runs/" + os.path.relpath(os.path.join(dirpath, f), output)
                    client.upload_file(os.path.join(dirpath, f), bucket, key)
        outage = _Outage(port)
        spec = make_spec(f"s3://{bucket}/runs", local.generator.checkpoint, local.data.path, synthesis=BIG,
                         storage={"s3": {"endpoint_url": f"http://127.0.0.1:{outage.port}", "max_attempts": 2}})
        yield spec, outage
        outage.close()
        server.stop()

    def test_a_short_outage_is_ridden_out_by_retries(self, s3, reference):
        from handsoff_ray.pipeline.telemetry import metrics

        spec, outage = s3

        def retries():
            return metrics().registry.get_sample_value("handsoff_write_retries_total", {"run_id": spec.run_id}) or 0

        retries_before = retries()
        outage.cut()
        result, errors = {}, []
        runner = threading.Thread(target=lambda: _capture(_synthesize_on("local"), spec, result, errors))
        runner.start()
        # The store comes back once the run is riding out the outage (a retry counted), well within its 60 s budget.
        wait_for(lambda: retries() > retries_before, 30, "the run to retry against the cut store")
        assert runner.is_alive() and not result
        outage.restore()
        runner.join(timeout=300)
        assert not runner.is_alive() and not errors, errors
        assert result["shards_written_now"] == 20
        assert retries() > retries_before
        _assert_complete(open_run(spec), reference)

    def test_a_long_outage_fails_clearly_and_a_rerun_resumes(self, s3, reference, monkeypatch):
        import handsoff_ray.pipeline.stages.synthesize as synthesize

        spec, outage = s3
        spec.storage.s3.retry_seconds = 1  # give up quickly
        real_write_shard = synthesize._write_shard

        def write_then_lose_the_store(ctx, writer, k, *args):
            entry = real_write_shard(ctx, writer, k, *args)
            if k == 2:  # the outage begins right after the third shard is committed
                outage.cut()
            return entry

        monkeypatch.setattr(synthesize, "_write_shard", write_then_lose_the_store)
        with pytest.raises(StorageError, match="rerun the same command once the object store is reachable"):
            run_stage(spec, "synthesize", engine="local")
        monkeypatch.setattr(synthesize, "_write_shard", real_write_shard)
        outage.restore()
        store = open_run(spec)
        committed = _shards(store)
        assert sorted(committed) == [f"part-{k:06d}.parquet" for k in range(3)]
        assert all(reference[n] == b for n, b in committed.items()) and not store.exists("dataset/_SUCCESS")
        assert run_stage(spec, "synthesize", engine="local")["shards_written_now"] == 17
        _assert_complete(store, reference)


def _synthesize_on(engine: str):
    return lambda spec: run_stage(spec, "synthesize", engine=engine)


def _capture(fn, spec, result: dict, errors: list) -> None:
    try:
        result.update(fn(spec))
    except Exception as err:  # noqa: BLE001 - the test inspects it
        errors.append(err)
