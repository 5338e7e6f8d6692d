"""Helpers for the Helm chart tests: render charts/featureenv-operator with real Helm.

Owns the bridge to `helm-python-sdk` (import name `helm_python`, Helm's Go library via
ctypes): loading the chart once, rendering it with given values into parsed manifests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

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
