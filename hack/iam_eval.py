"""A small, strict evaluator of IAM identity policies, and models of the authorization
requests AWS makes for the calls the operator and the environment instances issue.

It is ours, not AWS's: it decides a request the way the IAM documentation describes
(explicit Deny wins, then any Allow whose Action, Resource and every Condition match),
for the subset of the policy language the two policies in docs/ use. Anything outside
that subset -- an operator, a qualifier, a policy variable, a Deny-less NotAction --
raises `Unsupported` instead of being guessed at, so a test can never pass because a
condition was silently ignored.

Request models (`run_instances`, `rds_restore`, `ssm_create_parameter`, ...) list the
authorizations AWS documents for one API call: every resource type the action is
authorized against, with the condition keys present in its request context (request
tags per resource type, resource tags of existing resources, `ec2:CreateAction` for
tag-on-create, the caller's `ec2:SourceInstanceARN` when it uses instance-profile
credentials). A call is allowed only when every one of them is. Each modelled request
also says which condition keys its model decides (`Request.decided`): a statement that
matches it and conditions on another key AWS may put in that request (a global key, or
one the Service Authorization Reference lists for the action or resource type) raises
`Unsupported` too, so a key the model left out can never make a test pass.

`logged_call` turns a call hack/fault_proxy.py logged (the fields hack/aws_authz.py
lists, tags looked up in moto included) into those requests, and checks them against
the reference's resource types: each request names one of its action's resource types
(by ARN format), and every type the action requires is there. `call_requests` is that
conversion as both users apply it: tests/chart/test_iam_policy.py on an e2e run's call
log, after the run, and hack/fault_proxy.py (`--iam-policy`) on each call before it
forwards it; `render_policy` renders docs/iam-policy.json for a cluster as both
evaluate it. It lives in hack/ so the proxy need not import from tests/.

Sources: IAM User Guide, "Policy evaluation logic", "Condition operators", "Policy
variables" (variables only in the resource part of an ARN and in string/ARN
conditions; unresolved variables match nothing); "AWS global condition context keys"
(`ec2:SourceInstanceArn`); Amazon EC2 User Guide, "Example policies" (RunInstances
resource types, tag on create with `ec2:CreateAction`); the Service Authorization
Reference (per-action resource types and condition keys) as bundled in parliament.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

PARTITION = "aws"


class Unsupported(Exception):
    """The policy uses something this evaluator does not model."""


# ---------------------------------------------------------------------------------
# Requests

@dataclass(frozen=True)
class Request:
    action: str
    resource: str
    context: Mapping[str, Any] = field(default_factory=dict)
    # The condition keys this model of the request decides: present in `context`, or
    # known to be absent (a name, or a family such as `aws:resourcetag/`, lower case).
    # A statement that matches the request and puts a condition on a key outside them
    # which AWS may have in the request (documented for the action or resource type,
    # or global) raises Unsupported. None: a hand-made request, missing keys absent.
    decided: frozenset[str] | None = None

    def __str__(self) -> str:
        return f"{self.action} on {self.resource}"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    allowed_by: tuple[str, ...] = ()
    denied_by: tuple[str, ...] = ()


# Condition keys whose value is a set (the documentation's "multivalued" keys) among
# those the policies use. Every other key is single-valued.
MULTI_VALUED = frozenset({"aws:tagkeys"})

# Keys that may be used as policy variables: single-valued keys the policies (or the
# tests) use. Anything else in ${...} raises.
VARIABLES = frozenset({
    "ec2:sourceinstancearn", "ec2:instanceid",
    "aws:username", "aws:userid", "aws:principalaccount", "aws:requestedregion",
})
VARIABLE_PREFIXES = ("aws:principaltag/",)

STRING_OPS = {
    "StringEquals": (False, "string"), "StringNotEquals": (True, "string"),
    "StringEqualsIgnoreCase": (False, "string-ci"), "StringNotEqualsIgnoreCase": (True, "string-ci"),
    "StringLike": (False, "glob"), "StringNotLike": (True, "glob"),
    "ArnEquals": (False, "arn"), "ArnLike": (False, "arn"),
    "ArnNotEquals": (True, "arn"), "ArnNotLike": (True, "arn"),
    "Bool": (False, "bool"),
}

_VAR = re.compile(r"\$\{([^}]*)\}")


def as_list(x: Any) -> list[Any]:
    return x if isinstance(x, list) else [x]


def _ctx(context: Mapping[str, Any]) -> dict[str, Any]:
    """Condition key names are case-insensitive."""
    return {k.lower(): v for k, v in context.items()}


def _variables(text: str) -> list[str]:
    return _VAR.findall(text)


def _check_variable(name: str, ctx: Mapping[str, Any]) -> str | None:
    key = name.lower()
    if "," in name or key in {"*", "?", "$"}:
        raise Unsupported(f"policy variable syntax ${{{name}}}")
    if key not in VARIABLES and not key.startswith(VARIABLE_PREFIXES):
        raise Unsupported(f"policy variable ${{{name}}}")
    if key in MULTI_VALUED:
        raise Unsupported(f"multivalued key {name} used as a variable")
    value = ctx.get(key)
    if isinstance(value, list):
        raise Unsupported(f"variable {name} has several values in the request")
    return value


def _substitute(text: str, ctx: Mapping[str, Any]) -> str | None:
    """`text` with its variables replaced by request values; None if one has no value."""
    out, last = [], 0
    for m in _VAR.finditer(text):
        value = _check_variable(m.group(1), ctx)
        if value is None:
            return None
        out.append(text[last:m.start()])
        out.append(_literal(str(value)))
        last = m.end()
    out.append(text[last:])
    return "".join(out)


# A substituted variable value is literal text, never a wildcard: its `*` and `?` are
# carried as these markers until the comparison.
_STAR, _QUESTION = "\x00star", "\x00q"


def _literal(value: str) -> str:
    return value.replace("*", _STAR).replace("?", _QUESTION)


def _unescape(value: str) -> str:
    return value.replace(_STAR, "*").replace(_QUESTION, "?")


def _wildcard_match(pattern: str, value: str, *, ci: bool = False) -> bool:
    """IAM wildcard match: `*` any run of characters (also across : and /), `?` one."""
    regex = ""
    for part in re.split(f"({_STAR}|{_QUESTION}|\\*|\\?)", pattern):
        regex += {"*": ".*", "?": ".", _STAR: re.escape("*"), _QUESTION: re.escape("?")}.get(part, re.escape(part))
    return re.fullmatch(regex, value, re.DOTALL | (re.IGNORECASE if ci else 0)) is not None


def _arn_match(pattern: str, value: str) -> bool:
    """ArnEquals/ArnLike: each of the six colon-separated parts matched on its own."""
    p, v = pattern.split(":", 5), value.split(":", 5)
    if len(p) != 6 or len(v) != 6:
        return False
    return all(_wildcard_match(a, b) for a, b in zip(p, v))


def _compare(kind: str, policy_value: str, request_value: str) -> bool:
    if kind == "string":
        return _unescape(policy_value) == request_value
    if kind == "string-ci":
        return _unescape(policy_value).lower() == request_value.lower()
    if kind == "glob":
        return _wildcard_match(policy_value, request_value)
    if kind == "arn":
        return _arn_match(policy_value, request_value)
    if kind == "bool":
        if policy_value.lower() not in {"true", "false"}:
            raise Unsupported(f"Bool value {policy_value!r}")
        return policy_value.lower() == str(request_value).lower()
    raise AssertionError(kind)


def condition_holds(operator: str, key: str, expected: Any, context: Mapping[str, Any]) -> bool:
    """One operator/key pair of a Condition block against a request context."""
    ctx = _ctx(context)
    qualifier, _, base = operator.rpartition(":")
    if qualifier not in {"", "ForAllValues", "ForAnyValue"}:
        raise Unsupported(f"condition set qualifier {qualifier}")
    if_exists = base.endswith("IfExists") and base != "IfExists"
    if if_exists:
        base = base[: -len("IfExists")]
    lkey = key.lower()
    present = lkey in ctx and ctx[lkey] is not None
    values = [str(v) for v in as_list(expected)]

    if base == "Null":
        if qualifier or if_exists:
            raise Unsupported(f"{operator}")
        if len(values) != 1 or values[0].lower() not in {"true", "false"}:
            raise Unsupported(f"Null expects true or false, got {values}")
        if _variables(values[0]):
            raise Unsupported("policy variable in a Null condition")
        return (not present) if values[0].lower() == "true" else present
    if base not in STRING_OPS:
        raise Unsupported(f"condition operator {operator}")
    negated, kind = STRING_OPS[base]
    if kind == "bool" and any(_variables(v) for v in values):
        raise Unsupported("policy variable in a Bool condition")

    multi = lkey in MULTI_VALUED
    if qualifier and not multi:
        raise Unsupported(f"{qualifier} on single-valued key {key}")
    if not qualifier and multi:
        raise Unsupported(f"multivalued key {key} without ForAllValues/ForAnyValue")

    if not present:
        if if_exists:
            return True
        if qualifier == "ForAllValues":
            return True
        if qualifier == "ForAnyValue":
            return False
        return negated  # negated operators match a missing key

    # Resolve variables in the policy values; a value whose variable has no value in
    # the request matches nothing.
    resolved = [r for r in (_substitute(v, ctx) for v in values) if r is not None]

    def one(request_value: str) -> bool:
        hit = any(_compare(kind, p, str(request_value)) for p in resolved)
        return not hit if negated else hit

    got = ctx[lkey]
    if qualifier == "ForAllValues":
        return all(one(v) for v in as_list(got))
    if qualifier == "ForAnyValue":
        return any(one(v) for v in as_list(got))
    if isinstance(got, list):
        raise Unsupported(f"single-valued key {key} has several values in the request")
    return one(got)


# ---------------------------------------------------------------------------------
# The Service Authorization Reference, as bundled with parliament: per action, its
# resource types (`*`: required) and condition keys; per resource type, its ARN format
# and condition keys.

@functools.lru_cache(maxsize=None)
def _service(prefix: str) -> dict[str, Any]:
    import parliament  # a hard dependency of the tests, like the linter itself

    data = json.loads((Path(parliament.__file__).parent / "iam_definition.json").read_text())
    privileges: dict[str, list[dict[str, Any]]] = {}
    resources: dict[str, dict[str, Any]] = {}
    for service in data:
        if service["prefix"] == prefix:
            for p in service["privileges"]:
                privileges.setdefault(p["privilege"].lower(), []).extend(p["resource_types"])
            for r in service["resources"]:
                resources.setdefault(r["resource"], r)
    return {"privileges": privileges, "resources": resources}


def _action_resource_types(action: str) -> list[dict[str, Any]]:
    prefix, _, name = action.partition(":")
    found = _service(prefix.lower())["privileges"].get(name.lower())
    if found is None:
        raise Unsupported(f"{action} is not in the Service Authorization Reference")
    return found


@functools.lru_cache(maxsize=None)
def _template_regex(template: str) -> re.Pattern[str]:
    """An ARN format (`arn:${Partition}:ec2:${Region}:${Account}:instance/${InstanceId}`)
    as a regex: partition, region and account within their field, the rest anything."""
    out, last = "", 0
    for m in re.finditer(r"\$\{([^}]*)\}", template):
        out += re.escape(template[last:m.start()])
        out += "[^:]*" if m.group(1) in ("Partition", "Region", "Account") else ".+"
        last = m.end()
    return re.compile(out + re.escape(template[last:]))


def resource_type_of(action: str, resource: str) -> str | None:
    """The resource type of `action` whose ARN format `resource` has ("" for `*`)."""
    if resource == "*":
        return ""
    resources = _service(action.partition(":")[0].lower())["resources"]
    for rt in _action_resource_types(action):
        name = rt["resource_type"].rstrip("*")
        entry = resources.get(name)
        if name and entry and _template_regex(entry["arn"]).fullmatch(resource):
            return name
    return None


def _key_pattern(key: str) -> str:
    """A documented key in lower case; `aws:ResourceTag/${TagKey}` (or SSM's
    `ssm:resourceTag/tag-key`) as the family prefix `aws:resourcetag/`."""
    key = key.lower()
    if key.endswith("/${tagkey}") or key.endswith("/tag-key"):
        return key.rsplit("/", 1)[0] + "/"
    return key


@functools.lru_cache(maxsize=None)
def documented_keys(action: str, resource_type: str) -> frozenset[str]:
    """The condition keys AWS documents for `action` on `resource_type`: the action's
    own row for it, the action's request-level keys and the resource type's keys."""
    keys: set[str] = set()
    for rt in _action_resource_types(action):
        if rt["resource_type"].rstrip("*") in (resource_type, ""):
            keys.update(rt["condition_keys"])
    entry = _service(action.partition(":")[0].lower())["resources"].get(resource_type)
    if entry:
        keys.update(entry["condition_keys"])
    return frozenset(_key_pattern(k) for k in keys)


def _in(key: str, patterns: Iterable[str]) -> bool:
    return any(key == p or (p.endswith("/") and key.startswith(p)) for p in patterns)


def may_be_in_request(request: Request, key: str) -> bool:
    """Whether AWS may put `key` in `request`'s context: a global (`aws:`) key, or one
    the reference documents for the action and resource type."""
    key = key.lower()
    if key.startswith("aws:"):
        return True
    rtype = resource_type_of(request.action, request.resource)
    return rtype is not None and _in(key, documented_keys(request.action, rtype))


def check_resource_types(requests: Sequence[Request]) -> None:
    """Raises Unsupported unless every modelled request names a resource type its action
    is authorized on (by ARN format), and every resource type an action requires is
    among the call's requests for it."""
    by_action: dict[str, set[str]] = {}
    for r in requests:
        if r.decided is None:
            continue
        rtype = resource_type_of(r.action, r.resource)
        if rtype is None:
            raise Unsupported(f"{r}: not a resource type of {r.action} in the Service Authorization Reference")
        by_action.setdefault(r.action, set()).add(rtype)
    for action, types in by_action.items():
        required = {rt["resource_type"].rstrip("*") for rt in _action_resource_types(action)
                    if rt["resource_type"].endswith("*")}
        missing = required - types
        if missing:
            raise Unsupported(f"{action}: the model has no request for its required resource types {sorted(missing)}")


