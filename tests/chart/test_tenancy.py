"""Tenancy on the real API server (kube-apiserver v1.35 with RBAC, etcd; see chartlib):
the chart's roles for people, aggregated into the built-in `view` and `edit`, checked
with `kubectl auth can-i` and with real requests of impersonated users; and the class
rules (TTL maximum, allowed instance types, namespaceSelector) refused at admission by
the chart's ValidatingAdmissionPolicy, with messages that name the field.

No controller-manager runs here, so nothing fills the aggregated ClusterRoles: the API
server creates `view`, `edit` and `admin` with their aggregationRule and no rules.
`aggregate_cluster_roles` does what kube-controller-manager's clusterrole-aggregation
controller does (k8s.io/kubernetes v1.35.4, pkg/controller/clusterroleaggregation):
each aggregated role gets the rules of every ClusterRole its selectors match, in name
order, without duplicates, repeated until nothing changes (`view` is itself aggregated
into `edit`). The selectors are the API server's own; the authorizer is the real one.

The policy sees a class some moments after it is written (the API server watches
classes through an informer), so every test first waits until a request only the new
class refuses is refused (`wait_refused`, server-side dry run), then asserts.
"""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from chartlib import NAMESPACE, Render, apply_crds, control_plane, kubectl, kubectl_run, manifests

GROUP = "featureenv.io"
API_VERSION = f"{GROUP}/v1alpha1"
DEFAULT_ANNOTATION = "featureenv.io/is-default-class"
POLICY = "featureenv-featureenv-operator-class-rules"
OPERATOR_SA = "system:serviceaccount:featureenv-system:featureenv-featureenv-operator"
DENIED = f"ValidatingAdmissionPolicy '{POLICY}' with binding '{POLICY}' denied request: "
# People, each bound with a RoleBinding in one namespace (cluster-wide for `dana`).
EDIT_A, VIEW_A, EDIT_B, NOBODY, CLUSTER_VIEWER = "alice", "victor", "bob", "mallory", "dana"
NAMESPACES = {"team-a": {"team": "a", "tier": "dev"}, "team-b": {"team": "b"}}
WAIT = 30.0


# ---------------------------------------------------------------- helpers


def as_user(user: str) -> list[str]:
    """kubectl's impersonation flags: `user`, in the group every logged-in user is in."""
    return ["--as", user, "--as-group", "system:authenticated"]


def apply_json(env: dict[str, str], *objects: dict[str, Any], user: str | None = None) -> None:
    kubectl(env, "apply", "-f", "-", *(as_user(user) if user else []), stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}))


def feature_class(
    name: str,
    *,
    ttl_max: str = "24h",
    instance_type: str = "t3.large",
    allowed: list[str] | None = None,
    selector: dict[str, Any] | None = None,
    null_selector: bool = False,
    default: bool = False,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "ami": {"selectorTerms": [{"id": "ami-0123456789abcdef0"}]},
        "instance": {"type": instance_type, "subnetIds": ["subnet-0abc1234"]},
        "ttl": {"default": "1h", "max": ttl_max},
    }
    if allowed is not None:
        spec["instance"]["allowedTypes"] = allowed
    if selector is not None or null_selector:
        spec["namespaceSelector"] = selector
    metadata: dict[str, Any] = {"name": name}
    if default:
        metadata["annotations"] = {DEFAULT_ANNOTATION: "true"}
    return {"apiVersion": API_VERSION, "kind": "FeatureEnvironmentClass", "metadata": metadata, "spec": spec}


def environment(namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "FeatureEnvironment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def create(
    env: dict[str, str], obj: dict[str, Any], *, user: str | None = None, dry_run: bool = False
) -> subprocess.CompletedProcess[str]:
    args = ["create", "-f", "-", *(as_user(user) if user else [])]
    if dry_run:
        args.append("--dry-run=server")
    return kubectl_run(env, *args, stdin=json.dumps(obj))


