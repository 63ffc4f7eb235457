"""Which Ray a driver uses, proven against a real head from `ray start --head`.

`ray job submit --working-dir . -- python -m handsoff_ray run jobs/specs/toy.yaml` (jobs/README.md) is what a
KubeRay RayJob does: the submitter uploads the working directory and runs the entrypoint on the head, where
the driver joins the cluster (RAY_ADDRESS, set by the job). Anywhere else, a driver without
`resources.ray_address` starts a private Ray, even while a stranger's head is up or left its address behind.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from handsoff_ray.config import parse_spec
from handsoff_ray.pipeline.engines import ray_init_args
from tests.support import free_port, private_ray_args, readme_commands, wait_for

REPO = Path(__file__).parents[2]
RAY = Path(sys.executable).with_name("ray")

# A driver that does what every Ray stage does first, then says which cluster it is on.
DRIVER = ("import ray; from handsoff_ray.config import parse_spec; "
          "from handsoff_ray.pipeline.engines import ensure_ray; "
          "ensure_ray(parse_spec({})); print('GCS', ray.get_runtime_context().gcs_address)")


def _dashboard_up(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/api/version", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _ray_env(tmpdir: str) -> dict:
    """Loopback-only Ray whose default temp dir (where `ray start` records its address) is tmpdir/ray."""
    return {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": tmpdir, "PYTHONPATH": str(REPO),
            "PATH": f"{RAY.parent}{os.pathsep}{os.environ.get('PATH', '')}"}


@pytest.fixture(scope="module")
def ray_head():
    """(dashboard URL, GCS port, env) of a head whose address file sits where a plain ray.init() looks."""
    if not RAY.exists():
        pytest.skip("the ray CLI is not installed next to this Python")
    # Ray's unix socket paths must stay short: pytest's tmp_path is too deep for them.
    base = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    # The head runs entrypoints with the `python` on its PATH: make that this environment's, as the
    # runtime image's Python is in a real cluster.
    env = _ray_env(base)
    gcs, dash = free_port(), free_port()
    # Every port a head binds by default gets a free one: a second Ray on the machine (a demo running beside
    # the tests) holds the defaults, and a job agent that cannot bind never comes up.
    ports = [f"--{opt}={free_port()}" for opt in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port",
        "node-manager-port", "object-manager-port")]
    # `--block` keeps the head's processes in our process group, so teardown stops this head only;
    # `ray stop` would stop every Ray on the machine, other users' included.
    head = subprocess.Popen(
        [str(RAY), "start", "--head", "--block", f"--port={gcs}", "--num-cpus=2", "--include-dashboard=true",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--disable-usage-stats",
         f"--temp-dir={base}/ray", *ports],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 120
        while not _dashboard_up(url):
            if head.poll() is not None or time.time() > deadline:
                pytest.fail(f"ray start --head did not come up (exit {head.poll()})")
            time.sleep(1)
        yield url, gcs, env
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)


def _run_driver(env: dict) -> tuple[str, str]:
    """(GCS address the driver ended up on, its stderr)."""
    res = subprocess.run([sys.executable, "-c", DRIVER], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    gcs = [line.split()[1] for line in res.stdout.splitlines() if line.startswith("GCS ")]
    return gcs[0], res.stderr


class TestRayInitArgs:
    def test_no_address_outside_a_job_starts_a_private_local_ray(self):
        kwargs, what = ray_init_args(parse_spec({}), environ={})
        assert kwargs["address"] == "local" and kwargs["num_cpus"] >= 1
        assert what.startswith("starting a private local Ray")

    def test_inside_a_ray_job_joins_its_cluster_without_sizing_it(self):
        kwargs, what = ray_init_args(parse_spec({}), environ={"RAY_ADDRESS": "10.0.0.5:6379"})
        assert kwargs == {"address": "10.0.0.5:6379"}
        assert "inside a Ray job" in what

    def test_spec_address_wins_and_passes_no_resources(self):
        spec = parse_spec({"resources": {"ray_address": "auto"}})
        assert ray_init_args(spec, environ={"RAY_ADDRESS": "10.0.0.5:6379"})[0] == {"address": "auto"}

    def test_a_dashboard_url_in_ray_address_is_not_a_cluster_to_join(self):
        kwargs, _ = ray_init_args(parse_spec({}), environ={"RAY_ADDRESS": "http://127.0.0.1:8265"})
        assert kwargs["address"] == "local"

    def test_tests_start_a_private_ray_even_inside_a_ray_job(self, monkeypatch):
        monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
        kwargs = private_ray_args(_metrics_export_port=1234)
        assert kwargs["address"] == "local" and kwargs["num_cpus"] == 2 and kwargs["_metrics_export_port"] == 1234


@pytest.mark.ray
def test_plain_run_never_attaches_to_a_running_head(ray_head):
    _, gcs_port, env = ray_head
    # The trap a plain ray.init() falls into: the head recorded itself as "the current cluster".
    address_file = Path(env["RAY_TMPDIR"], "ray", "ray_current_cluster")
    recorded = wait_for(lambda: address_file.exists() and address_file.read_text().strip(), 60,
                        "ray start to record its address")
    assert recorded.endswith(f":{gcs_port}")
    gcs, stderr = _run_driver({k: v for k, v in env.items() if k != "RAY_ADDRESS"})
    assert gcs != recorded
    assert "handsoff: starting a private local Ray" in stderr


@pytest.mark.ray
def test_stale_address_file_of_a_killed_head_is_ignored(tmp_path):
    base = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    try:
        os.makedirs(f"{base}/ray")
        Path(base, "ray", "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")  # nobody listens there
        env = {k: v for k, v in _ray_env(base).items() if k != "RAY_ADDRESS"}
        gcs, stderr = _run_driver(env)
        assert "handsoff: starting a private local Ray" in stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.ray
def test_documented_job_submit_of_the_toy_spec(ray_head, tmp_path, tiny_generator_path):
    """jobs/README.md's command, read from that file, from a working dir holding only the package and
    jobs/specs (toy faces come from seeds: no data to upload); the spec names no ray_address, so the driver
    must join the job's cluster. Overrides only shrink the work."""
    address, _, env = ray_head
    workdir = tmp_path / "workdir"
    shutil.copytree(REPO / "handsoff_ray", workdir / "handsoff_ray", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "jobs" / "specs", workdir / "jobs" / "specs")
    command = shlex.split(next(c for c in readme_commands(REPO / "jobs" / "README.md") if c.startswith("ray job")))
    command[0], command[command.index("--address") + 1] = str(RAY), address
    small = {"generator.checkpoint": tiny_generator_path, "data.limit": 2, "inversion.steps": 2,
             "inversion.loss_resolution": 16, "label_generator.ensemble_size": 2, "label_generator.max_steps": 4,
             "label_generator.batch_pixels": 32, "label_generator.tasks.segmentation.hidden": "[8, 4]",
             "label_generator.tasks.keypoints.enabled": "false", "label_generator.tasks.depth.enabled": "false",
             "synthesis.num_samples": 4, "synthesis.shard_size": 2, "synthesis.batch_size": 2,
             "evaluation.enabled": "false", "resources.num_workers": 1, "resources.synthesis_actors": 1,
             "storage.output": str(tmp_path / "runs")}
    sets = [arg for k, v in small.items() for arg in ("--set", f"{k}={v}")]
    for _ in range(12):  # the head's job agent comes up a few seconds after its dashboard
        res = subprocess.run(
            [*command, *sets],
            env={k: v for k, v in env.items() if k != "PYTHONPATH"}, cwd=workdir, capture_output=True, text=True,
            timeout=600,
        )
        if "No available agent" not in res.stdout + res.stderr:
            break
        time.sleep(5)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    assert "succeeded" in res.stdout
    assert "(RAY_ADDRESS: inside a Ray job)" in out
    assert (tmp_path / "runs" / "toy" / "dataset" / "_SUCCESS").exists()
