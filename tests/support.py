"""Plain helpers shared by test modules (fixtures live in conftest.py files): ports, polling, Prometheus."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def private_ray_args(**overrides) -> dict:
    """ray.init keyword arguments for a test's own small Ray, from the package's one connection path
    (pipeline.engines.ray_init_args) with no spec address and no RAY_ADDRESS: always a private local Ray
    (address="local"), never a cluster some `ray start` left on the machine. `overrides` add to its sizing.
    """
    from handsoff_ray.config import parse_spec
    from handsoff_ray.pipeline.engines import ray_init_args

    kwargs, _ = ray_init_args(parse_spec({}), environ={})
    # Two CPUs and a small object store whatever the machine: tests size their actors for that.
    return {**kwargs, "num_cpus": 2, "object_store_memory": 256 * 2**20, **overrides}


def spec_with(base: dict, **sections):
    """A JobSpec from a base spec dict with each section's keys overridden (e.g. synthesis={"num_samples": 600})."""
    from handsoff_ray.config import parse_spec

    spec = dict(base)
    for k, v in sections.items():
        spec[k] = {**spec.get(k, {}), **v}
    return parse_spec(spec)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    """Poll predicate() until it returns something truthy (OSError counts as not yet); return it."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except OSError:
            pass
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last answer: {last!r}")


def need_binary(name: str) -> str:
    """Path of an apt-installed tool; skip without it, except under CI=true, where CI must prove the test."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} not found: apt-get install -y prometheus prometheus-pushgateway"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: these tests must run in CI)")
    pytest.skip(message)


def stop(*procs: subprocess.Popen) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def query(base: str, expr: str) -> list[dict]:
    """An instant PromQL query against the Prometheus at base; the result vector."""
    answer = get_json(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


@contextmanager
def prometheus(tmp_path, scrape_configs: list[dict]):
    """A real Prometheus on a free 127.0.0.1 port with the shipped rules, evaluated every second; yields its URL."""
    binary = need_binary("prometheus")
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "handsoff-rules.yaml").read_text())
    for group in rules["groups"]:
        group["interval"] = "1s"  # the shipped 30 s would make a test wait for the first evaluation
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp_path / "rules.yaml")], "scrape_configs": scrape_configs}))
    port = free_port()
    proc = subprocess.Popen([binary, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2).status == 200,
                 15, "Prometheus")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def readme_commands(path: Path) -> list[str]:
    """The shell commands of a Markdown file's ```bash blocks, in order: comments dropped, `\\` lines joined."""
    import re

    commands = []
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S):
        pending = ""
        for line in block.splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).rstrip()  # a comment starts at a '#' after a blank
            if line.endswith("\\"):
                pending += line[:-1].strip() + " "
                continue
            command = (pending + line.strip()).strip()
            pending = ""
            if command:
                commands.append(command)
    return commands


# What the README walks (tests/test_readme.py) and the job-submit test run jobs/specs/toy.yaml with:
# the README's commands as written, with the toy spec's step counts made tiny.
TINY_TOY_SPEC = {
    "data": {"limit": 2},
    "inversion": {"steps": 2},
    "label_generator": {"ensemble_size": 2, "max_steps": 4},
    "synthesis": {"num_samples": 8, "shard_size": 4},
    "evaluation": {"test_seeds": "1000000-1000003", "max_steps": 2, "unet_width": 4},
    "resources": {"engine": "local", "num_workers": 1, "synthesis_actors": 1},
}


def tiny_set_options(overrides: dict, prefix: str = "") -> list[str]:
    """{"a": {"b": 1}} -> ["--set", "a.b=1"]: the same overrides as `handsoff --set` options."""
    out = []
    for key, value in overrides.items():
        if isinstance(value, dict):
            out += tiny_set_options(value, f"{prefix}{key}.")
        else:
            out += ["--set", f"{prefix}{key}={json.dumps(value)}"]
    return out
