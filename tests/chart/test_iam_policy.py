"""Tests for docs/iam-policy.json (the operator's role) and
docs/instance-profile-policy.json (the environments' instance role).

What they prove, with the evaluator in hack/iam_eval.py (ours, not AWS's): every call the
operator and the instances make is allowed, with the tags and request shape the code
sends; every adversarial variant -- another cluster's or an untagged resource, a
retag to another cluster, a launch missing a tag, instance A reading B's parameter or
tagging B -- is denied by the policy's own statements; every statement is needed by
some legitimate call. The policies are checked as deployed: the CLUSTER_ID and
ACCOUNT_ID placeholders replaced as docs/iam.md tells users to.

A maintained linter (parliament) must report nothing beyond the findings allow-listed
below, each with the reason it is accepted.

FEATUREENV_IAM_POLICY / FEATUREENV_IAM_PROFILE_POLICY point the tests at other copies
of the two policies (e.g. an earlier revision, to see which tests it fails).

When FEATUREENV_AWS_CALL_LOG names one or more fault_proxy logs (JSON lines;
comma-separated paths), every operation recorded there must be allowed too: that is how
an end-to-end run proves the policy covers what the operator issued. Each call that was
not faulted is turned into the authorizations AWS makes for it (iam_eval.logged_call:
every resource it names or creates, with the request tags, the tags the resources had
then and the other keys the proxy logged, see hack/aws_authz.py) and evaluated with the
policy rendered for FEATUREENV_CLUSTER_ID, the run's cluster id, which must then be
set. A call the model cannot decide (a field the proxy could not learn, a condition key
the model does not know, an operation without a model) fails as unsupported.
"""

from __future__ import annotations

import fnmatch
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

# The evaluator lives in hack/ (hack/fault_proxy.py --iam-policy evaluates with it too).
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "hack"))

import iam_eval as iam  # noqa: E402
from iam_eval import Request, Unsupported  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
POLICY = Path(os.environ.get("FEATUREENV_IAM_POLICY") or REPO / "docs" / "iam-policy.json")
PROFILE_POLICY = Path(os.environ.get("FEATUREENV_IAM_PROFILE_POLICY")
                      or REPO / "docs" / "instance-profile-policy.json")

# What a user substitutes (docs/iam.md).
CLUSTER = "prod-eu1"
OTHER_CLUSTER = "prod-us2"
ACCOUNT = "123456789012"
REGION = "eu-west-1"

CLUSTER_TAG = "featureenv.io/cluster"
ENV_TAG = "featureenv.io/environment"
UID_TAG = "featureenv.io/uid"
POOL_TAG = "featureenv.io/pool"
SNAPSHOT_TAG = "featureenv.io/snapshot"
CLAIMED_BY_TAG = "featureenv.io/claimed-by"
BOOTSTRAP_TAG = "featureenv.io/bootstrap"
SERVICES_TAG = "featureenv.io/services"  # the outcome of a services update sent with SendCommand
INSTANCE_TAG = "featureenv.io/instance"  # on the SSM parameter: the instance allowed to read it
WARM_POOL_TAG = "featureenv.io/warm-pool"  # on a spare instance of a class's warm pool: the class
SPARE_TAG = "featureenv.io/spare"  # on a spare instance: its RunInstances client token

OPERATOR_ACTIONS = [
    "ec2:DescribeImages", "ec2:RunInstances", "ec2:CreateTags", "ec2:DescribeInstances",
    "ec2:TerminateInstances", "ec2:GetConsoleOutput", "ec2:StopInstances", "ec2:StartInstances",
    "rds:DescribeDBSnapshots", "rds:RestoreDBInstanceFromDBSnapshot", "rds:DescribeDBInstances",
    "rds:AddTagsToResource", "rds:ModifyDBInstance", "rds:DeleteDBInstance",
    "rds:StopDBInstance", "rds:StartDBInstance",
    "ssm:GetParameter", "ssm:PutParameter", "ssm:AddTagsToResource", "ssm:DeleteParameter",
    "ssm:GetParametersByPath", "ssm:SendCommand",
    "ecr:DescribeImages", "ecr:BatchGetImage",
    "iam:PassRole",
]
# Request signing names that differ from IAM action prefixes (none for what we use today).
SIGNING_NAME_TO_IAM_PREFIX: dict[str, str] = {}

# --- the resources of one environment, as the code names and tags them --------------

UID = "0b3c4f8e-1d2a-4c5b-9e8f-7a6b5c4d3e2f"
ENVIRONMENT = "team-payments/payments-pr-123"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/featureenv-node"
# environment/mod.rs launch_instance: the class's user tags, Name, our three, the owner.
LAUNCH_TAGS = {
    "team": "platform", "Name": "featureenv-team-payments-payments-pr-123",
    CLUSTER_TAG: CLUSTER, ENV_TAG: ENVIRONMENT, UID_TAG: UID, "featureenv.io/owner": "alice@example.com",
}
TAGGED_AT_LAUNCH = ("instance", "volume", "network-interface")

INSTANCE_A = iam.ec2_arn(REGION, ACCOUNT, "instance", "i-0aaaaaaaaaaaaaaaa")
INSTANCE_B = iam.ec2_arn(REGION, ACCOUNT, "instance", "i-0bbbbbbbbbbbbbbbb")
INSTANCE_TAGS = dict(LAUNCH_TAGS)  # what the instance carries after launch
OTHER_CLUSTER_INSTANCE = iam.ec2_arn(REGION, ACCOUNT, "instance", "i-0cccccccccccccccc")

# A warm-pool spare of class "standard" (spec.warmPool): launched with the cluster tag, the
# warm-pool and spare tags, its own Name and the class's tags, but no uid and no
# environment; claimed later by CreateTags of exactly uid, environment and Name.
WARM_CLASS = "standard"
SPARE_TOKEN = "fe-warm-standard-3f9a2c4d1b-0"
SPARE_LAUNCH_TAGS = {"team": "platform", "Name": f"featureenv-spare-{WARM_CLASS}", CLUSTER_TAG: CLUSTER,
                     WARM_POOL_TAG: WARM_CLASS, SPARE_TAG: SPARE_TOKEN}
SPARE_INSTANCE = iam.ec2_arn(REGION, ACCOUNT, "instance", "i-0ffffffffffffffff")
SPARE_INSTANCE_TAGS = {**SPARE_LAUNCH_TAGS, BOOTSTRAP_TAG: "complete"}  # bootstrapped, unclaimed
SPARE_CLAIM_TAGS = {UID_TAG: UID, ENV_TAG: ENVIRONMENT, "Name": "featureenv-team-payments-payments-pr-123"}
CLAIMED_SPARE_TAGS = {**SPARE_INSTANCE_TAGS, **SPARE_CLAIM_TAGS}

SNAPSHOT = "rds:integration-db-2026-11-28-03-00"
SPARE = iam.rds_arn(REGION, ACCOUNT, "db", "fe-integration-7f3k2a9d1e-0")  # naming.rs pool_database_id
SPARE_TAGS = {CLUSTER_TAG: CLUSTER, POOL_TAG: "integration", SNAPSHOT_TAG: SNAPSHOT}  # pool.rs restore_spare
CLAIM_TAGS = {CLAIMED_BY_TAG: UID, ENV_TAG: ENVIRONMENT}  # claim.rs claim_database

# naming.rs database_parameter with the chart's default ssmPrefix=/featureenv.
PARAMETER = iam.ssm_arn(REGION, ACCOUNT, f"/featureenv/{CLUSTER}/{UID}/database")
PARAMETER_TAGS = {CLUSTER_TAG: CLUSTER, ENV_TAG: ENVIRONMENT}  # claim.rs hand_out_credentials
PARAMETER_OF_A = {**PARAMETER_TAGS, INSTANCE_TAG: INSTANCE_A}
PARAMETER_B = iam.ssm_arn(REGION, ACCOUNT, f"/featureenv/{CLUSTER}/9e8f-other-uid/database")
PARAMETER_OF_B = {CLUSTER_TAG: CLUSTER, ENV_TAG: "team-x/other", INSTANCE_TAG: INSTANCE_B}
AMI_PARAMETER = iam.ssm_arn(REGION, ACCOUNT, "/featureenv/ami/latest")


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def rendered(path: Path, cluster: str = CLUSTER) -> dict[str, Any]:
    """The policy as deployed: placeholders replaced (docs/iam.md)."""
    return iam.render_policy(path.read_text(), cluster, ACCOUNT)


def as_list(x: Any) -> list[Any]:
    return x if isinstance(x, list) else [x]


def allowed_actions(policy: dict[str, Any]) -> list[str]:
    return [a for s in policy["Statement"] if s["Effect"] == "Allow" for a in as_list(s["Action"])]


def action_allowed(policy: dict[str, Any], action: str) -> bool:
    return any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in allowed_actions(policy))


def assert_allowed(policy: dict[str, Any], requests: list[Request]) -> None:
    denied = iam.denied_requests(policy, requests)
    assert not denied, "denied: " + "; ".join(f"{r} {dict(r.context)}" for r in denied)


def assert_denied(policy: dict[str, Any], requests: list[Request], why: str = "") -> None:
    assert not iam.call_allowed(policy, requests), f"allowed, should be denied: {why} {[str(r) for r in requests]}"


def launch(tag_specs: dict[str, dict[str, str]] | None = None, **kwargs: Any) -> list[Request]:
    specs = tag_specs if tag_specs is not None else {kind: LAUNCH_TAGS for kind in TAGGED_AT_LAUNCH}
    return iam.run_instances(region=REGION, account=ACCOUNT, image="ami-0123456789abcdef0",
                             subnet="subnet-0abc", security_groups=["sg-0abc"], tag_specs=specs,
                             role_arn=ROLE, **kwargs)


# --- shape -------------------------------------------------------------------------


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


@pytest.mark.parametrize("path", [POLICY, PROFILE_POLICY], ids=["operator", "instance-profile"])
def test_only_known_placeholders(path: Path) -> None:
    text = rendered(path)
    assert "CLUSTER_ID" not in json.dumps(text) and "ACCOUNT_ID" not in json.dumps(text)


# What the SSM Agent needs to make its instance a managed node: the actions of AWS's
# managed policy AmazonSSMManagedInstanceCore (v2) but for ssm:GetParameter(s), granted
# on "*" as that policy does. Which resource each of the agent's own calls is authorized
# against is not documented per call; scoping them is not worth a node that never
# registers (docs/iam.md).
SSM_AGENT_ACTIONS = {
    "ssm:DescribeAssociation", "ssm:GetDeployablePatchSnapshotForInstance", "ssm:GetDocument",
    "ssm:DescribeDocument", "ssm:GetManifest", "ssm:ListAssociations", "ssm:ListInstanceAssociations",
    "ssm:PutInventory", "ssm:PutComplianceItems", "ssm:PutConfigurePackageResult", "ssm:UpdateAssociationStatus",
    "ssm:UpdateInstanceAssociationStatus", "ssm:UpdateInstanceInformation",
    "ssmmessages:CreateControlChannel", "ssmmessages:CreateDataChannel", "ssmmessages:OpenControlChannel",
    "ssmmessages:OpenDataChannel",
    "ec2messages:AcknowledgeMessage", "ec2messages:DeleteMessage", "ec2messages:FailMessage",
    "ec2messages:GetEndpoint", "ec2messages:GetMessages", "ec2messages:SendReply",
}


def test_resource_star_only_where_aws_has_no_resource_level_permissions() -> None:
    # Service Authorization Reference: these actions have no required resource type; and
    # the SSM Agent's, as AWS's own managed policy grants them.
    no_resource_level = {"ec2:DescribeImages", "ec2:DescribeInstances", "rds:DescribeDBSnapshots",
                         "ecr:GetAuthorizationToken", *SSM_AGENT_ACTIONS}
    for path in (POLICY, PROFILE_POLICY):
        for s in load(path)["Statement"]:
            if "*" in as_list(s["Resource"]):
                assert set(as_list(s["Action"])) <= no_resource_level, s["Sid"]


@pytest.mark.parametrize("action", OPERATOR_ACTIONS)
def test_operator_action_is_allowed(action: str) -> None:
    assert action_allowed(load(POLICY), action), f"{action} is not in docs/iam-policy.json"


