"""The chart renders every ci/ scenario into objects that the real schemas accept, and keeps its promises:
KubeRay's name limits, Pod Security "restricted", least-privilege RBAC, no secret values, a typo-proof
values schema."""

from __future__ import annotations

import copy

import jsonschema
import pytest
import yaml

from tests.helm.conftest import CHART, K8S_VERSION, SCENARIOS, load_scenario, render

CUSTOM_KINDS = {"RayJob", "RayCronJob", "RayCluster", "PodMonitor", "PrometheusRule"}


def strict(schema: dict) -> dict:
    """The CRD schema with unknown fields rejected, as the API server's strict field validation
    (kubectl's default) does; subtrees marked x-kubernetes-preserve-unknown-fields stay open."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
                node.setdefault("additionalProperties", False)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def crd_errors(obj: dict, schemas: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(strict(schemas[obj["kind"]]))
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]


def embedded_objects(docs: list[dict]) -> list[dict]:
    """Objects carried inside others: the launcher's RayJob template, each RayJob's RayCluster."""
    out = []
    for doc in docs:
        if doc["kind"] == "ConfigMap" and "rayjob.yaml" in doc.get("data", {}):
            out.append(yaml.safe_load(doc["data"]["rayjob.yaml"]))
    for job in [d for d in docs + out if d["kind"] == "RayJob"]:
        out.append({"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": job["metadata"]["name"]},
                    "spec": job["spec"]["rayClusterSpec"]})
    return out


def pod_specs(doc: dict) -> list[tuple[str, dict]]:
    """(where, pod spec) for every pod the object will create."""
    if doc["kind"] == "CronJob":
        return [("cronjob", doc["spec"]["jobTemplate"]["spec"]["template"]["spec"])]
    if doc["kind"] not in ("RayJob", "RayCronJob"):
        return []
    spec = doc["spec"]["jobTemplate"] if doc["kind"] == "RayCronJob" else doc["spec"]
    cluster = spec["rayClusterSpec"]
    pods = [("submitter", spec["submitterPodTemplate"]["spec"]), ("head", cluster["headGroupSpec"]["template"]["spec"])]
    pods += [(f"worker {g['groupName']}", g["template"]["spec"]) for g in cluster["workerGroupSpecs"]]
    return pods


class TestScenarios:
    def test_lint_is_clean(self, scenario):
        import helm_python as helm

        name, values, _ = scenario
        report = helm.lint(str(CHART), values, strict=True, kube_version=f"v{K8S_VERSION}")
        assert report["errors"] == [], report
        assert [m for m in report["messages"] if m["severity"] >= 2] == [], report  # info ("icon") only

    def test_builtin_kinds_pass_strict_kubernetes_schemas(self, scenario):
        import kubernetes_validate

        _, _, docs = scenario
        builtin = [d for d in docs if d["kind"] not in CUSTOM_KINDS]
        assert builtin, "every scenario renders at least its spec ConfigMap"
        for doc in builtin:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises on any unknown or mistyped field

    def test_custom_resources_match_crd_schemas(self, scenario, crd_schemas):
        _, _, docs = scenario
        custom = [d for d in docs + embedded_objects(docs) if d["kind"] in CUSTOM_KINDS]
        assert {d["kind"] for d in custom} & {"RayJob", "RayCronJob"}, "a run or a schedule is always rendered"
        for doc in custom:
            assert crd_errors(doc, crd_schemas) == [], f"{doc['kind']} {doc['metadata']['name']}"

    def test_pods_meet_pod_security_restricted(self, scenario):
        _, _, docs = scenario
        pods = [p for d in docs + embedded_objects(docs) for p in pod_specs(d)]
        assert pods
        for where, pod in pods:
            psc = pod["securityContext"]
            assert psc["runAsNonRoot"] is True and psc["seccompProfile"]["type"] == "RuntimeDefault", where
            for c in pod["containers"]:
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False, where
                assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"], where
                assert set(c["resources"]) == {"requests", "limits"}, f"{where}: requests and limits"
                assert {"cpu", "memory"} <= set(c["resources"]["limits"]), where

    def test_no_secret_values_in_rendered_objects(self, scenario):
        _, values, docs = scenario
        assert not [d for d in docs if d["kind"] == "Secret"]
        text = yaml.safe_dump_all(docs)
        for key in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            for line in text.splitlines():
                assert not (key in line and "value:" in line), line  # only secretKeyRef / envFrom


class TestRayJob:
    def job(self, values=None, **kw) -> dict:
        return next(d for d in render(values, **kw) if d["kind"] == "RayJob")

    def test_run_id_is_the_rayjob_name_and_reaches_the_driver(self):
        job = self.job()
        env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
        assert env["HANDSOFF_RUN_ID"] == job["metadata"]["name"] == "demo-handsoff-ray"
        assert job["spec"]["entrypoint"] == "python /opt/handsoff/jobs/entrypoint.py /etc/handsoff/spec.yaml"
        head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
        assert {"name": "jobspec", "mountPath": "/etc/handsoff", "readOnly": True} in head["containers"][0]["volumeMounts"]

    def test_gpu_workers_request_what_they_limit(self):
        values = load_scenario(CHART / "ci" / "02-gpu-cluster-values.yaml")
        groups = self.job(values)["spec"]["rayClusterSpec"]["workerGroupSpecs"]
        assert [g["groupName"] for g in groups] == ["a100", "l4"]
        for g in groups:
            res = g["template"]["spec"]["containers"][0]["resources"]
            assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] == "1"
            assert g["minReplicas"] == 0 and g["maxReplicas"] >= g["replicas"]
        assert groups[0]["template"]["spec"]["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-tesla-a100"}
        assert "podAntiAffinity" in groups[0]["template"]["spec"]["affinity"]

    def test_train_gan_scenario_runs_train_gan_on_gpu_workers_with_a_valid_spec(self):
        from handsoff_ray.config import parse_spec

        values = load_scenario(CHART / "ci" / "06-train-gan-values.yaml")
        job = self.job(values)
        assert job["spec"]["entrypoint"] == "python /opt/handsoff/jobs/entrypoint.py --train-gan /etc/handsoff/spec.yaml"
        groups = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
        gpus = sum(g["replicas"] * int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
                   for g in groups)
        spec = parse_spec(values["spec"], source="06-train-gan-values.yaml")  # the spec the chart mounts validates
        assert gpus == spec.resources.num_workers and spec.resources.use_gpu
        assert spec.gan.batch_size % spec.resources.num_workers == 0

    def test_deletion_rules_free_workers_then_cluster_then_the_rayjob(self):
        spec = self.job()["spec"]
        assert "shutdownAfterJobFinishes" not in spec  # KubeRay rejects both together
        for status in ("SUCCEEDED", "FAILED"):
            ttl = {r["policy"]: r["condition"]["ttlSeconds"] for r in spec["deletionStrategy"]["deletionRules"]
                   if r["condition"]["jobStatus"] == status}
            assert ttl["DeleteWorkers"] < ttl["DeleteCluster"] < ttl["DeleteSelf"]

    def test_shutdown_mode_uses_a_ttl_instead(self):
        spec = self.job({"rayJob": {"cleanup": {"mode": "shutdown", "ttlSecondsAfterFinished": 120}}})["spec"]
        assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] == 120
        assert "deletionStrategy" not in spec

    def test_credentials_come_from_secret_references(self):
        values = load_scenario(CHART / "ci" / "02-gpu-cluster-values.yaml")
        head = self.job(values)["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert head["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
        token = next(e for e in head["env"] if e["name"] == "AWS_SESSION_TOKEN")
        assert token["valueFrom"] == {"secretKeyRef": {"name": "s3-session", "key": "token"}}

    @pytest.mark.parametrize("release", ["x", "a-release-name-that-is-far-too-long-for-kuberay-limits-1234567890"])
    def test_names_fit_kuberay_limits(self, release):
        docs = render({"schedule": {"enabled": True, "mode": "raycronjob"}}, name=release)
        docs += render({"schedule": {"enabled": True, "mode": "cronjob"}}, name=release)
        limits = {"RayJob": 47, "RayCronJob": 36}
        for doc in docs + embedded_objects(docs):
            assert len(doc["metadata"]["name"]) <= limits.get(doc["kind"], 63), doc["metadata"]["name"]
            assert not doc["metadata"]["name"].endswith("-")
        template = next(d for d in embedded_objects(docs) if d["kind"] == "RayJob")
        assert len(template["metadata"]["name"]) + len("-202611251530") <= 47  # the launcher's run names fit


class TestSchedule:
    def test_cronjob_forbids_overlap_and_launches_through_the_cli(self):
        docs = render(load_scenario(CHART / "ci" / "03-scheduled-cronjob-values.yaml"))
        assert not [d for d in docs if d["kind"] == "RayJob"]  # runOnInstall: false
        cron = next(d for d in docs if d["kind"] == "CronJob")
        assert cron["spec"]["concurrencyPolicy"] == "Forbid" and cron["spec"]["timeZone"] == "Europe/Berlin"
        assert cron["spec"]["startingDeadlineSeconds"] == 600
        c = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
        assert c["command"] == ["handsoff", "k8s", "launch"] and "--namespace=batch" in c["args"]
        template = next(d for d in embedded_objects(docs) if d["kind"] == "RayJob")
        assert template["metadata"]["labels"]["handsoff.io/schedule"] == cron["metadata"]["name"]

    def test_launcher_role_is_least_privilege(self):
        docs = render({"schedule": {"enabled": True}})
        role = next(d for d in docs if d["kind"] == "Role")
        assert role["rules"] == [{"apiGroups": ["ray.io"], "resources": ["rayjobs"],
                                  "verbs": ["get", "list", "watch", "create", "delete"]}]
        binding = next(d for d in docs if d["kind"] == "RoleBinding")
        cron = next(d for d in docs if d["kind"] == "CronJob")
        sa = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["serviceAccountName"]
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": "batch"}]
        assert binding["roleRef"]["name"] == role["metadata"]["name"]

    def test_raycronjob_children_delete_themselves(self):
        docs = render(load_scenario(CHART / "ci" / "04-scheduled-raycronjob-values.yaml"))
        cron = next(d for d in docs if d["kind"] == "RayCronJob")
        template = cron["spec"]["jobTemplate"]
        assert "shutdownAfterJobFinishes" not in template  # forced to deletionRules despite cleanup.mode=shutdown
        assert {r["policy"] for r in template["deletionStrategy"]["deletionRules"]} >= {"DeleteSelf"}
        env = yaml.safe_load(template["runtimeEnvYAML"])["env_vars"]
        assert env == {"HANDSOFF_SEED_OFFSET": "from-run-id", "HANDSOFF_SCHEDULE": cron["metadata"]["name"]}


class TestMonitoringObjects:
    def test_podmonitors_keep_the_cluster_label_and_carry_the_release_label(self):
        docs = render()
        monitors = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PodMonitor"}
        assert set(monitors) == {"demo-handsoff-ray-head", "demo-handsoff-ray-worker"}
        head = monitors["demo-handsoff-ray-head"]
        assert head["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert [e["port"] for e in head["spec"]["podMetricsEndpoints"]] == ["metrics", "driver-metrics"]
        for e in head["spec"]["podMetricsEndpoints"]:
            assert e["relabelings"][0]["targetLabel"] == "ray_io_cluster"

    def test_dashboard_configmaps_use_the_configured_label(self):
        docs = render({"monitoring": {"dashboards": {"label": "my_dash", "labelValue": "yes"}}})
        cm = next(d for d in docs if d["kind"] == "ConfigMap" and "handsoff-overview.json" in d["data"])
        assert cm["metadata"]["labels"]["my_dash"] == "yes"
        default = next(d for d in render() if d["kind"] == "ConfigMap" and "handsoff-overview.json" in d["data"])
        assert default["metadata"]["labels"]["grafana_dashboard"] == "1"

    def test_monitoring_off_renders_no_operator_objects(self):
        docs = render(load_scenario(CHART / "ci" / "05-monitoring-off-values.yaml"))
        assert not [d for d in docs if d["kind"] in ("PodMonitor", "PrometheusRule")]
        assert not [d for d in docs if d["kind"] == "ConfigMap" and "handsoff-overview.json" in d.get("data", {})]


class TestNegative:
    def test_a_mistyped_crd_field_is_caught(self, crd_schemas):
        job = copy.deepcopy(next(d for d in render() if d["kind"] == "RayJob"))
        group = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
        group["minReplica"] = group.pop("minReplicas")  # typo, and a required field gone
        errors = crd_errors(job, crd_schemas)
        assert any("'minReplica' was unexpected" in e for e in errors), errors
        assert any("'minReplicas' is a required property" in e for e in errors), errors
        job["spec"]["backoffLimit"] = "two"
        assert any(e.startswith("spec.backoffLimit") for e in crd_errors(job, crd_schemas))

    def test_a_mistyped_builtin_field_is_caught(self):
        import kubernetes_validate

        cron = copy.deepcopy(next(d for d in render({"schedule": {"enabled": True}}) if d["kind"] == "CronJob"))
        cron["spec"]["concurrencyPolicyy"] = "Forbid"
        with pytest.raises(kubernetes_validate.ValidationError, match="concurrencyPolicyy"):
            kubernetes_validate.validate(cron, K8S_VERSION, strict=True)

    @pytest.mark.parametrize("values, message", [
        ({"workerGroup": []}, "additional properties 'workerGroup' not allowed"),
        ({"schedule": {"mode": "k8s-cronjob"}}, "/schedule/mode"),
        ({"rayJob": {"backoffLimit": -1}}, "/rayJob/backoffLimit"),
        ({"rayJob": {"cleanup": {"mode": "never"}}}, "/rayJob/cleanup/mode"),
        ({"workerGroups": [{"name": "gpu", "replicas": 1, "minReplicas": 0, "maxReplicas": 2,
                            "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}, "requests"),
        ({"objectStore": {"env": {"AWS_SECRET_ACCESS_KEY": "hunter2"}}}, "invalid propertyName 'AWS_SECRET_ACCESS_KEY'"),
        ({"monitoring": {"podMonitor": {"interval": 30}}}, "/monitoring/podMonitor/interval"),
        ({"schedule": {"seedOffset": "random"}}, "/schedule/seedOffset"),
    ])
    def test_values_schema_rejects_bad_values(self, values, message):
        import helm_python as helm

        with helm.Chart.load(str(CHART)) as chart:
            with pytest.raises(helm.HelmValuesError) as err:
                chart.validate_schema(values)
        assert message in str(err.value)

    def test_every_ci_scenario_passes_the_values_schema(self):
        import helm_python as helm

        assert len(SCENARIOS) == 6
        with helm.Chart.load(str(CHART)) as chart:
            for path in SCENARIOS:
                chart.validate_schema(load_scenario(path))


@pytest.mark.parametrize("name", ["rayjob.yaml", "cronjob.yaml"])
def test_plain_example_manifests_validate(name, crd_schemas):
    import kubernetes_validate

    from tests.helm.conftest import ROOT

    docs = [d for d in yaml.safe_load_all((ROOT / "deploy" / "examples" / name).read_text()) if d]
    assert docs
    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS:
            assert crd_errors(doc, crd_schemas) == [], doc["kind"]
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
