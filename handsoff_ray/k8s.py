"""`handsoff k8s launch`: create one RayJob from a rendered template (what the chart's CronJob runs).

    handsoff k8s launch --template /etc/handsoff-launch/rayjob.yaml --namespace batch
    handsoff k8s launch --template rayjob.yaml --dry-run          # print the RayJob it would create

The template is a complete `ray.io/v1` RayJob (the chart renders it into a ConfigMap). Each launch:
  * names the RayJob "<template name>-<YYYYmmddHHMM>" (UTC; the template name is cut so the result stays
    within KubeRay's 47 characters) - the run id;
  * adds HANDSOFF_RUN_ID, HANDSOFF_SEED_OFFSET and HANDSOFF_SCHEDULE to runtimeEnvYAML.env_vars, which
    reach the driver (jobs/entrypoint.py turns them into storage.run_id = the schedule's name and
    synthesis.version = the offset: each scheduled run adds a version to one dataset);
  * refuses to start while an earlier RayJob of the same schedule (label handsoff.io/schedule) is not
    finished, unless --allow-concurrent.

Exit codes: 0 created (the name is printed), 2 bad usage or template, 3 an earlier run is still active,
4 a RayJob of that name already exists, 5 the API refused (401/403: check the ServiceAccount's Role),
6 any other API or connection error.
"""

from __future__ import annotations

import datetime as dt
import sys

import click
import yaml

__all__ = ["k8s", "launch_rayjob", "LaunchError", "prepare_rayjob"]

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayjobs"
RAYJOB_NAME_MAX = 47  # KubeRay refuses longer RayJob names
SCHEDULE_LABEL = "handsoff.io/schedule"
# A RayJob in one of these deployment states holds no cluster and runs nothing.
FINISHED = {"Complete", "Failed", "ValidationFailed"}

EXIT_USAGE, EXIT_ACTIVE, EXIT_EXISTS, EXIT_FORBIDDEN, EXIT_API = 2, 3, 4, 5, 6


class LaunchError(Exception):
    """A launch that did not create a RayJob; `code` is the process exit code."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def load_template(path: str) -> dict:
    try:
        with open(path) as f:
            body = yaml.safe_load(f)
    except OSError as err:
        raise LaunchError(f"cannot read the template {path}: {err.strerror}", EXIT_USAGE) from None
    except yaml.YAMLError as err:
        raise LaunchError(f"{path}: not valid YAML: {str(err).splitlines()[0]}", EXIT_USAGE) from None
    if not isinstance(body, dict) or body.get("kind") != "RayJob" or body.get("apiVersion") != f"{GROUP}/{VERSION}":
        raise LaunchError(f"{path}: expected a {GROUP}/{VERSION} RayJob (the chart's rayjob-template ConfigMap)",
                          EXIT_USAGE)
    if not body.get("metadata", {}).get("name"):
        raise LaunchError(f"{path}: metadata.name is required (it is the prefix of every run's name)", EXIT_USAGE)
    return body


def prepare_rayjob(template: dict, *, now: dt.datetime, seed_offset: str) -> dict:
    """The RayJob to create: a unique name, the run id and seed offset in the driver's environment."""
    body = yaml.safe_load(yaml.safe_dump(template))  # deep copy
    stamp = now.astimezone(dt.timezone.utc).strftime("%Y%m%d%H%M")
    prefix = body["metadata"]["name"][: RAYJOB_NAME_MAX - len(stamp) - 1].rstrip("-")
    name = f"{prefix}-{stamp}"
    body["metadata"] = {k: v for k, v in body["metadata"].items() if k in ("labels", "annotations")}
    body["metadata"]["name"] = name
    offset = str(int(now.timestamp()) // 60) if seed_offset == "minutes" else seed_offset
    spec = body.setdefault("spec", {})
    runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML") or "") or {}
    env_vars = runtime_env.setdefault("env_vars", {})
    env_vars.update({"HANDSOFF_RUN_ID": name, "HANDSOFF_SEED_OFFSET": offset})
    schedule = body["metadata"].get("labels", {}).get(SCHEDULE_LABEL)
    if schedule:
        env_vars["HANDSOFF_SCHEDULE"] = schedule
    spec["runtimeEnvYAML"] = yaml.safe_dump(runtime_env, sort_keys=True)
    return body


def _api_error(err, action: str, namespace: str) -> LaunchError:
    status = getattr(err, "status", None)
    if status in (401, 403):
        return LaunchError(f"the API refused to {action} RayJobs in namespace {namespace} (HTTP {status}): give "
                           "this ServiceAccount a Role with get/list/create on rayjobs.ray.io (the chart's "
                           "schedule Role does)", EXIT_FORBIDDEN)
    if status == 404:
        return LaunchError(f"the API has no rayjobs.ray.io in namespace {namespace} (HTTP 404): install the KubeRay "
                           "operator and its CRDs first", EXIT_API)
    reason = getattr(err, "reason", None) or type(err).__name__
    return LaunchError(f"could not {action} RayJobs in namespace {namespace}: {status or ''} {reason}".replace("  ", " "),
                       EXIT_API)


def active_runs(api, namespace: str, schedule: str) -> list[str]:
    """Names of this schedule's RayJobs that are not finished (nor being deleted)."""
    selector = f"{SCHEDULE_LABEL}={schedule}"
    items = api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, label_selector=selector)["items"]
    active = []
    for item in items:
        meta = item.get("metadata", {})
        if meta.get("labels", {}).get(SCHEDULE_LABEL) != schedule or meta.get("deletionTimestamp"):
            continue  # the selector is the server's job; checking again costs nothing
        status = (item.get("status") or {}).get("jobDeploymentStatus") or "New"
        if status not in FINISHED:
            active.append(f"{meta.get('name')} ({status})")
    return sorted(active)


