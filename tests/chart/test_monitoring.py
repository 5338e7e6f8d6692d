"""The monitoring the chart ships: its PrometheusRule (checked and unit-tested with
promtool: input series in, which alerts fire and which do not), its Grafana dashboard
ConfigMap, and that both query only metrics the operator exports (read from
src/metrics.rs). Rendered with real Helm, as test_chart.py does.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from chartlib import CHART, NAMESPACE, REPO, Render, find

MONITORING: dict[str, Any] = {"metrics": {"prometheusRule": {"enabled": True}, "grafanaDashboard": {"enabled": True}}}
JOB = "featureenv-featureenv-operator-metrics"  # the Service's name: the job label a ServiceMonitor gives
SCOPE = f'job="{JOB}",namespace="{NAMESPACE}"'
LEADER = "featureenv-featureenv-operator-7d9f-a"
STANDBY = "featureenv-featureenv-operator-7d9f-b"

SEVERITIES = {
    "FeatureEnvOperatorDown": "critical",
    "FeatureEnvNoActingLeader": "critical",
    "FeatureEnvTwoLeaders": "critical",
    "FeatureEnvReplicasDown": "warning",
    "FeatureEnvInventoryFailing": "critical",
    "FeatureEnvProvisioningStalled": "warning",
    "FeatureEnvFailedGrowing": "warning",
    "FeatureEnvSlowToReady": "warning",
    "FeatureEnvPoolCold": "warning",
    "FeatureEnvAwsThrottled": "warning",
    "FeatureEnvAwsCallsFailing": "warning",
    "FeatureEnvReconcileErrors": "warning",
    "FeatureEnvJanitorRemovedOrphans": "info",
}
# Prometheus' own series the rules may use besides the operator's.
PROMETHEUS_METRICS = {"up"}


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    assert exe, "promtool not found: `apt-get install -y prometheus` (make deps)"
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def rules_of(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    groups = find(docs, "PrometheusRule")["spec"]["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"]}


@pytest.fixture(scope="module")
def docs(render: Render) -> list[dict[str, Any]]:
    return render(MONITORING)


@pytest.fixture(scope="module")
def rule_dir(docs: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """rules.yaml as rendered, and bare.yaml without annotations (for cases whose
    annotations use `$value`, which a test cannot predict to the digit)."""
    d = tmp_path_factory.mktemp("rules")
    groups = find(docs, "PrometheusRule")["spec"]["groups"]
    (d / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    bare = [{**g, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]} for g in groups]
    (d / "bare.yaml").write_text(yaml.safe_dump({"groups": bare}, sort_keys=False))
    return d


# ---------------------------------------------------------------- rendering


def test_monitoring_is_off_by_default(render: Render) -> None:
    kinds = {d["kind"] for d in render()}
    assert "PrometheusRule" not in kinds and "ConfigMap" not in kinds


def test_lint_strict_passes_with_monitoring_on() -> None:
    report = helm.lint(str(CHART), {"clusterId": "test-cluster", **MONITORING}, strict=True, namespace=NAMESPACE)
    assert report["errors"] == [], report
    assert not [m for m in report["messages"] if m["severity"] >= 2], report["messages"]


def test_prometheus_rule_object(docs: list[dict[str, Any]], render: Render) -> None:
    rule = find(docs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == NAMESPACE
    assert {r: s["labels"]["severity"] for r, s in rules_of(docs).items()} == SEVERITIES
    for name, r in rules_of(docs).items():
        assert SCOPE in r["expr"], f"{name} is not scoped to this installation: {r['expr']}"
        assert set(r["annotations"]) == {"summary", "description"}, name
    labelled = find(render({"metrics": {"prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}}}}),
                    "PrometheusRule")
    assert labelled["metadata"]["labels"]["release"] == "prometheus"


def test_alert_labels_disabled_alerts_selector_and_threshold(render: Render) -> None:
    docs = render({"replicaCount": 1, "metrics": {"prometheusRule": {
        "enabled": True,
        "alertLabels": {"team": "platform"},
        "disabledAlerts": ["FeatureEnvPoolCold", "FeatureEnvAwsThrottled", "FeatureEnvAwsCallsFailing"],
        "selector": 'job="featureenv",cluster="eu1"',
        "timeToReadyP90Seconds": 600,
    }}})
    groups = find(docs, "PrometheusRule")["spec"]["groups"]
    # A group whose alerts are all disabled is left out (an empty group is invalid).
    assert [g["name"] for g in groups] == ["featureenv-operator.availability", "featureenv-operator.environments",
                                           "featureenv-operator.controllers"]
    rules = rules_of(docs)
    # One replica: nothing stands by, so no alert about missing stand-bys.
    assert set(rules) == set(SEVERITIES) - {"FeatureEnvPoolCold", "FeatureEnvAwsThrottled",
                                            "FeatureEnvAwsCallsFailing", "FeatureEnvReplicasDown"}
    for name, r in rules.items():
        assert r["labels"] == {"severity": SEVERITIES[name], "team": "platform"}, name
        assert 'job="featureenv",cluster="eu1"' in r["expr"] and JOB not in r["expr"], name
    assert "> 600\n" in rules["FeatureEnvSlowToReady"]["expr"]
    assert "over the 600s target" in rules["FeatureEnvSlowToReady"]["annotations"]["description"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"disabledAlerts": ["FeatureEnvPoolColt"]}, "at '/metrics/prometheusRule/disabledAlerts/0'"),
        ({"timeToReadyP90Seconds": 3600}, "at '/metrics/prometheusRule/timeToReadyP90Seconds'"),
        ({"selector": '{job="x"}'}, "at '/metrics/prometheusRule/selector'"),
    ],
    ids=["unknown-alert", "p90-beyond-buckets", "selector-with-braces"],
)
def test_schema_rejects_bad_rule_values(render: Render, values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmValuesError) as exc:
        render({"metrics": {"prometheusRule": {"enabled": True, **values}}})
    assert message in str(exc.value), str(exc.value)


def test_schema_lists_exactly_the_alerts(chart: Any, docs: list[dict[str, Any]]) -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    names = schema["properties"]["metrics"]["properties"]["prometheusRule"]["properties"]["disabledAlerts"]["items"]["enum"]
    assert sorted(names) == sorted(rules_of(docs))


def test_chart_readme_documents_every_alert(docs: list[dict[str, Any]]) -> None:
    readme = (CHART / "README.md").read_text()
    rows = re.findall(r"^\| (\w+) \| `(FeatureEnv[A-Za-z]+)` \|", readme, re.MULTILINE)
    documented = {alert: severity for severity, alert in rows}
    assert documented == {name: r["labels"]["severity"] for name, r in rules_of(docs).items()}


def test_dashboard_configmap(docs: list[dict[str, Any]], render: Render) -> None:
    cm = find(docs, "ConfigMap", "featureenv-featureenv-operator-dashboard")
    assert cm["metadata"]["namespace"] == NAMESPACE
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert list(cm["data"]) == ["featureenv-operator.json"]
    board = json.loads(cm["data"]["featureenv-operator.json"])
    assert board["uid"] == "featureenv-operator"
    assert [v["name"] for v in board["templating"]["list"]] == ["datasource", "namespace", "job"]
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for p in panels:
        if p["type"] != "row":
            assert p["targets"], p["title"]
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            for t in p["targets"]:
                assert 'namespace="$namespace",job="$job"' in t["expr"], (p["title"], t["expr"])
    cm = find(render({"metrics": {"grafanaDashboard": {
        "enabled": True, "label": "grafana.example.com/dashboard", "labelValue": "platform",
        "namespace": "monitoring", "annotations": {"grafana_folder": "Platform"}}}}), "ConfigMap")
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["grafana.example.com/dashboard"] == "platform"
    assert "grafana_dashboard" not in cm["metadata"]["labels"]
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Platform"}


# ---------------------------------------------------------------- promtool


def test_promtool_check_rules(rule_dir: Path) -> None:
    out = promtool("check", "rules", "rules.yaml", cwd=rule_dir)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(SEVERITIES)} rules found" in out.stdout, out.stdout


def dashboard_queries(docs: list[dict[str, Any]]) -> list[str]:
    board = json.loads(find(docs, "ConfigMap")["data"]["featureenv-operator.json"])
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    for v in board["templating"]["list"]:
        if v["type"] == "query":
            # Grafana's label_values(<series selector>, <label>): the selector is PromQL.
            m = re.fullmatch(r"label_values\((.+),\s*\w+\)", v["query"]["query"])
            assert m, v["query"]
            exprs.append(m.group(1))
    return exprs


def test_promtool_checks_dashboard_queries(docs: list[dict[str, Any]], tmp_path: Path) -> None:
    """Every dashboard query parses as PromQL (Grafana's variables filled in)."""
    fill = {"$__rate_interval": "5m", "$namespace": NAMESPACE, "$job": JOB}
    rules = []
    for i, expr in enumerate(dashboard_queries(docs)):
        for var, value in fill.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    (tmp_path / "dashboard.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = promtool("check", "rules", "dashboard.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


def series(metric: str, pod: str = LEADER, **labels: str) -> str:
    extra = "".join(f',{k}="{v}"' for k, v in labels.items())
    return f'{metric}{{{SCOPE},pod="{pod}"{extra}}}'


@dataclass
class Case:
    """Input series (promtool's expanding notation, one sample a minute) and the
    alerts expected at each evaluation time: the alert's own labels, or none."""

    alert: str
    id: str
    input: list[tuple[str, str]]
    expect: dict[str, list[dict[str, str]]] = field(default_factory=dict)


def at(namespace: str = NAMESPACE, **labels: str) -> dict[str, str]:
    return {"namespace": namespace, **labels}


SCOPED = at(job=JOB)
UP_BOTH = [(series("up", LEADER), "1x60"), (series("up", STANDBY), "1x60")]
LEADER_POLLING = [(series("featureenv_aws_calls_total", service="ec2", operation="DescribeInstances", outcome="ok"),
                   "0+1x60")]
BUCKETS = ["180", "300", "600", "900", "1200", "+Inf"]


def ready_histogram(per_minute: float, slowest_le: str, minutes: int = 120) -> list[tuple[str, str]]:
    """Environments becoming Ready at `per_minute`, all in the bucket `slowest_le`."""
    rising = f"0+{per_minute}x{minutes}"
    out = [(series("featureenv_time_to_ready_seconds_bucket", le=le),
            rising if BUCKETS.index(le) >= BUCKETS.index(slowest_le) else f"0x{minutes}") for le in BUCKETS]
    return [*out, (series("featureenv_time_to_ready_seconds_count"), rising),
            (series("featureenv_time_to_ready_seconds_sum"), f"0+{per_minute * 1000}x{minutes}")]


CASES = [
    Case("FeatureEnvOperatorDown", "all-replicas-down",
         [(series("up", LEADER), "0x10"), (series("up", STANDBY), "0x10")],
         {"4m": [], "6m": [SCOPED]}),
    Case("FeatureEnvOperatorDown", "never-scraped",
         [(series("featureenv_environments", phase="Ready"), "0x10")],
         {"6m": [SCOPED]}),
    Case("FeatureEnvOperatorDown", "standby-left", [(series("up", LEADER), "0x10"), (series("up", STANDBY), "1x10")],
         {"6m": []}),
    Case("FeatureEnvNoActingLeader", "replicas-up-nobody-calls-aws", UP_BOTH, {"9m": [], "11m": [SCOPED]}),
    Case("FeatureEnvNoActingLeader", "calls-stopped",
         [*UP_BOTH, (series("featureenv_aws_calls_total", service="ec2", operation="DescribeInstances", outcome="ok"),
                     "0+1x10 10x50")],
         {"19m": [], "31m": [SCOPED]}),
    Case("FeatureEnvTwoLeaders", "both-lead", [(series("featureenv_leader", LEADER), "1x10"),
                                               (series("featureenv_leader", STANDBY), "1x10")],
         {"30s": [], "2m": [SCOPED]}),
    Case("FeatureEnvTwoLeaders", "one-leads", [(series("featureenv_leader", LEADER), "1x10"),
                                               (series("featureenv_leader", STANDBY), "0x10")],
         {"5m": []}),
    Case("FeatureEnvNoActingLeader", "leader-polls", [*UP_BOTH, *LEADER_POLLING], {"30m": []}),
    Case("FeatureEnvNoActingLeader", "hand-over",
         [*UP_BOTH,
          (series("featureenv_aws_calls_total", LEADER, service="ec2", operation="DescribeInstances", outcome="ok"),
           "0+1x15"),
          (series("featureenv_aws_calls_total", STANDBY, service="ec2", operation="DescribeInstances", outcome="ok"),
           "_x17 1+1x40")],
         {"16m": [], "25m": [], "40m": []}),
    Case("FeatureEnvReplicasDown", "standby-down", [(series("up", LEADER), "1x30"), (series("up", STANDBY), "0x30")],
         {"14m": [], "16m": [SCOPED]}),
    Case("FeatureEnvReplicasDown", "both-up", UP_BOTH, {"20m": []}),
    Case("FeatureEnvInventoryFailing", "describe-keeps-failing",
         [(series("featureenv_reconcile_errors_total", controller="inventory", category="Throttled"), "0+1x30")],
         {"9m": [], "12m": [at(category="Throttled")]}),
    Case("FeatureEnvInventoryFailing", "one-transient-failure",
         [(series("featureenv_reconcile_errors_total", controller="inventory", category="CloudError"), "0 1x30")],
         {"3m": [], "12m": [], "20m": []}),
    Case("FeatureEnvProvisioningStalled", "none-becomes-ready",
         [(series("featureenv_environments", LEADER, phase="Provisioning"), "2x60"),
          (series("featureenv_environments", STANDBY, phase="Provisioning"), "0x60"),
          (series("featureenv_time_to_ready_seconds_count"), "3x60")],
         {"14m": [], "16m": [at()]}),
    Case("FeatureEnvProvisioningStalled", "environments-keep-becoming-ready",
         [(series("featureenv_environments", phase="Provisioning"), "2x60"),
          (series("featureenv_time_to_ready_seconds_count"), "0+1x60")],
         {"30m": []}),
    Case("FeatureEnvProvisioningStalled", "nothing-provisioning",
         [(series("featureenv_environments", phase="Provisioning"), "0x60"),
          (series("featureenv_time_to_ready_seconds_count"), "0x60")],
         {"30m": []}),
    Case("FeatureEnvFailedGrowing", "four-more-failed",
         [(series("featureenv_environments", phase="Failed"), "0x60 4x30")],
         {"62m": [], "70m": [at()]}),
    Case("FeatureEnvFailedGrowing", "two-more-failed",
         [(series("featureenv_environments", phase="Failed"), "2x60 4x30")],
         {"70m": []}),
    Case("FeatureEnvSlowToReady", "p90-over-900s", ready_histogram(0.1, "1200"), {"80m": [at()]}),
    Case("FeatureEnvSlowToReady", "p90-under-300s", ready_histogram(0.1, "300"), {"80m": []}),
    Case("FeatureEnvSlowToReady", "too-few-to-judge", ready_histogram(0.03, "1200"), {"80m": []}),
    Case("FeatureEnvPoolCold", "one-pool-cold",
         [(series("featureenv_pool_members", pool="integration", state="warm"), "0x20"),
          (series("featureenv_pool_members", pool="integration", state="creating"), "1x20"),
          (series("featureenv_pool_members", pool="analytics", state="warm"), "2x20")],
         {"14m": [], "16m": [at(pool="integration")]}),
    Case("FeatureEnvPoolCold", "warm-again-in-time",
         [(series("featureenv_pool_members", pool="integration", state="warm"), "0x10 1x10")],
         {"16m": []}),
    Case("FeatureEnvAwsThrottled", "rds-throttles",
         [(series("featureenv_aws_failed_attempts_total", service="rds", reason="throttled"), "0+12x30"),
          (series("featureenv_aws_failed_attempts_total", service="ec2", reason="throttled"), "0+3x30")],
         # rate() over 5m reaches 0.1/s 3 minutes after the series starts; firing 15m later.
         {"17m": [], "19m": [at(service="rds")]}),
    Case("FeatureEnvAwsThrottled", "server-errors-are-not-throttling",
         [(series("featureenv_aws_failed_attempts_total", service="rds", reason="server_error"), "0+60x30")],
         {"20m": []}),
    Case("FeatureEnvAwsCallsFailing", "ec2-capacity",
         [(series("featureenv_aws_calls_total", service="ec2", operation="RunInstances", outcome="ok"), "0+60x30"),
          (series("featureenv_aws_calls_total", service="ec2", operation="RunInstances",
                  outcome="InsufficientCapacity"), "0+6x30"),
          (series("featureenv_aws_calls_total", service="ec2", operation="TerminateInstances", outcome="NotFound"),
           "0+30x30")],
         {"14m": [], "17m": [at(service="ec2", outcome="InsufficientCapacity")]}),
    Case("FeatureEnvAwsCallsFailing", "expected-outcomes-and-rare-errors",
         [(series("featureenv_aws_calls_total", service="rds", operation="DescribeDBInstances", outcome="ok"),
           "0+60x30"),
          (series("featureenv_aws_calls_total", service="rds", operation="DeleteDBInstance", outcome="NotFound"),
           "0+30x30"),
          (series("featureenv_aws_calls_total", service="rds", operation="RestoreDBInstanceFromDBSnapshot",
                  outcome="AlreadyExists"), "0+30x30"),
          (series("featureenv_aws_calls_total", service="rds", operation="ModifyDBInstance", outcome="InvalidState"),
           "0+1x30")],
         {"20m": []}),
    Case("FeatureEnvReconcileErrors", "kubernetes-api-errors",
         [(series("featureenv_reconciles_total", controller="featureenvironment"), "0+10x40"),
          (series("featureenv_reconcile_errors_total", controller="featureenvironment", category="KubernetesAPI"),
           "0+2x40"),
          (series("featureenv_reconciles_total", controller="rdspool"), "0+10x40")],
         {"14m": [], "17m": [at(controller="featureenvironment")]}),
    Case("FeatureEnvReconcileErrors", "cleanup-pending-is-waiting",
         [(series("featureenv_reconciles_total", controller="featureenvironment"), "0+10x40"),
          (series("featureenv_reconcile_errors_total", controller="featureenvironment", category="CleanupPending"),
           "0+8x40"),
          (series("featureenv_reconcile_errors_total", controller="featureenvironment", category="KubernetesAPI"),
           "0+0.5x40")],
         {"20m": []}),
    Case("FeatureEnvJanitorRemovedOrphans", "first-removal-after-start",
         # The counter's series appears at the first removal, already at 1.
         [(series("featureenv_janitor_removals_total", resource="instance"), "_x70 1x60")],
         # Until the series is an hour (plus the 5m look-back) old.
         {"69m": [], "71m": [at(resource="instance")], "125m": [at(resource="instance")], "131m": []}),
    Case("FeatureEnvJanitorRemovedOrphans", "more-removals",
         [(series("featureenv_janitor_removals_total", resource="database"), "1x80 2x40")],
         {"79m": [], "85m": [at(resource="database")]}),
]


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    fires = {c.alert for c in CASES if any(c.expect.values())}
    quiet = {c.alert for c in CASES if any(v == [] for v in c.expect.values())}
    assert fires == set(SEVERITIES) and quiet == set(SEVERITIES)


def expand(text: str, labels: dict[str, str]) -> str | None:
    """An annotation as Prometheus would expand it, when it uses only `$labels`."""
    out = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], text)
    return None if "{{" in out else out


