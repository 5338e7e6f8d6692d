"""Tests for charts/featureenv-operator, linted and rendered by real Helm (helm-python-sdk)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from chartlib import CHART, NAMESPACE, REPO, Render, find

EXPECTED_CRDS = ["featureenvironmentclasses.yaml", "featureenvironments.yaml", "rdspools.yaml"]
COMPONENT = "app.kubernetes.io/component"


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
        {"clusterId": "test-cluster", "rbac": {"aggregateToDefaultRoles": False, "classReader": {"create": False}},
         "admissionPolicy": {"enabled": False}},
        {"clusterId": "test-cluster", "defaultClass": {"create": True, "spec": {"ami": {"selectorTerms": [{"id": "ami-1"}]}}},
         "defaultPool": {"create": True, "spec": {"source": {"dbInstanceIdentifier": "integration-db"}, "warm": 1, "maxSize": 5}}},
    ],
    ids=["defaults", "irsa", "readme-install-example", "servicemonitor", "tenancy-off", "default-class-and-pool"],
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
        ("ClusterRole", "featureenv-featureenv-operator-class-reader"),
        ("ClusterRole", "featureenv-featureenv-operator-edit"),
        ("ClusterRole", "featureenv-featureenv-operator-view"),
        ("ClusterRoleBinding", "featureenv-featureenv-operator"),
        ("ClusterRoleBinding", "featureenv-featureenv-operator-class-reader"),
        ("Deployment", "featureenv-featureenv-operator"),
        ("PodDisruptionBudget", "featureenv-featureenv-operator"),
        ("Role", "featureenv-featureenv-operator-leader-election"),
        ("RoleBinding", "featureenv-featureenv-operator-leader-election"),
        ("Service", "featureenv-featureenv-operator-metrics"),
        ("ServiceAccount", "featureenv-featureenv-operator"),
        ("ValidatingAdmissionPolicy", "featureenv-featureenv-operator-class-rules"),
        ("ValidatingAdmissionPolicyBinding", "featureenv-featureenv-operator-class-rules"),
    ]
    cluster_scoped = ("ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
    for d in docs:
        if d["kind"] not in cluster_scoped:
            assert d["metadata"]["namespace"] == NAMESPACE, d["kind"]
        else:
            assert "namespace" not in d["metadata"], d["kind"]
    components = {(d["kind"], d["metadata"]["name"]): d["metadata"]["labels"][COMPONENT] for d in docs}
    assert {k for k, c in components.items() if c == "user-rbac"} == {
        ("ClusterRole", "featureenv-featureenv-operator-class-reader"),
        ("ClusterRole", "featureenv-featureenv-operator-edit"),
        ("ClusterRole", "featureenv-featureenv-operator-view"),
        ("ClusterRoleBinding", "featureenv-featureenv-operator-class-reader"),
    }
    assert {k for k, c in components.items() if c == "admission"} == {
        ("ValidatingAdmissionPolicy", "featureenv-featureenv-operator-class-rules"),
        ("ValidatingAdmissionPolicyBinding", "featureenv-featureenv-operator-class-rules"),
    }
    assert {c for c in components.values()} == {"operator", "user-rbac", "admission"}


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
        ({"admissionPolicy": {"validationActions": ["Deny", "Warn"]}}, "at '/admissionPolicy/validationActions'"),
        ({"admissionPolicy": {"validationActions": ["Block"]}}, "at '/admissionPolicy/validationActions/0'"),
        ({"admissionPolicy": {"enable": False}}, "additional properties 'enable' not allowed"),
        ({"rbac": {"classReader": {"subjects": []}}}, "at '/rbac/classReader/subjects'"),
        ({"rbac": {"classReader": {"subjects": [{"kind": "Team", "name": "a"}]}}}, "at '/rbac/classReader/subjects/0/kind'"),
        ({"rbac": {"aggregateToDefaultRoles": "yes"}}, "at '/rbac/aggregateToDefaultRoles'"),
    ],
    ids=["cluster-id", "duration", "log-format", "ssm-prefix", "zero-replicas", "string-replicas", "role-arn",
         "root", "caps-add", "typo", "pool-without-source", "deny-and-warn", "unknown-action", "policy-typo",
         "no-subjects", "subject-kind", "aggregate-not-bool"],
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


def rbac_rules(docs: list[dict[str, Any]], component: str = "operator") -> dict[str, list[dict[str, Any]]]:
    """The rules of the one ClusterRole and the one Role of `component`, by kind."""
    roles = [d for d in docs if d["kind"] in ("ClusterRole", "Role") and d["metadata"]["labels"][COMPONENT] == component]
    assert sorted(d["kind"] for d in roles) == ["ClusterRole", "Role"], [d["metadata"]["name"] for d in roles]
    return {d["kind"]: d["rules"] for d in roles}


def grants(rs: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(g, res, v) for r in rs for g in r["apiGroups"] for res in r["resources"] for v in r["verbs"]}


def test_no_role_has_wildcards(render: Render) -> None:
    roles = [d for d in render() if d["kind"] in ("ClusterRole", "Role")]
    assert len(roles) == 5
    for d in roles:
        for r in d["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in r[field], f"{d['metadata']['name']} has a wildcard in {field}: {r}"
            assert "nonResourceURLs" not in r and "resourceNames" not in r


def test_rbac_exact(render: Render) -> None:
    docs = render()
    rules = rbac_rules(docs)
    fe = "featureenv.io"
    assert grants(rules["ClusterRole"]) == {
        *((fe, "featureenvs", v) for v in ("list", "watch", "patch", "delete")),
        (fe, "featureenvs/status", "patch"),
        *((fe, "featureenvironmentclasses", v) for v in ("list", "watch")),
        *((fe, "rdspools", v) for v in ("list", "watch")),
        (fe, "rdspools/status", "patch"),
        (fe, "featureenvironmentclasses/status", "patch"),
        *(("", "secrets", v) for v in ("get", "create", "patch")),
        ("events.k8s.io", "events", "create"),
        ("events.k8s.io", "events", "patch"),
        ("", "namespaces", "get"),
    }
    assert grants(rules["Role"]) == {("coordination.k8s.io", "leases", v) for v in ("get", "create", "patch")}
    role = find(docs, "Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    sa = find(docs, "ServiceAccount")["metadata"]["name"]
    for binding in ("featureenv-featureenv-operator", "featureenv-featureenv-operator-leader-election"):
        b = next(d for d in docs if d["kind"].endswith("RoleBinding") and d["metadata"]["name"] == binding)
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]
    assert find(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == sa
    # rbac.create governs the operator's RBAC only; the roles for people have their own switches.
    without = render({"rbac": {"create": False}})
    assert not [d for d in without if d["kind"] in ("ClusterRole", "Role") and d["metadata"]["labels"][COMPONENT] == "operator"]
    assert "Role" not in {d["kind"] for d in without}


def test_roles_for_people_aggregate_into_view_edit_and_admin(render: Render) -> None:
    docs = render()
    view = find(docs, "ClusterRole", "featureenv-featureenv-operator-view")
    edit = find(docs, "ClusterRole", "featureenv-featureenv-operator-edit")
    aggregate = "rbac.authorization.k8s.io/aggregate-to-"
    assert {k: v for k, v in view["metadata"]["labels"].items() if k.startswith(aggregate)} == {
        f"{aggregate}view": "true", f"{aggregate}edit": "true", f"{aggregate}admin": "true"}
    assert {k: v for k, v in edit["metadata"]["labels"].items() if k.startswith(aggregate)} == {
        f"{aggregate}edit": "true", f"{aggregate}admin": "true"}
    fe = "featureenv.io"
    assert grants(view["rules"]) == {
        (fe, res, v) for res in ("featureenvs", "featureenvironmentclasses", "rdspools") for v in ("get", "list", "watch")}
    # No Secret in either: `edit` grants Secrets already, `view` must not.
    assert grants(edit["rules"]) == {
        (fe, "featureenvs", v) for v in ("create", "update", "patch", "delete", "deletecollection")}
    reader = find(docs, "ClusterRole", "featureenv-featureenv-operator-class-reader")
    assert grants(reader["rules"]) == {(fe, "featureenvironmentclasses", v) for v in ("get", "list", "watch")}
    assert not [k for k in reader["metadata"]["labels"] if k.startswith(aggregate)]
    binding = find(docs, "ClusterRoleBinding", "featureenv-featureenv-operator-class-reader")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": "featureenv-featureenv-operator-class-reader"}
    assert binding["subjects"] == [{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "system:authenticated"}]

    def names(values: dict[str, Any]) -> set[str]:
        return {d["metadata"]["name"] for d in render(values) if d["kind"] in ("ClusterRole", "ClusterRoleBinding")}

    assert names({"rbac": {"aggregateToDefaultRoles": False}}) == names({}) - {
        "featureenv-featureenv-operator-view", "featureenv-featureenv-operator-edit"}
    assert names({"rbac": {"classReader": {"create": False}}}) == names({}) - {"featureenv-featureenv-operator-class-reader"}
    platform = [{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "platform"},
                {"kind": "ServiceAccount", "name": "argocd-application-controller", "namespace": "argocd"}]
    custom = find(render({"rbac": {"classReader": {"subjects": platform}}}), "ClusterRoleBinding",
                  "featureenv-featureenv-operator-class-reader")
    assert custom["subjects"] == platform
    assert "--clusterrole=edit" in render(notes=True)
    assert "--clusterrole=edit" not in render({"rbac": {"aggregateToDefaultRoles": False}}, notes=True)


def test_render_chart_script_prints_the_operators_rbac_only(tmp_path: Path) -> None:
    """hack/render_chart.py (the e2e stack's and the RBAC proof's source of the
    operator's rules) prints the operator's objects only, unless asked for all."""
    def run(*args: str) -> list[dict[str, Any]]:
        out = subprocess.run([sys.executable, str(REPO / "hack" / "render_chart.py"), "--namespace", NAMESPACE, "--json", *args],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    default = run()
    assert sorted((d["kind"], d["metadata"]["name"]) for d in default) == [
        ("ClusterRole", "featureenv-featureenv-operator"),
        ("ClusterRoleBinding", "featureenv-featureenv-operator"),
        ("Role", "featureenv-featureenv-operator-leader-election"),
        ("RoleBinding", "featureenv-featureenv-operator-leader-election"),
        ("ServiceAccount", "featureenv-featureenv-operator"),
    ]
    assert [d["kind"] for d in run("--kinds", "ClusterRole,Role")] == ["ClusterRole", "Role"]
    every = {d["metadata"]["name"] for d in run("--component", "all", "--kinds", "ClusterRole")}
    assert every == {"featureenv-featureenv-operator", "featureenv-featureenv-operator-view",
                     "featureenv-featureenv-operator-edit", "featureenv-featureenv-operator-class-reader"}
    policy = run("--component", "admission", "--kinds", "ValidatingAdmissionPolicy,ValidatingAdmissionPolicyBinding")
    assert [d["kind"] for d in policy] == ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]


# ---------------------------------------------------------------- admission policy


def test_admission_policy_takes_the_class_as_parameter(render: Render) -> None:
    docs = render()
    policy = find(docs, "ValidatingAdmissionPolicy")
    spec = policy["spec"]
    assert policy["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert spec["failurePolicy"] == "Fail"
    assert spec["paramKind"] == {"apiVersion": "featureenv.io/v1alpha1", "kind": "FeatureEnvironmentClass"}
    # The main resource only: the operator's status writes (featureenvs/status) are not judged.
    assert spec["matchConstraints"]["resourceRules"] == [{
        "apiGroups": ["featureenv.io"], "apiVersions": ["v1alpha1"],
        "operations": ["CREATE", "UPDATE"], "resources": ["featureenvs"], "scope": "Namespaced"}]
    assert [c["name"] for c in spec["matchConditions"]] == ["not-being-deleted", "creates-or-changes-ttl"]
    messages = [v["messageExpression"] for v in spec["validations"]]
    for field in ("'spec.ttl: '", "'spec.instanceType: '", "'metadata.namespace: namespace '"):
        assert sum(m.startswith(field) for m in messages) == 1, messages
    binding = find(docs, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"] == {
        "policyName": policy["metadata"]["name"],
        "validationActions": ["Deny"],
        "paramRef": {"selector": {}, "parameterNotFoundAction": "Allow"},
    }
    warn = find(render({"admissionPolicy": {"validationActions": ["Warn", "Audit"]}}), "ValidatingAdmissionPolicyBinding")
    assert warn["spec"]["validationActions"] == ["Warn", "Audit"]
    off = {d["kind"] for d in render({"admissionPolicy": {"enabled": False}})}
    assert not {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"} & off
    assert f"ValidatingAdmissionPolicy {policy['metadata']['name']}" in render(notes=True)
    assert "ValidatingAdmissionPolicy" not in render({"admissionPolicy": {"enabled": False}}, notes=True)


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


def test_the_notes_plugin_commands_parse(render: Render) -> None:
    """Every `kubectl featureenv ...` line of the NOTES is accepted by the plugin's own
    argument parser (clap, through `--help` appended: it parses the command line up to
    the subcommand and its flags, then prints help instead of running)."""
    import os
    import shlex

    target = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/featureenv-operator/target"))
    plugin = target / "debug" / "kubectl-featureenv"
    assert plugin.exists(), f"{plugin} is missing: run `make build` first"
    notes = render(notes=True)
    lines = [line.strip() for line in notes.splitlines() if line.strip().startswith("kubectl featureenv ")]
    assert len(lines) >= 2, notes
    for line in lines:
        for command in line.split("&&"):
            argv = shlex.split(command.replace("<registry>", "registry.example"))[2:]
            result = subprocess.run([str(plugin), *argv, "--help"], capture_output=True, text=True, timeout=30)
            assert result.returncode == 0, f"{command.strip()}: {result.stderr}"
            result = subprocess.run([str(plugin), *argv[:1], "--definitely-not-a-flag"], capture_output=True, text=True, timeout=30)
            assert result.returncode != 0, "the plugin accepts anything; the check above proves nothing"