def _statement_keys(s: Mapping[str, Any]) -> list[str]:
    """Every condition key a statement reads: its Condition keys and the variables in
    its Resource and Condition values."""
    keys = [k for pairs in s.get("Condition", {}).values() for k in pairs]
    texts = [r for r in as_list(s["Resource"])]
    texts += [str(v) for pairs in s.get("Condition", {}).values() for vs in pairs.values() for v in as_list(vs)]
    return keys + [v for t in texts for v in _variables(t)]


def _check_modelled(s: Mapping[str, Any], request: Request) -> None:
    if request.decided is None:
        return
    ctx = _ctx(request.context)
    for key in _statement_keys(s):
        k = key.lower()
        if ctx.get(k) is None and not _in(k, request.decided) and may_be_in_request(request, k):
            raise Unsupported(f"{request}: statement {s.get('Sid')} has a condition on {key}, which AWS may put in "
                              f"this request and the model does not decide")


def _statement_matches(s: Mapping[str, Any], request: Request) -> bool:
    for element in ("NotAction", "NotResource", "Principal", "NotPrincipal"):
        if element in s:
            raise Unsupported(f"{s.get('Sid')}: {element}")
    if s.get("Effect") not in {"Allow", "Deny"}:
        raise Unsupported(f"{s.get('Sid')}: Effect {s.get('Effect')}")
    ctx = _ctx(request.context)
    actions = as_list(s["Action"])
    if not any(_wildcard_match(a, request.action, ci=True) for a in actions):
        return False
    resources = []
    for r in as_list(s["Resource"]):
        if r != "*" and _variables(r):
            prefix = ":".join(r.split(":", 5)[:5])
            if _variables(prefix):
                raise Unsupported(f"{s.get('Sid')}: policy variable before the resource part of {r}")
        resolved = _substitute(r, ctx)
        if resolved is not None:  # an unresolved variable matches no resource
            resources.append(resolved)
    if not any(_wildcard_match(r, request.resource) for r in resources):
        return False
    _check_modelled(s, request)
    for operator, pairs in s.get("Condition", {}).items():
        for key, expected in pairs.items():
            if not condition_holds(operator, key, expected, request.context):
                return False
    return True


