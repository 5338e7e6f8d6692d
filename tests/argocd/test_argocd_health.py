"""Tests for examples/argocd: the Lua health checks (run by lua5.4), the argocd-cm snippet,
and the pull-request ApplicationSet with the chart it deploys."""

from __future__ import annotations

import json
import re

from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from luaharness import run_health, to_lua

REPO = Path(__file__).resolve().parents[2]
ARGOCD = REPO / "examples" / "argocd"
FE_SCRIPT = ARGOCD / "health-featureenvironment.lua"
POOL_SCRIPT = ARGOCD / "health-rdspool.lua"


def fe(phase: str | None, *, conditions: list[dict[str, Any]] | None = None, generation: int = 1,
       observed: int | None = 1, endpoints: dict[str, str] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "featureenv.io/v1alpha1", "kind": "FeatureEnvironment",
        "metadata": {"name": "payments-pr-123", "namespace": "default", "generation": generation},
        "spec": {"services": [{"name": "payments", "image": "repo/payments:pr-123"}]},
    }
    if phase is not None:
        obj["status"] = {"phase": phase, "observedGeneration": observed, "conditions": conditions or [],
                         "endpoints": endpoints}
    return obj


def cond(type_: str, status: str, reason: str, message: str) -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2026-11-28T10:00:00Z", "observedGeneration": 1}


FIXTURES = Path(__file__).resolve().parent / "fixtures"


def fixture(name: str) -> dict[str, Any]:
    """An object the operator wrote in a test run (tests/support/fixtures.rs records them
    and fails the run when the committed one no longer matches what it writes)."""
    return json.loads((FIXTURES / name).read_text())


def ready_message(obj: dict[str, Any]) -> str:
    ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    return f"{ready['reason']}: {ready['message']}"


@pytest.mark.parametrize(
    "name, status",
    [
        ("environment-ClassNotFound.json", "Degraded"),
        ("environment-TTLExceedsMaximum.json", "Degraded"),
        ("environment-InstanceTypeNotAllowed.json", "Degraded"),
        ("environment-ImageNotFound.json", "Degraded"),
        ("environment-PoolExhausted.json", "Progressing"),
        ("environment-Updating.json", "Progressing"),
        ("environment-UpdateFailed.json", "Degraded"),
    ],
)
def test_featureenvironment_health_of_recorded_objects(name: str, status: str, tmp_path: Path) -> None:
    obj = fixture(name)
    assert run_health(FE_SCRIPT, obj, tmp_path) == (status, ready_message(obj))


def test_a_ready_environment_is_healthy_at_its_url(tmp_path: Path) -> None:
    obj = fixture("environment-Ready.json")
    url = obj["status"]["endpoints"]["api"]
    assert run_health(FE_SCRIPT, obj, tmp_path) == ("Healthy", f"Ready at {url}")


def test_a_recorded_environment_is_progressing_while_its_status_is_stale(tmp_path: Path) -> None:
    obj = fixture("environment-ClassNotFound.json")
    obj["metadata"]["generation"] = obj["status"]["observedGeneration"] + 1
    generation = obj["metadata"]["generation"]
    assert run_health(FE_SCRIPT, obj, tmp_path) == (
        "Progressing", f"Waiting for the operator to observe generation {generation}")


def test_every_reason_the_operator_refuses_with_is_degraded() -> None:
    """The script's list of unsatisfiable reasons is every reason the operator's
    validation, dereference and admission refuse with, plus SecretConflict."""
    source = "\n".join(p.read_text() for p in (REPO / "src" / "controller").rglob("*.rs"))
    refused = set(re.findall(r'Invalid::(?:new|outside)\(\s*"([A-Za-z]+)"', source))
    assert {"ClassNotFound", "TTLExceedsMaximum", "ImageNotFound", "NamespaceLimitReached"} <= refused, refused
    listed = set(re.findall(r"^  ([A-Za-z]+) = true,$", FE_SCRIPT.read_text(), re.M))
    assert listed == refused | {"SecretConflict"}


@pytest.mark.parametrize(
    "obj, status, message",
    [
        (fe("Failed"), "Degraded", "Failed"),
        (fe("Terminating"), "Progressing", "Terminating: removing the instance and database"),
        (fe(None), "Progressing", "Waiting for the operator to pick up the environment"),
        (fe("Provisioning"), "Progressing", "Provisioning"),
        (fe("Hibernating"), "Unknown", "Unknown phase Hibernating"),
    ],
    ids=["failed-no-condition", "terminating-no-condition", "no-status", "provisioning-no-condition",
         "unknown-phase"],
)
def test_featureenvironment_health(obj: dict[str, Any], status: str, message: str, tmp_path: Path) -> None:
    assert run_health(FE_SCRIPT, obj, tmp_path) == (status, message)


