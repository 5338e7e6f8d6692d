"""Tests for docs/iam-policy.json and docs/instance-profile-policy.json.

Checks: valid policy JSON, no `*` (or `service:*`) action, every AWS operation the
operator's AWS adapter uses is allowed, creates are conditioned on
aws:RequestTag/featureenv.io/cluster and mutations/deletes on
aws:ResourceTag/featureenv.io/cluster (checked with a small evaluator of the policy's
own statements: same cluster allowed, other cluster denied).

When FEATUREENV_AWS_CALL_LOG names one or more fault_proxy logs (JSON lines with
service/action; comma-separated paths), every operation recorded there must be allowed
too: that is how an end-to-end run proves the policy covers what the operator issued.
"""

from __future__ import annotations

import fnmatch
import json
import os
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
POLICY = REPO / "docs" / "iam-policy.json"
PROFILE_POLICY = REPO / "docs" / "instance-profile-policy.json"
CLUSTER = "CLUSTER_ID"
TAG = "featureenv.io/cluster"

OPERATOR_ACTIONS = [
    "ec2:DescribeImages", "ec2:RunInstances", "ec2:CreateTags", "ec2:DescribeInstances",
    "ec2:TerminateInstances", "ec2:GetConsoleOutput",
    "rds:DescribeDBSnapshots", "rds:RestoreDBInstanceFromDBSnapshot", "rds:DescribeDBInstances",
    "rds:AddTagsToResource", "rds:ModifyDBInstance", "rds:DeleteDBInstance",
    "ssm:GetParameter", "ssm:PutParameter", "ssm:AddTagsToResource", "ssm:DeleteParameter",
    "ssm:GetParametersByPath",
    "ecr:DescribeImages", "ecr:BatchGetImage",
    "iam:PassRole",
]
# Request signing names that differ from IAM action prefixes (none for what we use today).
SIGNING_NAME_TO_IAM_PREFIX: dict[str, str] = {}

INSTANCE = "arn:aws:ec2:eu-west-1:123456789012:instance/i-0123456789abcdef0"
DB = "arn:aws:rds:eu-west-1:123456789012:db:fe-integration-abc12"


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def as_list(x: Any) -> list[Any]:
    return x if isinstance(x, list) else [x]


def allowed_actions(policy: dict[str, Any]) -> list[str]:
    return [a for s in policy["Statement"] if s["Effect"] == "Allow" for a in as_list(s["Action"])]


def action_allowed(policy: dict[str, Any], action: str) -> bool:
    return any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in allowed_actions(policy))


def _condition_holds(cond: dict[str, dict[str, Any]], ctx: dict[str, Any]) -> bool:
    for op, pairs in cond.items():
        for key, expected in pairs.items():
            want = [str(v) for v in as_list(expected)]
            got = ctx.get(key)
            if op == "StringEquals":
                if got is None or str(got) not in want:
                    return False
            elif op == "ForAllValues:StringNotEquals":
                if any(v in want for v in as_list(got or [])):
                    return False
            elif op == "ForAllValues:StringEquals":
                if any(v not in want for v in as_list(got or [])):
                    return False
            else:
                raise AssertionError(f"evaluator does not know condition operator {op}")
    return True


def evaluate(policy: dict[str, Any], action: str, resource: str, ctx: dict[str, Any]) -> bool:
    """Allowed by some Allow statement (there are no Deny statements to consider)."""
    for s in policy["Statement"]:
        assert s["Effect"] == "Allow"
        if not any(fnmatch.fnmatchcase(action, a) for a in as_list(s["Action"])):
            continue
        if not any(fnmatch.fnmatchcase(resource, r) for r in as_list(s["Resource"])):
            continue
        if _condition_holds(s.get("Condition", {}), ctx):
            return True
    return False