def decide(policy: Mapping[str, Any], request: Request) -> Decision:
    if policy.get("Version") != "2012-10-17":
        raise Unsupported("policy variables need Version 2012-10-17")
    allow, deny = [], []
    for s in policy["Statement"]:
        if _statement_matches(s, request):
            (allow if s["Effect"] == "Allow" else deny).append(s.get("Sid", "?"))
    return Decision(allowed=bool(allow) and not deny, allowed_by=tuple(allow), denied_by=tuple(deny))


def allowed(policy: Mapping[str, Any], request: Request) -> bool:
    return decide(policy, request).allowed


def denied_requests(policy: Mapping[str, Any], requests: Iterable[Request]) -> list[Request]:
    """The authorizations of one call that the policy does not allow (empty: allowed)."""
    return [r for r in requests if not allowed(policy, r)]


def call_allowed(policy: Mapping[str, Any], requests: Iterable[Request]) -> bool:
    return not denied_requests(policy, requests)


# ---------------------------------------------------------------------------------
# Request contexts

# Keys every model here decides: the principal's (`aws:PrincipalAccount`; an
# instance's credentials add `ec2:SourceInstanceARN`, any other session lacks it).
PRINCIPAL_KEYS = frozenset({"aws:principalaccount", "ec2:sourceinstancearn"})
REQUEST_TAGS = ("aws:requesttag/", "aws:tagkeys")
RESOURCE_TAGS = ("aws:resourcetag/",)
# The services' own keys for the same tags, per resource type.
EC2_RESOURCE_TAGS = "ec2:ResourceTag/"
RDS_RESOURCE_TAGS = {"db": "rds:db-tag/", "snapshot": "rds:snapshot-tag/", "subgrp": "rds:subgrp-tag/",
                     "og": "rds:og-tag/", "pg": "rds:pg-tag/"}