@pytest.mark.parametrize("case", CASES, ids=[f"{c.alert}-{c.id}" for c in CASES])
def test_promtool_alert_unit(case: Case, docs: list[dict[str, Any]], rule_dir: Path, tmp_path: Path) -> None:
    rule = rules_of(docs)[case.alert]
    rule_file = "rules.yaml"
    tests = []
    for when, alerts in case.expect.items():
        expected = []
        for labels in alerts:
            exp: dict[str, Any] = {"exp_labels": {**labels, "severity": rule["labels"]["severity"]}}
            annotations = {k: expand(v, labels) for k, v in rule["annotations"].items()}
            if None in annotations.values():
                rule_file = "bare.yaml"
            else:
                exp["exp_annotations"] = annotations
            expected.append(exp)
        tests.append({"eval_time": when, "alertname": case.alert, "exp_alerts": expected})
    unit = {
        "rule_files": [str(rule_dir / rule_file)],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": [{"series": s, "values": v} for s, v in case.input],
                   "alert_rule_test": tests}],
    }
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(unit, sort_keys=False))
    out = promtool("test", "rules", "test.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


# ---------------------------------------------------------------- metric names


def exported_metrics() -> set[str]:
    """The series names src/metrics.rs exposes: `registry.register("name", ...)` under
    the registry's prefix; counters as `_total`, histograms as `_bucket/_sum/_count`."""
    src = (REPO / "src" / "metrics.rs").read_text()
    prefix = re.search(r'Registry::with_prefix\("(\w+)"\)', src)
    assert prefix, "no Registry::with_prefix in src/metrics.rs"
    registered = re.findall(r'registry\.register\(\s*"(\w+)",\s*"(?:[^"\\]|\\.)*",\s*(\w+)\.clone\(\),?\s*\)', src)
    assert len(registered) == src.count("registry.register(") and registered, "src/metrics.rs: unrecognised register call"
    names: set[str] = set()
    for name, var in registered:
        built = re.search(rf"let {var} = ([^;]+);", src, re.DOTALL)
        assert built, f"src/metrics.rs: where is {var} built?"
        kinds = [k for k in ("Counter", "Gauge", "Histogram") if re.search(rf"\b{k}\b", built.group(1))]
        assert len(kinds) == 1, f"{var}: cannot tell its metric type from {built.group(1)!r}"
        full = f"{prefix.group(1)}_{name}"
        names |= {
            "Counter": {f"{full}_total"},
            "Gauge": {full},
            "Histogram": {f"{full}_bucket", f"{full}_sum", f"{full}_count"},
        }[kinds[0]]
    return names


_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
             "atan2", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads: identifiers outside strings, label
    matchers, ranges and grouping clauses that do not call a function."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"(?<![\w:])\d[\w.]*", " ", s)  # numbers and durations (offset 1h)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][\w:]*", s):
        if m.group(0).lower() in _KEYWORDS or re.match(r"\s*\(", s[m.end():]):
            continue
        names.add(m.group(0))
    return names