def refusal(result: subprocess.CompletedProcess[str]) -> str | None:
    """The policy's message when it refused the request; None when it was allowed.
    Any other failure fails the test."""
    if result.returncode == 0:
        return None
    assert DENIED in result.stderr, f"refused, but not by the policy:\n{result.stderr}"
    return result.stderr.split(DENIED, 1)[1].strip()


def wait_outcome(env: dict[str, str], obj: dict[str, Any], message: str | None) -> subprocess.CompletedProcess[str]:
    """Polls a server-side dry run of creating `obj` until the policy refuses it with
    `message` (allows it, for None): the API server has then seen the classes and the
    binding that outcome depends on. The last dry run."""
    deadline = time.monotonic() + WAIT
    while True:
        result = create(env, obj, dry_run=True)
        if refusal(result) == message:
            return result
        assert time.monotonic() < deadline, f"not {message!r} within {WAIT}s; last: {result.stderr or result.stdout}"
        time.sleep(0.2)


def wait_refused(env: dict[str, str], obj: dict[str, Any], message: str) -> None:
    wait_outcome(env, obj, message)


def wait_class_seen(env: dict[str, str], name: str, ttl_max: str, namespace: str = "team-a") -> None:
    """Until the policy applies class `name` (its TTL maximum is `ttl_max`)."""
    probe = environment(namespace, "probe", className=name, ttl="1000000h")
    wait_refused(env, probe, f"spec.ttl: 1000000h exceeds the maximum {ttl_max} of class {name}")


def api_patch(env: dict[str, str], path: str, body: Any, *, user: str) -> subprocess.CompletedProcess[str]:
    """A PATCH as the API's client sends it, impersonating `user`: a JSON patch for a
    list, a merge patch otherwise. `kubectl patch` would GET the object first, which the
    operator's role does not grant (it lists and watches)."""
    config = yaml.safe_load(Path(env["KUBECONFIG"]).read_text())
    cluster, creds = config["clusters"][0]["cluster"], config["users"][0]["user"]
    pem = Path(env["KUBECONFIG"]).parent / "impersonator.pem"
    if not pem.exists():
        pem.write_bytes(base64.b64decode(creds["client-certificate-data"]) + base64.b64decode(creds["client-key-data"]))
    context = ssl.create_default_context(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
    context.load_cert_chain(str(pem))
    content_type = "application/json-patch+json" if isinstance(body, list) else "application/merge-patch+json"
    request = urllib.request.Request(
        cluster["server"] + path,
        data=json.dumps(body).encode(),
        method="PATCH",
        headers={"Content-Type": content_type, "Impersonate-User": user},
    )
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as response:
            return subprocess.CompletedProcess(path, 0, response.read().decode(), "")
    except urllib.error.HTTPError as e:
        status = json.loads(e.read() or b"{}")
        return subprocess.CompletedProcess(path, 1, "", f"{e.code}: {status.get('message', status)}")


def can_i(env: dict[str, str], user: str, verb: str, resource: str, namespace: str | None = None) -> bool:
    """`kubectl auth can-i` as `user`; `resource` may name a subresource (`featureenvs/status`)."""
    resource, _, subresource = resource.partition("/")
    args = ["auth", "can-i", verb, resource, *as_user(user)]
    args += [f"--subresource={subresource}"] if subresource else []
    args += ["-n", namespace] if namespace else []
    result = kubectl_run(env, *args)
    answer = result.stdout.strip()
    assert answer in ("yes", "no"), f"kubectl {' '.join(args)}: {result.stdout}{result.stderr}"
    return answer == "yes"


def aggregate_cluster_roles(env: dict[str, str]) -> None:
    """kube-controller-manager's clusterrole-aggregation controller, to a fixpoint."""
    for _ in range(10):
        roles = sorted(json.loads(kubectl(env, "get", "clusterroles", "-o", "json"))["items"], key=lambda r: r["metadata"]["name"])
        changed = False
        for role in roles:
            rule = role.get("aggregationRule")
            if not rule:
                continue
            rules: list[dict[str, Any]] = []
            for selector in rule["clusterRoleSelectors"]:
                assert set(selector) <= {"matchLabels"}, f"only matchLabels selectors are emulated: {selector}"
                for other in roles:
                    labels = other["metadata"].get("labels", {})
                    if other["metadata"]["name"] == role["metadata"]["name"]:
                        continue
                    if all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()):
                        rules += [r for r in other.get("rules") or [] if r not in rules]
            if rules != (role.get("rules") or []):
                kubectl(env, "patch", "clusterrole", role["metadata"]["name"], "--type=merge", "-p", json.dumps({"rules": rules}))
                changed = True
        if not changed:
            return
    raise AssertionError("clusterrole aggregation did not settle")


