"""The rendered chart applies cleanly to the real kube-apiserver (etcd behind it, no
kubelet) with kubectl of the same version (default `--validate=strict`), CRDs first, for
the default values and with the optional default class and pool. The control plane is
the `control-plane` example binary (`make build`) with binaries from
hack/k8s-binaries.sh (`make k8s-binaries`); a missing one fails, never skips."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from chartlib import CHART, NAMESPACE, REPO, Render

TARGET = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/featureenv-operator/target"))
CONTROL_PLANE = TARGET / "debug" / "examples" / "control-plane"


def k8s_binaries() -> Path:
    out = subprocess.run([str(REPO / "hack" / "k8s-binaries.sh")], capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0, f"hack/k8s-binaries.sh failed:\n{out.stderr}"
    return Path(out.stdout.strip())


KUBECTL = str(k8s_binaries() / "kubectl")


@pytest.fixture()
def cluster() -> Iterator[dict[str, str]]:
    assert CONTROL_PLANE.exists(), f"{CONTROL_PLANE} is missing: run `make build` first"
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [str(CONTROL_PLANE), "--dir", str(Path(tmp) / "k8s")],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            assert line, "control-plane printed nothing (it failed to start)"
            started = json.loads(line)
            env = {**os.environ, "KUBECONFIG": started["kubeconfig"], "KUBECACHEDIR": str(Path(tmp) / "cache")}
            yield env
        finally:
            # SIGTERM by PID: it stops etcd and kube-apiserver by theirs.
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


def kubectl(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    result = subprocess.run([KUBECTL, *args], env=env, input=stdin, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kubectl {' '.join(args)} failed:\n{result.stderr}"
    return result.stdout


def example_spec(file: str) -> dict[str, Any]:
    """An example's spec with its ${...} placeholders filled as the local stack would."""
    text = (REPO / "examples" / file).read_text()
    for placeholder, value in {
        "${SUBNET_ID}": "subnet-0abc1234",
        "${SECURITY_GROUP_ID}": "sg-0abc1234",
        "${ECR_REGISTRY}": "123456789012.dkr.ecr.us-east-1.amazonaws.com",
    }.items():
        text = text.replace(placeholder, value)
    spec = yaml.safe_load(text)["spec"]
    assert "${" not in json.dumps(spec), spec
    return spec


def manifests(docs: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all([{k: v for k, v in d.items() if k != "__source"} for d in docs])


@pytest.mark.parametrize(
    "values",
    [
        {},
        {
            "defaultClass": {"create": True, "spec": example_spec("featureenvironmentclass.yaml")},
            "defaultPool": {"create": True, "spec": example_spec("rdspool.yaml")},
        },
    ],
    ids=["defaults", "default-class-and-pool"],
)
def test_rendered_chart_applies_to_the_api_server(render: Render, cluster: dict[str, str], values: dict[str, Any]) -> None:
    kubectl(cluster, "apply", "-f", str(CHART / "crds"))
    kubectl(cluster, "wait", "--for=condition=Established", "crd", "--all", "--timeout=30s")
    kubectl(cluster, "create", "namespace", NAMESPACE)
    docs = render(values)
    out = kubectl(cluster, "apply", "-f", "-", stdin=manifests(docs))
    for doc in docs:
        assert f"{doc['metadata']['name']} created" in out, f"{doc['kind']} {doc['metadata']['name']} not created:\n{out}"
    # Applying the same manifests again changes nothing. The PodDisruptionBudget is
    # the exception on real clusters too: spec.selector has patch strategy "replace",
    # so kubectl's client-side apply always sends it and reports "configured".
    again = kubectl(cluster, "apply", "-f", "-", stdin=manifests(docs))
    for line in again.splitlines():
        assert line.endswith("unchanged") or line.startswith("poddisruptionbudget.policy/"), again
    deployment = kubectl(cluster, "get", "deployment", "-n", NAMESPACE, "-o", "yaml")
    assert "featureenv-operator" in deployment
    if values:
        assert kubectl(cluster, "get", "featureenvironmentclasses", "-o", "name").split() == [
            "featureenvironmentclass.featureenv.io/standard"
        ]
        assert kubectl(cluster, "get", "rdspools", "-o", "name").split() == ["rdspool.featureenv.io/integration"]


def test_repo_crds_apply_and_reject_bad_objects(cluster: dict[str, str]) -> None:
    kubectl(cluster, "apply", "-f", str(REPO / "crds"))
    kubectl(cluster, "wait", "--for=condition=Established", "crd", "--all", "--timeout=30s")
    bad = """
apiVersion: featureenv.io/v1alpha1
kind: RdsPool
metadata: {name: bad}
spec:
  source: {dbInstanceIdentifier: integration-db}
  instanceClass: db.t3.micro
  warm: 5
  maxSize: 2
"""
    result = subprocess.run([KUBECTL, "apply", "-f", "-"], env=cluster, input=bad, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "warm must not exceed maxSize" in result.stderr, result.stderr
