"""jobs/README.md's `ray job submit ... -- python -m handsoff_ray run SPEC` against a real head from `ray start --head`.

This is what a KubeRay RayJob does: the submitter uploads the working directory and runs the entrypoint
on the head, where the driver joins the cluster (resources.ray_address: auto).
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
from tests.support import TINY_TOY_SPEC, free_port, readme_commands, tiny_set_options

REPO = Path(__file__).parents[2]
RAY = Path(sys.executable).with_name("ray")


def _dashboard_up(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/api/version", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture
def ray_head(tmp_path):
    if not RAY.exists():
        pytest.skip("the ray CLI is not installed next to this Python")
    # The head runs entrypoints with the `python` on its PATH: make that this environment's, as the
    # runtime image's Python is in a real cluster.
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0", "PATH": f"{RAY.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    gcs, dash = free_port(), free_port()
    # Every port a head binds by default gets a free one: a second Ray on the machine (a demo running beside
    # the tests) holds the defaults, and a job agent that cannot bind never comes up.
    ports = [f"--{opt}={free_port()}" for opt in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port",
        "node-manager-port", "object-manager-port")]
    # Ray's unix socket paths must stay short: pytest's tmp_path is too deep for them.
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    # `--block` keeps the head's processes in our process group, so teardown stops this head only;
    # `ray stop` would stop every Ray on the machine, other users' included.
    head = subprocess.Popen(
        [str(RAY), "start", "--head", "--block", f"--port={gcs}", "--num-cpus=2", "--include-dashboard=true",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--disable-usage-stats", f"--temp-dir={temp}", *ports],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 120
        while not _dashboard_up(url):
            if head.poll() is not None or time.time() > deadline:
                pytest.fail(f"ray start --head did not come up (exit {head.poll()})")
            time.sleep(1)
        yield url, env
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.ray
def test_job_submit_runs_the_readme_command(ray_head, tmp_path):
    """jobs/README.md's `ray job submit ... --working-dir . -- python -m handsoff_ray run jobs/specs/toy.yaml`,
    from a working dir holding only the package and jobs/ (toy faces need no data), with tiny step counts."""
    address, env = ray_head
    command = next(c for c in readme_commands(REPO / "jobs" / "README.md") if c.startswith("ray job submit"))
    args = shlex.split(command)
    args[0], args[args.index("--address") + 1] = str(RAY), address
    tiny = {**TINY_TOY_SPEC, "resources": {"engine": "ray", "num_workers": 1, "synthesis_actors": 1,
                                            "torch_threads": 1},
            "storage": {"output": str(tmp_path / "runs")}}
    args += tiny_set_options(tiny)
    workdir = tmp_path / "workdir"  # what `--working-dir .` uploads from a clone, less tests and docs
    for part in ("handsoff_ray", "jobs"):
        shutil.copytree(REPO / part, workdir / part, ignore=shutil.ignore_patterns("__pycache__"))
    for _ in range(12):  # the head's job agent comes up a few seconds after its dashboard
        res = subprocess.run(args, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
        if "No available agent" not in res.stdout + res.stderr:
            break
        time.sleep(5)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "succeeded" in res.stdout
    run = tmp_path / "runs" / "toy"
    assert (run / "dataset" / "_SUCCESS").exists() and (run / "eval" / "report.json").exists()