# ---------------------------------------------------------------- the installation


@pytest.fixture(scope="module")
def installed(render: Render) -> Iterator[dict[str, str]]:
    """CRDs and the chart with default values; namespaces team-a and team-b; people
    bound to the built-in roles; the classes `standard` (default), `solo` and
    `team-a-only`, seen by the policy."""
    with control_plane() as env:
        apply_crds(env)
        kubectl(env, "create", "namespace", NAMESPACE)
        kubectl(env, "apply", "-f", "-", stdin=manifests(render()))
        aggregate_cluster_roles(env)
        objects: list[dict[str, Any]] = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}}
            for ns, labels in NAMESPACES.items()
        ]
        for user, role, ns in [(EDIT_A, "edit", "team-a"), (VIEW_A, "view", "team-a"), (EDIT_B, "edit", "team-b")]:
            objects.append({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": f"{user}-{role}", "namespace": ns},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
            })
        objects.append({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": f"{CLUSTER_VIEWER}-view"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": CLUSTER_VIEWER}],
        })
        objects += [
            feature_class("standard", allowed=["t3.large", "t3.xlarge"], default=True),
            feature_class("solo", instance_type="m5.large", ttl_max="2h"),
            feature_class(
                "team-a-only",
                ttl_max="8h",
                selector={"matchLabels": {"team": "a"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["dev", "qa"]}]},
            ),
        ]
        apply_json(env, *objects)
        for name, ttl_max in [("standard", "24h"), ("solo", "2h"), ("team-a-only", "8h")]:
            wait_class_seen(env, name, ttl_max)
        yield env


# ---------------------------------------------------------------- roles


def test_edit_and_view_reach_environments_in_their_namespace_only(installed: dict[str, str]) -> None:
    env = installed
    writes = ("create", "update", "patch", "delete", "deletecollection")
    reads = ("get", "list", "watch")
    for verb in writes + reads:
        assert can_i(env, EDIT_A, verb, "featureenvs", "team-a"), f"edit: {verb} featureenvs in team-a"
        assert not can_i(env, EDIT_A, verb, "featureenvs", "team-b"), f"edit in team-a: {verb} featureenvs in team-b"
    for verb in reads:
        assert can_i(env, VIEW_A, verb, "featureenvs", "team-a"), f"view: {verb} featureenvs"
    for verb in writes:
        assert not can_i(env, VIEW_A, verb, "featureenvs", "team-a"), f"view: {verb} featureenvs"
    # The credentials Secret: `edit` grants secrets already; `view` never does.
    assert can_i(env, EDIT_A, "get", "secrets", "team-a")
    assert not can_i(env, EDIT_A, "get", "secrets", "team-b")
    assert not can_i(env, VIEW_A, "get", "secrets", "team-a")
    assert not can_i(env, VIEW_A, "list", "secrets", "team-a")
    # Status is the operator's, classes and pools the platform team's.
    for user in (EDIT_A, VIEW_A):
        assert not can_i(env, user, "patch", "featureenvs/status", "team-a")
        assert not can_i(env, user, "update", "featureenvs/status", "team-a")
        for verb in ("create", "patch", "delete"):
            assert not can_i(env, user, verb, "featureenvironmentclasses")
            assert not can_i(env, user, verb, "rdspools")
    # Someone bound to nothing gets nothing.
    for verb in ("get", "list", "create"):
        assert not can_i(env, NOBODY, verb, "featureenvs", "team-a")
    # admin aggregates what edit and view add.
    assert "featureenvs" in kubectl(env, "get", "clusterrole", "admin", "-o", "jsonpath={.rules[*].resources}")


