#!/usr/bin/env python3
"""Renders charts/featureenv-operator with real Helm (helm-python-sdk) and prints the
manifests of the chosen kinds and component: YAML for `kubectl apply -f -`, or JSON
with --json.

The local stack and the end-to-end suite use it to give the operator exactly the
chart's ServiceAccount and RBAC, so a grant missing from the chart is a 403 there.
By default only objects labelled `app.kubernetes.io/component: operator` are printed:
the chart's roles for people (`user-rbac`, aggregated into view/edit) and its
admission policy (`admission`) are not the operator's, and the RBAC proof demands
that the operator uses every rule it is given. `--component all` prints every one.

    hack/render_chart.py --namespace featureenv-system \
        --kinds ServiceAccount,ClusterRole,ClusterRoleBinding,Role,RoleBinding
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "chart"))

from chartlib import BASE_VALUES, CHART, RELEASE, helm, parse_manifests  # noqa: E402

RBAC_KINDS = "ServiceAccount,ClusterRole,ClusterRoleBinding,Role,RoleBinding"
COMPONENT_LABEL = "app.kubernetes.io/component"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namespace", required=True, help="the release namespace")
    parser.add_argument("--cluster-id", default=BASE_VALUES["clusterId"])
    parser.add_argument("--kinds", default=RBAC_KINDS, help=f"comma-separated kinds (default {RBAC_KINDS})")
    parser.add_argument(
        "--component",
        default="operator",
        help=f"only objects whose {COMPONENT_LABEL} label is this (default operator; `all`: every object)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of YAML documents")
    args = parser.parse_args()
    kinds = set(args.kinds.split(","))
    values = {**BASE_VALUES, "clusterId": args.cluster_id}
    with helm.Chart.load(str(CHART)) as chart:
        rendered = chart.render(values, name=RELEASE, namespace=args.namespace, is_install=True)
    docs = [
        {k: v for k, v in d.items() if k != "__source"}
        for d in parse_manifests(rendered)
        if d["kind"] in kinds
        and (args.component == "all" or d["metadata"].get("labels", {}).get(COMPONENT_LABEL) == args.component)
    ]
    for d in docs:
        # Helm leaves the release namespace off namespaced objects that do not template it.
        if d["kind"] in ("ServiceAccount", "Role", "RoleBinding"):
            d["metadata"].setdefault("namespace", args.namespace)
    if args.json:
        print(json.dumps(docs))
    else:
        print(yaml.safe_dump_all(docs), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
