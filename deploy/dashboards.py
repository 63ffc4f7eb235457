"""The Grafana dashboards as code, and the one command that writes every monitoring file the repo ships.

    make sync-deploy                       # = python deploy/dashboards.py
    python deploy/dashboards.py --check    # exit 1 naming each stale file (tests/helm/test_monitoring.py)

Dashboards are built with grafana-foundation-sdk (Grafana's own typed builders) and written to
deploy/grafana/ and to the chart's files/dashboards/; the Prometheus rules (deploy/prometheus/, hand-written
YAML, the source of truth for every handsoff:* series the dashboards read) are copied to the chart's
files/rules/. Helm reads only files inside the chart, hence the copies. Edit this file or the rules, never
the generated JSON.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard, heatmap, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, GridPos, VariableOption, VariableRefresh
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "handsoff-ray"
RULES = ROOT / "deploy" / "prometheus" / "handsoff-rules.yaml"

# Every panel and variable queries the datasource the user picks in the `datasource` variable.
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
# The selector every handsoff:* panel query carries (recording rules keep namespace and run_id).
RUN = 'namespace=~"$namespace", run_id=~"$run_id"'


def _query(ref: str, expr: str, legend: str = "") -> prometheus.Dataquery:
    return prometheus.Dataquery().ref_id(ref).datasource(DATASOURCE).expr(expr).legend_format(legend)


def _panel(builder, pid: int, title: str, description: str, unit: str, grid: tuple[int, int, int, int],
           *queries: prometheus.Dataquery):
    """One panel: id, title, unit, position (x, y, w, h on Grafana's 24-column grid) and its queries."""
    x, y, w, h = grid
    panel = (builder.id(pid).title(title).datasource(DATASOURCE).unit(unit)
             .grid_pos(GridPos(x=x, y=y, w=w, h=h)))
    if description:
        panel = panel.description(description)
    for q in queries:
        panel = panel.with_target(q)
    return panel


def _filter_variable(name: str, query: str) -> dashboard.QueryVariable:
    """A multi-select variable listing the values of one label, "All" (regex .*) selected by default."""
    return (dashboard.QueryVariable(name).datasource(DATASOURCE)
            .query({"query": query, "refId": name})
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .include_all(True).multi(True).all_value(".*")
            .current(VariableOption(text="All", value="$__all")))


def overview() -> dashboard.Dashboard:
    """HandsOff overview: throughput, progress, uncertainty, losses, failures, GPUs of the selected runs."""
    uncertainty = f'{RUN}, task=~"$task"'
    return (
        dashboard.Dashboard("HandsOff overview").uid("handsoff-overview").tags(["handsoff", "ray"])
        .description("HandsOff labeled-dataset generation on Ray: throughput, progress, uncertainty, losses, "
                     "failures, GPUs. Source: deploy/dashboards.py (generated; edit the source).")
        .timezone("browser").refresh("30s").time("now-6h", "now").editable()
        .with_variable(dashboard.DatasourceVariable("datasource").type("prometheus"))
        .with_variable(_filter_variable("namespace", "label_values(handsoff:shards_planned:max, namespace)"))
        .with_variable(_filter_variable(
            "run_id", 'label_values(handsoff:shards_planned:max{namespace=~"$namespace"}, run_id)'))
        .with_variable(_filter_variable(
            "task", 'label_values({__name__=~"(ray_)?handsoff_sample_uncertainty_count"}, task)'))
        .with_panel(_panel(
            timeseries.Panel(), 1, "Pairs per second",
            "Image+label pairs committed per second (5-minute rate) against the 1-hour average the throughput "
            "alert compares with.", "ops", (0, 0, 12, 8),
            _query("A", f"sum by (run_id) (handsoff:samples_written:rate5m{{{RUN}}})", "{{run_id}}"),
            _query("B", f"sum by (run_id) (handsoff:samples_written:rate1h{{{RUN}}})", "{{run_id}} (1 h average)")))
        .with_panel(_panel(
            stat.Panel(), 2, "Progress", "Shards committed / shards planned.", "percentunit", (12, 0, 6, 8),
            _query("A", f"handsoff:progress:ratio{{{RUN}}}", "{{run_id}}")))
        .with_panel(_panel(
            stat.Panel(), 3, "ETA",
            "Shards still to commit at the last 15 minutes' commit rate; empty while nothing is committed.",
            "s", (18, 0, 6, 8),
            _query("A", f"handsoff:eta:seconds{{{RUN}}}", "{{run_id}}")))
        .with_panel(_panel(
            timeseries.Panel(), 4, "Shards committed vs planned", "", "short", (0, 8, 12, 8),
            _query("A", f"handsoff:shards_committed:sum{{{RUN}}}", "committed {{run_id}}"),
            _query("B", f"handsoff:shards_planned:max{{{RUN}}}", "planned {{run_id}}")))
        .with_panel(_panel(
            heatmap.Panel().calculate(False).y_axis(heatmap.YAxisConfig().unit("short")), 5,
            "Uncertainty distribution",
            "Per-sample uncertainty (mean of the top JS-divergence pixels), new samples per bucket.",
            "short", (12, 8, 12, 8),
            _query("A", 'sum by (le) (rate({__name__=~"(ray_)?handsoff_sample_uncertainty_bucket", '
                        f"{uncertainty}}}[$__rate_interval]))", "{{le}}").format(PromQueryFormat.HEATMAP)))
        .with_panel(_panel(
            timeseries.Panel(), 6, "Uncertainty p50 / p90", "", "short", (0, 16, 12, 8),
            _query("A", f"handsoff:sample_uncertainty:p50_15m{{{uncertainty}}}", "p50 {{task}} {{run_id}}"),
            _query("B", f"handsoff:sample_uncertainty:p90_15m{{{uncertainty}}}", "p90 {{task}} {{run_id}}"),
            _query("C", f"handsoff:sample_uncertainty:mean6h{{{uncertainty}}}", "6 h mean {{task}} {{run_id}}")))
        .with_panel(_panel(
            timeseries.Panel(), 7, "Inversion loss", "Final LPIPS+MSE objective of the latest inverted batch.",
            "short", (12, 16, 6, 8),
            _query("A", f'max by (run_id) ({{__name__=~"(ray_)?handsoff_inversion_loss", {RUN}}})', "{{run_id}}")))
        .with_panel(_panel(
            timeseries.Panel(), 8, "Label-generator fit loss",
            "Best validation loss of the latest fitted ensemble member, per task.", "short", (18, 16, 6, 8),
            _query("A", f'max by (run_id, task) ({{__name__=~"(ray_)?handsoff_fit_loss", {RUN}}})',
                   "{{task}} {{run_id}}")))
        .with_panel(_panel(
            timeseries.Panel(), 9, "Failures and retries",
            "Retried writes, and RayJobs in Failed or Retrying (KubeRay operator metrics).", "short", (0, 24, 12, 8),
            _query("A", f"handsoff:write_retries:rate5m{{{RUN}}}", "object-store write retries/s {{run_id}}"),
            # KubeRay names the RayJob after the run, so run_id filters it by name.
            _query("B", 'max by (name, deployment_status) (kuberay_job_deployment_status{namespace=~"$namespace", '
                        'name=~"$run_id", deployment_status=~"Failed|Retrying"})',
                   "RayJob {{name}} {{deployment_status}}")))
        .with_panel(_panel(
            timeseries.Panel(), 10, "GPU utilisation",
            "Ray's own GPU metric, averaged over the GPUs of each RayCluster (named after its RayJob).",
            "percent", (12, 24, 12, 8),
            _query("A", 'avg by (ray_io_cluster) (ray_node_gpus_utilization{namespace=~"$namespace", '
                        'ray_io_cluster=~"($run_id).*"})', "{{ray_io_cluster}}")))
        .with_panel(_panel(
            table.Panel(), 11, "Stage wall time", "", "s", (0, 32, 24, 6),
            _query("A", f'max by (run_id, stage) ({{__name__=~"(ray_)?handsoff_stage_seconds", {RUN}}})')
            .instant().format(PromQueryFormat.TABLE)))
    )


DASHBOARDS = {"handsoff-overview.json": overview}


def rendered() -> dict[Path, bytes]:
    """Every generated or copied monitoring file -> its bytes."""
    out: dict[Path, bytes] = {}
    for name, build in DASHBOARDS.items():
        text = (JSONEncoder(sort_keys=False, indent=2).encode(build().build()) + "\n").encode()
        out[ROOT / "deploy" / "grafana" / name] = text
        out[CHART / "files" / "dashboards" / name] = text
    out[CHART / "files" / "rules" / RULES.name] = RULES.read_bytes()
    return out


def stale() -> list[Path]:
    """The files that differ from what the sources generate, plus stray dashboards no source makes."""
    files = rendered()
    bad = [p for p, data in files.items() if not p.is_file() or p.read_bytes() != data]
    for folder in (ROOT / "deploy" / "grafana", CHART / "files" / "dashboards"):
        bad += [p for p in sorted(folder.glob("*.json")) if p not in files]
    return bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is stale")
    args = parser.parse_args(argv)
    if args.check:
        bad = stale()
        for path in bad:
            print(f"stale: {path.relative_to(ROOT)} (run `make sync-deploy`)", file=sys.stderr)
        return 1 if bad else 0
    for path, data in rendered().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_bytes() != data:
            path.write_bytes(data)
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