def test_edit_user_creates_extends_deletes_and_reads_the_secret(installed: dict[str, str]) -> None:
    env = installed
    apply_json(env, environment("team-a", "alice-env", ttl="2h"), user=EDIT_A)
    kubectl(env, "patch", "featureenvs", "alice-env", "-n", "team-a", "--type=merge", "-p", '{"spec":{"ttl":"4h"}}', *as_user(EDIT_A))
    # The operator writes `<name>-db`; here the admin stands in for it.
    kubectl(env, "create", "secret", "generic", "alice-env-db", "-n", "team-a", "--from-literal=password=s3cret")
    assert kubectl(env, "get", "secret", "alice-env-db", "-n", "team-a", "-o", "jsonpath={.data.password}", *as_user(EDIT_A)) == "czNjcmV0"
    viewer = kubectl_run(env, "get", "secret", "alice-env-db", "-n", "team-a", *as_user(VIEW_A))
    assert viewer.returncode != 0 and "Forbidden" in viewer.stderr, viewer.stderr
    assert kubectl(env, "get", "featureenvs", "alice-env", "-n", "team-a", "-o", "jsonpath={.spec.ttl}", *as_user(VIEW_A)) == "4h"
    refused = kubectl_run(env, "delete", "featureenvs", "alice-env", "-n", "team-a", *as_user(VIEW_A))
    assert refused.returncode != 0 and "Forbidden" in refused.stderr, refused.stderr
    other = create(env, environment("team-b", "alice-in-b"), user=EDIT_A)
    assert other.returncode != 0 and "Forbidden" in other.stderr, other.stderr
    kubectl(env, "delete", "featureenvs", "alice-env", "-n", "team-a", "--wait=false", *as_user(EDIT_A))
    gone = kubectl_run(env, "get", "featureenvs", "alice-env", "-n", "team-a")
    assert gone.returncode != 0 and "NotFound" in gone.stderr, gone.stderr


def test_classes_are_read_through_the_class_reader_binding(installed: dict[str, str]) -> None:
    """Classes are cluster-scoped: `view` bound in a namespace does not reach them, the
    class-reader binding (every authenticated user) does, and `view` bound
    cluster-wide does too, pools included."""
    env = installed
    for user in (EDIT_A, VIEW_A, NOBODY):
        assert can_i(env, user, "list", "featureenvironmentclasses"), user
        assert can_i(env, user, "get", "featureenvironmentclasses"), user
        assert not can_i(env, user, "list", "rdspools"), user
    names = kubectl(env, "get", "featureenvironmentclasses", "-o", "name", *as_user(VIEW_A)).split()
    assert "featureenvironmentclass.featureenv.io/standard" in names
    assert can_i(env, CLUSTER_VIEWER, "list", "rdspools")
    assert can_i(env, CLUSTER_VIEWER, "list", "featureenvs", "team-b")
    assert not can_i(env, CLUSTER_VIEWER, "get", "secrets", "team-b")
    binding = "featureenv-featureenv-operator-class-reader"
    saved = kubectl(env, "get", "clusterrolebinding", binding, "-o", "json")
    kubectl(env, "delete", "clusterrolebinding", binding)
    try:
        assert not can_i(env, VIEW_A, "list", "featureenvironmentclasses")
        assert not can_i(env, EDIT_A, "list", "featureenvironmentclasses")
        assert can_i(env, CLUSTER_VIEWER, "list", "featureenvironmentclasses")
    finally:
        restored = json.loads(saved)
        restored["metadata"] = {k: v for k, v in restored["metadata"].items() if k in ("name", "labels")}
        kubectl(env, "create", "-f", "-", stdin=json.dumps(restored))


# ---------------------------------------------------------------- the admission policy


