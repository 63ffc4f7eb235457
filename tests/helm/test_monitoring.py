"""Rules and dashboards: one source (deploy/dashboards.py, deploy/prometheus/), generated files up to date,
every metric name a series the code exports, a recording rule defines or Ray/KubeRay exports, every PromQL
expression accepted by promtool, and a promtool unit test for each alert."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helm.conftest import CHART, ROOT, need_binary, render

RULES = ROOT / "deploy" / "prometheus" / "handsoff-rules.yaml"
DASHBOARDS = sorted((ROOT / "deploy" / "grafana").glob("*.json"))
RULE_TESTS = Path(__file__).parent / "promtool" / "handsoff-rules_test.yaml"
# What Grafana substitutes before a query reaches Prometheus: all-values regexes and a rate window.
GRAFANA_VARIABLES = {"$namespace": ".*", "$run_id": ".*", "$task": ".*", "$__rate_interval": "5m"}
# Series from outside this repo that the dashboards may read: name -> who exports it.
EXTERNAL_METRICS = {"ray_node_gpus_utilization": "Ray's node metrics (metrics export port)",
                    "kuberay_job_deployment_status": "the KubeRay operator's metrics"}
ALERTS = {"HandsOffRayJobFailed", "HandsOffNoShardCommitted", "HandsOffThroughputDrop", "HandsOffUncertaintyDrift",
          "HandsOffScheduledRunTooOld"}


def load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dashboard_exprs(path: Path) -> list[tuple[str, str]]:
    """(panel title, expression with Grafana's variables substituted) for every panel target."""
    out = []
    for panel in json.loads(path.read_text())["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for var, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(var, value)
            assert "$" not in expr, f"{panel['title']}: unknown Grafana variable in {target['expr']}"
            out.append((panel["title"], expr))
    return out


def variable_exprs(path: Path) -> list[tuple[str, str]]:
    """(variable name, the series selector of its label_values(selector, label) query)."""
    out = []
    for var in json.loads(path.read_text())["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        match = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
        assert match, f"variable {var['name']}: not a label_values(selector, label) query: {query}"
        out.append((var["name"], match.group(1).replace("$namespace", ".*")))
    return out


# PromQL words that look like metric names: modifiers, set operators.
_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                 "offset"}


def metric_names(expr: str) -> set[str]:
    """The series names one PromQL expression reads: bare names, and {__name__=~"(ray_)?NAME"} selectors (the
    one regex shape the rules use, for Ray's "ray_" prefix; any other __name__ matcher fails the test)."""
    names = set()
    for matcher in re.findall(r"__name__\s*=~?\s*\"([^\"]*)\"", expr):
        match = re.fullmatch(r"\(ray_\)\?([a-zA-Z_:][a-zA-Z0-9_:]*)", matcher)
        assert match, f"unrecognised __name__ matcher {matcher!r} in {expr}"
        names.add(match.group(1))
    rest = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    rest = re.sub(r"\[[^\]]*\]", " ", rest)  # range windows
    rest = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", rest)  # label lists
    for match in re.finditer(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", rest):
        if not match.group(2) and match.group(1) not in _PROMQL_WORDS:  # a name followed by "(" is a function
            names.add(match.group(1))
    return names


def exported_metric_names() -> set[str]:
    """Every sample name the code exports: each telemetry.DEFINITIONS metric recorded once through
    prometheus-client (counters gain _total, histograms _bucket/_sum/_count), plus the entrypoint's gauge."""
    import prometheus_client

    from handsoff_ray.pipeline.telemetry import DEFINITIONS, Metrics

    m = Metrics("prometheus")
    for name, d in DEFINITIONS.items():
        record = {"counter": m.inc, "gauge": m.set, "histogram": m.observe}[d.kind]
        record(name, 1.0, **{label: "x" for label in d.labels})
    registries = [m.registry]
    entrypoint = load_module(ROOT / "jobs" / "entrypoint.py", "handsoff_jobs_entrypoint")
    real_push = prometheus_client.push_to_gateway
    prometheus_client.push_to_gateway = lambda gateway, job, registry, **kw: registries.append(registry)
    try:
        entrypoint.push_schedule_success("gateway:9091", "nightly")
    finally:
        prometheus_client.push_to_gateway = real_push
    assert len(registries) == 2, "push_schedule_success pushed nothing"
    return {s.name for r in registries for family in r.collect() for s in family.samples}


class TestSources:
    def test_generated_files_are_up_to_date(self):
        generator = load_module(ROOT / "deploy" / "dashboards.py", "handsoff_deploy_dashboards")
        stale = [str(p.relative_to(ROOT)) for p in generator.stale()]
        assert not stale, f"{stale} differ from deploy/dashboards.py and deploy/prometheus/: run `make sync-deploy`"
        assert sorted(p.name for p in DASHBOARDS) == sorted(generator.DASHBOARDS)

    def test_every_metric_is_exported_recorded_or_external(self):
        groups = yaml.safe_load(RULES.read_text())["groups"]
        recorded = {r["record"] for g in groups for r in g["rules"] if "record" in r}
        known = exported_metric_names() | recorded | set(EXTERNAL_METRICS)
        exprs = [(f"rule {r.get('record') or r['alert']}", r["expr"]) for g in groups for r in g["rules"]]
        for d in DASHBOARDS:
            exprs += [(f"{d.name}: {title}", e) for title, e in dashboard_exprs(d) + variable_exprs(d)]
        unknown = {(where, name) for where, expr in exprs for name in metric_names(expr) - known}
        assert not unknown, f"series nothing exports or records: {sorted(unknown)}"
        used = {name for _, expr in exprs for name in metric_names(expr)}
        assert {"handsoff_samples_written_total", "handsoff_sample_uncertainty_bucket", "handsoff:progress:ratio",
                "ray_node_gpus_utilization"} <= used  # the parser sees both selector shapes

    def test_metric_names_reads_bare_and_regex_selectors(self):
        expr = ('sum by (run_id) (rate({__name__=~"(ray_)?handsoff_a_total", run_id=~".*"}[5m])) '
                '/ on (run_id) (handsoff:b:max > 0) and time() - foo_seconds offset 5m > 1e-09')
        assert metric_names(expr) == {"handsoff_a_total", "handsoff:b:max", "foo_seconds"}
        with pytest.raises(AssertionError, match="unrecognised"):
            metric_names('{__name__=~"handsoff_.*"}')

    def test_prometheusrule_carries_the_source_rules(self):
        rule = next(d for d in render() if d["kind"] == "PrometheusRule")
        assert rule["spec"] == yaml.safe_load(RULES.read_text())

    def test_rules_define_every_alert_the_issue_asks_for(self):
        groups = yaml.safe_load(RULES.read_text())["groups"]
        alerts = {r["alert"] for g in groups for r in g["rules"] if "alert" in r}
        assert alerts == ALERTS

    def test_overview_dashboard_has_the_promised_panels(self):
        dash = json.loads((ROOT / "deploy" / "grafana" / "handsoff-overview.json").read_text())
        titles = {p["title"] for p in dash["panels"]}
        assert titles >= {"Pairs per second", "Shards committed vs planned", "ETA", "Uncertainty distribution",
                          "Inversion loss", "Label-generator fit loss", "Failures and retries", "GPU utilisation"}
        exprs = " ".join(e for _, e in dashboard_exprs(ROOT / "deploy" / "grafana" / "handsoff-overview.json"))
        assert "ray_node_gpus_utilization" in exprs  # GPU use from Ray's own metrics
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids))


class TestPromtool:
    def test_rules_pass_promtool_check(self):
        promtool = need_binary("promtool")
        res = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
        assert res.returncode == 0, res.stdout + res.stderr

    def test_dashboard_expressions_pass_promtool_check(self, tmp_path):
        promtool = need_binary("promtool")
        exprs = [e for d in DASHBOARDS for e in dashboard_exprs(d)]
        assert len(exprs) >= 10
        wrapped = {"groups": [{"name": "dashboard", "rules": [
            {"record": f"dashboard:{re.sub(r'[^a-z0-9]+', '_', title.lower())}:{i}", "expr": expr}
            for i, (title, expr) in enumerate(exprs)]}]}
        path = tmp_path / "dashboard-rules.yaml"
        path.write_text(yaml.safe_dump(wrapped))
        res = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
        assert res.returncode == 0, res.stdout + res.stderr
        assert f"SUCCESS: {len(exprs)} rules found" in res.stdout

    def test_promtool_rejects_a_broken_expression(self, tmp_path):
        promtool = need_binary("promtool")
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [
            {"record": "x:y", "expr": "sum by (run_id (rate(handsoff_samples_written_total[5m]))"}]}]}))
        res = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
        assert res.returncode != 0 and "parse error" in res.stdout + res.stderr

    def test_each_alert_has_a_passing_promtool_unit_test(self):
        promtool = need_binary("promtool")
        tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
        assert tested == ALERTS
        res = subprocess.run([promtool, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "SUCCESS" in res.stdout
