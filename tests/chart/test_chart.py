"""Tests for charts/featureenv-operator, linted and rendered by real Helm (helm-python-sdk)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from chartlib import CHART, NAMESPACE, REPO, Render, find

EXPECTED_CRDS = ["featureenvironmentclasses.yaml", "featureenvironments.yaml", "rdspools.yaml"]


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(docs)["env"]}


# ---------------------------------------------------------------- lint and render


@pytest.mark.parametrize(
    "values",
    [
        {"clusterId": "test-cluster"},
        {"clusterId": "test-cluster", "serviceAccount": {"roleArn": "arn:aws:iam::123456789012:role/featureenv"}},
        # Exactly the values of the README's `helm install` example.
        {"clusterId": "prod-eks-1", "serviceAccount": {"roleArn": "arn:aws:iam::123456789012:role/featureenv-operator"}},
        {"clusterId": "test-cluster", "metrics": {"serviceMonitor": {"enabled": True}}},
        {"clusterId": "test-cluster", "defaultClass": {"create": True, "spec": {"ami": {"selectorTerms": [{"id": "ami-1"}]}}},
         "defaultPool": {"create": True, "spec": {"source": {"dbInstanceIdentifier": "integration-db"}, "warm": 1, "maxSize": 5}}},
    ],
    ids=["defaults", "irsa", "readme-install-example", "servicemonitor", "default-class-and-pool"],
)
def test_lint_strict_passes(values: dict[str, Any]) -> None:
    report = helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE)
    assert report["errors"] == [], report
    assert not [m for m in report["messages"] if m["severity"] >= 2], report["messages"]


def test_default_render_objects(render: Render) -> None:
    docs = render()
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    assert kinds == [
        ("ClusterRole", "featureenv-featureenv-operator"),
        ("ClusterRoleBinding", "featureenv-featureenv-operator"),
        ("Deployment", "featureenv-featureenv-operator"),
        ("PodDisruptionBudget", "featureenv-featureenv-operator"),
        ("Role", "featureenv-featureenv-operator-leader-election"),
        ("RoleBinding", "featureenv-featureenv-operator-leader-election"),
        ("Service", "featureenv-featureenv-operator-metrics"),
        ("ServiceAccount", "featureenv-featureenv-operator"),
    ]
    for d in docs:
        if d["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert d["metadata"]["namespace"] == NAMESPACE, d["kind"]


def test_deployment_replicas_probes_and_config(render: Render) -> None:
    docs = render()
    dep = find(docs, "Deployment")
    assert dep["spec"]["replicas"] == 2
    c = container(docs)
    assert c["args"] == ["run"]
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    env = env_of(docs)
    assert env["FEATUREENV_CLUSTER_ID"] == "test-cluster"
    assert env["FEATUREENV_LOG_FORMAT"] == "json"
    assert env["FEATUREENV_LEADER_ELECTION"] == "true"
    assert env["FEATUREENV_HTTP_ADDR"] == "0.0.0.0:8080"
    assert env["FEATUREENV_FAST_POLL_INTERVAL"] == "2s"
    assert env["FEATUREENV_SLOW_POLL_INTERVAL"] == "60s"
    assert env["FEATUREENV_JANITOR_INTERVAL"] == "5m"
    assert env["FEATUREENV_JANITOR_GRACE_PERIOD"] == "10m"
    assert env["FEATUREENV_LEASE_NAME"] == "featureenv-operator"
    assert env["FEATUREENV_LEASE_DURATION"] == "15s"
    assert env["FEATUREENV_SSM_PREFIX"] == "/featureenv"
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert "AWS_REGION" not in env and "AWS_ENDPOINT_URL" not in env
    env = env_of(render({"region": "eu-west-1", "replicaCount": 3, "config": {"logFormat": "text", "leaderElection": False}}))
    assert env["AWS_REGION"] == "eu-west-1"
    assert env["FEATUREENV_LOG_FORMAT"] == "text"
    assert env["FEATUREENV_LEADER_ELECTION"] == "false"
    assert find(render({"replicaCount": 3}), "Deployment")["spec"]["replicas"] == 3


def test_security_context_hardening(render: Render) -> None:
    docs = render()
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container(docs)["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "hostNetwork" not in pod and "hostPID" not in pod


def test_topology_spread_and_pdb(render: Render) -> None:
    docs = render()
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    selector = find(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    keys = [t["topologyKey"] for t in pod["topologySpreadConstraints"]]
    assert keys == ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
    assert all(t["labelSelector"]["matchLabels"] == selector for t in pod["topologySpreadConstraints"])
    pdb = find(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    assert pdb["spec"]["maxUnavailable"] == 1
    assert "PodDisruptionBudget" not in {d["kind"] for d in render({"podDisruptionBudget": {"enabled": False}})}


def test_irsa_annotation(render: Render) -> None:
    arn = "arn:aws:iam::123456789012:role/featureenv-operator"
    sa = find(render({"serviceAccount": {"roleArn": arn}}), "ServiceAccount")
    assert sa["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": arn}
    assert "annotations" not in find(render(), "ServiceAccount")["metadata"]
    assert "WARNING: serviceAccount.roleArn is empty" in render(notes=True)
    assert "WARNING" not in render({"serviceAccount": {"roleArn": arn}}, notes=True)


def test_service_and_servicemonitor(render: Render) -> None:
    docs = render()
    svc = find(docs, "Service")
    assert svc["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]
    assert svc["spec"]["selector"] == find(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert "ServiceMonitor" not in {d["kind"] for d in docs}
    docs = render({"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}}})
    sm = find(docs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    assert sm["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}]
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()


def test_default_class_and_pool(render: Render) -> None:
    assert not {"FeatureEnvironmentClass", "RdsPool"} & {d["kind"] for d in render()}
    example_class = yaml.safe_load((REPO / "examples/featureenvironmentclass.yaml").read_text())
    example_pool = yaml.safe_load((REPO / "examples/rdspool.yaml").read_text())
    docs = render({
        "defaultClass": {"create": True, "spec": example_class["spec"]},
        "defaultPool": {"create": True, "spec": example_pool["spec"]},
    })
    cls = find(docs, "FeatureEnvironmentClass", "standard")
    assert cls["apiVersion"] == "featureenv.io/v1alpha1"
    assert cls["metadata"]["annotations"] == {"featureenv.io/is-default-class": "true"}
    assert cls["spec"] == example_class["spec"]
    pool = find(docs, "RdsPool", "integration")
    assert pool["spec"] == example_pool["spec"]
    assert "namespace" not in cls["metadata"] and "namespace" not in pool["metadata"], "cluster-scoped"


# ---------------------------------------------------------------- values schema


@pytest.mark.parametrize(
    "values, message",
    [
        ({"clusterId": "Prod_EU"}, "at '/clusterId'"),
        ({"config": {"fastPollInterval": "2 seconds"}}, "at '/config/fastPollInterval'"),
        ({"config": {"logFormat": "yaml"}}, "at '/config/logFormat'"),
        ({"config": {"ssmPrefix": "featureenv/"}}, "at '/config/ssmPrefix'"),
        ({"replicaCount": 0}, "at '/replicaCount'"),
        ({"replicaCount": "two"}, "at '/replicaCount'"),
        ({"serviceAccount": {"roleArn": "featureenv-role"}}, "at '/serviceAccount/roleArn'"),
        ({"securityContext": {"runAsNonRoot": False, "readOnlyRootFilesystem": True,
                              "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}},
         "at '/securityContext/runAsNonRoot'"),
        ({"securityContext": {"runAsNonRoot": True, "readOnlyRootFilesystem": True,
                              "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]}}},
         "at '/securityContext/capabilities/add'"),
        ({"replicas": 2}, "additional properties 'replicas' not allowed"),
        ({"defaultPool": {"create": True, "spec": {"warm": 1}}}, "at '/defaultPool/spec'"),
    ],
    ids=["cluster-id", "duration", "log-format", "ssm-prefix", "zero-replicas", "string-replicas", "role-arn",
         "root", "caps-add", "typo", "pool-without-source"],
)
def test_schema_rejects_bad_values(chart: Any, render: Render, values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmValuesError) as exc:
        render(values)
    assert "values don't meet the specifications of the schema" in str(exc.value)
    assert message in str(exc.value), str(exc.value)
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema({"clusterId": "x", **values} if "clusterId" not in values else values)


def test_missing_cluster_id_fails_with_message(render: Render) -> None:
    with pytest.raises(helm.HelmRenderError) as exc:
        render({}, base=False)
    assert "clusterId is required" in str(exc.value)


# ---------------------------------------------------------------- RBAC


def rbac_rules(docs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    return {d["kind"]: d["rules"] for d in docs if d["kind"] in ("ClusterRole", "Role")}


def test_rbac_exact_and_no_wildcards(render: Render) -> None:
    docs = render()
    rules = rbac_rules(docs)
    for kind, rs in rules.items():
        for r in rs:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in r[field], f"{kind} has a wildcard in {field}: {r}"
            assert "nonResourceURLs" not in r and "resourceNames" not in r

    def grants(rs: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
        return {(g, res, v) for r in rs for g in r["apiGroups"] for res in r["resources"] for v in r["verbs"]}

    fe = "featureenv.io"
    assert grants(rules["ClusterRole"]) == {
        *((fe, "featureenvs", v) for v in ("list", "watch", "patch", "delete")),
        (fe, "featureenvs/status", "patch"),
        *((fe, "featureenvironmentclasses", v) for v in ("list", "watch")),
        *((fe, "rdspools", v) for v in ("list", "watch")),
        (fe, "rdspools/status", "patch"),
        *(("", "secrets", v) for v in ("get", "create", "patch")),
        ("events.k8s.io", "events", "create"),
        ("events.k8s.io", "events", "patch"),
    }
    assert grants(rules["Role"]) == {("coordination.k8s.io", "leases", v) for v in ("get", "create", "patch")}
    role = find(docs, "Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    sa = find(docs, "ServiceAccount")["metadata"]["name"]
    for binding in ("ClusterRoleBinding", "RoleBinding"):
        b = find(docs, binding)
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]
    assert find(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == sa
    assert not {"ClusterRole", "Role"} & {d["kind"] for d in render({"rbac": {"create": False}})}


# ---------------------------------------------------------------- CRDs and docs


def test_chart_crds_equal_repo_crds(chart: Any) -> None:
    repo_crds = REPO / "crds"
    chart_crds = CHART / "crds"
    missing = [f for f in EXPECTED_CRDS if not (repo_crds / f).is_file()]
    assert not missing, (
        f"repo crds/ lacks {missing}: generate them with `featureenv-operator crds` "
        "(the chart must ship exactly these; this test never passes without them)"
    )
    repo_files = sorted(p.name for p in repo_crds.glob("*.yaml"))
    chart_files = sorted(p.name for p in chart_crds.glob("*.yaml")) if chart_crds.is_dir() else []
    assert chart_files == repo_files, (
        f"charts/featureenv-operator/crds has {chart_files}, crds/ has {repo_files}: "
        "copy them with `cp crds/*.yaml charts/featureenv-operator/crds/`"
    )
    for name in repo_files:
        assert (chart_crds / name).read_bytes() == (repo_crds / name).read_bytes(), (
            f"charts/featureenv-operator/crds/{name} differs from crds/{name}: "
            "copy them with `cp crds/*.yaml charts/featureenv-operator/crds/`"
        )
    loaded = {yaml.safe_load(c["data"])["metadata"]["name"] for c in chart.crds}
    assert loaded == {"featureenvs.featureenv.io", "featureenvironmentclasses.featureenv.io",
                      "rdspools.featureenv.io"}


def _leaf_paths(values: Any, prefix: str = "") -> list[str]:
    if isinstance(values, dict) and values:
        out: list[str] = []
        for k, v in values.items():
            out += _leaf_paths(v, f"{prefix}.{k}" if prefix else k)
        return out
    return [prefix]


def test_readme_documents_every_value(chart: Any) -> None:
    readme = (CHART / "README.md").read_text()
    documented = set(re.findall(r"^\| `([^`]+)` \|", readme, re.MULTILINE))
    leaves = set(_leaf_paths(chart.values))
    missing = sorted(p for p in leaves if p not in documented)
    assert not missing, f"README.md does not document {missing}"
    unknown = sorted(p for p in documented if p not in leaves)
    assert not unknown, f"README.md documents values that do not exist: {unknown}"


def test_schema_covers_every_top_level_value(chart: Any) -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(chart.values) <= set(schema["properties"])
    chart.validate_schema({**chart.values, "clusterId": "x"})