RDS_REQUEST_TAGS = "rds:req-tag/"
SSM_RESOURCE_TAGS = "ssm:resourceTag/"


def tag_context(*, resource: Mapping[str, str] | None = None, request: Mapping[str, str] | None = None,
                resource_keys: Sequence[str] = (), request_keys: Sequence[str] = ()) -> dict[str, Any]:
    """`aws:ResourceTag/...` from the resource's tags, `aws:RequestTag/...` and
    `aws:TagKeys` from the request's; the same tags under each service key family in
    `resource_keys` / `request_keys` (e.g. `rds:db-tag/`)."""
    ctx: dict[str, Any] = {}
    for k, v in (resource or {}).items():
        for family in ("aws:ResourceTag/", *resource_keys):
            ctx[f"{family}{k}"] = v
    if request is not None:
        for k, v in request.items():
            for family in ("aws:RequestTag/", *request_keys):
                ctx[f"{family}{k}"] = v
        ctx["aws:TagKeys"] = list(request)
    return ctx


def _region_of(arn: str) -> str:
    parts = arn.split(":")
    return parts[3] if len(parts) > 5 else ""


def modelled(action: str, resource: str, context: Mapping[str, Any], *families: str,
             region: str | None = None) -> Request:
    """A request whose model decides the keys in `context`, the principal's, the
    region's (`aws:RequestedRegion`, and `ec2:Region` for EC2; from the ARN unless
    given) and `families` (known absent when not in `context`)."""
    ctx = dict(context)
    region = region if region is not None else _region_of(resource)
    decided = set(PRINCIPAL_KEYS)
    if region:
        ctx.setdefault("aws:RequestedRegion", region)
        if action.startswith("ec2:"):
            ctx.setdefault("ec2:Region", region)
    decided.update(k.lower() for k in ctx)
    decided.update(f.lower() for f in families)
    return Request(action, resource, ctx, frozenset(decided))


def operator_principal() -> dict[str, Any]:
    """The operator's IRSA role session: no instance keys."""
    return {"aws:PrincipalAccount": "123456789012"}


def instance_principal(instance_arn: str) -> dict[str, Any]:
    """Credentials of an instance profile: `ec2:SourceInstanceARN` is in every request."""
    return {"aws:PrincipalAccount": instance_arn.split(":")[4], "ec2:SourceInstanceARN": instance_arn}


def ec2_arn(region: str, account: str, kind: str, ident: str) -> str:
    return f"arn:{PARTITION}:ec2:{region}:{account}:{kind}/{ident}"


def image_arn(region: str, image: str) -> str:
    return f"arn:{PARTITION}:ec2:{region}::image/{image}"


def run_instances(*, region: str, account: str, image: str, subnet: str,
                  security_groups: Sequence[str], tag_specs: Mapping[str, Mapping[str, str]],
                  http_tokens: str | None = "required", role_arn: str | None = None,
                  key_pair: str | None = None, launch_template: str | None = None,
                  instance_type: str | None = None,
                  principal: Mapping[str, Any] | None = None) -> list[Request]:
    """What RunInstances is authorized against (EC2 User Guide, "Launch instances").

    The instance, its volumes and its network interface are new resources: ARN with a
    `*` id, `aws:RequestTag/...` and `aws:TagKeys` from the TagSpecification of that
    resource type (none if the request has no TagSpecification for the type), no
    resource tags. Each tagged type also needs `ec2:CreateTags` with `ec2:CreateAction
    = RunInstances`. The image, subnet and security groups are existing resources that
    are only used (their tags are not modelled). `http_tokens` None: not sent, so
    `ec2:MetadataHttpTokens` is left undecided (the account's and the AMI's defaults).
    """
    p = dict(principal or operator_principal())
    instance: dict[str, Any] = {"ec2:InstanceID": "*"}
    if http_tokens is not None:
        instance["ec2:MetadataHttpTokens"] = http_tokens
    if instance_type is not None:
        instance["ec2:InstanceType"] = instance_type
    new = {"instance": instance, "volume": {}, "network-interface": {}}
    created = (*REQUEST_TAGS, *RESOURCE_TAGS, EC2_RESOURCE_TAGS)
    requests = []
    for kind, extra in new.items():
        ctx = {**p, **extra}
        if kind in tag_specs:
            ctx.update(tag_context(request=tag_specs[kind]))
        requests.append(modelled("ec2:RunInstances", ec2_arn(region, account, kind, "*"), ctx, *created))
    requests.append(modelled("ec2:RunInstances", image_arn(region, image), p))
    requests.append(modelled("ec2:RunInstances", ec2_arn(region, account, "subnet", subnet), p))
    for sg in security_groups:
        requests.append(modelled("ec2:RunInstances", ec2_arn(region, account, "security-group", sg), p))
    if key_pair:
        requests.append(modelled("ec2:RunInstances", ec2_arn(region, account, "key-pair", key_pair), p))
    if launch_template:
        requests.append(modelled("ec2:RunInstances",
                                 ec2_arn(region, account, "launch-template", launch_template), p))
    for kind, tags in tag_specs.items():
        ctx = {**p, "ec2:CreateAction": "RunInstances", **tag_context(request=tags)}
        requests.append(modelled("ec2:CreateTags", ec2_arn(region, account, kind, "*"), ctx, *created))
    if role_arn:
        requests.append(modelled("iam:PassRole", role_arn, {**p, "iam:PassedToService": "ec2.amazonaws.com"}))
    return requests