@pytest.mark.parametrize("path", [POLICY, PROFILE_POLICY], ids=["operator", "instance-profile"])
def test_policy_shape_and_no_wildcard_actions(path: Path) -> None:
    policy = load(path)
    assert policy["Version"] == "2012-10-17"
    sids = [s["Sid"] for s in policy["Statement"]]
    assert len(sids) == len(set(sids)), "Sids must be unique"
    for s in policy["Statement"]:
        assert set(s) <= {"Sid", "Effect", "Action", "Resource", "Condition"}, s
        assert s["Effect"] == "Allow"
        for action in as_list(s["Action"]):
            assert "*" not in action, f"{s['Sid']}: wildcard action {action}"
            service, _, name = action.partition(":")
            assert service and name and service.islower(), action
        assert "NotAction" not in s and "NotResource" not in s


def test_resource_star_only_where_aws_has_no_resource_level_permissions() -> None:
    no_resource_level = {"ec2:DescribeImages", "ec2:DescribeInstances", "rds:DescribeDBInstances",
                         "rds:DescribeDBSnapshots", "ecr:GetAuthorizationToken"}
    for path in (POLICY, PROFILE_POLICY):
        for s in load(path)["Statement"]:
            if "*" in as_list(s["Resource"]):
                assert set(as_list(s["Action"])) <= no_resource_level, s["Sid"]


@pytest.mark.parametrize("action", OPERATOR_ACTIONS)
def test_operator_action_is_allowed(action: str) -> None:
    assert action_allowed(load(POLICY), action), f"{action} is not in docs/iam-policy.json"


def test_creates_are_scoped_by_request_tag() -> None:
    policy = load(POLICY)
    ours = {f"aws:RequestTag/{TAG}": CLUSTER, "ec2:CreateAction": "RunInstances", "aws:TagKeys": [TAG]}
    theirs = {f"aws:RequestTag/{TAG}": "someone-else", "ec2:CreateAction": "RunInstances", "aws:TagKeys": [TAG]}
    untagged: dict[str, Any] = {"ec2:CreateAction": "RunInstances"}
    for action, resource in (("ec2:RunInstances", INSTANCE), ("ec2:CreateTags", INSTANCE),
                             ("rds:RestoreDBInstanceFromDBSnapshot", DB), ("rds:AddTagsToResource", DB)):
        assert evaluate(policy, action, resource, ours), action
        assert not evaluate(policy, action, resource, theirs), f"{action} allowed for another cluster's tag"
        assert not evaluate(policy, action, resource, untagged), f"{action} allowed without our tag"
    # the things a launch / restore only *uses* are not tag-conditioned
    assert evaluate(policy, "ec2:RunInstances", "arn:aws:ec2:eu-west-1::image/ami-0abc", {})
    assert evaluate(policy, "rds:RestoreDBInstanceFromDBSnapshot",
                    "arn:aws:rds:eu-west-1:123456789012:snapshot:integration-db-2026-11-27", {})


def test_mutations_are_scoped_by_resource_tag() -> None:
    policy = load(POLICY)
    ours = {f"aws:ResourceTag/{TAG}": CLUSTER, "aws:TagKeys": ["featureenv.io/environment"]}
    theirs = {f"aws:ResourceTag/{TAG}": "someone-else", "aws:TagKeys": ["featureenv.io/environment"]}
    for action, resource in (("ec2:TerminateInstances", INSTANCE), ("ec2:GetConsoleOutput", INSTANCE),
                             ("ec2:CreateTags", INSTANCE), ("rds:ModifyDBInstance", DB),
                             ("rds:DeleteDBInstance", DB), ("rds:AddTagsToResource", DB)):
        assert evaluate(policy, action, resource, ours), action
        assert not evaluate(policy, action, resource, theirs), f"{action} allowed on another cluster's resource"
        assert not evaluate(policy, action, resource, {}), f"{action} allowed on an untagged resource"
    # retagging one of ours may not change who owns it
    steal = {f"aws:ResourceTag/{TAG}": CLUSTER, "aws:TagKeys": [TAG]}
    assert not evaluate(policy, "ec2:CreateTags", INSTANCE, steal)


def test_pass_role_only_the_instance_role_to_ec2() -> None:
    policy = load(POLICY)
    role = "arn:aws:iam::ACCOUNT_ID:role/featureenv-node"
    assert evaluate(policy, "iam:PassRole", role, {"iam:PassedToService": "ec2.amazonaws.com"})
    assert not evaluate(policy, "iam:PassRole", role, {"iam:PassedToService": "lambda.amazonaws.com"})
    assert not evaluate(policy, "iam:PassRole", "arn:aws:iam::ACCOUNT_ID:role/admin",
                        {"iam:PassedToService": "ec2.amazonaws.com"})