# Sleep and wake: handcrafted objects until tests/e2e.rs records a sleeping and a waking
# environment (tests/support/fixtures.rs); the reasons here are placeholders, the script
# reads whatever the operator writes.
SLEEPING_READY = cond("Ready", "False", "Sleeping",
                      "instance i-0aaaaaaaaaaaaaaaa stopped, database fe-integration-0c66c781fc-0 stopped")
WAKING_READY = cond("Ready", "False", "Waking", "instance i-0aaaaaaaaaaaaaaaa pending, waiting for the services")


@pytest.mark.parametrize(
    "obj, status, message",
    [
        (fe("Sleeping", conditions=[SLEEPING_READY], generation=2, observed=2), "Suspended",
         "Sleeping: instance i-0aaaaaaaaaaaaaaaa stopped, database fe-integration-0c66c781fc-0 stopped"),
        (fe("Sleeping", generation=2, observed=2), "Suspended", "Sleeping: instance and database stopped"),
        # Told to wake (spec.sleeping: false), not seen yet: no longer suspended.
        (fe("Sleeping", conditions=[SLEEPING_READY], generation=3, observed=2), "Progressing",
         "Waiting for the operator to observe generation 3"),
        # A sleeping environment whose class is gone is broken, not merely asleep.
        (fe("Sleeping", conditions=[cond("Ready", "False", "ClassNotFound", "class standard not found")]),
         "Degraded", "ClassNotFound: class standard not found"),
        # Waking holds observedGeneration back until the instance is healthy, like an update.
        (fe("Waking", conditions=[WAKING_READY], generation=3, observed=2), "Progressing",
         "Waking: instance i-0aaaaaaaaaaaaaaaa pending, waiting for the services"),
        (fe("Waking"), "Progressing", "Waking: starting the instance and the database"),
    ],
    ids=["sleeping", "sleeping-no-condition", "sleeping-told-to-wake", "sleeping-class-gone", "waking",
         "waking-no-condition"],
)
def test_sleeping_is_suspended_and_waking_progressing(obj: dict[str, Any], status: str, message: str,
                                                      tmp_path: Path) -> None:
    assert run_health(FE_SCRIPT, obj, tmp_path) == (status, message)


def pool(status: dict[str, Any] | None, *, warm: int | None = 1, generation: int = 1) -> dict[str, Any]:
    spec: dict[str, Any] = {"source": {"dbInstanceIdentifier": "integration-db"}, "instanceClass": "db.t3.micro",
                            "maxSize": 20, "warm": warm}
    obj: dict[str, Any] = {"apiVersion": "featureenv.io/v1alpha1", "kind": "RdsPool",
                           "metadata": {"name": "integration", "generation": generation}, "spec": spec}
    if status is not None:
        obj["status"] = {"observedGeneration": 1, **status}
    return obj


@pytest.mark.parametrize(
    "obj, status, message",
    [
        (pool({"warm": 1, "claimed": 3, "creating": 0, "conditions": [cond("Warm", "True", "Warm", "1 spare")]}),
         "Healthy", "1/1 warm spares, 3 claimed, 0 creating"),
        (pool({"warm": 3, "claimed": 0, "creating": 0}, warm=2), "Healthy", "3/2 warm spares, 0 claimed, 0 creating"),
        (pool({"warm": 0, "claimed": 1, "creating": 1,
               "conditions": [cond("Warm", "False", "Restoring", "restoring fe-integration-x")]}),
         "Progressing", "0/1 warm spares, 1 claimed, 1 creating"),
        (pool({"warm": 0}, warm=None), "Progressing", "0/1 warm spares, 0 claimed, 0 creating"),
        (pool({"warm": 0, "conditions": [cond("Warm", "False", "SourceNotFound", "DB instance integration-db not found")]}),
         "Degraded", "SourceNotFound: DB instance integration-db not found"),
        (pool({"warm": 1, "conditions": [cond("Degraded", "True", "RestoreFailed", "restore of fe-integration-y failed")]}),
         "Degraded", "RestoreFailed: restore of fe-integration-y failed"),
        (pool({"warm": 1, "conditions": [cond("Degraded", "False", "AsExpected", "")]}),
         "Healthy", "1/1 warm spares, 0 claimed, 0 creating"),
        (pool(None), "Progressing", "Waiting for the operator to pick up the pool"),
        (pool({"warm": 1}, generation=3), "Progressing", "Waiting for the operator to observe generation 3"),
    ],
    ids=["warm", "more-than-warm", "restoring", "default-warm", "source-not-found", "degraded-condition",
         "degraded-false", "no-status", "stale-generation"],
)
def test_rdspool_health(obj: dict[str, Any], status: str, message: str, tmp_path: Path) -> None:
    assert run_health(POOL_SCRIPT, obj, tmp_path) == (status, message)