def ec2_create_tags(resource_arn: str, existing: Mapping[str, str], tags: Mapping[str, str],
                    principal: Mapping[str, Any] | None = None) -> list[Request]:
    """CreateTags on an existing resource (not as part of a create action: no
    `ec2:CreateAction`)."""
    ctx = {**(principal or operator_principal()),
           **tag_context(resource=existing, request=tags, resource_keys=(EC2_RESOURCE_TAGS,))}
    if ":instance/" in resource_arn:
        ctx["ec2:InstanceID"] = resource_arn.rsplit("/", 1)[1]
    return [modelled("ec2:CreateTags", resource_arn, ctx, *REQUEST_TAGS, *RESOURCE_TAGS, EC2_RESOURCE_TAGS,
                     "ec2:CreateAction")]


def ec2_on_instance(action: str, instance_arn: str, existing: Mapping[str, str],
                    principal: Mapping[str, Any] | None = None) -> list[Request]:
    ctx = {**(principal or operator_principal()), **tag_context(resource=existing, resource_keys=(EC2_RESOURCE_TAGS,)),
           "ec2:InstanceID": instance_arn.rsplit("/", 1)[1]}
    return [modelled(action, instance_arn, ctx, *RESOURCE_TAGS, EC2_RESOURCE_TAGS)]


def ec2_no_resource(action: str, region: str, principal: Mapping[str, Any] | None = None) -> list[Request]:
    """DescribeImages, DescribeInstances: no resource-level permissions (`*`)."""
    return [modelled(action, "*", principal or operator_principal(), region=region)]


def rds_arn(region: str, account: str, kind: str, ident: str) -> str:
    return f"arn:{PARTITION}:rds:{region}:{account}:{kind}:{ident}"


def _rds_tags(kind: str, *, resource: Mapping[str, str] | None = None,
              request: Mapping[str, str] | None = None) -> dict[str, Any]:
    return tag_context(resource=resource, request=request, resource_keys=(RDS_RESOURCE_TAGS[kind],),
                       request_keys=(RDS_REQUEST_TAGS,))


def rds_restore(*, region: str, account: str, db_id: str, snapshot: str, tags: Mapping[str, str],
                subnet_group: str = "featureenv", option_group: str = "default:postgres-16",
                parameter_group: str = "default.postgres16", snapshot_tags: Mapping[str, str] | None = None,
                snapshot_arn: str | None = None, principal: Mapping[str, Any] | None = None) -> list[Request]:
    """RestoreDBInstanceFromDBSnapshot with Tags: the new DB instance (request tags, no
    resource tags yet), the snapshot (its tags when known), subnet group, option and
    parameter groups it uses (their tags not modelled), and the dependent
    rds:AddTagsToResource on the DB instance being created."""
    p = dict(principal or operator_principal())
    db = rds_arn(region, account, "db", db_id)
    new_db = (*REQUEST_TAGS, RDS_REQUEST_TAGS, *RESOURCE_TAGS, RDS_RESOURCE_TAGS["db"])
    db_ctx = {**p, **_rds_tags("db", request=tags)}
    snap = snapshot_arn or rds_arn(region, account, "snapshot", snapshot)
    if snapshot_tags is None:
        snapshot_request = modelled("rds:RestoreDBInstanceFromDBSnapshot", snap, p)
    else:
        snapshot_request = modelled("rds:RestoreDBInstanceFromDBSnapshot", snap,
                                    {**p, **_rds_tags("snapshot", resource=snapshot_tags)},
                                    *RESOURCE_TAGS, RDS_RESOURCE_TAGS["snapshot"])
    return [
        modelled("rds:RestoreDBInstanceFromDBSnapshot", db, db_ctx, *new_db),
        snapshot_request,
        modelled("rds:RestoreDBInstanceFromDBSnapshot", rds_arn(region, account, "subgrp", subnet_group), p),
        modelled("rds:RestoreDBInstanceFromDBSnapshot", rds_arn(region, account, "og", option_group), p),
        modelled("rds:RestoreDBInstanceFromDBSnapshot", rds_arn(region, account, "pg", parameter_group), p),
        modelled("rds:AddTagsToResource", db, db_ctx, *new_db),
    ]


def rds_add_tags(db_arn: str, existing: Mapping[str, str], tags: Mapping[str, str],
                 principal: Mapping[str, Any] | None = None) -> list[Request]:
    ctx = {**(principal or operator_principal()), **_rds_tags("db", resource=existing, request=tags)}
    return [modelled("rds:AddTagsToResource", db_arn, ctx, *REQUEST_TAGS, RDS_REQUEST_TAGS, *RESOURCE_TAGS,
                     RDS_RESOURCE_TAGS["db"])]


def rds_on_db(action: str, db_arn: str, existing: Mapping[str, str],
              principal: Mapping[str, Any] | None = None) -> list[Request]:
    ctx = {**(principal or operator_principal()), **_rds_tags("db", resource=existing)}
    return [modelled(action, db_arn, ctx, *RESOURCE_TAGS, RDS_RESOURCE_TAGS["db"])]


