"""The rendered chart applies cleanly to the real kube-apiserver (etcd behind it, no
kubelet) with kubectl of the same version (default `--validate=strict`), CRDs first, for
the default values and with the optional default class and pool. The control plane is
the `control-plane` example binary (`make build`) with binaries from
hack/k8s-binaries.sh (`make k8s-binaries`); a missing one fails, never skips."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from chartlib import NAMESPACE, REPO, Render, apply_crds, kubectl, kubectl_run, manifests


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
    apply_crds(cluster)
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
    result = kubectl_run(cluster, "apply", "-f", "-", stdin=bad)
    assert result.returncode != 0
    assert "warm must not exceed maxSize" in result.stderr, result.stderr