def test_ssm_writes_limited_to_own_cluster_tree() -> None:
    policy = load(POLICY)
    arn = "arn:aws:ssm:eu-west-1:123456789012:parameter"
    own = f"{arn}/featureenv/CLUSTER_ID/0b6c1a2e-uid/database"  # naming.rs: <prefix>/<cluster>/<uid>/database
    other_cluster = f"{arn}/featureenv/other-cluster/0b6c1a2e-uid/database"
    for action in ("ssm:PutParameter", "ssm:GetParameter", "ssm:DeleteParameter", "ssm:AddTagsToResource"):
        assert evaluate(policy, action, own, {}), action
        assert not evaluate(policy, action, f"{arn}/prod/db-password", {}), action
    for action in ("ssm:PutParameter", "ssm:DeleteParameter", "ssm:AddTagsToResource"):
        assert not evaluate(policy, action, other_cluster, {}), f"{action} on another cluster's parameter"
        assert not evaluate(policy, action, f"{arn}/featureenv/ami/latest", {}), action
    assert evaluate(policy, "ssm:GetParametersByPath", f"{arn}/featureenv/CLUSTER_ID", {})
    assert evaluate(policy, "ssm:GetParameter", f"{arn}/featureenv/ami/latest", {}), "the class's AMI parameter"


def test_instance_profile_policy() -> None:
    policy = load(PROFILE_POLICY)
    for action in ("ecr:GetAuthorizationToken", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer",
                   "ecr:BatchCheckLayerAvailability", "ssm:GetParameter", "ec2:CreateTags"):
        assert action_allowed(policy, action), action
    for action in ("ec2:TerminateInstances", "ec2:RunInstances", "ssm:PutParameter", "ecr:PutImage", "iam:PassRole"):
        assert not action_allowed(policy, action), f"the instance must not be able to {action}"
    params = "arn:aws:ssm:eu-west-1:ACCOUNT_ID:parameter/featureenv"
    assert evaluate(policy, "ssm:GetParameter", f"{params}/CLUSTER_ID/0b6c1a2e-uid/database", {})
    assert not evaluate(policy, "ssm:GetParameter", f"{params}/other-cluster/0b6c1a2e-uid/database", {})
    me = "arn:aws:ec2:eu-west-1:ACCOUNT_ID:instance/i-0aaa"
    self_tag = {"aws:ARN": "${ec2:SourceInstanceARN}", f"aws:ResourceTag/{TAG}": CLUSTER,
                "aws:TagKeys": ["featureenv.io/bootstrap"]}
    assert evaluate(policy, "ec2:CreateTags", me, self_tag)
    assert not evaluate(policy, "ec2:CreateTags", me, {**self_tag, "aws:TagKeys": [TAG]})
    assert not evaluate(policy, "ec2:CreateTags", me, {**self_tag, "aws:ARN": "arn:aws:ec2:::instance/i-other"})


def _call_logs() -> list[Path]:
    raw = os.environ.get("FEATUREENV_AWS_CALL_LOG", "")
    return [Path(p) for p in raw.split(",") if p.strip()]


@pytest.mark.skipif(not _call_logs(), reason="set FEATUREENV_AWS_CALL_LOG to fault_proxy logs of an e2e run")
def test_every_recorded_operation_is_allowed() -> None:
    policy = load(POLICY)
    seen: set[str] = set()
    for path in _call_logs():
        assert path.is_file(), f"FEATUREENV_AWS_CALL_LOG names a missing file: {path}"
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            entry = json.loads(line)
            prefix = SIGNING_NAME_TO_IAM_PREFIX.get(entry["service"], entry["service"])
            seen.add(f"{prefix}:{entry['action']}")
    assert seen, "the call logs recorded no AWS operation"
    denied = sorted(a for a in seen if not action_allowed(policy, a))
    assert not denied, f"the operator issued operations docs/iam-policy.json does not allow: {denied}"