def test_metric_name_parser_finds_names_and_would_catch_a_typo() -> None:
    assert exported_metrics() >= {"featureenv_reconciles_total", "featureenv_environments",
                                  "featureenv_time_to_ready_seconds_bucket", "featureenv_pool_members"}
    expr = ('sum by (namespace, le) (rate(featureenv_time_to_ready_seconds_bucket{le="+Inf",x=~"a|b"}[1h])) > 900 '
            'and on (namespace) featureenv_enviroments{phase="Failed"} offset 1h unless absent(up{job="j"})')
    assert metric_names(expr) == {"featureenv_time_to_ready_seconds_bucket", "featureenv_enviroments", "up"}
    assert "featureenv_enviroments" not in exported_metrics() | PROMETHEUS_METRICS


def test_rules_and_dashboard_use_only_exported_metrics(docs: list[dict[str, Any]]) -> None:
    known = exported_metrics() | PROMETHEUS_METRICS
    exprs = {f"alert {n}": r["expr"] for n, r in rules_of(docs).items()}
    exprs |= {f"dashboard query {i}": e for i, e in enumerate(dashboard_queries(docs))}
    unknown = {where: sorted(metric_names(e) - known) for where, e in exprs.items() if metric_names(e) - known}
    assert not unknown, f"not exported by src/metrics.rs: {unknown}"
    assert all(metric_names(e) for e in exprs.values())


def test_dashboard_charts_every_exported_metric(docs: list[dict[str, Any]]) -> None:
    def family(name: str) -> str:
        return re.sub(r"_(total|bucket|sum|count)$", "", name)

    used = {family(n) for e in dashboard_queries(docs) for n in metric_names(e)}
    uncharted = sorted({family(n) for n in exported_metrics()} - used)
    assert not uncharted, f"the dashboard has no panel for {uncharted}"