# --- what the code does, all of it allowed ----------------------------------------


def operator_calls() -> dict[str, list[Request]]:
    """Every call the operator's AWS adapter makes, as the code makes it."""
    p = iam.operator_principal()
    return {
        "DescribeImages": [Request("ec2:DescribeImages", "*", p)],
        "DescribeInstances": [Request("ec2:DescribeInstances", "*", p)],
        "RunInstances": launch(),
        "TerminateInstances": iam.ec2_on_instance("ec2:TerminateInstances", INSTANCE_A, INSTANCE_TAGS),
        "GetConsoleOutput": iam.ec2_on_instance("ec2:GetConsoleOutput", INSTANCE_A, INSTANCE_TAGS),
        # rds.rs list_databases pages the whole account: authorized on db:*.
        "DescribeDBInstances(all)": [Request("rds:DescribeDBInstances", iam.rds_arn(REGION, ACCOUNT, "db", "*"), p)],
        "DescribeDBInstances(one)": [Request("rds:DescribeDBInstances", SPARE, p)],
        "DescribeDBSnapshots": [Request("rds:DescribeDBSnapshots", "*", p)],
        "RestoreDBInstanceFromDBSnapshot": iam.rds_restore(region=REGION, account=ACCOUNT,
                                                           db_id=SPARE.rsplit(":", 1)[1],
                                                           snapshot=SNAPSHOT, tags=SPARE_TAGS),
        "AddTagsToResource(claim)": iam.rds_add_tags(SPARE, SPARE_TAGS, CLAIM_TAGS),
        "ModifyDBInstance": iam.rds_on_db("rds:ModifyDBInstance", SPARE, {**SPARE_TAGS, **CLAIM_TAGS}),
        "DeleteDBInstance": iam.rds_on_db("rds:DeleteDBInstance", SPARE, {**SPARE_TAGS, **CLAIM_TAGS}),
        "GetParameter(image)": iam.ssm_on_parameter("ssm:GetParameter", AMI_PARAMETER, {}),
        "PutParameter(create)": iam.ssm_create_parameter(PARAMETER, PARAMETER_TAGS),
        "PutParameter(overwrite)": iam.ssm_overwrite_parameter(PARAMETER, PARAMETER_TAGS),
        "AddTagsToResource(re-apply)": iam.ssm_add_tags(PARAMETER, PARAMETER_TAGS, PARAMETER_TAGS),
        "AddTagsToResource(instance)": iam.ssm_add_tags(PARAMETER, PARAMETER_TAGS, {INSTANCE_TAG: INSTANCE_A}),
        "DeleteParameter": iam.ssm_on_parameter("ssm:DeleteParameter", PARAMETER, PARAMETER_OF_A),
        "GetParametersByPath": iam.ssm_on_parameter("ssm:GetParametersByPath",
                                                    iam.ssm_arn(REGION, ACCOUNT, f"/featureenv/{CLUSTER}"), {}),
        "ecr:DescribeImages": [Request("ecr:DescribeImages",
                                       f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/payments", p)],
        "ecr:BatchGetImage": [Request("ecr:BatchGetImage",
                                      f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/payments", p)],
        # A services update, once the bootstrap has tagged the instance.
        "SendCommand": iam.ssm_send_command(region=REGION, account=ACCOUNT, document="AWS-RunShellScript",
                                            instance_id=INSTANCE_A.rsplit("/", 1)[1],
                                            instance_tags={**INSTANCE_TAGS, BOOTSTRAP_TAG: "complete"}),
        # Sleep (spec.sleeping: true) and wake: the instance and the claimed database.
        "StopInstances": iam.ec2_on_instance("ec2:StopInstances", INSTANCE_A, INSTANCE_TAGS),
        "StartInstances": iam.ec2_on_instance("ec2:StartInstances", INSTANCE_A, INSTANCE_TAGS),
        "StopDBInstance": iam.rds_on_db("rds:StopDBInstance", SPARE, {**SPARE_TAGS, **CLAIM_TAGS}),
        "StartDBInstance": iam.rds_on_db("rds:StartDBInstance", SPARE, {**SPARE_TAGS, **CLAIM_TAGS}),
        # The wake's command (minikube start, wait, tag), once the instance runs again.
        "SendCommand(wake)": iam.ssm_send_command(
            region=REGION, account=ACCOUNT, document="AWS-RunShellScript", instance_id=INSTANCE_A.rsplit("/", 1)[1],
            instance_tags={**INSTANCE_TAGS, BOOTSTRAP_TAG: "complete", SERVICES_TAG: "complete:0123456789abcdef"}),
        # A class's warm pool (spec.warmPool): launch a spare, stop it once bootstrapped
        # (state Stopped), claim it for an environment, start it, personalise it over Run
        # Command, terminate a stale or surplus one.
        "RunInstances(spare)": launch({kind: SPARE_LAUNCH_TAGS for kind in TAGGED_AT_LAUNCH}),
        "StopInstances(spare)": iam.ec2_on_instance("ec2:StopInstances", SPARE_INSTANCE, SPARE_INSTANCE_TAGS),
        "CreateTags(claim spare)": iam.ec2_create_tags(SPARE_INSTANCE, SPARE_INSTANCE_TAGS, SPARE_CLAIM_TAGS),
        "StartInstances(claimed spare)": iam.ec2_on_instance("ec2:StartInstances", SPARE_INSTANCE, CLAIMED_SPARE_TAGS),
        "SendCommand(personalise)": iam.ssm_send_command(
            region=REGION, account=ACCOUNT, document="AWS-RunShellScript",
            instance_id=SPARE_INSTANCE.rsplit("/", 1)[1], instance_tags=CLAIMED_SPARE_TAGS),
        "TerminateInstances(surplus spare)": iam.ec2_on_instance("ec2:TerminateInstances", SPARE_INSTANCE,
                                                                 SPARE_INSTANCE_TAGS),
    }


SERVICES_TOKEN = "0123456789abcdef"  # 16 lowercase hex characters, per update


def instance_calls() -> dict[str, list[Request]]:
    """Every call the bootstrap script on instance A makes."""
    a = iam.instance_principal(INSTANCE_A)
    repo = f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/payments"
    return {
        "ecr get-login-password": [Request("ecr:GetAuthorizationToken", "*", a)],
        "docker pull": [Request(action, repo, a) for action in
                        ("ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability")],
        "ssm get-parameter": iam.ssm_on_parameter("ssm:GetParameter", PARAMETER, PARAMETER_OF_A, a),
        "ec2 create-tags complete": iam.ec2_create_tags(INSTANCE_A, INSTANCE_TAGS, {BOOTSTRAP_TAG: "complete"}, a),
        "ec2 create-tags failed": iam.ec2_create_tags(INSTANCE_A, INSTANCE_TAGS, {BOOTSTRAP_TAG: "failed"}, a),
        # The services update the operator sends with SendCommand, run by the agent with
        # the instance profile's credentials.
        "services update complete": iam.ec2_create_tags(INSTANCE_A, INSTANCE_TAGS,
                                                        {SERVICES_TAG: f"complete:{SERVICES_TOKEN}"}, a),
        "services update failed": iam.ec2_create_tags(INSTANCE_A, INSTANCE_TAGS,
                                                      {SERVICES_TAG: f"failed:{SERVICES_TOKEN}"}, a),
        # A claimed warm-pool spare: its bootstrap tag (as any launch) and the outcome of
        # the personalise script the operator sends over Run Command.
        "spare bootstrap complete": iam.ec2_create_tags(SPARE_INSTANCE, SPARE_LAUNCH_TAGS, {BOOTSTRAP_TAG: "complete"},
                                                        iam.instance_principal(SPARE_INSTANCE)),
        "personalise complete": iam.ec2_create_tags(SPARE_INSTANCE, CLAIMED_SPARE_TAGS,
                                                    {SERVICES_TAG: f"complete:{SERVICES_TOKEN}"},
                                                    iam.instance_principal(SPARE_INSTANCE)),
        # The SSM Agent keeping the instance a managed node.
        "ssm agent": [Request(action, "*", a) for action in sorted(SSM_AGENT_ACTIONS)],
    }


@pytest.mark.parametrize("call", list(operator_calls()))
def test_operator_call_is_allowed(call: str) -> None:
    assert_allowed(rendered(POLICY), operator_calls()[call])


@pytest.mark.parametrize("call", list(instance_calls()))
def test_instance_call_is_allowed(call: str) -> None:
    assert_allowed(rendered(PROFILE_POLICY), instance_calls()[call])


@pytest.mark.parametrize("path,calls", [(POLICY, operator_calls), (PROFILE_POLICY, instance_calls)],
                         ids=["operator", "instance-profile"])
def test_every_statement_is_needed(path: Path, calls: Callable[[], dict[str, list[Request]]]) -> None:
    policy = rendered(path)
    used: set[str] = set()
    for requests in calls().values():
        for r in requests:
            used.update(iam.decide(policy, r).allowed_by)
    unused = [s["Sid"] for s in policy["Statement"] if s["Sid"] not in used]
    assert not unused, f"statements no call of the code needs: {unused}"


# --- defect 2: RunInstances ------------------------------------------------------


@pytest.mark.parametrize("request_", launch(), ids=str)
def test_run_instances_authorizes_every_resource_type(request_: Request) -> None:
    """Instance, volume and network interface with our tags, image, subnet, security
    group, the tag-on-create CreateTags per tagged type, and passing the role."""
    assert iam.allowed(rendered(POLICY), request_), dict(request_.context)


def test_run_instances_without_network_interface_tags_is_denied() -> None:
    """The network interface RunInstances creates must carry our tags too: the Rust
    side has to send a TagSpecification for resource type network-interface."""
    specs = {kind: LAUNCH_TAGS for kind in ("instance", "volume")}
    denied = iam.denied_requests(rendered(POLICY), launch(specs))
    assert [str(r) for r in denied] == [f"ec2:RunInstances on {iam.ec2_arn(REGION, ACCOUNT, 'network-interface', '*')}"]


def _without(tags: dict[str, str], key: str) -> dict[str, str]:
    return {k: v for k, v in tags.items() if k != key}


MISSING_TAG_CASES = {
    **{f"{kind}-without-{key.rsplit('/', 1)[1]}": (kind, _without(LAUNCH_TAGS, key))
       for kind in TAGGED_AT_LAUNCH for key in (CLUSTER_TAG, ENV_TAG, UID_TAG)},
    **{f"{kind}-of-another-cluster": (kind, {**LAUNCH_TAGS, CLUSTER_TAG: OTHER_CLUSTER})
       for kind in TAGGED_AT_LAUNCH},
}


def only(requests: list[Request], action: str, resource_part: str) -> Request:
    found = [r for r in requests if r.action == action and resource_part in r.resource]
    assert len(found) == 1, (action, resource_part, [str(r) for r in requests])
    return found[0]


@pytest.mark.parametrize("case", list(MISSING_TAG_CASES))
def test_run_instances_denied_when_a_new_resource_lacks_our_tags(case: str) -> None:
    kind, tags = MISSING_TAG_CASES[case]
    specs = {k: LAUNCH_TAGS for k in TAGGED_AT_LAUNCH}
    specs[kind] = tags
    policy, requests = rendered(POLICY), launch(specs)
    assert_denied(policy, requests, case)
    # By the RunInstances statement itself, not only by the tag-on-create CreateTags.
    assert not iam.allowed(policy, only(requests, "ec2:RunInstances", f":{kind}/")), case


def test_run_instances_denied_without_imdsv2() -> None:
    policy, requests = rendered(POLICY), launch(http_tokens="optional")
    assert not iam.allowed(policy, only(requests, "ec2:RunInstances", ":instance/")), "IMDSv1 allowed"


@pytest.mark.parametrize("extra", [{"key_pair": "ops"}, {"launch_template": "lt-0abc"}], ids=str)
def test_run_instances_denied_for_resource_types_the_operator_does_not_use(extra: dict[str, str]) -> None:
    assert_denied(rendered(POLICY), launch(**extra), str(extra))


def test_create_tags_only_on_what_run_instances_creates() -> None:
    policy = rendered(POLICY)
    for kind in TAGGED_AT_LAUNCH:
        new = iam.ec2_arn(REGION, ACCOUNT, kind, "*")
        tags = iam.tag_context(request=LAUNCH_TAGS)
        assert iam.allowed(policy, Request("ec2:CreateTags", new, {"ec2:CreateAction": "RunInstances", **tags}))
        for action in ("CreateVolume", "CreateNetworkInterface", "CreateSnapshot"):
            assert not iam.allowed(policy, Request("ec2:CreateTags", new, {"ec2:CreateAction": action, **tags}))
        theirs = iam.tag_context(request={**LAUNCH_TAGS, CLUSTER_TAG: OTHER_CLUSTER})
        assert not iam.allowed(policy, Request("ec2:CreateTags", new, {"ec2:CreateAction": "RunInstances", **theirs}))


# --- defect 1: never tag, modify or delete what is not already ours --------------

FOREIGN_INSTANCES = {
    "other-cluster": (OTHER_CLUSTER_INSTANCE, {**INSTANCE_TAGS, CLUSTER_TAG: OTHER_CLUSTER}),
    "untagged": (iam.ec2_arn(REGION, ACCOUNT, "instance", "i-0dddddddddddddddd"), {}),
    "production": (iam.ec2_arn(REGION, ACCOUNT, "instance", "i-0eeeeeeeeeeeeeeee"), {"Name": "orders-prod"}),
    "other-cluster-spare": (iam.ec2_arn(REGION, ACCOUNT, "instance", "i-0c0c0c0c0c0c0c0c0"),
                            {**SPARE_INSTANCE_TAGS, CLUSTER_TAG: OTHER_CLUSTER}),
    "untagged-spare": (iam.ec2_arn(REGION, ACCOUNT, "instance", "i-0d0d0d0d0d0d0d0d0"),
                       {WARM_POOL_TAG: WARM_CLASS}),
}


@pytest.mark.parametrize("instance", list(FOREIGN_INSTANCES))
def test_ec2_cannot_tag_or_terminate_an_instance_that_is_not_ours(instance: str) -> None:
    policy = rendered(POLICY)
    arn, existing = FOREIGN_INSTANCES[instance]
    for tags in ({CLUSTER_TAG: CLUSTER}, LAUNCH_TAGS, {ENV_TAG: ENVIRONMENT}, SPARE_CLAIM_TAGS):
        assert_denied(policy, iam.ec2_create_tags(arn, existing, tags), f"CreateTags {tags}")
    for action in ("ec2:TerminateInstances", "ec2:GetConsoleOutput", "ec2:StopInstances", "ec2:StartInstances"):
        assert_denied(policy, iam.ec2_on_instance(action, arn, existing), action)


def test_stop_and_start_only_instances_and_databases_tagged_ours() -> None:
    """The sleep statements: exactly the four actions, only on what carries our cluster
    tag (a database also named fe-*), and nothing else with them."""
    policy = rendered(POLICY)
    for action in ("ec2:StopInstances", "ec2:StartInstances"):
        assert_allowed(policy, iam.ec2_on_instance(action, INSTANCE_A, INSTANCE_TAGS))
        assert_denied(policy, iam.ec2_on_instance(action, INSTANCE_A, {**INSTANCE_TAGS, CLUSTER_TAG: OTHER_CLUSTER}))
        assert_denied(policy, iam.ec2_on_instance(action, INSTANCE_A, _without(INSTANCE_TAGS, CLUSTER_TAG)))
    ours = {**SPARE_TAGS, **CLAIM_TAGS}
    for action in ("rds:StopDBInstance", "rds:StartDBInstance"):
        assert_allowed(policy, iam.rds_on_db(action, SPARE, ours))
        assert_denied(policy, iam.rds_on_db(action, SPARE, {**ours, CLUSTER_TAG: OTHER_CLUSTER}), action)
        assert_denied(policy, iam.rds_on_db(action, SPARE, _without(ours, CLUSTER_TAG)), action)
        assert_denied(policy, iam.rds_on_db(action, iam.rds_arn(REGION, ACCOUNT, "db", "orders-prod"), ours), action)
    # Stopping with a snapshot first (DBSnapshotIdentifier) is authorized on the snapshot
    # too, and needs rds:CreateDBSnapshot: neither is granted (the operator sends none).
    snapshot = iam.rds_arn(REGION, ACCOUNT, "snapshot", "before-sleep")
    assert not iam.allowed(policy, Request("rds:StopDBInstance", snapshot, iam.operator_principal()))
    assert not iam.allowed(policy, Request("rds:CreateDBSnapshot", SPARE, iam.operator_principal()))
    # Hibernation, rebooting, force-stopping an instance that is not ours: not granted.
    assert not action_allowed(load(POLICY), "ec2:RebootInstances")
    sleep = [s for s in load(POLICY)["Statement"] if s["Sid"] in ("EC2StopAndStartOwnInstances",
                                                                  "RDSStopAndStartOwnDatabases")]
    assert sorted(a for st in sleep for a in st["Action"]) == [
        "ec2:StartInstances", "ec2:StopInstances", "rds:StartDBInstance", "rds:StopDBInstance"]


def test_ec2_cannot_retag_ours_to_another_cluster() -> None:
    policy = rendered(POLICY)
    for tags in ({CLUSTER_TAG: OTHER_CLUSTER}, {**LAUNCH_TAGS, CLUSTER_TAG: OTHER_CLUSTER}):
        assert_denied(policy, iam.ec2_create_tags(INSTANCE_A, INSTANCE_TAGS, tags), str(tags))


def test_ec2_operator_never_tags_existing_instances() -> None:
    """Least privilege: the operator tags instances only at launch, and a warm-pool
    spare when it claims it (below); the instance writes its own bootstrap tag."""
    policy = rendered(POLICY)
    for tags in ({ENV_TAG: "team-x/other"}, {BOOTSTRAP_TAG: "complete"}, SPARE_CLAIM_TAGS):
        assert_denied(policy, iam.ec2_create_tags(INSTANCE_A, INSTANCE_TAGS, tags), str(tags))


# --- warm pool: spares launched with our tags, claimed with three keys ---------------
# Each test first shows the legitimate call allowed, so that none passes on a policy
# that simply has no warm-pool statements.

SPARE_SPECS = {kind: SPARE_LAUNCH_TAGS for kind in TAGGED_AT_LAUNCH}


@pytest.mark.parametrize("request_", launch(SPARE_SPECS), ids=str)
def test_spare_launch_authorizes_every_resource_type(request_: Request) -> None:
    """A spare: cluster and warm-pool tags, no uid, no environment, IMDSv2."""
    assert not {UID_TAG, ENV_TAG} & set(SPARE_LAUNCH_TAGS)
    assert iam.allowed(rendered(POLICY), request_), dict(request_.context)


SPARE_LAUNCH_DENIED = {
    **{f"{kind}-without-cluster": (kind, _without(SPARE_LAUNCH_TAGS, CLUSTER_TAG)) for kind in TAGGED_AT_LAUNCH},
    **{f"{kind}-of-another-cluster": (kind, {**SPARE_LAUNCH_TAGS, CLUSTER_TAG: OTHER_CLUSTER})
       for kind in TAGGED_AT_LAUNCH},
    # Neither a spare (no warm-pool tag) nor an environment's instance (no uid, environment).
    **{f"{kind}-without-warm-pool": (kind, _without(SPARE_LAUNCH_TAGS, WARM_POOL_TAG)) for kind in TAGGED_AT_LAUNCH},
}


@pytest.mark.parametrize("case", list(SPARE_LAUNCH_DENIED))
def test_spare_launch_denied_when_a_new_resource_lacks_our_tags(case: str) -> None:
    policy = rendered(POLICY)
    assert_allowed(policy, launch(SPARE_SPECS))
    kind, tags = SPARE_LAUNCH_DENIED[case]
    requests = launch({**SPARE_SPECS, kind: tags})
    assert_denied(policy, requests, case)
    # By the RunInstances statement itself, not only by the tag-on-create CreateTags.
    assert not iam.allowed(policy, only(requests, "ec2:RunInstances", f":{kind}/")), case


def test_spare_launch_denied_without_imdsv2() -> None:
    policy = rendered(POLICY)
    assert_allowed(policy, launch(SPARE_SPECS))
    requests = launch(SPARE_SPECS, http_tokens="optional")
    assert not iam.allowed(policy, only(requests, "ec2:RunInstances", ":instance/")), "IMDSv1 spare allowed"


def claim(existing: dict[str, str], tags: dict[str, str] = SPARE_CLAIM_TAGS, arn: str = SPARE_INSTANCE) -> list[Request]:
    return iam.ec2_create_tags(arn, existing, tags)


def test_claim_tags_a_spare_of_ours_with_exactly_three_keys() -> None:
    policy = rendered(POLICY)
    assert_allowed(policy, claim(SPARE_INSTANCE_TAGS))
    assert_allowed(policy, claim(SPARE_LAUNCH_TAGS))  # before its bootstrap tag (a claim never waits for it)
    assert_allowed(policy, claim(CLAIMED_SPARE_TAGS))  # a retry of the claim, the same tags again
    for key in SPARE_CLAIM_TAGS:  # any subset of the three
        assert_allowed(policy, claim(SPARE_INSTANCE_TAGS, {key: SPARE_CLAIM_TAGS[key]}))
    assert [s["Sid"] for s in load(POLICY)["Statement"] if s["Sid"] in iam.decide(
        policy, claim(SPARE_INSTANCE_TAGS)[0]).allowed_by] == ["EC2ClaimOwnWarmPoolSpares"]


CLAIM_DENIED_ON = {
    "an environment's instance (no warm-pool tag)": INSTANCE_TAGS,
    "a spare without the cluster tag": _without(SPARE_INSTANCE_TAGS, CLUSTER_TAG),
    "another cluster's spare": {**SPARE_INSTANCE_TAGS, CLUSTER_TAG: OTHER_CLUSTER},
    "an untagged instance": {},
}


@pytest.mark.parametrize("case", list(CLAIM_DENIED_ON))
def test_claim_denied_on_an_instance_that_is_not_our_spare(case: str) -> None:
    policy = rendered(POLICY)
    assert_allowed(policy, claim(SPARE_INSTANCE_TAGS))
    assert_denied(policy, claim(CLAIM_DENIED_ON[case]), case)


CLAIM_DENIED_KEYS = {
    "cluster, ours": {CLUSTER_TAG: CLUSTER},
    "cluster, another": {CLUSTER_TAG: OTHER_CLUSTER},
    "warm-pool": {WARM_POOL_TAG: "other-class"},
    "spare token": {SPARE_TAG: "fe-warm-other"},
    "bootstrap": {BOOTSTRAP_TAG: "complete"},
    "services": {SERVICES_TAG: f"complete:{SERVICES_TOKEN}"},
    "owner": {"featureenv.io/owner": "mallory@example.com"},
    "a class tag": {"team": "platform"},
    "name in another case": {"name": "x"},
}


@pytest.mark.parametrize("case", list(CLAIM_DENIED_KEYS))
def test_claim_denied_for_any_other_key(case: str) -> None:
    """Alone or along with the three claim keys."""
    policy = rendered(POLICY)
    assert_allowed(policy, claim(SPARE_INSTANCE_TAGS))
    extra = CLAIM_DENIED_KEYS[case]
    assert_denied(policy, claim(SPARE_INSTANCE_TAGS, extra), case)
    assert_denied(policy, claim(SPARE_INSTANCE_TAGS, {**SPARE_CLAIM_TAGS, **extra}), case)


def test_claim_cannot_retag_cluster_or_warm_pool_even_without_the_key_list() -> None:
    """Defence in depth: the claim statement also requires the request to carry no
    cluster and no warm-pool tag, so widening its aws:TagKeys list (say, for a fourth
    claim key) cannot let it move a spare to another cluster or pool."""
    document = load(POLICY)
    [statement] = [s for s in document["Statement"] if s["Sid"] == "EC2ClaimOwnWarmPoolSpares"]
    del statement["Condition"]["ForAllValues:StringEquals"]
    policy = iam.render_policy(json.dumps(document), CLUSTER, ACCOUNT)
    assert_allowed(policy, claim(SPARE_INSTANCE_TAGS))
    assert_allowed(policy, claim(SPARE_INSTANCE_TAGS, {BOOTSTRAP_TAG: "complete"})), "the key list is what stops this"
    for extra in ({CLUSTER_TAG: OTHER_CLUSTER}, {CLUSTER_TAG: CLUSTER}, {WARM_POOL_TAG: "other-class"}):
        assert_denied(policy, claim(SPARE_INSTANCE_TAGS, {**SPARE_CLAIM_TAGS, **extra}), str(extra))


def test_claim_is_not_a_tag_on_create() -> None:
    """The claim statement needs tags on an existing resource: a tag-on-create with the
    claim keys only (no cluster tag) is not allowed by it."""
    policy = rendered(POLICY)
    assert_allowed(policy, claim(SPARE_INSTANCE_TAGS))
    new = iam.ec2_arn(REGION, ACCOUNT, "instance", "*")
    ctx = {"ec2:CreateAction": "RunInstances", **iam.tag_context(request=SPARE_CLAIM_TAGS)}
    assert not iam.allowed(policy, Request("ec2:CreateTags", new, ctx))


def test_rds_restore_tags_only_new_fe_spares_with_our_tags() -> None:
    policy = rendered(POLICY)
    restore = lambda db, tags: iam.rds_restore(region=REGION, account=ACCOUNT, db_id=db,  # noqa: E731
                                               snapshot=SNAPSHOT, tags=tags)
    assert_allowed(policy, restore("fe-integration-7f3k2a9d1e-0", SPARE_TAGS))
    bad = {
        "identifier outside fe-": ("orders-db", SPARE_TAGS),
        "another cluster's tag": ("fe-integration-7f3k2a9d1e-0", {**SPARE_TAGS, CLUSTER_TAG: OTHER_CLUSTER}),
        "no cluster tag": ("fe-integration-7f3k2a9d1e-0", _without(SPARE_TAGS, CLUSTER_TAG)),
        "no pool tag": ("fe-integration-7f3k2a9d1e-0", _without(SPARE_TAGS, POOL_TAG)),
    }
    for why, (db, tags) in bad.items():
        requests = restore(db, tags)
        # Both the restore itself and its tag-on-create deny it.
        assert not iam.allowed(policy, only(requests, "rds:RestoreDBInstanceFromDBSnapshot", ":db:")), why
        assert not iam.allowed(policy, only(requests, "rds:AddTagsToResource", ":db:")), why
    requests = restore("fe-integration-7f3k2a9d1e-0", {**SPARE_TAGS, "Owner": "x"})
    assert not iam.allowed(policy, only(requests, "rds:AddTagsToResource", ":db:")), "a key that is not ours"


FOREIGN_DATABASES = {
    "other-cluster-spare": (iam.rds_arn(REGION, ACCOUNT, "db", "fe-integration-7f3k2a9d1e-1"),
                            {**SPARE_TAGS, CLUSTER_TAG: OTHER_CLUSTER}),
    "other-cluster-claimed": (iam.rds_arn(REGION, ACCOUNT, "db", "fe-integration-7f3k2a9d1e-2"),
                              {**SPARE_TAGS, CLUSTER_TAG: OTHER_CLUSTER, **CLAIM_TAGS}),
    "untagged-production": (iam.rds_arn(REGION, ACCOUNT, "db", "orders-prod"), {}),
    "tagged-production": (iam.rds_arn(REGION, ACCOUNT, "db", "integration-db"), {"team": "platform"}),
    # Someone put our cluster tag on a production DB: the fe- prefix still protects it.
    "production-with-our-tag": (iam.rds_arn(REGION, ACCOUNT, "db", "orders-prod"), {CLUSTER_TAG: CLUSTER}),
    "production-with-our-spare-tags": (iam.rds_arn(REGION, ACCOUNT, "db", "orders-prod"), SPARE_TAGS),
}


@pytest.mark.parametrize("database", list(FOREIGN_DATABASES))
def test_rds_cannot_tag_modify_or_delete_a_database_that_is_not_ours(database: str) -> None:
    policy = rendered(POLICY)
    arn, existing = FOREIGN_DATABASES[database]
    for tags in ({CLUSTER_TAG: CLUSTER}, SPARE_TAGS, CLAIM_TAGS, {**SPARE_TAGS, **CLAIM_TAGS}):
        assert_denied(policy, iam.rds_add_tags(arn, existing, tags), f"AddTagsToResource {tags}")
    for action in ("rds:ModifyDBInstance", "rds:DeleteDBInstance", "rds:StopDBInstance", "rds:StartDBInstance"):
        assert_denied(policy, iam.rds_on_db(action, arn, existing), action)


def test_rds_cannot_retag_ours_to_another_cluster() -> None:
    policy = rendered(POLICY)
    for tags in ({CLUSTER_TAG: OTHER_CLUSTER}, {**SPARE_TAGS, CLUSTER_TAG: OTHER_CLUSTER},
                 {**CLAIM_TAGS, CLUSTER_TAG: OTHER_CLUSTER}):
        assert_denied(policy, iam.rds_add_tags(SPARE, SPARE_TAGS, tags), str(tags))


def test_rds_known_limit_an_untagged_fe_database_can_be_stamped() -> None:
    """Known limit, pinned so a change is noticed (docs/iam.md): RDS checks
    rds:AddTagsToResource for the tags of a restore against the DB being created, with
    no resource tags and no condition key telling it from an existing DB. So a DB that
    already exists untagged *and* is named fe-* can receive our tags. Any other
    cluster's (tagged) DB and anything not named fe-* cannot."""
    db = iam.rds_arn(REGION, ACCOUNT, "db", "fe-made-by-hand")
    assert iam.call_allowed(rendered(POLICY), iam.rds_add_tags(db, {}, SPARE_TAGS))


FOREIGN_PARAMETERS = {
    "other-cluster": (iam.ssm_arn(REGION, ACCOUNT, f"/featureenv/{OTHER_CLUSTER}/{UID}/database"),
                      {**PARAMETER_TAGS, CLUSTER_TAG: OTHER_CLUSTER}),
    "other-cluster-in-our-tree": (PARAMETER_B, {**PARAMETER_OF_B, CLUSTER_TAG: OTHER_CLUSTER}),
    "production": (iam.ssm_arn(REGION, ACCOUNT, "/prod/orders/db-password"), {}),
    "image-pointer": (AMI_PARAMETER, {}),
    # Our tags outside our tree: the path still protects it.
    "production-with-our-tags": (iam.ssm_arn(REGION, ACCOUNT, "/prod/orders/db-password"), PARAMETER_TAGS),
    "other-tree-with-our-tags": (iam.ssm_arn(REGION, ACCOUNT, f"/featureenv/{OTHER_CLUSTER}/{UID}/database"),
                                 PARAMETER_TAGS),
}


@pytest.mark.parametrize("parameter", list(FOREIGN_PARAMETERS))
def test_ssm_cannot_tag_overwrite_or_delete_a_parameter_that_is_not_ours(parameter: str) -> None:
    policy = rendered(POLICY)
    arn, existing = FOREIGN_PARAMETERS[parameter]
    for tags in ({CLUSTER_TAG: CLUSTER}, PARAMETER_TAGS, {INSTANCE_TAG: INSTANCE_A}):
        assert_denied(policy, iam.ssm_add_tags(arn, existing, tags), f"AddTagsToResource {tags}")
    assert_denied(policy, iam.ssm_overwrite_parameter(arn, existing), "overwrite")
    assert_denied(policy, iam.ssm_on_parameter("ssm:DeleteParameter", arn, existing), "delete")


def test_ssm_untagged_parameter_in_our_tree_is_neither_overwritten_nor_deleted() -> None:
    """Our tree's path is not enough: without our tag a parameter is not ours. (Tagging
    it is the known limit of tag-on-create, as for RDS: docs/iam.md.)"""
    policy = rendered(POLICY)
    arn = iam.ssm_arn(REGION, ACCOUNT, f"/featureenv/{CLUSTER}/made-by-hand")
    assert_denied(policy, iam.ssm_overwrite_parameter(arn, {}), "overwrite")
    assert_denied(policy, iam.ssm_on_parameter("ssm:DeleteParameter", arn, {}), "delete")


def test_ssm_cannot_retag_ours_to_another_cluster_or_point_it_elsewhere() -> None:
    policy = rendered(POLICY)
    for tags in ({CLUSTER_TAG: OTHER_CLUSTER}, {**PARAMETER_TAGS, CLUSTER_TAG: OTHER_CLUSTER},
                 {INSTANCE_TAG: "*"},
                 {INSTANCE_TAG: f"arn:aws:ec2:{REGION}:999999999999:instance/i-0aaaaaaaaaaaaaaaa"},
                 {"Owner": "someone"}):
        assert_denied(policy, iam.ssm_add_tags(PARAMETER, PARAMETER_TAGS, tags), str(tags))
    bad_creates = {
        "another cluster's tag": (PARAMETER, {**PARAMETER_TAGS, CLUSTER_TAG: OTHER_CLUSTER}),
        "no cluster tag": (PARAMETER, {ENV_TAG: ENVIRONMENT}),
        "a key that is not ours": (PARAMETER, {**PARAMETER_TAGS, "Owner": "someone"}),
        "an instance of another account": (PARAMETER, {**PARAMETER_TAGS, INSTANCE_TAG:
                                                       f"arn:aws:ec2:{REGION}:999999999999:instance/i-0aaaaaaaaaaaaaaaa"}),
        "another cluster's tree": (iam.ssm_arn(REGION, ACCOUNT, f"/featureenv/{OTHER_CLUSTER}/x/database"),
                                   PARAMETER_TAGS),
        "outside the tree": (iam.ssm_arn(REGION, ACCOUNT, "/prod/x"), PARAMETER_TAGS),
    }
    for why, (arn, tags) in bad_creates.items():
        requests = iam.ssm_create_parameter(arn, tags)
        # Both the PutParameter and its tag-on-create AddTagsToResource deny it.
        assert not iam.allowed(policy, only(requests, "ssm:PutParameter", "")), why
        assert not iam.allowed(policy, only(requests, "ssm:AddTagsToResource", "")), why
    assert_allowed(policy, iam.ssm_create_parameter(PARAMETER, PARAMETER_OF_A))
    for path in ("/prod", f"/featureenv/{OTHER_CLUSTER}", "/featureenv"):
        assert_denied(policy, iam.ssm_on_parameter("ssm:GetParametersByPath", iam.ssm_arn(REGION, ACCOUNT, path), {}),
                      f"list {path}")


def test_operator_reads_image_parameters_but_no_database_credentials() -> None:
    policy = rendered(POLICY)
    assert_allowed(policy, iam.ssm_on_parameter("ssm:GetParameter", AMI_PARAMETER, {}))
    for arn, tags in ((PARAMETER, PARAMETER_OF_A), *FOREIGN_PARAMETERS.values()):
        if arn == AMI_PARAMETER:
            continue
        assert_denied(policy, iam.ssm_on_parameter("ssm:GetParameter", arn, tags), arn)


def test_pass_role_only_the_instance_role_to_ec2() -> None:
    policy = rendered(POLICY)
    assert iam.allowed(policy, Request("iam:PassRole", ROLE, {"iam:PassedToService": "ec2.amazonaws.com"}))
    assert not iam.allowed(policy, Request("iam:PassRole", ROLE, {"iam:PassedToService": "lambda.amazonaws.com"}))
    assert not iam.allowed(policy, Request("iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/admin",
                                           {"iam:PassedToService": "ec2.amazonaws.com"}))


# --- defect 3: the instance profile ------------------------------------------------


def test_instance_profile_actions() -> None:
    policy = load(PROFILE_POLICY)
    for action in ("ec2:TerminateInstances", "ec2:RunInstances", "ssm:PutParameter", "ssm:GetParametersByPath",
                   "ssm:AddTagsToResource", "ecr:PutImage", "iam:PassRole",
                   # AmazonSSMManagedInstanceCore grants these on "*"; the agent statement must not.
                   "ssm:GetParameters", "ssm:SendCommand", "ssm:StartSession"):
        assert not action_allowed(policy, action), f"the instance must not be able to {action}"
    agent = [s for s in policy["Statement"] if s["Sid"] == "SSMAgentManagedNode"]
    assert len(agent) == 1 and set(agent[0]["Action"]) == SSM_AGENT_ACTIONS


def test_instance_reads_only_its_own_parameter() -> None:
    policy = rendered(PROFILE_POLICY)
    a, b = iam.instance_principal(INSTANCE_A), iam.instance_principal(INSTANCE_B)
    get = lambda arn, tags, who: iam.ssm_on_parameter("ssm:GetParameter", arn, tags, who)  # noqa: E731
    assert_allowed(policy, get(PARAMETER, PARAMETER_OF_A, a))
    assert_allowed(policy, get(PARAMETER_B, PARAMETER_OF_B, b))
    assert_denied(policy, get(PARAMETER_B, PARAMETER_OF_B, a), "A reads B's parameter")
    assert_denied(policy, get(PARAMETER, PARAMETER_OF_A, b), "B reads A's parameter")
    assert_denied(policy, get(PARAMETER, PARAMETER_TAGS, a), "before the operator names the instance")
    assert_denied(policy, get(PARAMETER, PARAMETER_OF_A, iam.operator_principal()), "not instance credentials")
    other = iam.ssm_arn(REGION, ACCOUNT, f"/featureenv/{OTHER_CLUSTER}/{UID}/database")
    assert_denied(policy, get(other, {**PARAMETER_OF_A, CLUSTER_TAG: OTHER_CLUSTER}, a), "another cluster's")
    assert_denied(policy, get(PARAMETER, {**PARAMETER_OF_A, CLUSTER_TAG: OTHER_CLUSTER}, a), "not our cluster tag")
    assert_denied(policy, get(AMI_PARAMETER, {INSTANCE_TAG: INSTANCE_A}, a), "outside the cluster tree")
    assert_denied(policy, get(iam.ssm_arn(REGION, ACCOUNT, "/prod/orders/db-password"), PARAMETER_OF_A, a),
                  "our tags outside the cluster tree")


def test_instance_tags_only_itself_and_only_the_bootstrap_tag() -> None:
    policy = rendered(PROFILE_POLICY)
    a = iam.instance_principal(INSTANCE_A)
    for value in ("complete", "failed"):
        assert_allowed(policy, iam.ec2_create_tags(INSTANCE_A, INSTANCE_TAGS, {BOOTSTRAP_TAG: value}, a))
    assert_denied(policy, iam.ec2_create_tags(INSTANCE_B, INSTANCE_TAGS, {BOOTSTRAP_TAG: "complete"}, a),
                  "A tags B")
    assert_denied(policy, iam.ec2_create_tags(OTHER_CLUSTER_INSTANCE, {**INSTANCE_TAGS, CLUSTER_TAG: OTHER_CLUSTER},
                                              {BOOTSTRAP_TAG: "failed"}, a), "A tags another cluster's instance")
    assert_denied(policy, iam.ec2_create_tags(INSTANCE_A, INSTANCE_TAGS, {BOOTSTRAP_TAG: "complete"},
                                              iam.operator_principal()), "not instance credentials")
    # An instance of another installation given this role tags itself: not ours.
    c = iam.instance_principal(OTHER_CLUSTER_INSTANCE)
    assert_denied(policy, iam.ec2_create_tags(OTHER_CLUSTER_INSTANCE, {**INSTANCE_TAGS, CLUSTER_TAG: OTHER_CLUSTER},
                                              {BOOTSTRAP_TAG: "complete"}, c), "another cluster's instance, itself")
    assert_denied(policy, iam.ec2_create_tags(OTHER_CLUSTER_INSTANCE, {}, {BOOTSTRAP_TAG: "complete"}, c),
                  "an untagged instance, itself")
    for tags in ({CLUSTER_TAG: OTHER_CLUSTER}, {UID_TAG: "x"}, {BOOTSTRAP_TAG: "complete", ENV_TAG: "x"},
                 {BOOTSTRAP_TAG: "yes"}, {BOOTSTRAP_TAG: f"complete:{SERVICES_TOKEN}"}):
        assert_denied(policy, iam.ec2_create_tags(INSTANCE_A, INSTANCE_TAGS, tags, a), str(tags))


def test_instance_tags_itself_with_the_outcome_of_a_services_update_only() -> None:
    policy = rendered(PROFILE_POLICY)
    a = iam.instance_principal(INSTANCE_A)
    for value in (f"complete:{SERVICES_TOKEN}", f"failed:{SERVICES_TOKEN}", "complete:ffffffffffffffff"):
        assert_allowed(policy, iam.ec2_create_tags(INSTANCE_A, INSTANCE_TAGS, {SERVICES_TAG: value}, a))
    for value in (f"running:{SERVICES_TOKEN}", "complete", "complete:", f"complete:{SERVICES_TOKEN}0",
                  f"complete:{SERVICES_TOKEN[:-1]}", f"succeeded:{SERVICES_TOKEN}", f"Complete:{SERVICES_TOKEN}"):
        assert_denied(policy, iam.ec2_create_tags(INSTANCE_A, INSTANCE_TAGS, {SERVICES_TAG: value}, a), value)
    outcome = {SERVICES_TAG: f"complete:{SERVICES_TOKEN}"}
    assert_denied(policy, iam.ec2_create_tags(INSTANCE_B, INSTANCE_TAGS, outcome, a), "A tags B")
    assert_denied(policy, iam.ec2_create_tags(INSTANCE_A, INSTANCE_TAGS, outcome, iam.operator_principal()),
                  "not instance credentials")
    c = iam.instance_principal(OTHER_CLUSTER_INSTANCE)
    assert_denied(policy, iam.ec2_create_tags(OTHER_CLUSTER_INSTANCE, {**INSTANCE_TAGS, CLUSTER_TAG: OTHER_CLUSTER},
                                              outcome, c), "another cluster's instance, itself")
    assert_denied(policy, iam.ec2_create_tags(OTHER_CLUSTER_INSTANCE, {}, outcome, c), "an untagged instance, itself")
    # One key per call: the two outcomes are written separately, never with another key.
    for extra in ({BOOTSTRAP_TAG: "complete"}, {ENV_TAG: "x"}, {CLUSTER_TAG: CLUSTER}):
        assert_denied(policy, iam.ec2_create_tags(INSTANCE_A, INSTANCE_TAGS, {**outcome, **extra}, a), str(extra))


# --- Run Command: the operator runs the services update on its own instances only -----


def send_command(instance_arn: str, tags: dict[str, str], document: str = "AWS-RunShellScript",
                 principal: dict[str, Any] | None = None) -> list[Request]:
    return iam.ssm_send_command(region=REGION, account=ACCOUNT, document=document,
                                instance_id=instance_arn.rsplit("/", 1)[1], instance_tags=tags, principal=principal)


def test_send_command_runs_shell_scripts_on_our_instances() -> None:
    policy = rendered(POLICY)
    assert_allowed(policy, send_command(INSTANCE_A, INSTANCE_TAGS))
    assert iam.ssm_document_arn(REGION, ACCOUNT, "AWS-RunShellScript") == (
        f"arn:aws:ssm:{REGION}::document/AWS-RunShellScript"), "AWS's documents have no account in their ARN"


@pytest.mark.parametrize("instance", list(FOREIGN_INSTANCES))
def test_send_command_denied_on_an_instance_that_is_not_ours(instance: str) -> None:
    policy = rendered(POLICY)
    arn, existing = FOREIGN_INSTANCES[instance]
    requests = send_command(arn, existing)
    assert_denied(policy, requests, instance)
    # By the instance's own authorization (the document's alone would pass).
    assert not iam.allowed(policy, only(requests, "ssm:SendCommand", ":instance/")), instance
    assert iam.allowed(policy, only(requests, "ssm:SendCommand", ":document/"))


@pytest.mark.parametrize("document", [
    "AWS-RunPowerShellScript", "AWS-RunRemoteScript", "AWS-ApplyPatchBaseline", "featureenv-update-services",
    f"arn:aws:ssm:{REGION}:999999999999:document/AWS-RunShellScript",
    f"arn:aws:ssm:{REGION}:{ACCOUNT}:document/AWS-RunShellScript",
], ids=["powershell", "remote-script", "patch", "custom-in-account", "shared-from-another-account",
        "in-account-arn"])
def test_send_command_denied_for_any_other_document(document: str) -> None:
    policy = rendered(POLICY)
    requests = send_command(INSTANCE_A, INSTANCE_TAGS, document)
    assert_denied(policy, requests, document)
    assert not iam.allowed(policy, only(requests, "ssm:SendCommand", ":document/")), document


def test_send_command_tag_condition_is_ssms_own_key() -> None:
    """The policy names `ssm:resourceTag/...` (the key AWS's Run Command examples use):
    an instance whose tags reached the request only as aws:ResourceTag is not enough."""
    policy = rendered(POLICY)
    instance = Request("ssm:SendCommand", INSTANCE_A, {**iam.operator_principal(),
                                                       **iam.tag_context(resource=INSTANCE_TAGS)})
    assert not iam.allowed(policy, instance)


# --- defect 4: the evaluator decides, or refuses -----------------------------------


def _policy(condition: dict[str, Any], resource: Any = "*") -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "S", "Effect": "Allow", "Action": "ec2:CreateTags", "Resource": resource, "Condition": condition}]}


@pytest.mark.parametrize("policy,context", [
    (_policy({"NumericLessThan": {"ec2:RoleDelivery": "2.0"}}), {"ec2:RoleDelivery": "1.0"}),
    (_policy({"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}), {"aws:SourceIp": "10.1.2.3"}),
    (_policy({"StringEquals": {"aws:ResourceTag/x": "${aws:SourceIp}"}}), {"aws:ResourceTag/x": "1"}),
    (_policy({"StringEquals": {"aws:ResourceTag/x": "${aws:username, 'none'}"}}), {"aws:ResourceTag/x": "1"}),
    (_policy({"StringEquals": {"aws:ResourceTag/x": "${aws:TagKeys}"}}), {"aws:ResourceTag/x": "1"}),
    (_policy({"ForAllValues:StringEquals": {"aws:ResourceTag/x": "1"}}), {"aws:ResourceTag/x": "1"}),
    (_policy({"ForAnyValue:StringLike": {"ec2:SourceInstanceARN": "*"}}), {"ec2:SourceInstanceARN": "a"}),
    (_policy({"StringEquals": {"aws:TagKeys": "x"}}), {"aws:TagKeys": ["x"]}),
    (_policy({"Null": {"aws:ResourceTag/x": "${aws:username}"}}), {}),
    (_policy({"ForAllValues:Null": {"aws:TagKeys": "true"}}), {}),
    (_policy({}, "arn:aws:${aws:username}:*:*:*"), {"aws:username": "ec2"}),
    ({"Version": "2008-10-17", "Statement": []}, {}),
    ({"Version": "2012-10-17", "Statement": [
        {"Sid": "S", "Effect": "Allow", "Action": "ec2:CreateTags", "NotResource": "x"}]}, {}),
], ids=["numeric", "ip", "unknown-variable", "variable-default", "multivalued-variable",
        "set-operator-on-single-valued-key", "any-value-on-single-valued-key", "plain-operator-on-tag-keys",
        "variable-in-null", "qualified-null", "variable-before-resource-part", "old-version", "not-resource"])
def test_evaluator_raises_on_what_it_does_not_model(policy: dict[str, Any], context: dict[str, Any]) -> None:
    with pytest.raises(Unsupported):
        iam.decide(policy, Request("ec2:CreateTags", "arn:aws:ec2:eu-west-1:1:instance/i-1", context))


def test_evaluator_semantics() -> None:
    arn = "arn:aws:ec2:eu-west-1:123456789012:instance/i-1"
    d = lambda cond, ctx, res="*": iam.allowed(_policy(cond, res), Request("ec2:CreateTags", arn, ctx))  # noqa: E731
    # A missing key: positive operators fail, negated ones and IfExists hold.
    assert not d({"StringEquals": {"aws:ResourceTag/a": "1"}}, {})
    assert d({"StringNotEquals": {"aws:ResourceTag/a": "1"}}, {})
    assert d({"StringEqualsIfExists": {"aws:ResourceTag/a": "1"}}, {})
    assert not d({"StringEqualsIfExists": {"aws:ResourceTag/a": "1"}}, {"aws:ResourceTag/a": "2"})
    assert d({"Null": {"aws:ResourceTag/a": "true"}}, {}) and not d({"Null": {"aws:ResourceTag/a": "false"}}, {})
    # Several values of one key are OR; several keys are AND; keys are case-insensitive.
    assert d({"StringEquals": {"aws:RequestTag/b": ["x", "y"]}}, {"aws:RequestTag/b": "y"})
    assert not d({"StringEquals": {"aws:RequestTag/b": "x", "aws:RequestTag/c": "x"}}, {"aws:RequestTag/b": "x"})
    assert d({"StringEquals": {"AWS:REQUESTTAG/b": "x"}}, {"aws:RequestTag/b": "x"})
    # StringEquals is literal, StringLike globs.
    assert not d({"StringEquals": {"aws:RequestTag/b": "x*"}}, {"aws:RequestTag/b": "xy"})
    assert d({"StringLike": {"aws:RequestTag/b": "x*"}}, {"aws:RequestTag/b": "xy"})
    # Set operators: ForAllValues holds vacuously, ForAnyValue does not.
    assert d({"ForAllValues:StringEquals": {"aws:TagKeys": ["a"]}}, {})
    assert not d({"ForAnyValue:StringEquals": {"aws:TagKeys": ["a"]}}, {})
    assert not d({"ForAllValues:StringEquals": {"aws:TagKeys": ["a"]}}, {"aws:TagKeys": ["a", "b"]})
    assert d({"ForAnyValue:StringEquals": {"aws:TagKeys": ["a"]}}, {"aws:TagKeys": ["a", "b"]})
    # Variables: resolved from the request, literal (a `*` in a value is no wildcard),
    # and unresolved ones match nothing.
    me = {"ec2:SourceInstanceARN": arn, "ec2:InstanceID": "i-1"}
    assert d({"StringEquals": {"aws:ResourceTag/i": "${ec2:SourceInstanceARN}"}}, {**me, "aws:ResourceTag/i": arn})
    assert not d({"StringEquals": {"aws:ResourceTag/i": "${ec2:SourceInstanceARN}"}}, {"aws:ResourceTag/i": arn})
    assert d({"ArnLike": {"ec2:SourceInstanceARN": "arn:aws:ec2:*:*:instance/${ec2:InstanceID}"}}, me)
    assert not d({"ArnLike": {"ec2:SourceInstanceARN": "arn:aws:ec2:*:*:instance/${ec2:InstanceID}"}},
                 {**me, "ec2:InstanceID": "i-2"})
    assert not d({"ArnLike": {"ec2:SourceInstanceARN": "arn:aws:ec2:*:*:instance/${ec2:InstanceID}"}},
                 {**me, "ec2:InstanceID": "*"})
    assert d({}, {"aws:username": "i-1"}, "arn:aws:ec2:*:*:instance/${aws:username}")
    assert not d({}, {}, "arn:aws:ec2:*:*:instance/${aws:username}")
    # An explicit Deny wins.
    policy = _policy({})
    policy["Statement"].append({"Sid": "D", "Effect": "Deny", "Action": "ec2:*", "Resource": "*"})
    assert not iam.allowed(policy, Request("ec2:CreateTags", arn, {}))


# --- defect 5: a maintained linter -------------------------------------------------


@dataclass(frozen=True)
class Accepted:
    """A parliament finding accepted on purpose, and why."""

    policy: str
    issue: str
    matches: Callable[[Any], bool]
    reason: str


def _actions(finding: Any) -> set[str]:
    """The actions a community auditor's finding names (it puts them in `location`)."""
    return {a.lower() for a in finding.location.get("actions", [])}


ACCEPTED_FINDINGS = [
    Accepted(
        "operator", "RESOURCE_MISMATCH",
        lambda f: {d["action"] for d in f.detail} <= {"ec2:RunInstances", "rds:RestoreDBInstanceFromDBSnapshot",
                                                       "ssm:SendCommand"},
        # False positive: parliament wants every required resource type of an action in
        # each statement, so it flags the AWS-documented split of RunInstances into a
        # tagged statement (instance, volume, ENI) and an untagged one (image, subnet,
        # security group). duo-labs/parliament issue #3, open; AWS EC2 User Guide,
        # "Tag instances and volumes on creation with specific tags". Every required
        # type is still checked to be covered by another statement (_split_covers).
        # SendCommand is split the same way, as the SSM User Guide's Run Command
        # examples do: the tag condition cannot be put on the document, which has no
        # tags, so the document and the instances are two statements. parliament also
        # reads the AWS-owned document's ARN (no account: arn:aws:ssm:*::document/...)
        # as not matching its format.
        "split statements per resource type (parliament issue #3)"),
    Accepted(
        "operator", "PERMISSIONS_MANAGEMENT_ACTIONS", lambda f: _actions(f) == {"iam:passrole"},
        # Launching with an instance profile needs iam:PassRole. It is limited to the one
        # role featureenv-node, whose policy is docs/instance-profile-policy.json, and to
        # ec2.amazonaws.com (test_pass_role_only_the_instance_role_to_ec2).
        "iam:PassRole of the one environment role, to EC2 only"),
    Accepted(
        "operator", "PRIVILEGE_ESCALATION",
        lambda f: f.location.get("type") == "CreateEC2WithExistingIP"
        and _actions(f) == {"iam:passrole", "ec2:runinstances"},
        # The auditor matches the action pair regardless of resources and conditions.
        # The operator can only pass featureenv-node, which has less than the operator.
        "RunInstances + PassRole is the product; the passable role is the minimal instance role"),
    Accepted(
        "instance-profile", "CREDENTIALS_EXPOSURE", lambda f: _actions(f) == {"ecr:getauthorizationtoken"},
        # `aws ecr get-login-password` on the instance: the registry token docker pull
        # needs (the same action as AWS's AmazonEC2ContainerRegistryReadOnly).
        "ECR login token for docker pull"),
    Accepted(
        "instance-profile", "RESOURCE_STAR",
        lambda f: isinstance(f.detail, list) and set(f.detail) <= SSM_AGENT_ACTIONS,
        # The SSM Agent's own calls on "*", as AWS's managed policy
        # AmazonSSMManagedInstanceCore grants them (SSM_AGENT_ACTIONS); some of them have
        # resource types, but not which resource each call of the agent names.
        "the SSM Agent's actions, as AmazonSSMManagedInstanceCore grants them"),
    Accepted(
        "instance-profile", "UNKNOWN_CONDITION_FOR_ACTION",
        lambda f: f.detail == "Unknown condition ec2:SourceInstanceARN for action ec2:CreateTags",
        # False positive: parliament's list of global keys lacks ec2:SourceInstanceARN,
        # which the IAM User Guide lists among the global condition keys
        # ("ec2:SourceInstanceArn ... included in the request context whenever the role
        # session is created by an Amazon EC2 instance") and the EC2 User Guide calls "an
        # AWS global condition key". AWS's managed policy AWSEC2VssSnapshotPolicy uses the
        # same ArnLike ec2:SourceInstanceARN = ...instance/${ec2:InstanceId} condition.
        "ec2:SourceInstanceARN is a global key parliament does not list"),
]


def _split_covers(policy: dict[str, Any], finding: Any) -> list[str]:
    """For an accepted RESOURCE_MISMATCH: the required formats no statement covers."""
    missing = []
    for entry in finding.detail:
        action, required = entry["action"], entry["required_format"]
        covered = any(
            action in as_list(s["Action"]) and any(
                len(r.split(":", 5)) == 6
                and all(fnmatch.fnmatchcase(mine, want) for mine, want in zip(r.split(":", 5), required.split(":", 5)))
                for r in as_list(s["Resource"]))
            for s in policy["Statement"])
        if not covered:
            missing.append(f"{action} {required}")
    return missing


@pytest.mark.parametrize("name,path", [("operator", POLICY), ("instance-profile", PROFILE_POLICY)],
                         ids=["operator", "instance-profile"])
def test_parliament_reports_nothing_unexplained(name: str, path: Path) -> None:
    try:
        import parliament
    except ImportError:  # a hard dependency, like helm_python: missing it must fail
        pytest.fail("parliament is not installed: `make deps` (pip install 'parliament==1.6.4')")
    # As `parliament --include-community-auditors`: their finding types come with them.
    parliament.override_config(Path(parliament.__file__).parent / "community_auditors" / "config_override.yaml")
    text = path.read_text().replace("CLUSTER_ID", CLUSTER).replace("ACCOUNT_ID", ACCOUNT)
    result = parliament.analyze_policy_string(text, filepath=str(path), include_community_auditors=True)
    findings = [parliament.enhance_finding(f) for f in result.findings]
    unexplained = []
    for f in findings:
        accepted = [a for a in ACCEPTED_FINDINGS if a.policy == name and a.issue == f.issue and a.matches(f)]
        if not accepted:
            unexplained.append(f"{f.severity} {f.issue}: {f.title} {f.detail}")
        elif f.issue == "RESOURCE_MISMATCH":
            assert not _split_covers(json.loads(text), f), f"no statement grants {_split_covers(json.loads(text), f)}"
    assert not unexplained, "parliament findings:\n" + "\n".join(unexplained)


# --- an end-to-end run's calls -----------------------------------------------------


def _call_logs() -> list[Path]:
    raw = os.environ.get("FEATUREENV_AWS_CALL_LOG", "")
    return [Path(p) for p in raw.split(",") if p.strip()]


def recorded_requests(entry: dict[str, Any]) -> list[Request] | None:
    """The authorizations of a logged call (iam_eval.call_requests, as hack/fault_proxy.py
    --iam-policy decides it at request time; ACCOUNT is moto's), or None for one the
    proxy answered with an injected fault (it never reached AWS)."""
    return iam.call_requests(entry, ACCOUNT)


def _where(entry: dict[str, Any]) -> str:
    outcome = f"HTTP {entry.get('status')}" + (f" {entry['rejected']}" if entry.get("rejected") else "")
    return f"{entry['service']}:{entry['action']} ({outcome})"


@pytest.mark.skipif(not _call_logs(), reason="set FEATUREENV_AWS_CALL_LOG to fault_proxy logs of an e2e run")
def test_every_recorded_operation_is_allowed() -> None:
    policy = load(POLICY)
    seen: set[str] = set()
    entries: list[dict[str, Any]] = []
    for path in _call_logs():
        assert path.is_file(), f"FEATUREENV_AWS_CALL_LOG names a missing file: {path}"
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            entry = json.loads(line)
            prefix = SIGNING_NAME_TO_IAM_PREFIX.get(entry["service"], entry["service"])
            seen.add(f"{prefix}:{entry['action']}")
            entries.append(entry)
    assert seen, "the call logs recorded no AWS operation"
    denied = sorted(a for a in seen if not action_allowed(policy, a))
    assert not denied, f"the operator issued operations docs/iam-policy.json does not allow: {denied}"
    evaluated = [e for e in entries if e.get("fault") is None]
    if not evaluated:
        return
    cluster = os.environ.get("FEATUREENV_CLUSTER_ID", "")
    assert cluster, "the call logs hold calls to evaluate: set FEATUREENV_CLUSTER_ID to the run's cluster id"
    deployed = rendered(POLICY, cluster)
    # Problem -> when it was logged; an e2e run repeats a call many times.
    refused: dict[str, list[float]] = {}
    unsupported: dict[str, list[float]] = {}
    verdicts: dict[str, tuple[list[str], list[str]]] = {}  # a call repeated (polls) is decided once
    for entry in evaluated:
        same = json.dumps({k: v for k, v in entry.items() if k not in ("ts", "received", "agent")}, sort_keys=True)
        if same not in verdicts:
            try:
                requests = recorded_requests(entry) or []
                verdicts[same] = ([f"{_where(entry)}: {r} {dict(r.context)}"
                                   for r in iam.denied_requests(deployed, requests)], [])
            except Unsupported as e:
                verdicts[same] = ([], [f"{_where(entry)}: {e}"])
        denials, why = verdicts[same]
        for problem in denials:
            refused.setdefault(problem, []).append(entry["ts"])
        for problem in why:
            unsupported.setdefault(problem, []).append(entry["ts"])

    def lines(found: dict[str, list[float]]) -> str:
        return "\n".join(f"  {what} [{len(ts)} call(s), first logged at {min(ts)}]" for what, ts in found.items())

    problems = []
    if refused:
        problems.append("denied by docs/iam-policy.json:\n" + lines(refused))
    if unsupported:
        problems.append("unsupported (the model cannot tell whether docs/iam-policy.json allows it):\n"
                        + lines(unsupported))
    assert not problems, "\n".join(problems)


def _check_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entries: list[dict[str, Any]],
               cluster: str = "e2e") -> None:
    """test_every_recorded_operation_is_allowed on these log lines, as an e2e run gets it."""
    log = tmp_path / "aws-calls.jsonl"
    log.write_text("".join(json.dumps(e) + "\n" for e in entries))
    monkeypatch.setenv("FEATUREENV_AWS_CALL_LOG", str(log))
    monkeypatch.setenv("FEATUREENV_CLUSTER_ID", cluster)
    test_every_recorded_operation_is_allowed()


def test_recorded_send_command_is_evaluated_on_its_resources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check an end-to-end run gets, on log lines as fault_proxy writes them."""
    ours = {"featureenv.io/cluster": "e2e", "featureenv.io/bootstrap": "complete"}
    line = {"ts": 1.0, "received": 1.0, "agent": "op-a", "service": "ssm", "action": "SendCommand", "status": 200,
            "fault": None, "region": "us-east-1", "document": "AWS-RunShellScript",
            "instance_ids": ["i-0aaaaaaaaaaaaaaaa"], "instance_tags": {"i-0aaaaaaaaaaaaaaaa": ours}}
    faulted = {"ts": 0.5, "received": 0.5, "agent": "op-a", "service": "ssm", "action": "SendCommand",
               "status": 400, "fault": "throttle"}
    assert recorded_requests(faulted) is None
    _check_log(tmp_path, monkeypatch, [faulted, line])
    for bad in ({**line, "instance_tags": {}}, {**line, "document": "AWS-RunPowerShellScript"},
                {**line, "instance_tags": {"i-0aaaaaaaaaaaaaaaa": {**ours, "featureenv.io/cluster": "other"}}}):
        with pytest.raises(AssertionError, match="denied by docs/iam-policy.json"):
            _check_log(tmp_path, monkeypatch, [bad])
    monkeypatch.delenv("FEATUREENV_CLUSTER_ID")
    with pytest.raises(AssertionError, match="set FEATUREENV_CLUSTER_ID"):
        test_every_recorded_operation_is_allowed()


# One environment's calls as fault_proxy logs them (fields: hack/aws_authz.py), cluster
# "e2e" in moto's account and region: what tests/hack/test_iam_replay.py replays for real.
E2E = "e2e"
E2E_REGION = "us-east-1"
E2E_INSTANCE = "i-0aaaaaaaaaaaaaaaa"
E2E_INSTANCE_ARN = iam.ec2_arn(E2E_REGION, ACCOUNT, "instance", E2E_INSTANCE)
E2E_LAUNCH_TAGS = {**LAUNCH_TAGS, CLUSTER_TAG: E2E}
E2E_DB = "fe-integration-7f3k2a9d1e-0"
E2E_DB_ARN = iam.rds_arn(E2E_REGION, ACCOUNT, "db", E2E_DB)
E2E_SPARE_TAGS = {CLUSTER_TAG: E2E, POOL_TAG: "integration", SNAPSHOT_TAG: "integration-db-2026-11-27"}
E2E_PARAMETER = f"/featureenv/{E2E}/{UID}/database"
E2E_PARAMETER_TAGS = {CLUSTER_TAG: E2E, ENV_TAG: ENVIRONMENT}


def logged(service: str, action: str, status: int = 200, **fields: Any) -> dict[str, Any]:
    return {"ts": 1.0, "received": 1.0, "agent": "op-a", "service": service, "action": action, "status": status,
            "fault": None, "region": E2E_REGION, **fields}


def environment_log() -> dict[str, dict[str, Any]]:
    """By step name: launch, claim, hand out, bind, update, clean up."""
    claimed = {**E2E_SPARE_TAGS, **CLAIM_TAGS}
    return {
        "resolve image": logged("ec2", "DescribeImages"),
        "read image pointer": logged("ssm", "GetParameter", name="/featureenv/ami/latest",
                                     resource_tags={"/featureenv/ami/latest": {}}),
        "launch": logged("ec2", "RunInstances", image_id="ami-0123456789abcdef0", instance_type="t3.medium",
                         subnet_id="subnet-0abc", security_group_ids=["sg-0abc"], key_name=None, launch_template=None,
                         http_tokens="required", tag_specs={k: E2E_LAUNCH_TAGS for k in TAGGED_AT_LAUNCH},
                         unmodelled=[], instance_profile="featureenv-node",
                         instance_profile_arn=f"arn:aws:iam::{ACCOUNT}:instance-profile/featureenv-node",
                         role_arns=[ROLE]),
        "inventory": logged("ec2", "DescribeInstances"),
        "newest snapshot": logged("rds", "DescribeDBSnapshots", db_instance_id="integration-db", snapshot_id=None),
        "restore spare": logged("rds", "RestoreDBInstanceFromDBSnapshot", db_instance_id=E2E_DB,
                                snapshot_id="integration-db-2026-11-27", subnet_group="featureenv", option_group=None,
                                parameter_group=None, request_tags=E2E_SPARE_TAGS,
                                snapshot={"arn": iam.rds_arn(E2E_REGION, ACCOUNT, "snapshot", "integration-db-2026-11-27"),
                                          "engine": "postgres", "engine_version": "16.3", "tags": {}}),
        "list databases": logged("rds", "DescribeDBInstances", db_instance_id=None),
        "reset spare password": logged("rds", "ModifyDBInstance", db_instance_id=E2E_DB,
                                       resource_tags={E2E_DB: E2E_SPARE_TAGS}),
        "claim": logged("rds", "AddTagsToResource", resource_name=E2E_DB_ARN, request_tags=CLAIM_TAGS,
                        resource_tags={E2E_DB_ARN: E2E_SPARE_TAGS}),
        "put parameter": logged("ssm", "PutParameter", name=E2E_PARAMETER, overwrite=False,
                                request_tags=E2E_PARAMETER_TAGS, resource_tags={E2E_PARAMETER: {}}),
        "rotate password": logged("rds", "ModifyDBInstance", db_instance_id=E2E_DB, resource_tags={E2E_DB: claimed}),
        "bind parameter": logged("ssm", "AddTagsToResource", resource_type="Parameter", resource_id=E2E_PARAMETER,
                                 request_tags={INSTANCE_TAG: E2E_INSTANCE_ARN},
                                 resource_tags={E2E_PARAMETER: E2E_PARAMETER_TAGS}),
        "resolve digest": logged("ecr", "DescribeImages", registry_id=ACCOUNT, repository="payments"),
        "console": logged("ec2", "GetConsoleOutput", instance_ids=[E2E_INSTANCE],
                          resource_tags={E2E_INSTANCE: E2E_LAUNCH_TAGS}),
        "update services": logged("ssm", "SendCommand", document="AWS-RunShellScript", instance_ids=[E2E_INSTANCE],
                                  instance_tags={E2E_INSTANCE: {**E2E_LAUNCH_TAGS, BOOTSTRAP_TAG: "complete"}}),
        "sleep instance": logged("ec2", "StopInstances", instance_ids=[E2E_INSTANCE],
                                 resource_tags={E2E_INSTANCE: {**E2E_LAUNCH_TAGS, BOOTSTRAP_TAG: "complete"}}),
        "sleep database": logged("rds", "StopDBInstance", db_instance_id=E2E_DB, snapshot_id=None,
                                 resource_tags={E2E_DB: claimed}),
        "wake database": logged("rds", "StartDBInstance", db_instance_id=E2E_DB, resource_tags={E2E_DB: claimed}),
        "wake instance": logged("ec2", "StartInstances", instance_ids=[E2E_INSTANCE],
                                resource_tags={E2E_INSTANCE: {**E2E_LAUNCH_TAGS, BOOTSTRAP_TAG: "complete"}}),
        "wake services": logged("ssm", "SendCommand", document="AWS-RunShellScript", instance_ids=[E2E_INSTANCE],
                                instance_tags={E2E_INSTANCE: {**E2E_LAUNCH_TAGS, BOOTSTRAP_TAG: "complete"}}),
        "janitor": logged("ssm", "GetParametersByPath", path=f"/featureenv/{E2E}", recursive=True),
        "terminate": logged("ec2", "TerminateInstances", instance_ids=[E2E_INSTANCE],
                            resource_tags={E2E_INSTANCE: E2E_LAUNCH_TAGS}),
        "delete database": logged("rds", "DeleteDBInstance", db_instance_id=E2E_DB, resource_tags={E2E_DB: claimed}),
        "delete parameter": logged("ssm", "DeleteParameter", name=E2E_PARAMETER,
                                   resource_tags={E2E_PARAMETER: {**E2E_PARAMETER_TAGS, INSTANCE_TAG: E2E_INSTANCE_ARN}}),
    }


def test_an_environments_logged_calls_are_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = environment_log()
    _check_log(tmp_path, monkeypatch, list(log.values()))
    # Each call is evaluated on every resource type its action is authorized on.
    launch_requests = recorded_requests(log["launch"]) or []
    assert sorted({iam.resource_type_of(r.action, r.resource) or "" for r in launch_requests}) == [
        "image", "instance", "network-interface", "role", "security-group", "subnet", "volume"]
    assert sorted({iam.resource_type_of(r.action, r.resource) or "" for r in recorded_requests(log["restore spare"]) or []}
                  ) == ["db", "og", "pg", "snapshot", "subgrp"]


OTHER = {CLUSTER_TAG: OTHER_CLUSTER}

# step, fields replaced, the authorization that must be the denied one.
DENIED_LOGGED_CALLS = {
    "claim another cluster's database": ("claim", {"resource_tags": {E2E_DB_ARN: {**E2E_SPARE_TAGS, **OTHER}}},
                                         "rds:AddTagsToResource on " + E2E_DB_ARN),
    "claim an untagged database": ("claim", {"resource_tags": {E2E_DB_ARN: {}}}, "rds:AddTagsToResource"),
    "retag ours to another cluster": ("claim", {"request_tags": {**CLAIM_TAGS, **OTHER}}, "rds:AddTagsToResource"),
    "restamp ours as a spare of another cluster": ("claim", {"request_tags": {**E2E_SPARE_TAGS, **OTHER}},
                                                   "rds:AddTagsToResource"),
    "modify an untagged database": ("rotate password", {"resource_tags": {E2E_DB: {}}}, "rds:ModifyDBInstance"),
    "modify another cluster's database": ("rotate password", {"resource_tags": {E2E_DB: {**E2E_SPARE_TAGS, **OTHER}}},
                                          "rds:ModifyDBInstance"),
    "delete an untagged database": ("delete database", {"resource_tags": {E2E_DB: {}}}, "rds:DeleteDBInstance"),
    "delete another cluster's database": ("delete database", {"resource_tags": {E2E_DB: {**E2E_SPARE_TAGS, **OTHER}}},
                                          "rds:DeleteDBInstance"),
    "delete a database not named fe-": ("delete database", {"db_instance_id": "orders-prod",
                                                            "resource_tags": {"orders-prod": E2E_SPARE_TAGS}},
                                        "rds:DeleteDBInstance"),
    "restore outside fe-": ("restore spare", {"db_instance_id": "orders-db"}, "rds:RestoreDBInstanceFromDBSnapshot"),
    "restore with another cluster's tag": ("restore spare", {"request_tags": {**E2E_SPARE_TAGS, **OTHER}},
                                           "rds:RestoreDBInstanceFromDBSnapshot"),
    "terminate another cluster's instance": ("terminate", {"resource_tags": {E2E_INSTANCE: {**E2E_LAUNCH_TAGS, **OTHER}}},
                                             "ec2:TerminateInstances"),
    "terminate an untagged instance": ("terminate", {"resource_tags": {}}, "ec2:TerminateInstances"),
    "launch without the network interface's tags": (
        "launch", {"tag_specs": {k: E2E_LAUNCH_TAGS for k in ("instance", "volume")}},
        "ec2:RunInstances on arn:aws:ec2:us-east-1:123456789012:network-interface/*"),
    "launch with another cluster's tag": ("launch", {"tag_specs": {k: {**E2E_LAUNCH_TAGS, **OTHER}
                                                                   for k in TAGGED_AT_LAUNCH}}, "ec2:RunInstances"),
    "launch without IMDSv2": ("launch", {"http_tokens": "optional"}, "ec2:RunInstances on arn:aws:ec2:us-east-1:"),
    "launch with a key pair": ("launch", {"key_name": "ops"}, ":key-pair/ops"),
    "launch passing another role": ("launch", {"role_arns": [f"arn:aws:iam::{ACCOUNT}:role/admin"]}, "iam:PassRole"),
    "put a parameter in another cluster's tree": ("put parameter", {"name": f"/featureenv/{OTHER_CLUSTER}/x/database",
                                                                    "resource_tags": {}}, "ssm:PutParameter"),
    "overwrite an untagged parameter": ("put parameter", {"overwrite": True, "request_tags": None}, "ssm:PutParameter"),
    "bind another cluster's parameter": ("bind parameter", {"resource_tags": {E2E_PARAMETER: {**E2E_PARAMETER_TAGS,
                                                                                           **OTHER}}},
                                         "ssm:AddTagsToResource"),
    "read a database parameter": ("read image pointer", {"name": E2E_PARAMETER,
                                                         "resource_tags": {E2E_PARAMETER: E2E_PARAMETER_TAGS}},
                                  "ssm:GetParameter"),
    # What the operator's cleanup does on every pass after the first (and for an
    # environment that never had a database): src/controller/environment/cleanup.rs
    # deletes the parameter unconditionally. Gone, it has no tags to authorize on.
    "delete a parameter that is gone": ("delete parameter", {"status": 400, "resource_tags": {E2E_PARAMETER: {}}},
                                        "ssm:DeleteParameter"),
    "send a command to another cluster's instance": ("update services",
                                                     {"instance_tags": {E2E_INSTANCE: {**E2E_LAUNCH_TAGS, **OTHER}}},
                                                     "ssm:SendCommand on " + E2E_INSTANCE_ARN),
    "list another cluster's tree": ("janitor", {"path": f"/featureenv/{OTHER_CLUSTER}"}, "ssm:GetParametersByPath"),
    "stop another cluster's instance": ("sleep instance", {"resource_tags": {E2E_INSTANCE: {**E2E_LAUNCH_TAGS, **OTHER}}},
                                        "ec2:StopInstances on " + E2E_INSTANCE_ARN),
    "start an untagged instance": ("wake instance", {"resource_tags": {E2E_INSTANCE: {}}}, "ec2:StartInstances"),
    "stop another cluster's database": ("sleep database",
                                        {"resource_tags": {E2E_DB: {**E2E_SPARE_TAGS, **OTHER}}},
                                        "rds:StopDBInstance on " + E2E_DB_ARN),
    "stop a database not named fe-": ("sleep database", {"db_instance_id": "orders-prod",
                                                         "resource_tags": {"orders-prod": E2E_SPARE_TAGS}},
                                      "rds:StopDBInstance"),
    "start an untagged database": ("wake database", {"resource_tags": {E2E_DB: {}}}, "rds:StartDBInstance"),
}


@pytest.mark.parametrize("case", list(DENIED_LOGGED_CALLS))
def test_a_logged_call_outside_what_is_ours_fails_the_run(case: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    step, fields, denied = DENIED_LOGGED_CALLS[case]
    log = environment_log()
    log[step] = {**log[step], **fields}
    with pytest.raises(AssertionError, match="denied by docs/iam-policy.json") as failure:
        _check_log(tmp_path, monkeypatch, list(log.values()))
    # Only the changed call is reported (naming it), by the authorization in question
    # at least (a restore's tag-on-create is denied along with the restore itself).
    reported = [line.strip() for line in str(failure.value).splitlines() if line.startswith("  ")]
    call = f"{log[step]['service']}:{log[step]['action']} ("
    assert reported and all(line.startswith(call) for line in reported), reported
    assert any(denied in line for line in reported), reported


E2E_SPARE = "i-0ffffffffffffffff"
E2E_SPARE_LAUNCH_TAGS = {**SPARE_LAUNCH_TAGS, CLUSTER_TAG: E2E}
E2E_SPARE_BOOTSTRAPPED = {**E2E_SPARE_LAUNCH_TAGS, BOOTSTRAP_TAG: "complete"}
E2E_SPARE_CLAIMED = {**E2E_SPARE_BOOTSTRAPPED, **SPARE_CLAIM_TAGS}


def warm_pool_log() -> dict[str, dict[str, Any]]:
    """A spare's life as fault_proxy logs it: launch, stop (a Stopped pool), claim,
    start, personalise, and a surplus spare's termination."""
    launch = environment_log()["launch"]
    return {
        "launch spare": {**launch, "tag_specs": {k: E2E_SPARE_LAUNCH_TAGS for k in TAGGED_AT_LAUNCH}},
        "stop spare": logged("ec2", "StopInstances", instance_ids=[E2E_SPARE],
                             resource_tags={E2E_SPARE: E2E_SPARE_BOOTSTRAPPED}),
        "claim spare": logged("ec2", "CreateTags", resource_ids=[E2E_SPARE], request_tags=SPARE_CLAIM_TAGS,
                              resource_tags={E2E_SPARE: E2E_SPARE_BOOTSTRAPPED}),
        "start spare": logged("ec2", "StartInstances", instance_ids=[E2E_SPARE],
                              resource_tags={E2E_SPARE: E2E_SPARE_CLAIMED}),
        "personalise": logged("ssm", "SendCommand", document="AWS-RunShellScript", instance_ids=[E2E_SPARE],
                              instance_tags={E2E_SPARE: E2E_SPARE_CLAIMED}),
        "terminate surplus spare": logged("ec2", "TerminateInstances", instance_ids=[E2E_SPARE],
                                          resource_tags={E2E_SPARE: E2E_SPARE_BOOTSTRAPPED}),
    }


def test_a_warm_pools_logged_calls_are_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = warm_pool_log()
    _check_log(tmp_path, monkeypatch, list(log.values()))
    assert [str(r) for r in recorded_requests(log["claim spare"]) or []] == [
        f"ec2:CreateTags on {iam.ec2_arn(E2E_REGION, ACCOUNT, 'instance', E2E_SPARE)}"]


DENIED_WARM_POOL_LOGGED_CALLS = {
    "launch a spare without the cluster tag": (
        "launch spare", {"tag_specs": {k: _without(E2E_SPARE_LAUNCH_TAGS, CLUSTER_TAG) for k in TAGGED_AT_LAUNCH}},
        "ec2:RunInstances on arn:aws:ec2:us-east-1:123456789012:instance/*"),
    "launch a spare without IMDSv2": ("launch spare", {"http_tokens": "optional"}, "ec2:RunInstances on "),
    "claim an environment's instance": ("claim spare", {"resource_tags": {E2E_SPARE: E2E_LAUNCH_TAGS}},
                                        "ec2:CreateTags on "),
    "claim another cluster's spare": ("claim spare", {"resource_tags": {E2E_SPARE: {**E2E_SPARE_BOOTSTRAPPED, **OTHER}}},
                                      "ec2:CreateTags on "),
    "claim writing the cluster tag": ("claim spare", {"request_tags": {**SPARE_CLAIM_TAGS, **OTHER}},
                                      "ec2:CreateTags on "),
    "claim writing the bootstrap tag": ("claim spare", {"request_tags": {BOOTSTRAP_TAG: "complete"}},
                                        "ec2:CreateTags on "),
}


@pytest.mark.parametrize("case", list(DENIED_WARM_POOL_LOGGED_CALLS))
def test_a_logged_warm_pool_call_outside_what_is_ours_fails_the_run(case: str, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    step, fields, denied = DENIED_WARM_POOL_LOGGED_CALLS[case]
    log = warm_pool_log()
    _check_log(tmp_path, monkeypatch, list(log.values()))
    log[step] = {**log[step], **fields}
    with pytest.raises(AssertionError, match="denied by docs/iam-policy.json") as failure:
        _check_log(tmp_path, monkeypatch, list(log.values()))
    reported = [line.strip() for line in str(failure.value).splitlines() if line.startswith("  ")]
    call = f"{log[step]['service']}:{log[step]['action']} ("
    assert reported and all(line.startswith(call) for line in reported), reported
    assert any(denied in line for line in reported), reported


LOG_BASE_FIELDS = ("ts", "received", "agent", "service", "action", "status", "fault")

UNSUPPORTED_LOGGED_CALLS: dict[str, tuple[str, Callable[[dict[str, Any]], dict[str, Any]], str]] = {
    "look-up unanswered": ("claim", lambda e: {**e, "resource_tags": None}, "`resource_tags` unknown"),
    "role unknown": ("launch", lambda e: {**e, "role_arns": None}, "`role_arns` unknown"),
    "snapshot unknown": ("restore spare", lambda e: {**e, "snapshot": None}, "`snapshot` unknown"),
    "IMDS setting not sent": ("launch", lambda e: {**e, "http_tokens": None}, "ec2:MetadataHttpTokens"),
    "a network interface specification": ("launch", lambda e: {**e, "unmodelled": ["NetworkInterface"]},
                                          "NetworkInterface"),
    "default security group": ("launch", lambda e: {**e, "security_group_ids": []}, "default security group"),
    "an older log line": ("terminate", lambda e: {k: e[k] for k in LOG_BASE_FIELDS}, "logged without the fields"),
    "tagging an RDS snapshot": ("claim", lambda e: {**e, "resource_name": E2E_DB_ARN.replace(":db:", ":snapshot:")},
                                "not a DB instance"),
    "a stop that takes a snapshot": ("sleep database", lambda e: {**e, "snapshot_id": "before-sleep"},
                                     "DBSnapshotIdentifier"),
    "an instance's tags unknown": ("wake instance", lambda e: {**e, "resource_tags": None}, "`resource_tags` unknown"),
}


@pytest.mark.parametrize("case", list(UNSUPPORTED_LOGGED_CALLS))
def test_a_logged_call_the_model_cannot_decide_fails_as_unsupported(case: str, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    step, change, why = UNSUPPORTED_LOGGED_CALLS[case]
    log = environment_log()
    log[step] = change(log[step])
    with pytest.raises(AssertionError, match="unsupported") as failure:
        _check_log(tmp_path, monkeypatch, list(log.values()))
    assert why in str(failure.value)
    assert "denied by" not in str(failure.value), "nothing else in the log is denied"


@pytest.mark.parametrize("action", [a for a in OPERATOR_ACTIONS if a != "iam:PassRole"])
def test_every_operator_action_has_a_model_of_its_logged_calls(action: str) -> None:
    """(iam:PassRole is authorized as part of RunInstances, never called.)"""
    service, _, name = action.partition(":")
    assert (service, name) in iam.LOGGED_CALLS
    with pytest.raises(Unsupported, match="no model of its authorization"):
        iam.logged_call(logged("ec2", "RebootInstances", instance_ids=[E2E_INSTANCE]), ACCOUNT)


def test_faulted_calls_are_not_evaluated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An injected throttle, 5xx or dropped connection never reached AWS's authorization
    (and carries no fields); the retry that did is logged again."""
    log = environment_log()
    faulted = [{k: log["claim"][k] for k in ("ts", "received", "agent", "service", "action")}
               | {"status": s, "fault": f} for s, f in ((400, "throttle"), (500, "error"), (None, "drop"))]
    _check_log(tmp_path, monkeypatch, [*faulted, *log.values()])