def test_recorded_pools(tmp_path: Path) -> None:
    warm = fixture("rdspool-warm.json")
    assert run_health(POOL_SCRIPT, warm, tmp_path)[0] == "Healthy"
    stale = fixture("rdspool-SnapshotTooOld.json")
    too_old = next(c for c in stale["status"]["conditions"] if c["reason"] == "SnapshotTooOld")
    assert run_health(POOL_SCRIPT, stale, tmp_path) == ("Degraded", f"SnapshotTooOld: {too_old['message']}")


def test_lua_literals_escape_strings() -> None:
    assert to_lua({"a": 'x"y\\z\n', "b": [1, True, None], "c": None}) == '{["a"] = "x\\"y\\\\z\\n", ["b"] = {1, true, nil}}'


def test_scripts_stay_within_lua51() -> None:
    """Argo CD runs gopher-lua (Lua 5.1): no 5.2+ syntax or library calls."""
    for script in (FE_SCRIPT, POOL_SCRIPT):
        text = script.read_text()
        for construct in ("goto ", "//", "<const>", "<close>", "utf8.", "table.move", "math.type", "string.pack"):
            assert construct not in text, f"{script.name} uses {construct!r}"


def test_argocd_cm_embeds_the_scripts() -> None:
    cm = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == "argocd-cm"
    data = cm["data"]
    assert data["resource.customizations.health.featureenv.io_FeatureEnvironment"] == FE_SCRIPT.read_text()
    assert data["resource.customizations.health.featureenv.io_RdsPool"] == POOL_SCRIPT.read_text()


def test_applicationset_one_environment_per_pull_request() -> None:
    appset = yaml.safe_load((ARGOCD / "applicationset-pull-requests.yaml").read_text())
    assert appset["kind"] == "ApplicationSet"
    spec = appset["spec"]
    assert spec["goTemplate"] is True
    assert "pullRequest" in spec["generators"][0]
    tmpl = spec["template"]
    assert "{{ .number }}" in tmpl["metadata"]["name"]
    assert "resources-finalizer.argocd.argoproj.io" in tmpl["metadata"]["finalizers"]
    assert tmpl["spec"]["syncPolicy"]["automated"]["prune"] is True
    source = tmpl["spec"]["source"]
    assert source["path"] == "examples/argocd/pr-environment"
    assert (REPO / source["path"] / "Chart.yaml").is_file()
    values = source["helm"]["valuesObject"]
    assert values["tag"] == "{{ .head_sha }}"
    assert values["ttl"]


def test_applicationset_leaves_expiry_to_the_operator() -> None:
    """No self-heal (it would re-create an environment the TTL deleted within seconds,
    and revert a TTL extended with kubectl), and spec.ttl out of the diff and the sync."""
    appset = yaml.safe_load((ARGOCD / "applicationset-pull-requests.yaml").read_text())
    app = appset["spec"]["template"]["spec"]
    assert app["syncPolicy"]["automated"].get("selfHeal", False) is False
    assert "RespectIgnoreDifferences=true" in app["syncPolicy"]["syncOptions"]
    ignored = [d for d in app["ignoreDifferences"] if d["kind"] == "FeatureEnvironment"]
    assert ignored and ignored[0]["group"] == "featureenv.io"
    assert "/spec/ttl" in ignored[0]["jsonPointers"]


def test_pr_environment_chart_renders_a_featureenvironment() -> None:
    appset = yaml.safe_load((ARGOCD / "applicationset-pull-requests.yaml").read_text())
    values = appset["spec"]["template"]["spec"]["source"]["helm"]["valuesObject"]
    sha = "0123456789abcdef0123456789abcdef01234567"
    params = {"{{ .number }}": "42", "{{ .head_sha }}": sha, "{{ .branch }}": "feature/faster-refunds"}

    def fill(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: fill(x) for k, x in v.items()}
        if isinstance(v, str):
            for k, x in params.items():
                v = v.replace(k, x)
        return v

    with helm.Chart.load(str(ARGOCD / "pr-environment")) as chart:
        report = helm.lint(str(ARGOCD / "pr-environment"), fill(values), strict=True)
        assert report["errors"] == [], report
        rendered = chart.render(fill(values), name="payments-pr-42", namespace="previews", is_install=True)
    docs = [d for text in rendered.values() for d in yaml.safe_load_all(text) if d]
    assert len(docs) == 1
    env = docs[0]
    assert env["apiVersion"] == "featureenv.io/v1alpha1" and env["kind"] == "FeatureEnvironment"
    assert env["metadata"] == {
        "name": "payments-pr-42", "namespace": "previews",
        "labels": {"app.kubernetes.io/managed-by": "Helm", "featureenv.io/pull-request": "42"},
        "annotations": {"featureenv.io/pull-request-branch": "feature/faster-refunds",
                        "featureenv.io/pull-request-head-sha": sha},
    }
    assert env["spec"]["ttl"] == "24h"
    assert env["spec"]["services"] == [
        {"name": "payments", "image": f"123456789012.dkr.ecr.eu-west-1.amazonaws.com/payments:{sha}"}
    ]
    assert "className" not in env["spec"], "empty className means the default class"
