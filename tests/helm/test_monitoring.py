"""Rules and dashboards: one source under deploy/, identical copies in the chart, every PromQL expression
accepted by promtool, and a promtool unit test for each alert."""

from __future__ import annotations

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
ALERTS = {"HandsOffRayJobFailed", "HandsOffNoShardCommitted", "HandsOffThroughputDrop", "HandsOffUncertaintyDrift",
          "HandsOffScheduledRunTooOld"}


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


class TestSources:
    def test_chart_copies_equal_the_deploy_sources(self):
        pairs = [(RULES, CHART / "files" / "rules" / RULES.name)]
        pairs += [(d, CHART / "files" / "dashboards" / d.name) for d in DASHBOARDS]
        assert len(list((CHART / "files" / "dashboards").glob("*.json"))) == len(DASHBOARDS)
        for source, copy in pairs:
            assert copy.read_bytes() == source.read_bytes(), f"{copy} differs from {source}: run `make sync-deploy`"

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
