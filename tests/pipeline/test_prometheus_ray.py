"""A real Prometheus scrapes Ray's metrics port while the synthesize stage runs on Ray Data actors.

The actors record through `handsoff_ray.pipeline.metrics` (ray.util.metrics inside Ray), Ray exports
them on its metrics port with a `ray_` prefix, Prometheus (Debian's package, 127.0.0.1) scrapes that
port as the chart's PodMonitors do and evaluates deploy/prometheus/handsoff-rules.yaml on it.
"""

from __future__ import annotations

import subprocess
import threading

import pytest

from handsoff_ray.pipeline.stages import open_run
from tests.helm.test_prometheus_live import free_port, query, start_prometheus, wait_for
from tests.pipeline.runs import copy_run


@pytest.fixture
def prometheus_on(tmp_path):
    """start(port) -> base URL of a Prometheus scraping 127.0.0.1:port every second, with the shipped rules."""
    procs = []

    def start(target_port: int) -> str:
        proc, base = start_prometheus(tmp_path, [
            {"job_name": "ray", "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}])
        procs.append(proc)
        return base

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.ray
def test_prometheus_scrapes_ray_metrics_port_during_a_run(finished, tmp_path, prometheus_on):
    import ray

    from handsoff_ray.pipeline.ray_synthesize import run_synthesize_ray

    spec = copy_run(finished, tmp_path, synthesis={"num_samples": 240, "shard_size": 30, "batch_size": 2},
                    resources={"engine": "ray", "synthesis_actors": 2, "torch_threads": 1})
    import shutil

    shutil.rmtree(open_run(spec).path("dataset"))
    metrics_port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20, _metrics_export_port=metrics_port)
    try:
        base = prometheus_on(metrics_port)
        runner = threading.Thread(target=run_synthesize_ray, args=(spec,))
        runner.start()
        runner.join(timeout=300)
        assert not runner.is_alive()
        # Shard commits and pairs, as the actors counted them (the driver's own series, e.g. shards planned,
        # are served by jobs/entrypoint.py and tested in tests/helm/test_prometheus_live.py) ...
        committed = wait_for(lambda: [r for r in query(base, 'handsoff:shards_committed:sum{run_id="t"}')
                                      if float(r["value"][1]) == 8], 120, "8 committed shards")
        assert float(committed[0]["value"][1]) == 8
        # ... and every pair the actors wrote, summed over actors.
        written = wait_for(lambda: [r for r in query(base, 'sum(ray_handsoff_samples_written_total{run_id="t"})')
                                    if float(r["value"][1]) == 240], 120, "all 240 pairs counted")
        assert float(written[0]["value"][1]) == 240
        # The pairs/s rule evaluates on Ray's series too (its value depends on how much of the run Prometheus
        # saw rising: Ray exports every few seconds, and this run is seconds long).
        rate = wait_for(lambda: query(base, 'handsoff:samples_written:rate5m{run_id="t"}'), 60, "the pairs/s rule")
        assert float(rate[0]["value"][1]) >= 0
    finally:
        ray.shutdown()