def test_policy_and_binding_are_installed(installed: dict[str, str]) -> None:
    env = installed
    assert kubectl(env, "get", "validatingadmissionpolicy", "-o", "name").split() == [
        f"validatingadmissionpolicy.admissionregistration.k8s.io/{POLICY}"
    ]
    binding = json.loads(kubectl(env, "get", "validatingadmissionpolicybinding", POLICY, "-o", "json"))
    assert binding["spec"]["policyName"] == POLICY
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert binding["spec"]["paramRef"] == {"selector": {}, "parameterNotFoundAction": "Allow"}


def ttl_over(ttl: str, ttl_max: str, cls: str) -> str:
    return f"spec.ttl: {ttl} exceeds the maximum {ttl_max} of class {cls}"


def type_refused(instance_type: str, cls: str, allowed: str) -> str:
    return f"spec.instanceType: {instance_type} is not allowed by class {cls} (allowed: {allowed})"


def namespace_refused(namespace: str, cls: str) -> str:
    return f"metadata.namespace: namespace {namespace} is not selected by the namespaceSelector of class {cls}"


# (namespace, spec, the policy's message or None when allowed)
CREATE_CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("team-a", {}, None),
    ("team-a", {"ttl": "24h"}, None),
    ("team-a", {"ttl": "1440m"}, None),
    ("team-a", {"ttl": "24h1s"}, ttl_over("24h1s", "24h", "standard")),
    ("team-a", {"ttl": "25h"}, ttl_over("25h", "24h", "standard")),
    ("team-a", {"className": "standard", "ttl": "25h"}, ttl_over("25h", "24h", "standard")),
    ("team-a", {"className": "solo", "ttl": "1.5h"}, None),
    ("team-a", {"className": "solo", "ttl": "121m"}, ttl_over("121m", "2h", "solo")),
    ("team-a", {"instanceType": "t3.xlarge"}, None),
    ("team-a", {"instanceType": "t3.2xlarge"}, type_refused("t3.2xlarge", "standard", "t3.large, t3.xlarge")),
    ("team-a", {"className": "solo", "instanceType": "m5.large"}, None),
    ("team-a", {"className": "solo", "instanceType": "t3.large"}, type_refused("t3.large", "solo", "m5.large")),
    ("team-a", {"className": "team-a-only", "ttl": "8h"}, None),
    ("team-b", {"className": "team-a-only"}, namespace_refused("team-b", "team-a-only")),
    ("team-b", {}, None),
    ("team-b", {"className": "solo"}, None),
    # Whether a class exists is the operator's to say (ClassNotFound): not one class's rule.
    ("team-a", {"className": "no-such-class", "ttl": "1000h"}, None),
]


@pytest.mark.parametrize(
    "case",
    range(len(CREATE_CASES)),
    ids=[f"{ns}-{'-'.join(f'{k}={v}' for k, v in spec.items()) or 'defaults'}" for ns, spec, _ in CREATE_CASES],
)
def test_create_is_judged_by_the_environments_class(installed: dict[str, str], case: int) -> None:
    env = installed
    namespace, spec, message = CREATE_CASES[case]
    user = EDIT_A if namespace == "team-a" else EDIT_B
    name = f"create-{case}"
    result = create(env, environment(namespace, name, **spec), user=user)
    assert refusal(result) == message, result.stderr
    if message is None:
        assert kubectl(env, "get", "featureenvs", name, "-n", namespace, "-o", "name").strip()
    else:
        # TTL and instance type are invalid values (422); the namespace rule forbids (403).
        expected = "Forbidden" if message.startswith("metadata.namespace") else f'featureenvs "{name}" is invalid'
        assert expected in result.stderr, result.stderr
        assert kubectl_run(env, "get", "featureenvs", name, "-n", namespace).returncode != 0


