"""`handsoff k8s launch` against kmock's Kubernetes emulator (a real HTTP API on 127.0.0.1, objects in memory):
the RayJob it creates, the no-overlap rule, and what users see on AlreadyExists and API errors."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading

import pytest
import yaml
from click.testing import CliRunner

from handsoff_ray.cli import main
from tests.support import free_port

import kmock  # noqa: E402 - declared test dependencies: a broken install fails, never skips
import kubernetes  # noqa: E402

RAYJOBS = "ray.io/v1/rayjobs"
NOW = dt.datetime(2026, 11, 25, 15, 30, 12, tzinfo=dt.timezone.utc)
TEMPLATE = {
    "apiVersion": "ray.io/v1",
    "kind": "RayJob",
    "metadata": {"name": "demo-handsoff-ray", "labels": {"handsoff.io/schedule": "demo-handsoff-ray-regen",
                                                         "app.kubernetes.io/instance": "demo"}},
    "spec": {"entrypoint": "python /opt/handsoff/jobs/entrypoint.py /etc/handsoff/spec.yaml",
             "runtimeEnvYAML": "env_vars:\n  NCCL_DEBUG: WARN\n",
             "rayClusterSpec": {"headGroupSpec": {"template": {"spec": {"containers": []}}}, "workerGroupSpecs": []}},
}


@pytest.fixture
def emulator():
    """A KubernetesEmulator served on 127.0.0.1 from a background event loop; yields (emulator, port)."""
    ready, state, port = threading.Event(), {}, free_port()

    async def serve():
        state["stop"] = asyncio.Event()
        async with kmock.KubernetesEmulator() as km, kmock.Server(km, port=port):
            km.resources[RAYJOBS].kind = "RayJob"  # known to discovery and list even before any object exists
            state["km"] = km
            ready.set()
            await state["stop"].wait()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10), "kmock did not start"
    yield state["km"], port
    loop.call_soon_threadsafe(state["stop"].set)
    thread.join(10)


@pytest.fixture
def launch(emulator, tmp_path, monkeypatch):
    """Run `handsoff k8s launch` against the emulator at a fixed time; returns the click result."""
    _, port = emulator
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "u"}}]}))
    template = tmp_path / "rayjob.yaml"
    template.write_text(yaml.safe_dump(TEMPLATE))

    class FrozenDatetime(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return NOW

    import handsoff_ray.k8s as k8s_module

    monkeypatch.setattr(k8s_module.dt, "datetime", FrozenDatetime)

    def run(*extra: str, kubeconfig_path=kubeconfig):
        args = ["k8s", "launch", f"--template={template}", "--namespace=batch", f"--kubeconfig={kubeconfig_path}",
                *extra]
        return CliRunner().invoke(main, args)

    return run


def api(port: int):
    cfg = kubernetes.client.Configuration()
    cfg.host = f"http://127.0.0.1:{port}"
    return kubernetes.client.CustomObjectsApi(kubernetes.client.ApiClient(cfg))


def stored_rayjobs(port: int) -> dict[str, dict]:
    items = api(port).list_namespaced_custom_object("ray.io", "v1", "batch", "rayjobs")["items"]
    return {i["metadata"]["name"]: i for i in items}


def test_creates_the_rayjob_with_run_id_and_seed_offset(emulator, launch):
    _, port = emulator
    res = launch("--seed-offset=minutes")
    assert res.exit_code == 0, res.output
    assert res.output.strip() == "created rayjob batch/demo-handsoff-ray-202611251530"
    job = stored_rayjobs(port)["demo-handsoff-ray-202611251530"]
    assert job["metadata"]["labels"] == TEMPLATE["metadata"]["labels"]
    assert job["spec"]["entrypoint"] == TEMPLATE["spec"]["entrypoint"]
    assert job["spec"]["rayClusterSpec"] == TEMPLATE["spec"]["rayClusterSpec"]
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
    assert env == {"NCCL_DEBUG": "WARN",  # the template's own variables stay
                   "HANDSOFF_RUN_ID": "demo-handsoff-ray-202611251530",
                   "HANDSOFF_SEED_OFFSET": str(int(NOW.timestamp()) // 60),
                   "HANDSOFF_SCHEDULE": "demo-handsoff-ray-regen"}


def test_long_template_names_are_cut_to_kuberays_limit(tmp_path):
    from handsoff_ray.k8s import prepare_rayjob

    body = prepare_rayjob({**TEMPLATE, "metadata": {"name": "x" * 60}}, now=NOW, seed_offset="7")
    assert len(body["metadata"]["name"]) == 47 and body["metadata"]["name"].endswith("-202611251530")
    assert yaml.safe_load(body["spec"]["runtimeEnvYAML"])["env_vars"]["HANDSOFF_SEED_OFFSET"] == "7"


def test_will_not_start_while_an_earlier_run_is_active(emulator, launch):
    _, port = emulator
    running = {**TEMPLATE, "metadata": {**TEMPLATE["metadata"], "name": "demo-handsoff-ray-202611240330"},
               "status": {"jobDeploymentStatus": "Running"}}
    api(port).create_namespaced_custom_object("ray.io", "v1", "batch", "rayjobs", running)
    res = launch()
    assert res.exit_code == 3
    assert "still active: demo-handsoff-ray-202611240330 (Running)" in res.output
    assert "--allow-concurrent" in res.output
    assert list(stored_rayjobs(port)) == ["demo-handsoff-ray-202611240330"]  # nothing created

    api(port).patch_namespaced_custom_object("ray.io", "v1", "batch", "rayjobs", "demo-handsoff-ray-202611240330",
                                             {"status": {"jobDeploymentStatus": "Complete"}})
    res = launch()
    assert res.exit_code == 0, res.output
    assert "demo-handsoff-ray-202611251530" in stored_rayjobs(port)


def test_other_schedules_and_unlabelled_rayjobs_do_not_block(emulator, launch):
    _, port = emulator
    other = {**TEMPLATE, "metadata": {"name": "someone-else", "labels": {"handsoff.io/schedule": "other"}},
             "status": {"jobDeploymentStatus": "Running"}}
    api(port).create_namespaced_custom_object("ray.io", "v1", "batch", "rayjobs", other)
    res = launch()
    assert res.exit_code == 0, res.output


def test_already_exists_is_exit_4(emulator, launch):
    assert launch("--allow-concurrent").exit_code == 0
    res = launch("--allow-concurrent")  # the same minute: the same name
    assert res.exit_code == 4
    assert "Error: RayJob batch/demo-handsoff-ray-202611251530 already exists" in res.output


def test_forbidden_names_the_missing_permission(emulator, launch):
    km, _ = emulator
    km["post", kmock.resource(RAYJOBS)] << 403 << {"kind": "Status", "code": 403, "reason": "Forbidden"}
    res = launch("--allow-concurrent")
    assert res.exit_code == 5
    assert "HTTP 403" in res.output and "get/list/create on rayjobs.ray.io" in res.output


def test_server_error_is_exit_6(emulator, launch):
    km, _ = emulator
    km["list", kmock.resource(RAYJOBS)] << 500 << {"kind": "Status", "code": 500, "reason": "InternalError"}
    res = launch()
    assert res.exit_code == 6
    assert res.output.startswith("Error: could not list or create RayJobs in namespace batch: 500")


def test_unreachable_api_is_exit_6(launch, tmp_path):
    kubeconfig = tmp_path / "dead"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{free_port()}"}}],
        "users": [{"name": "u", "user": {}}], "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    res = launch(kubeconfig_path=kubeconfig)
    assert res.exit_code == 6
    assert "Error: cannot reach the Kubernetes API" in res.output


@pytest.mark.parametrize("content, message", [
    ("kind: Deployment\napiVersion: apps/v1\n", "expected a ray.io/v1 RayJob"),
    ("kind: RayJob\napiVersion: ray.io/v1\nmetadata: {}\n", "metadata.name is required"),
    ("kind: [RayJob\n", "not valid YAML"),
])
def test_bad_templates_are_exit_2(tmp_path, content, message):
    path = tmp_path / "t.yaml"
    path.write_text(content)
    res = CliRunner().invoke(main, ["k8s", "launch", f"--template={path}", "--dry-run"])
    assert res.exit_code == 2 and message in res.output


def test_bad_seed_offset_is_exit_2(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(TEMPLATE))
    res = CliRunner().invoke(main, ["k8s", "launch", f"--template={path}", "--seed-offset=-3", "--dry-run"])
    assert res.exit_code == 2 and "--seed-offset must be" in res.output
