"""Helpers for the Helm chart tests: render charts/featureenv-operator with real Helm,
and run a real API server to apply it to.

Owns the bridge to `helm-python-sdk` (import name `helm_python`, Helm's Go library via
ctypes): loading the chart once, rendering it with given values into parsed manifests.
And the test control plane: the `control-plane` example binary (`make build`; etcd and
kube-apiserver from hack/k8s-binaries.sh, RBAC on, no controller-manager) and kubectl of
the same version. A missing binary fails, never skips.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

import helm_python as helm  # a hard dependency: missing it must fail, not skip

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "featureenv-operator"
RELEASE = "featureenv"
NAMESPACE = "featureenv-system"
BASE_VALUES: dict[str, Any] = {"clusterId": "test-cluster"}

Render = Callable[..., list[dict[str, Any]]]


def parse_manifests(rendered: dict[str, str]) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("__source", path)
                docs.append(doc)
    return docs



def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, got {[d['metadata']['name'] for d in matches]}"
    return matches[0]


def manifests(docs: list[dict[str, Any]]) -> str:
    """Parsed manifests as YAML for `kubectl apply -f -`."""
    return yaml.safe_dump_all([{k: v for k, v in d.items() if k != "__source"} for d in docs])


# ---------------------------------------------------------------- the test control plane

TARGET = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/featureenv-operator/target"))
CONTROL_PLANE = TARGET / "debug" / "examples" / "control-plane"


@functools.cache
def kubectl_binary() -> str:
    """kubectl from hack/k8s-binaries.sh (built once, cached), the API server's version."""
    out = subprocess.run([str(REPO / "hack" / "k8s-binaries.sh")], capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0, f"hack/k8s-binaries.sh failed:\n{out.stderr}"
    return str(Path(out.stdout.strip()) / "kubectl")


@contextmanager
def control_plane() -> Iterator[dict[str, str]]:
    """A fresh etcd + kube-apiserver; yields the environment for kubectl (KUBECONFIG)."""
    assert CONTROL_PLANE.exists(), f"{CONTROL_PLANE} is missing: run `make build` first"
    kubectl_binary()  # fail before starting anything when there is no kubectl
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [str(CONTROL_PLANE), "--dir", str(Path(tmp) / "k8s")],
            # Which checkout it is (tests/support/root.rs): the shared target dir may
            # hold a binary built in another one.
            env={**os.environ, "CARGO_MANIFEST_DIR": str(REPO)},
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            assert line, "control-plane printed nothing (it failed to start)"
            started = json.loads(line)
            yield {**os.environ, "KUBECONFIG": started["kubeconfig"], "KUBECACHEDIR": str(Path(tmp) / "cache")}
        finally:
            # SIGTERM by PID: it stops etcd and kube-apiserver by theirs.
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


def kubectl_run(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """kubectl, whatever its exit code (for requests expected to be refused)."""
    return subprocess.run([kubectl_binary(), *args], env=env, input=stdin, capture_output=True, text=True, timeout=60)


def kubectl(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    """kubectl that must succeed; its stdout."""
    result = kubectl_run(env, *args, stdin=stdin)
    assert result.returncode == 0, f"kubectl {' '.join(args)} failed:\n{result.stderr}"
    return result.stdout


def apply_crds(env: dict[str, str]) -> None:
    """The chart's CRDs, established (Helm installs them before the templates)."""
    kubectl(env, "apply", "-f", str(CHART / "crds"))
    kubectl(env, "wait", "--for=condition=Established", "crd", "--all", "--timeout=30s")