def rds_default_groups(engine: str, version: str) -> tuple[str, str]:
    """(option group, parameter group) a restore gets when it names none: the engine's
    defaults for the snapshot's major version (`default:postgres-16`,
    `default.postgres16`; before PostgreSQL 10 and for MySQL the major is two numbers:
    `default:mysql-8-0`, `default.mysql8.0`)."""
    numbers = version.split(".")
    single = engine.startswith("postgres") and numbers[0].isdigit() and int(numbers[0]) >= 10
    major = numbers[:1] if single else numbers[:2]
    return f"default:{engine}-{'-'.join(major)}", f"default.{engine}{'.'.join(major)}"


def ssm_arn(region: str, account: str, name: str) -> str:
    if name.startswith("arn:"):
        return name
    return f"arn:{PARTITION}:ssm:{region}:{account}:parameter/{name.lstrip('/')}"


# Document names AWS reserves for its own (CreateDocument: a custom document's name
# cannot begin with them), compared case-insensitively.
AWS_DOCUMENT_PREFIXES = ("aws", "amazon", "amzn")


def ssm_document_arn(region: str, account: str, document: str) -> str:
    """The ARN SendCommand is authorized against for DocumentName `document`: an ARN as
    given; an AWS-owned document's has no account (arn:aws:ssm:REGION::document/AWS-...);
    a custom one is the caller's account's."""
    if document.startswith("arn:"):
        return document
    owner = "" if document.lower().startswith(AWS_DOCUMENT_PREFIXES) else account
    return f"arn:{PARTITION}:ssm:{region}:{owner}:document/{document}"


def ssm_send_command(*, region: str, account: str, document: str, instance_id: str,
                     instance_tags: Mapping[str, str], principal: Mapping[str, Any] | None = None) -> list[Request]:
    """SendCommand with InstanceIds (Service Authorization Reference: `document` is the
    required resource type, `instance` one more): the document (its tags not modelled),
    and each instance with its tags both as `aws:ResourceTag/...` and as SSM's own
    `ssm:resourceTag/...` (both are listed for the instance resource type)."""
    p = dict(principal or operator_principal())
    instance_ctx = {**p, **tag_context(resource=instance_tags, resource_keys=(SSM_RESOURCE_TAGS,))}
    return [
        modelled("ssm:SendCommand", ssm_document_arn(region, account, document), p),
        modelled("ssm:SendCommand", ec2_arn(region, account, "instance", instance_id), instance_ctx,
                 *RESOURCE_TAGS, SSM_RESOURCE_TAGS),
    ]


_PARAMETER_TAGS = (*REQUEST_TAGS, *RESOURCE_TAGS, SSM_RESOURCE_TAGS)


def _ssm_tags(*, resource: Mapping[str, str] | None = None,
              request: Mapping[str, str] | None = None) -> dict[str, Any]:
    return tag_context(resource=resource, request=request, resource_keys=(SSM_RESOURCE_TAGS,))


def ssm_create_parameter(arn: str, tags: Mapping[str, str] | None,
                         principal: Mapping[str, Any] | None = None,
                         existing: Mapping[str, str] | None = None) -> list[Request]:
    """PutParameter (Overwrite=false), with Tags unless `tags` is None: tagging on
    create also needs ssm:AddTagsToResource (AWS::SSM::Parameter docs). `existing`: the
    tags of a parameter of that name that exists already (the call then fails with
    ParameterAlreadyExists, after its authorization)."""
    p = dict(principal or operator_principal())
    ctx = {**p, **_ssm_tags(resource=existing, request=tags)}
    requests = [modelled("ssm:PutParameter", arn, {**ctx, "ssm:Overwrite": "false"}, *_PARAMETER_TAGS)]
    if tags is not None:
        requests.append(modelled("ssm:AddTagsToResource", arn, ctx, *_PARAMETER_TAGS))
    return requests


def ssm_overwrite_parameter(arn: str, existing: Mapping[str, str],
                            principal: Mapping[str, Any] | None = None) -> list[Request]:
    """PutParameter with Overwrite=true (no Tags: SSM rejects the two together)."""
    ctx = {**(principal or operator_principal()), "ssm:Overwrite": "true", **_ssm_tags(resource=existing)}
    return [modelled("ssm:PutParameter", arn, ctx, *_PARAMETER_TAGS)]


def ssm_add_tags(arn: str, existing: Mapping[str, str], tags: Mapping[str, str],
                 principal: Mapping[str, Any] | None = None) -> list[Request]:
    ctx = {**(principal or operator_principal()), **_ssm_tags(resource=existing, request=tags)}
    return [modelled("ssm:AddTagsToResource", arn, ctx, *_PARAMETER_TAGS)]


def ssm_on_parameter(action: str, arn: str, existing: Mapping[str, str],
                     principal: Mapping[str, Any] | None = None) -> list[Request]:
    ctx = {**(principal or operator_principal()), **_ssm_tags(resource=existing)}
    return [modelled(action, arn, ctx, *_PARAMETER_TAGS)]


def ssm_by_path(arn: str, recursive: bool, principal: Mapping[str, Any] | None = None) -> list[Request]:
    """GetParametersByPath: authorized on the path as a parameter ARN, with
    `ssm:Recursive`; a path has no tags of its own (left undecided)."""
    ctx = {**(principal or operator_principal()), "ssm:Recursive": str(recursive).lower()}
    return [modelled("ssm:GetParametersByPath", arn, ctx, *REQUEST_TAGS)]


def ecr_arn(region: str, account: str, repository: str) -> str:
    return f"arn:{PARTITION}:ecr:{region}:{account}:repository/{repository}"


