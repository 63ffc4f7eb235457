"""A real Prometheus (Debian's package) on 127.0.0.1 scrapes a running HandsOff driver's metrics endpoint and a
Pushgateway, evaluates deploy/prometheus/handsoff-rules.yaml, and answers through its HTTP API.

The "driver" is a small process that records through handsoff_ray.pipeline.telemetry and serves that registry
exactly as jobs/entrypoint.py does on the head (start_http_server on the driver registry), then pushes like
`handsoff run` does at the end and like the entrypoint does after a scheduled success. A real `handsoff run`
would take 30-60 s here for the same series.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

import pytest

from tests.support import ROOT, free_port, get_json, need_binary, prometheus, query, stop, wait_for

DRIVER = r"""
import os, sys, time
sys.path.insert(0, {jobs!r})
from prometheus_client import start_http_server
from handsoff_ray.pipeline.telemetry import metrics, push_to_gateway
from entrypoint import push_schedule_success

m = metrics()
start_http_server({port}, addr="127.0.0.1", registry=m.registry)
m.set("run_info", 1, run_id="live", spec_hash="abc123")
m.set("shards_planned", 4, run_id="live")
push_schedule_success(os.environ["HANDSOFF_PUSHGATEWAY"], "live-regen")
for step in range(10_000):
    m.inc("samples_written", 10, run_id="live")
    m.observe("sample_uncertainty", 0.01 + 0.001 * (step % 5), run_id="live", task="segmentation")
    if step % 4 == 3 and step < 12:
        m.inc("shards_committed", 1, run_id="live")
    if step == 2:
        push_to_gateway(job="handsoff-live")   # what `handsoff run` leaves behind at its end
    time.sleep(0.25)
"""


@pytest.fixture
def stack(tmp_path):
    """Pushgateway, the driver process and Prometheus, all on 127.0.0.1; each stopped by its own PID."""
    pushgateway = need_binary("prometheus-pushgateway")
    push_port, driver_port = free_port(), free_port()
    procs = []
    try:
        procs.append(subprocess.Popen([pushgateway, f"--web.listen-address=127.0.0.1:{push_port}"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{push_port}/-/ready", timeout=2).status == 200,
                 15, "the Pushgateway")
        code = DRIVER.format(jobs=str(ROOT / "jobs"), port=driver_port)
        env = {"HANDSOFF_PUSHGATEWAY": f"127.0.0.1:{push_port}", "PATH": "/usr/bin:/bin"}
        procs.append(subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env))
        with prometheus(tmp_path, [
            {"job_name": "handsoff-driver", "static_configs": [{"targets": [f"127.0.0.1:{driver_port}"]}]},
            {"job_name": "pushgateway", "honor_labels": True,
             "static_configs": [{"targets": [f"127.0.0.1:{push_port}"]}]},
        ]) as base:
            yield base
    finally:
        stop(*reversed(procs))


def test_prometheus_reads_handsoff_series_and_recording_rules(stack):
    base = stack
    samples = wait_for(lambda: query(base, 'handsoff_samples_written_total{job="handsoff-driver", run_id="live"}'),
                       30, "the driver's samples counter")
    assert float(samples[0]["value"][1]) % 10 == 0 and float(samples[0]["value"][1]) > 0  # 10 pairs per step
    planned = wait_for(lambda: query(base, 'handsoff:shards_planned:max{run_id="live"}'), 30, "shards planned")
    assert float(planned[0]["value"][1]) == 4
    # The driver commits 3 of its 4 planned shards (steps 3, 7 and 11) and then no more: progress settles at 3/4.
    progress = wait_for(lambda: query(base, 'handsoff:progress:ratio{run_id="live"} == 0.75'), 30,
                        "progress of 3 committed / 4 planned shards")
    assert [r["metric"] for r in progress] == [{"__name__": "handsoff:progress:ratio", "run_id": "live"}]
    committed = query(base, 'handsoff:shards_committed:sum{run_id="live"}')
    assert [float(r["value"][1]) for r in committed] == [3]
    # The rule group that saw step 11's shard saw at least 120 pairs written, so a rule recording the counter instead
    # of its rate would read >= 120 from here on; the driver writes at most 40 pairs/s (10 per step of >= 0.25 s).
    rate = wait_for(lambda: [r for r in query(base, 'handsoff:samples_written:rate5m{run_id="live"}')
                             if float(r["value"][1]) > 0], 30, "a positive pairs/s recording rule")
    assert float(rate[0]["value"][1]) < 40
    # One series per run: the rule sums the driver's series over job and instance, keeping namespace and run_id only.
    assert [r["metric"] for r in rate] == [{"__name__": "handsoff:samples_written:rate5m", "run_id": "live"}]
    p50 = wait_for(lambda: query(base, 'handsoff:sample_uncertainty:p50_15m{run_id="live", task="segmentation"}'),
                   30, "the uncertainty quantile")
    assert 0.001 <= float(p50[0]["value"][1]) <= 0.03

    # The Pushgateway carries the end-of-run push and the schedule's success stamp.
    pushed = wait_for(lambda: query(base, 'handsoff_run_info{job="handsoff-live", run_id="live"}'), 30, "pushed run info")
    assert pushed[0]["metric"]["spec_hash"] == "abc123"
    stamp = wait_for(lambda: query(base, 'handsoff_schedule_last_success_timestamp_seconds{schedule="live-regen"}'),
                     30, "the schedule's success stamp")
    assert abs(float(stamp[0]["value"][1]) - time.time()) < 120

    rules = get_json(f"{base}/api/v1/rules")["data"]["groups"]
    assert {g["name"] for g in rules} == {"handsoff.recording", "handsoff.alerts"}
    unhealthy = [(r["name"], r.get("lastError")) for g in rules for r in g["rules"] if r["health"] != "ok"]
    assert unhealthy == [], unhealthy