def to_string_selector(selector: dict[str, Any]) -> str:
    """A LabelSelector in the string form `kubectl -l` and the API server parse."""
    parts = [f"{k}={v}" for k, v in selector.get("matchLabels", {}).items()]
    for e in selector.get("matchExpressions", []):
        op, key, values = e["operator"], e["key"], ",".join(e.get("values", []))
        parts.append({"In": f"{key} in ({values})", "NotIn": f"{key} notin ({values})", "Exists": key, "DoesNotExist": f"!{key}"}[op])
    return ",".join(parts)


# (selector, namespace labels, selected?) — None: no selector; "null": an explicit null.
SELECTOR_CASES: list[tuple[Any, dict[str, str], bool]] = [
    (None, {}, True),
    ("null", {}, True),
    ({}, {}, True),
    ({"matchLabels": {}}, {"team": "a"}, True),
    ({"matchLabels": {"team": "a"}}, {"team": "a", "x": "y"}, True),
    ({"matchLabels": {"team": "a"}}, {"team": "b"}, False),
    ({"matchLabels": {"team": "a"}}, {}, False),
    ({"matchLabels": {"team": "a", "tier": "dev"}}, {"team": "a"}, False),
    ({"matchExpressions": [{"key": "team", "operator": "In", "values": ["a", "c"]}]}, {"team": "c"}, True),
    ({"matchExpressions": [{"key": "team", "operator": "In", "values": ["a", "c"]}]}, {"team": "b"}, False),
    ({"matchExpressions": [{"key": "team", "operator": "In", "values": ["a"]}]}, {}, False),
    ({"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["a"]}]}, {"team": "b"}, True),
    ({"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["a"]}]}, {}, True),
    ({"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["a"]}]}, {"team": "a"}, False),
    ({"matchExpressions": [{"key": "team", "operator": "Exists"}]}, {"team": ""}, True),
    ({"matchExpressions": [{"key": "team", "operator": "Exists"}]}, {"other": "a"}, False),
    ({"matchExpressions": [{"key": "team", "operator": "DoesNotExist"}]}, {}, True),
    ({"matchExpressions": [{"key": "team", "operator": "DoesNotExist"}]}, {"team": "a"}, False),
    (
        {"matchLabels": {"team": "a"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["dev"]},
                                                             {"key": "frozen", "operator": "DoesNotExist"}]},
        {"team": "a", "tier": "dev"},
        True,
    ),
    (
        {"matchLabels": {"team": "a"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["dev"]}]},
        {"team": "a", "tier": "prod"},
        False,
    ),
    # Requirements Kubernetes rejects (LabelSelectorAsSelector errs) select nothing.
    ({"matchExpressions": [{"key": "team", "operator": "In", "values": []}]}, {"team": "a"}, False),
    ({"matchExpressions": [{"key": "team", "operator": "NotIn"}]}, {"team": "a"}, False),
    ({"matchExpressions": [{"key": "team", "operator": "Exists", "values": ["a"]}]}, {"team": "a"}, False),
    ({"matchExpressions": [{"key": "team", "operator": "Equals", "values": ["a"]}]}, {"team": "a"}, False),
]
VALID_OPERATORS = {"In", "NotIn", "Exists", "DoesNotExist"}


def _kubernetes_rejects(selector: Any) -> bool:
    return isinstance(selector, dict) and any(
        e["operator"] not in VALID_OPERATORS or (e["operator"] in ("In", "NotIn")) != bool(e.get("values"))
        for e in selector.get("matchExpressions", [])
    )


@pytest.fixture(scope="module")
def selector_classes(installed: dict[str, str]) -> dict[str, str]:  # the installation, with them
    """For each case a namespace and a class `sel-<i>`, seen by the policy."""
    env = installed
    objects: list[dict[str, Any]] = []
    for i, (selector, labels, _) in enumerate(SELECTOR_CASES):
        objects.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"sel-{i}", "labels": labels}})
    apply_json(env, *objects)
    classes = [
        feature_class(f"sel-{i}", selector=None if selector == "null" else selector, null_selector=selector == "null")
        for i, (selector, _, _) in enumerate(SELECTOR_CASES)
    ]
    # `kubectl create` keeps an explicit null (apply would drop it).
    for cls in classes:
        kubectl(env, "create", "-f", "-", stdin=json.dumps(cls))
    for i in range(len(SELECTOR_CASES)):
        wait_class_seen(env, f"sel-{i}", "24h", namespace=f"sel-{i}")
    return env


@pytest.mark.parametrize("case", range(len(SELECTOR_CASES)), ids=[f"sel-{i}" for i in range(len(SELECTOR_CASES))])
def test_namespace_selector_as_kubernetes_evaluates_it(selector_classes: dict[str, str], case: int) -> None:
    env = selector_classes
    selector, labels, selected = SELECTOR_CASES[case]
    ns, cls = f"sel-{case}", f"sel-{case}"
    stored = json.loads(kubectl(env, "get", "featureenvironmentclass", cls, "-o", "json"))["spec"]
    assert ("namespaceSelector" in stored and stored["namespaceSelector"] is None) == (selector == "null"), stored
    # The expectation agrees with the API server's own label selector semantics.
    if isinstance(selector, dict) and not _kubernetes_rejects(selector):
        listed = kubectl(env, "get", "namespaces", "-l", to_string_selector(selector), "-o", "name").split()
        assert (f"namespace/{ns}" in listed) == selected, (selector, labels, listed)
    result = create(env, environment(ns, "env", className=cls), dry_run=True)
    assert refusal(result) == (None if selected else namespace_refused(ns, cls)), result.stderr


def test_raising_the_ttl_over_the_maximum_is_refused(installed: dict[str, str]) -> None:
    env = installed
    apply_json(env, environment("team-a", "extend-me", className="solo", ttl="1h"), user=EDIT_A)

    def patch(body: dict[str, Any]) -> Any:
        return kubectl_run(env, "patch", "featureenvs", "extend-me", "-n", "team-a", "--type=merge", "-p", json.dumps(body), *as_user(EDIT_A))

    assert patch({"spec": {"ttl": "2h"}}).returncode == 0
    assert refusal(patch({"spec": {"ttl": "3h"}})) == ttl_over("3h", "2h", "solo")
    assert refusal(patch({"spec": {"ttl": "2h1m", "owner": "alice"}})) == ttl_over("2h1m", "2h", "solo")
    assert kubectl(env, "get", "featureenvs", "extend-me", "-n", "team-a", "-o", "jsonpath={.spec.ttl}") == "2h"
    # Back to the class default: no TTL of its own.
    assert patch({"spec": {"ttl": None}}).returncode == 0
    assert refusal(patch({"spec": {"owner": "alice@example.com"}})) is None


def test_writes_to_an_environment_whose_class_tightened_pass_unless_they_raise_the_ttl(installed: dict[str, str]) -> None:
    """The operator's finalizer and label patches (as its ServiceAccount), an edit of a
    field the class does not govern, the status, deletion and the finalizer's removal
    all pass although the environment now breaks every rule of its tightened class."""
    env = installed
    apply_json(env, feature_class("shrinking", ttl_max="24h", allowed=["t3.large", "t3.xlarge"], selector={"matchLabels": {"team": "a"}}))
    wait_class_seen(env, "shrinking", "24h")
    apply_json(env, environment("team-a", "old", className="shrinking", ttl="20h", instanceType="t3.xlarge"), user=EDIT_A)

    def patch(user: str, body: Any, subresource: str = "") -> Any:
        return api_patch(env, f"/apis/{API_VERSION}/namespaces/team-a/featureenvs/old{subresource}", body, user=user)

    # kube-runtime's finalizer helper adds its finalizer with a JSON patch.
    added = patch(OPERATOR_SA, [{"op": "test", "path": "/metadata/finalizers", "value": None},
                                {"op": "add", "path": "/metadata/finalizers", "value": ["featureenv.io/cleanup"]}])
    assert added.returncode == 0, added.stderr

    apply_json(env, feature_class("shrinking", ttl_max="1h", allowed=["t3.large"], selector={"matchLabels": {"team": "z"}}))
    wait_class_seen(env, "shrinking", "1h")
    assert refusal(create(env, environment("team-a", "new", className="shrinking"), dry_run=True)) == namespace_refused("team-a", "shrinking")

    assert refusal(patch(OPERATOR_SA, {"metadata": {"labels": {"featureenv.io/owner": "alice"}}})) is None
    assert refusal(patch(EDIT_A, {"spec": {"owner": "alice@example.com"}})) is None
    assert refusal(patch(OPERATOR_SA, {"status": {"phase": "Failed"}}, "/status")) is None
    assert refusal(patch(EDIT_A, {"spec": {"ttl": "21h"}})) == ttl_over("21h", "1h", "shrinking")
    # Lowering it under the new maximum is an edit the class allows.
    assert refusal(patch(EDIT_A, {"spec": {"ttl": "30m"}})) is None

    kubectl(env, "delete", "featureenvs", "old", "-n", "team-a", "--wait=false", *as_user(EDIT_A))
    assert kubectl(env, "get", "featureenvs", "old", "-n", "team-a", "-o", "jsonpath={.metadata.deletionTimestamp}")
    # While it is being deleted nothing is judged, not even a TTL over the maximum.
    assert refusal(patch(EDIT_A, {"spec": {"ttl": "48h"}})) is None
    removed = patch(OPERATOR_SA, [{"op": "test", "path": "/metadata/finalizers", "value": ["featureenv.io/cleanup"]},
                                  {"op": "remove", "path": "/metadata/finalizers"}])
    assert removed.returncode == 0, removed.stderr
    gone = kubectl_run(env, "get", "featureenvs", "old", "-n", "team-a")
    assert gone.returncode != 0 and "NotFound" in gone.stderr, gone.stderr


def test_an_environment_naming_no_class_must_satisfy_every_default_class(installed: dict[str, str]) -> None:
    """With one default class, its rules. With several, the operator uses the first by
    name; the policy cannot rank classes and holds an environment that names none to
    every default class: stricter than the operator, until the ambiguity is resolved."""
    env = installed
    unnamed = environment("team-b", "unnamed", ttl="12h")
    assert refusal(create(env, unnamed, dry_run=True)) is None
    apply_json(env, feature_class("zz-strict", ttl_max="6h", selector={"matchLabels": {"team": "a"}}, default=True))
    try:
        wait_refused(env, unnamed, ttl_over("12h", "6h", "zz-strict"))
        assert refusal(create(env, environment("team-b", "unnamed", ttl="5h"), dry_run=True)) == namespace_refused("team-b", "zz-strict")
        assert refusal(create(env, environment("team-a", "unnamed", ttl="5h"), dry_run=True)) is None
        # Naming the class the operator would pick is the way out.
        assert refusal(create(env, environment("team-b", "named", className="standard", ttl="12h"), dry_run=True)) is None
    finally:
        kubectl(env, "delete", "featureenvironmentclass", "zz-strict")
    wait_outcome(env, unnamed, None)


def test_warn_instead_of_deny(installed: dict[str, str], render: Render) -> None:
    """validationActions [Warn, Audit]: the request passes with the message as a warning."""
    env = installed
    bad = environment("team-a", "warned", className="solo", ttl="3h")
    binding = next(d for d in render({"admissionPolicy": {"validationActions": ["Warn", "Audit"]}})
                   if d["kind"] == "ValidatingAdmissionPolicyBinding")
    kubectl(env, "apply", "-f", "-", stdin=manifests([binding]))
    try:
        result = wait_outcome(env, bad, None)
        assert f"Warning: Validation failed for ValidatingAdmissionPolicy '{POLICY}' with binding '{POLICY}': " \
            f"{ttl_over('3h', '2h', 'solo')}" in result.stderr, result.stderr
    finally:
        default = next(d for d in render() if d["kind"] == "ValidatingAdmissionPolicyBinding")
        kubectl(env, "apply", "-f", "-", stdin=manifests([default]))
    wait_refused(env, bad, ttl_over("3h", "2h", "solo"))
