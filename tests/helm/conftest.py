"""Fixtures for the chart and monitoring tests: rendered ci/ scenarios, CRD schemas, Prometheus binaries.

Tools that come from apt (promtool, prometheus, prometheus-pushgateway) skip their tests with a reason when
absent, except under CI=true, where a missing tool fails: CI must prove them (.ci/run installs them). The same
holds for the CRD schemas in ../shared/schemas that the custom resources are validated against.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from tests.support import ROOT, need_binary  # noqa: F401 - re-exported for the chart tests

CHART = ROOT / "helm" / "handsoff-ray"
SCENARIOS = sorted((CHART / "ci").glob("*-values.yaml"))


def _shared_dir() -> Path:
    """../shared beside the checkout; for a clone of a local checkout (git clone . /tmp/ci), beside its origin."""
    candidates = [Path(os.environ["HANDSOFF_SHARED_DIR"])] if os.environ.get("HANDSOFF_SHARED_DIR") else []
    candidates.append(ROOT.parent / "shared")
    try:
        import subprocess

        origin = subprocess.run(["git", "-C", str(ROOT), "config", "--get", "remote.origin.url"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
        if origin and "://" not in origin and Path(origin).is_dir():
            candidates.append(Path(origin).resolve().parent / "shared")
    except (OSError, subprocess.SubprocessError):
        pass
    return next((c for c in candidates if (c / "schemas").is_dir()), candidates[0])


SCHEMAS = _shared_dir() / "schemas"
# The custom resources the chart and deploy/examples render (RayCluster: inside each RayJob).
CUSTOM_KINDS = {"RayJob", "RayCluster", "RayCronJob", "PodMonitor", "PrometheusRule"}
K8S_VERSION = "1.33.0"  # the Kubernetes version built-in kinds are validated against (kubernetes-validate)


def render(values: dict | None = None, *, name: str = "demo", namespace: str = "batch") -> list[dict]:
    """Every object the chart renders for `values`, in template order."""
    import helm_python as helm

    with helm.Chart.load(str(CHART)) as chart:
        out = chart.render(values or {}, name=name, namespace=namespace)
    return [doc for text in out.values() for doc in yaml.safe_load_all(text) if doc]


def load_scenario(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


@pytest.fixture(scope="session", params=SCENARIOS, ids=[p.name.removesuffix("-values.yaml") for p in SCENARIOS])
def scenario(request) -> tuple[str, dict, list[dict]]:
    values = load_scenario(request.param)
    return request.param.name, values, render(values)


@pytest.fixture(scope="session")
def crd_schemas() -> dict[str, dict]:
    """kind -> openAPIV3Schema of its v1 version, from ../shared/schemas. Absent: skip, except under CI=true,
    where CI must prove the custom resources (a fail); present but short of a kind the chart renders: fail."""
    if not SCHEMAS.is_dir():
        message = f"{SCHEMAS} is absent (the shared CRD schemas live beside the checkout; HANDSOFF_SHARED_DIR)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} (CI=true: CRD validation must run in CI)")
        pytest.skip(message)
    schemas = {}
    for path in SCHEMAS.rglob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        if crd.get("kind") != "CustomResourceDefinition":
            continue
        for version in crd["spec"]["versions"]:
            if version["name"] == "v1":
                schemas[crd["spec"]["names"]["kind"]] = version["schema"]["openAPIV3Schema"]
    missing = sorted(CUSTOM_KINDS - set(schemas))
    if missing:
        pytest.fail(f"{SCHEMAS} has no v1 CustomResourceDefinition for {missing}")
    return schemas
