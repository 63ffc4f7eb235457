"""Every HandsOff metric, defined once; recorded through Ray inside Ray processes, prometheus-client elsewhere.

    from handsoff_ray.pipeline.telemetry import metrics
    metrics().inc("samples_written", 500, run_id="faces-16")
    metrics().observe("shard_commit_seconds", 1.7, run_id="faces-16")

Inside a Ray worker or actor, values go to `ray.util.metrics`, which Ray's metrics port exports while the
run is going (Prometheus scrapes it; the Helm chart's PodMonitors point at it). In a plain process (the
CLI, the local engine) they go to a prometheus-client registry that `push_to_gateway` sends to a
Pushgateway when the batch run ends (`HANDSOFF_PUSHGATEWAY=host:port`), so finished runs stay visible.
All names carry the `handsoff_` prefix; counters get Prometheus' `_total` suffix from both backends.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["DEFINITIONS", "MetricDef", "Metrics", "metrics", "push_to_gateway"]

_PREFIX = "handsoff_"
_SECONDS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)
_UNCERTAINTY = (1e-5, 1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)


@dataclass(frozen=True)
class MetricDef:
    kind: str  # counter | gauge | histogram
    help: str
    labels: tuple[str, ...] = ("run_id",)
    buckets: tuple[float, ...] | None = None


DEFINITIONS: dict[str, MetricDef] = {
    "samples_written": MetricDef("counter", "Synthetic image+label pairs committed to storage."),
    "shards_committed": MetricDef("counter", "Parquet shards committed (visible under their final name)."),
    "shards_planned": MetricDef("gauge", "Shards the synthesize stage will have written when done."),
    "shard_commit_seconds": MetricDef("histogram", "Wall time to synthesise and commit one shard.", buckets=_SECONDS),
    "write_retries": MetricDef("counter", "Object-store writes retried after a failure."),
    "sample_uncertainty": MetricDef("histogram", "Per-sample image uncertainty score.", ("run_id", "task"),
                                    buckets=_UNCERTAINTY),
    "inversion_loss": MetricDef("gauge", "Final inversion objective of the latest inverted batch (mean)."),
    "images_inverted": MetricDef("counter", "Labeled images inverted into W+."),
    "fit_loss": MetricDef("gauge", "Best validation loss of the latest fitted ensemble member.", ("run_id", "task")),
    "members_fitted": MetricDef("counter", "Label-generator ensemble members fitted."),
    "stage_seconds": MetricDef("gauge", "Wall time of the latest run of a stage.", ("run_id", "stage")),
    "run_info": MetricDef("gauge", "1 for the run; its labels name the spec.", ("run_id", "spec_hash")),
}


def _in_ray_process() -> bool:
    try:
        import ray

        return ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE
    except Exception:  # noqa: BLE001 - no Ray, or not initialised: use prometheus-client
        return False


class Metrics:
    """Lazily created metric objects for one backend ("ray" or "prometheus")."""

    def __init__(self, backend: str):
        self.backend = backend
        self._objects: dict[str, object] = {}
        if backend == "prometheus":
            from prometheus_client import CollectorRegistry

            self.registry = CollectorRegistry()

    def _get(self, name: str):
        if name not in self._objects:
            d = DEFINITIONS[name]
            full = _PREFIX + name
            if self.backend == "ray":
                from ray.util import metrics as rm

                cls = {"counter": rm.Counter, "gauge": rm.Gauge, "histogram": rm.Histogram}[d.kind]
                kw = {"boundaries": list(d.buckets)} if d.kind == "histogram" else {}
                self._objects[name] = cls(full, description=d.help, tag_keys=d.labels, **kw)
            else:
                import prometheus_client as pc

                cls = {"counter": pc.Counter, "gauge": pc.Gauge, "histogram": pc.Histogram}[d.kind]
                kw = {"buckets": d.buckets} if d.kind == "histogram" else {}
                self._objects[name] = cls(full, d.help, d.labels, registry=self.registry, **kw)
        return self._objects[name]

    def _call(self, name: str, method: str, value: float, labels: dict[str, str]) -> None:
        d = DEFINITIONS[name]
        missing = set(d.labels) - set(labels)
        if missing:
            raise ValueError(f"metric {name} needs labels {sorted(missing)}")
        m = self._get(name)
        tags = {k: str(labels[k]) for k in d.labels}
        if self.backend == "ray":
            getattr(m, method)(value, tags=tags)
        else:
            getattr(m.labels(**tags), method)(value)

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        self._call(name, "inc", value, labels)

    def set(self, name: str, value: float, **labels: str) -> None:
        self._call(name, "set", value, labels)

    def observe(self, name: str, value: float, **labels: str) -> None:
        self._call(name, "observe", value, labels)


_BACKENDS: dict[str, Metrics] = {}


def metrics() -> Metrics:
    """The recorder for this process (Ray inside Ray workers and actors, prometheus-client elsewhere)."""
    backend = "ray" if _in_ray_process() else "prometheus"
    if backend not in _BACKENDS:
        _BACKENDS[backend] = Metrics(backend)
    return _BACKENDS[backend]


def push_to_gateway(job: str, *, gateway: str | None = None) -> bool:
    """Push this process's prometheus-client metrics to a Pushgateway; False when none is configured."""
    gateway = gateway or os.environ.get("HANDSOFF_PUSHGATEWAY")
    if not gateway or "prometheus" not in _BACKENDS:
        return False
    import prometheus_client

    prometheus_client.push_to_gateway(gateway, job=job, registry=_BACKENDS["prometheus"].registry)
    return True
