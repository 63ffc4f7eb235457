"""A real Prometheus scrapes Ray's metrics port while the synthesize stage runs on Ray Data actors.

The actors record through `handsoff_ray.pipeline.telemetry` (ray.util.metrics inside Ray), Ray exports
them on its metrics port with a `ray_` prefix, Prometheus (Debian's package, 127.0.0.1) scrapes that
port as the chart's PodMonitors do and evaluates deploy/prometheus/handsoff-rules.yaml on it.
"""

from __future__ import annotations

import shutil

import pytest

from handsoff_ray.pipeline.context import open_run
from tests.support import free_port, private_ray_args, prometheus, query, wait_for
from tests.pipeline.runs import copy_run


@pytest.mark.ray
def test_prometheus_scrapes_ray_metrics_port_during_a_run(finished, tmp_path):
    import ray

    from handsoff_ray.pipeline.run import run_stage

    spec = copy_run(finished, tmp_path, synthesis={"num_samples": 240, "shard_size": 30, "batch_size": 2},
                    resources={"engine": "ray", "synthesis_actors": 2, "torch_threads": 1})
    shutil.rmtree(open_run(spec).path("dataset"))
    metrics_port = free_port()
    ray.init(**private_ray_args(_metrics_export_port=metrics_port))
    try:
        with prometheus(tmp_path, [{"job_name": "ray",
                                    "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}]) as base:
            run_stage(spec, "synthesize", engine="ray")
            # Shard commits and pairs, as the actors counted them (the driver's own series, e.g. shards
            # planned, are served by jobs/entrypoint.py and tested in tests/helm/test_prometheus_live.py),
            # through the shipped recording rule ...
            wait_for(lambda: [r for r in query(base, 'handsoff:shards_committed:sum{run_id="t"}')
                              if float(r["value"][1]) == 8], 120, "8 committed shards")
            # ... and every pair the actors wrote, summed over actors.
            wait_for(lambda: [r for r in query(base, 'sum(ray_handsoff_samples_written_total{run_id="t"})')
                              if float(r["value"][1]) == 240], 120, "all 240 pairs counted")
            # The pairs/s rule yields a series for the run from Ray's ray_-prefixed counters too.
            wait_for(lambda: query(base, 'handsoff:samples_written:rate5m{run_id="t"}'), 60, "the pairs/s rule")
    finally:
        ray.shutdown()
