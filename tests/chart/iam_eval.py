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
credentials). A call is allowed only when every one of them is.

Sources: IAM User Guide, "Policy evaluation logic", "Condition operators", "Policy
variables" (variables only in the resource part of an ARN and in string/ARN
conditions; unresolved variables match nothing); "AWS global condition context keys"
(`ec2:SourceInstanceArn`); Amazon EC2 User Guide, "Example policies" (RunInstances
resource types, tag on create with `ec2:CreateAction`); the Service Authorization
Reference (per-action resource types and condition keys) as bundled in parliament.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
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

def tag_context(*, resource: Mapping[str, str] | None = None,
                request: Mapping[str, str] | None = None) -> dict[str, Any]:
    ctx: dict[str, Any] = {}
    for k, v in (resource or {}).items():
        ctx[f"aws:ResourceTag/{k}"] = v
    if request is not None:
        for k, v in request.items():
            ctx[f"aws:RequestTag/{k}"] = v
        ctx["aws:TagKeys"] = list(request)
    return ctx


def operator_principal() -> dict[str, Any]:
    """The operator's IRSA role session: no instance keys."""
    return {"aws:PrincipalAccount": "123456789012"}


def instance_principal(instance_arn: str) -> dict[str, Any]:
    """Credentials of an instance profile: `ec2:SourceInstanceARN` is in every request."""
    return {"aws:PrincipalAccount": instance_arn.split(":")[4], "ec2:SourceInstanceARN": instance_arn}


def ec2_arn(region: str, account: str, kind: str, ident: str) -> str:
    return f"arn:{PARTITION}:ec2:{region}:{account}:{kind}/{ident}"


def run_instances(*, region: str, account: str, image: str, subnet: str,
                  security_groups: Sequence[str], tag_specs: Mapping[str, Mapping[str, str]],
                  http_tokens: str = "required", role_arn: str | None = None,
                  key_pair: str | None = None, launch_template: str | None = None,
                  principal: Mapping[str, Any] | None = None) -> list[Request]:
    """What RunInstances is authorized against (EC2 User Guide, "Launch instances").

    The instance, its volumes and its network interface are new resources: ARN with a
    `*` id, `aws:RequestTag/...` and `aws:TagKeys` from the TagSpecification of that
    resource type (none if the request has no TagSpecification for the type). Each
    tagged type also needs `ec2:CreateTags` with `ec2:CreateAction = RunInstances`.
    The image, subnet and security groups are existing resources that are only used.
    """
    p = dict(principal or operator_principal())
    new = {"instance": {"ec2:MetadataHttpTokens": http_tokens, "ec2:InstanceID": "*"},
           "volume": {}, "network-interface": {}}
    requests = []
    for kind, extra in new.items():
        ctx = {**p, **extra}
        if kind in tag_specs:
            ctx.update(tag_context(request=tag_specs[kind]))
        requests.append(Request("ec2:RunInstances", ec2_arn(region, account, kind, "*"), ctx))
    requests.append(Request("ec2:RunInstances", f"arn:{PARTITION}:ec2:{region}::image/{image}", dict(p)))
    requests.append(Request("ec2:RunInstances", ec2_arn(region, account, "subnet", subnet), dict(p)))
    for sg in security_groups:
        requests.append(Request("ec2:RunInstances", ec2_arn(region, account, "security-group", sg), dict(p)))
    if key_pair:
        requests.append(Request("ec2:RunInstances", ec2_arn(region, account, "key-pair", key_pair), dict(p)))
    if launch_template:
        requests.append(Request("ec2:RunInstances",
                                ec2_arn(region, account, "launch-template", launch_template), dict(p)))
    for kind, tags in tag_specs.items():
        ctx = {**p, "ec2:CreateAction": "RunInstances", **tag_context(request=tags)}
        requests.append(Request("ec2:CreateTags", ec2_arn(region, account, kind, "*"), ctx))
    if role_arn:
        requests.append(Request("iam:PassRole", role_arn, {**p, "iam:PassedToService": "ec2.amazonaws.com"}))
    return requests


def ec2_create_tags(resource_arn: str, existing: Mapping[str, str], tags: Mapping[str, str],
                    principal: Mapping[str, Any] | None = None) -> list[Request]:
    """CreateTags on an existing resource (not as part of a create action)."""
    ctx = {**(principal or operator_principal()), **tag_context(resource=existing, request=tags)}
    if ":instance/" in resource_arn:
        ctx["ec2:InstanceID"] = resource_arn.rsplit("/", 1)[1]
    return [Request("ec2:CreateTags", resource_arn, ctx)]


