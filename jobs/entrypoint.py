"""The RayJob entrypoint: `handsoff run SPEC` with the run's identity taken from its environment.

    python jobs/entrypoint.py /etc/handsoff/spec.yaml [extra `handsoff run` args]
    python jobs/entrypoint.py --train-gan /etc/handsoff/spec.yaml [extra args]   # the chart's rayJob.command

`--train-gan` runs `handsoff train-gan SPEC --engine ray` instead (Ray Train over the RayCluster's workers,
checkpoints in <storage.output>/<run id>/gan/), with the same run id and Ray address; it adds no version.

What it adds to a plain `python -m handsoff_ray run SPEC`:
  * storage.run_id  = HANDSOFF_RUN_ID (set by the chart / `handsoff k8s launch` in runtimeEnvYAML), else
                      OWNER_NAME (KubeRay sets it in Ray pods to the RayJob's name; a RayCronJob's children
                      are named "<cron>-<unix minute>"). The RayJob name survives backoffLimit retries, so a
                      retry on a fresh RayCluster resumes the same run.
  * a scheduled run (HANDSOFF_SEED_OFFSET set; "from-run-id": the run id's trailing number, the chart's
    launcher: the launch's Unix minute) adds a version to one dataset instead of starting from scratch:
    synthesis.version = the offset, storage.run_id = HANDSOFF_SCHEDULE (the schedule's name; else the run id).
    Its sample ids start at version * 2^34, so no pair repeats an earlier batch's sample or seed, and the
    labeled set and generator are those of the last run, so invert and fit are reused (they rerun only for
    what changed: pipeline/identity.py) and the run spends its time on synthesis.
  * resources.ray_address = auto (join the RayCluster this driver runs in).
  * HANDSOFF_DRIVER_METRICS_PORT: serve the driver's own metrics (shards planned, stage times, run info) on
    that port while the run goes, for the head PodMonitor's "driver-metrics" endpoint.
  * HANDSOFF_PUSHGATEWAY and HANDSOFF_SCHEDULE: after a successful run, push
    handsoff_schedule_last_success_timestamp_seconds{schedule=...} (the scheduled-run-too-old alert's input).
The CLI's own exit code is returned; a missing run id exits 2 with a one-line cause.
"""

from __future__ import annotations

import os
import re
import sys

import yaml

VERSION_MAX = 2**29  # synthesis.version's bound (config.py)


def resolve_run_id(env: dict[str, str]) -> str:
    run_id = env.get("HANDSOFF_RUN_ID") or env.get("OWNER_NAME")
    if not run_id:
        raise SystemExit("Error: no run id: set HANDSOFF_RUN_ID (the chart and `handsoff k8s launch` do), "
                         "or run inside a KubeRay RayJob (OWNER_NAME)")
    return run_id


def resolve_version(run_id: str, env: dict[str, str]) -> int | None:
    """The dataset version a scheduled run adds, or None when the run is not scheduled (no offset)."""
    offset = env.get("HANDSOFF_SEED_OFFSET", "")
    if not offset:
        return None
    if offset == "from-run-id":
        match = re.search(r"-(\d+)$", run_id)
        if not match:
            raise SystemExit(f"Error: HANDSOFF_SEED_OFFSET=from-run-id but run id {run_id!r} ends in no number")
        offset = match.group(1)
    if not offset.isdigit():
        raise SystemExit(f"Error: HANDSOFF_SEED_OFFSET must be an integer or from-run-id, got {offset!r}")
    if int(offset) > VERSION_MAX:
        raise SystemExit(f"Error: HANDSOFF_SEED_OFFSET {offset} is above the largest dataset version {VERSION_MAX}")
    return int(offset)


def build_args(spec_path: str, extra: list[str], env: dict[str, str], command: str = "run") -> list[str]:
    run_id = resolve_run_id(env)
    if command == "train-gan":  # a retry or a relaunch of the same RayJob resumes from <run>/gan/
        return ["train-gan", spec_path, "--engine", "ray", "--set", f"storage.run_id={run_id}",
                "--set", "resources.ray_address=auto", *extra]
    version = resolve_version(run_id, env)
    if version is not None:  # every scheduled run of one schedule adds a version to the same run's dataset
        run_id = env.get("HANDSOFF_SCHEDULE") or run_id
    args = ["run", spec_path, "--set", f"storage.run_id={run_id}", "--set", "resources.ray_address=auto"]
    if version is not None:
        args += ["--set", f"synthesis.version={version}"]
    return args + extra


def push_schedule_success(gateway: str, schedule: str) -> None:
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

    registry = CollectorRegistry()
    g = Gauge("handsoff_schedule_last_success_timestamp_seconds",
              "Unix time of the last successful scheduled HandsOff run.", ["schedule"], registry=registry)
    g.labels(schedule=schedule).set_to_current_time()
    push_to_gateway(gateway, job="handsoff-schedule", registry=registry, grouping_key={"schedule": schedule})


def main(argv: list[str]) -> int:
    command = "train-gan" if argv[:1] == ["--train-gan"] else "run"
    argv = argv[1:] if command == "train-gan" else argv
    if not argv:
        print("usage: entrypoint.py [--train-gan] SPEC.yaml [handsoff run args...]", file=sys.stderr)
        return 2
    env = dict(os.environ)
    args = build_args(argv[0], argv[1:], env, command)
    from handsoff_ray.cli import main as cli
    from handsoff_ray.pipeline.telemetry import metrics

    port = env.get("HANDSOFF_DRIVER_METRICS_PORT")
    if port:
        from prometheus_client import start_http_server

        # The driver's registry (what `handsoff run` records outside Ray workers), live on the head.
        start_http_server(int(port), addr=env.get("HANDSOFF_DRIVER_METRICS_ADDR", "0.0.0.0"),
                          registry=metrics().registry)
    try:
        cli.main(args=args, prog_name="handsoff", standalone_mode=True)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    if code == 0 and env.get("HANDSOFF_PUSHGATEWAY") and env.get("HANDSOFF_SCHEDULE"):
        push_schedule_success(env["HANDSOFF_PUSHGATEWAY"], env["HANDSOFF_SCHEDULE"])
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