def ecr_on_repository(action: str, arn: str, principal: Mapping[str, Any] | None = None) -> list[Request]:
    """An ECR read on a repository (its tags not modelled)."""
    return [modelled(action, arn, principal or operator_principal())]


# ---------------------------------------------------------------------------------
# Calls logged by hack/fault_proxy.py (hack/aws_authz.py says which fields each
# operation carries): the authorizations AWS makes for each, with the operator's
# principal. Anything the log leaves unknown, or an operation without a model here,
# raises Unsupported.

class _Logged:
    def __init__(self, entry: Mapping[str, Any], account: str) -> None:
        self.entry, self.account = entry, account
        self.region = str(entry["region"])
        self.name = f"{entry.get('service')}:{entry.get('action')}"

    def get(self, name: str) -> Any:
        return self.entry.get(name)

    def known(self, name: str) -> Any:
        """A field the call's authorization needs; null means the look-up in moto did not answer."""
        if name not in self.entry:
            raise Unsupported(f"{self.name} logged without `{name}` (a fault_proxy older than its model?)")
        if self.entry[name] is None:
            raise Unsupported(f"{self.name}: `{name}` unknown (moto did not answer the proxy's look-up)")
        return self.entry[name]

    def tags_of(self, resource: str) -> dict[str, str]:
        """The tags `resource` had just before the call; one moto does not know has none."""
        return dict(self.known("resource_tags").get(resource, {}))

    def unsupported(self, why: str) -> Unsupported:
        return Unsupported(f"{self.name}: {why}")


def _logged_run_instances(c: _Logged) -> list[Request]:
    if c.known("unmodelled"):
        raise c.unsupported(f"uses {c.get('unmodelled')}, resources the model does not cover")
    if not c.get("image_id") or not c.get("subnet_id"):
        raise c.unsupported("no ImageId or no SubnetId: the resources a default would pick are unknown")
    if not c.known("security_group_ids"):
        raise c.unsupported("no SecurityGroupId: the default security group's id is unknown")
    roles: list[str | None] = [None]
    if c.get("instance_profile"):
        roles = list(c.known("role_arns")) or [None]
    if len(roles) > 1:
        raise c.unsupported(f"instance profile with several roles {roles}")
    return run_instances(region=c.region, account=c.account, image=c.get("image_id"), subnet=c.get("subnet_id"),
                         security_groups=c.get("security_group_ids"), tag_specs=c.known("tag_specs"),
                         http_tokens=c.get("http_tokens"), role_arn=roles[0], key_pair=c.get("key_name"),
                         launch_template=c.get("launch_template"), instance_type=c.get("instance_type"))


EC2_ID_KINDS = {"i": "instance", "vol": "volume", "eni": "network-interface", "sg": "security-group",
                "subnet": "subnet", "snap": "snapshot"}


def _logged_create_tags(c: _Logged) -> list[Request]:
    requests = []
    for rid in c.known("resource_ids"):
        prefix = rid.split("-", 1)[0]
        if prefix == "ami":
            arn = image_arn(c.region, rid)
        elif prefix in EC2_ID_KINDS:
            arn = ec2_arn(c.region, c.account, EC2_ID_KINDS[prefix], rid)
        else:
            raise c.unsupported(f"resource {rid} of a type the model does not name")
        requests += ec2_create_tags(arn, c.tags_of(rid), c.known("request_tags"))
    return requests


def _logged_on_instances(c: _Logged) -> list[Request]:
    action = f"ec2:{c.entry['action']}"
    return [r for iid in c.known("instance_ids")
            for r in ec2_on_instance(action, ec2_arn(c.region, c.account, "instance", iid), c.tags_of(iid))]


def _logged_describe_db_instances(c: _Logged) -> list[Request]:
    # Without an identifier RDS authorizes the account-wide listing on db:*.
    arn = rds_arn(c.region, c.account, "db", c.get("db_instance_id") or "*")
    return [modelled("rds:DescribeDBInstances", arn, operator_principal())]


def _logged_describe_db_snapshots(c: _Logged) -> list[Request]:
    if c.get("snapshot_id"):
        arn = rds_arn(c.region, c.account, "snapshot", c.get("snapshot_id"))
    elif c.get("db_instance_id"):
        arn = rds_arn(c.region, c.account, "db", c.get("db_instance_id"))
    else:
        arn = "*"
    return [modelled("rds:DescribeDBSnapshots", arn, operator_principal(), region=c.region)]


def _logged_restore(c: _Logged) -> list[Request]:
    snapshot = c.known("snapshot")
    default_og, default_pg = rds_default_groups(str(snapshot.get("engine") or ""), str(snapshot.get("engine_version") or ""))
    return rds_restore(region=c.region, account=c.account, db_id=c.known("db_instance_id"),
                       snapshot=c.known("snapshot_id"), tags=c.known("request_tags"),
                       subnet_group=c.get("subnet_group") or "default",
                       option_group=c.get("option_group") or default_og,
                       parameter_group=c.get("parameter_group") or default_pg,
                       snapshot_tags=snapshot.get("tags") or {}, snapshot_arn=snapshot.get("arn"))


def _logged_rds_add_tags(c: _Logged) -> list[Request]:
    arn = str(c.known("resource_name"))
    if not re.fullmatch(r"arn:aws[a-z-]*:rds:[^:]+:\d{12}:db:.+", arn):
        raise c.unsupported(f"tags {arn}, not a DB instance")
    return rds_add_tags(arn, c.tags_of(arn), c.known("request_tags"))


def _logged_on_db(c: _Logged) -> list[Request]:
    db_id = str(c.known("db_instance_id"))
    return rds_on_db(f"rds:{c.entry['action']}", rds_arn(c.region, c.account, "db", db_id), c.tags_of(db_id))