def ec2_on_instance(action: str, instance_arn: str, existing: Mapping[str, str],
                    principal: Mapping[str, Any] | None = None) -> list[Request]:
    ctx = {**(principal or operator_principal()), **tag_context(resource=existing),
           "ec2:InstanceID": instance_arn.rsplit("/", 1)[1]}
    return [Request(action, instance_arn, ctx)]


def rds_arn(region: str, account: str, kind: str, ident: str) -> str:
    return f"arn:{PARTITION}:rds:{region}:{account}:{kind}:{ident}"


def rds_restore(*, region: str, account: str, db_id: str, snapshot: str, tags: Mapping[str, str],
                subnet_group: str = "featureenv", option_group: str = "default:postgres-16",
                parameter_group: str = "default.postgres16",
                principal: Mapping[str, Any] | None = None) -> list[Request]:
    """RestoreDBInstanceFromDBSnapshot with Tags: the new DB instance (request tags),
    the snapshot, subnet group, option and parameter groups it uses, and the dependent
    rds:AddTagsToResource on the DB instance being created (no resource tags yet)."""
    p = dict(principal or operator_principal())
    db = rds_arn(region, account, "db", db_id)
    return [
        Request("rds:RestoreDBInstanceFromDBSnapshot", db, {**p, **tag_context(request=tags)}),
        Request("rds:RestoreDBInstanceFromDBSnapshot", rds_arn(region, account, "snapshot", snapshot), dict(p)),
        Request("rds:RestoreDBInstanceFromDBSnapshot", rds_arn(region, account, "subgrp", subnet_group), dict(p)),
        Request("rds:RestoreDBInstanceFromDBSnapshot", rds_arn(region, account, "og", option_group), dict(p)),
        Request("rds:RestoreDBInstanceFromDBSnapshot", rds_arn(region, account, "pg", parameter_group), dict(p)),
        Request("rds:AddTagsToResource", db, {**p, **tag_context(request=tags)}),
    ]


def rds_add_tags(db_arn: str, existing: Mapping[str, str], tags: Mapping[str, str],
                 principal: Mapping[str, Any] | None = None) -> list[Request]:
    ctx = {**(principal or operator_principal()), **tag_context(resource=existing, request=tags)}
    return [Request("rds:AddTagsToResource", db_arn, ctx)]


def rds_on_db(action: str, db_arn: str, existing: Mapping[str, str],
              principal: Mapping[str, Any] | None = None) -> list[Request]:
    return [Request(action, db_arn, {**(principal or operator_principal()), **tag_context(resource=existing)})]


def ssm_arn(region: str, account: str, name: str) -> str:
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
    required resource type, `instance` one more): the document, and each instance with
    its tags both as `aws:ResourceTag/...` and as SSM's own `ssm:resourceTag/...` (both
    are listed for the instance resource type)."""
    p = dict(principal or operator_principal())
    instance_ctx = {**p, **tag_context(resource=instance_tags),
                    **{f"ssm:resourceTag/{k}": v for k, v in instance_tags.items()}}
    return [
        Request("ssm:SendCommand", ssm_document_arn(region, account, document), dict(p)),
        Request("ssm:SendCommand", ec2_arn(region, account, "instance", instance_id), instance_ctx),
    ]


def ssm_create_parameter(arn: str, tags: Mapping[str, str],
                         principal: Mapping[str, Any] | None = None) -> list[Request]:
    """PutParameter (Overwrite=false) with Tags: the parameter does not exist yet, and
    tagging on create also needs ssm:AddTagsToResource (AWS::SSM::Parameter docs)."""
    p = dict(principal or operator_principal())
    return [
        Request("ssm:PutParameter", arn, {**p, "ssm:Overwrite": "false", **tag_context(request=tags)}),
        Request("ssm:AddTagsToResource", arn, {**p, **tag_context(request=tags)}),
    ]


def ssm_overwrite_parameter(arn: str, existing: Mapping[str, str],
                            principal: Mapping[str, Any] | None = None) -> list[Request]:
    """PutParameter with Overwrite=true (no Tags: SSM rejects the two together)."""
    ctx = {**(principal or operator_principal()), "ssm:Overwrite": "true", **tag_context(resource=existing)}
    return [Request("ssm:PutParameter", arn, ctx)]


def ssm_add_tags(arn: str, existing: Mapping[str, str], tags: Mapping[str, str],
                 principal: Mapping[str, Any] | None = None) -> list[Request]:
    ctx = {**(principal or operator_principal()), **tag_context(resource=existing, request=tags)}
    return [Request("ssm:AddTagsToResource", arn, ctx)]


def ssm_on_parameter(action: str, arn: str, existing: Mapping[str, str],
                     principal: Mapping[str, Any] | None = None) -> list[Request]:
    return [Request(action, arn, {**(principal or operator_principal()), **tag_context(resource=existing)})]