def launch_rayjob(api, body: dict, namespace: str, *, allow_concurrent: bool) -> str:
    """Create the RayJob through a `CustomObjectsApi`; return its name or raise LaunchError."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError as TransportError

    name = body["metadata"]["name"]
    schedule = body["metadata"].get("labels", {}).get(SCHEDULE_LABEL)
    try:
        if schedule and not allow_concurrent:
            active = active_runs(api, namespace, schedule)
            if active:
                raise LaunchError(f"not starting {name}: an earlier run of schedule {schedule} is still active: "
                                  f"{', '.join(active)} (wait, delete it, or pass --allow-concurrent)", EXIT_ACTIVE)
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    except ApiException as err:
        if err.status == 409:
            raise LaunchError(f"RayJob {namespace}/{name} already exists: this tick was launched already "
                              "(run names are per minute)", EXIT_EXISTS) from None
        raise _api_error(err, "list or create", namespace) from None
    except TransportError as err:  # refused connections, TLS and timeouts, after urllib3's retries
        raise LaunchError(f"cannot reach the Kubernetes API: {err}", EXIT_API) from None
    return name


def _client(kubeconfig: str | None, context: str | None):
    import os

    from kubernetes import client, config

    if kubeconfig or context or "KUBERNETES_SERVICE_HOST" not in os.environ:
        try:
            config.load_kube_config(config_file=kubeconfig, context=context)
        except (config.ConfigException, OSError) as err:
            raise LaunchError(f"no usable kubeconfig ({err}): pass --kubeconfig or run in a pod", EXIT_USAGE) from None
    else:
        config.load_incluster_config()
    return client.CustomObjectsApi()


@click.group()
def k8s() -> None:
    """Kubernetes helpers (what the Helm chart's pods run)."""


@k8s.command()
@click.option("--template", "template_path", required=True, metavar="FILE", help="A rendered ray.io/v1 RayJob.")
@click.option("--namespace", default="default", show_default=True, metavar="NS", help="Namespace to create it in.")
@click.option("--seed-offset", default="minutes", show_default=True, metavar="minutes|INT",
              help="The dataset version the run adds: the launch's Unix minute (a new batch each run) or a fixed integer.")
@click.option("--allow-concurrent", is_flag=True, help="Start even while an earlier run of the schedule is active.")
@click.option("--kubeconfig", default=None, metavar="FILE", help="Outside a pod: the kubeconfig (default ~/.kube/config).")
@click.option("--context", default=None, metavar="NAME", help="Kubeconfig context.")
@click.option("--dry-run", is_flag=True, help="Print the RayJob and exit without contacting the API.")
def launch(template_path: str, namespace: str, seed_offset: str, allow_concurrent: bool,
           kubeconfig: str | None, context: str | None, dry_run: bool) -> None:
    """Create one RayJob from TEMPLATE with a unique name, run id and seed offset."""
    try:
        if seed_offset != "minutes" and not seed_offset.isdigit():
            raise LaunchError(f"--seed-offset must be 'minutes' or a non-negative integer, got {seed_offset!r}",
                              EXIT_USAGE)
        body = prepare_rayjob(load_template(template_path), now=dt.datetime.now(dt.timezone.utc),
                              seed_offset=seed_offset)
        if dry_run:
            click.echo(yaml.safe_dump(body, sort_keys=False))
            return
        name = launch_rayjob(_client(kubeconfig, context), body, namespace, allow_concurrent=allow_concurrent)
    except LaunchError as err:
        click.echo(f"Error: {err}", err=True)
        sys.exit(err.code)
    click.echo(f"created rayjob {namespace}/{name}")