def _logged_stop_db(c: _Logged) -> list[Request]:
    if c.get("snapshot_id"):
        raise c.unsupported("with DBSnapshotIdentifier: the snapshot it takes first (rds:CreateDBSnapshot, "
                            "rds:AddTagsToResource, the snapshot resource) is not modelled")
    return _logged_on_db(c)


def _logged_on_parameter(c: _Logged) -> list[Request]:
    name = str(c.known("name"))
    return ssm_on_parameter(f"ssm:{c.entry['action']}", ssm_arn(c.region, c.account, name), c.tags_of(name))


def _logged_put_parameter(c: _Logged) -> list[Request]:
    name = str(c.known("name"))
    arn, existing = ssm_arn(c.region, c.account, name), c.tags_of(name)
    if c.known("overwrite"):
        if c.get("request_tags") is not None:
            raise c.unsupported("Overwrite with Tags (SSM refuses the two together)")
        return ssm_overwrite_parameter(arn, existing)
    return ssm_create_parameter(arn, c.get("request_tags"), existing=existing)


def _logged_ssm_add_tags(c: _Logged) -> list[Request]:
    if c.known("resource_type") != "Parameter":
        raise c.unsupported(f"tags a {c.get('resource_type')}, not a parameter")
    name = str(c.known("resource_id"))
    return ssm_add_tags(ssm_arn(c.region, c.account, name), c.tags_of(name), c.known("request_tags"))


def _logged_by_path(c: _Logged) -> list[Request]:
    return ssm_by_path(ssm_arn(c.region, c.account, str(c.known("path"))), bool(c.get("recursive")))


def _logged_send_command(c: _Logged) -> list[Request]:
    tags = c.known("instance_tags")
    return [r for iid in c.known("instance_ids") for r in ssm_send_command(
        region=c.region, account=c.account, document=str(c.known("document")), instance_id=iid,
        instance_tags=tags.get(iid, {}))]


def _logged_ecr(c: _Logged) -> list[Request]:
    arn = ecr_arn(c.region, str(c.get("registry_id") or c.account), str(c.known("repository")))
    return ecr_on_repository(f"ecr:{c.entry['action']}", arn)


LOGGED_CALLS: dict[tuple[str, str], Any] = {
    ("ec2", "DescribeImages"): lambda c: ec2_no_resource("ec2:DescribeImages", c.region),
    ("ec2", "DescribeInstances"): lambda c: ec2_no_resource("ec2:DescribeInstances", c.region),
    ("ec2", "RunInstances"): _logged_run_instances,
    ("ec2", "CreateTags"): _logged_create_tags,
    ("ec2", "TerminateInstances"): _logged_on_instances,
    ("ec2", "StopInstances"): _logged_on_instances,
    ("ec2", "StartInstances"): _logged_on_instances,
    ("ec2", "GetConsoleOutput"): _logged_on_instances,
    ("ec2", "DescribeInstanceAttribute"): _logged_on_instances,
    ("rds", "DescribeDBInstances"): _logged_describe_db_instances,
    ("rds", "DescribeDBSnapshots"): _logged_describe_db_snapshots,
    ("rds", "RestoreDBInstanceFromDBSnapshot"): _logged_restore,
    ("rds", "AddTagsToResource"): _logged_rds_add_tags,
    ("rds", "ModifyDBInstance"): _logged_on_db,
    ("rds", "DeleteDBInstance"): _logged_on_db,
    ("rds", "StopDBInstance"): _logged_stop_db,
    ("rds", "StartDBInstance"): _logged_on_db,
    ("ssm", "GetParameter"): _logged_on_parameter,
    ("ssm", "DeleteParameter"): _logged_on_parameter,
    ("ssm", "PutParameter"): _logged_put_parameter,
    ("ssm", "AddTagsToResource"): _logged_ssm_add_tags,
    ("ssm", "GetParametersByPath"): _logged_by_path,
    ("ssm", "SendCommand"): _logged_send_command,
    ("ecr", "DescribeImages"): _logged_ecr,
    ("ecr", "BatchGetImage"): _logged_ecr,
}


def logged_call(entry: Mapping[str, Any], account: str) -> list[Request]:
    """The authorizations AWS makes for one call as fault_proxy logged it (`account`:
    the account moto plays), each checked against the reference's resource types."""
    name = f"{entry.get('service')}:{entry.get('action')}"
    model = LOGGED_CALLS.get((entry.get("service"), entry.get("action")))
    if model is None:
        raise Unsupported(f"{name}: no model of its authorization (add one to iam_eval.LOGGED_CALLS and "
                          f"its fields to hack/aws_authz.py)")
    if "region" not in entry:
        raise Unsupported(f"{name} logged without the fields its authorization is decided on")
    requests = model(_Logged(entry, account))
    check_resource_types(requests)
    return requests


# ---------------------------------------------------------------------------------
# Shared by the post-run check (tests/chart/test_iam_policy.py) and the strict layer's
# request-time check (hack/fault_proxy.py --iam-policy): one rendering, one conversion.

# The account moto plays (and the one docs/iam.md's examples substitute).
MOTO_ACCOUNT = "123456789012"


def render_policy(text: str, cluster: str, account: str = MOTO_ACCOUNT) -> dict[str, Any]:
    """A policy document as deployed: the CLUSTER_ID and ACCOUNT_ID placeholders
    replaced (docs/iam.md tells users to), parsed."""
    return json.loads(text.replace("CLUSTER_ID", cluster).replace("ACCOUNT_ID", account))


def call_requests(entry: Mapping[str, Any], account: str = MOTO_ACCOUNT) -> list[Request] | None:
    """The authorizations of a call as fault_proxy logs it (`logged_call`), or None for
    one the proxy answered with an injected fault (it never reached AWS)."""
    if entry.get("fault") is not None:
        return None
    return logged_call(entry, account)
