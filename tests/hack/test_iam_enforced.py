"""IAM at request time: hack/fault_proxy.py with --iam-policy docs/iam-policy.json
--iam-cluster-id <cluster> --iam-access-key testing (what the e2e harness passes) in
front of moto, boto3 signed with the operator's key `testing`.

One environment's calls (tests/hack/test_iam_replay.py's replay of the operator) all
pass; what the post-run check would report is now refused when it is made, with AWS's
error, and never reaches moto; a client signed with another key is not checked.
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any, Iterator

import boto3
import pytest
from botocore.exceptions import ClientError

from test_fault_proxy import NO_RETRY, REPO, clients, start_proxy, stop
from test_iam_replay import (BOOTSTRAP_TAG, CLAIMED_BY_TAG, CLUSTER_TAG, ENV_TAG, POOL_TAG, UID_TAG, WARM_POOL_TAG,
                             Environment, bootstrap_tag_in)

OPERATOR_KEY = "testing"
ROLE = "arn:aws:sts::123456789012:assumed-role/featureenv-operator/"


def iam_flags(cluster: str) -> tuple[str, ...]:
    return ("--timing", "fast", "--iam-policy", str(REPO / "docs" / "iam-policy.json"),
            "--iam-cluster-id", cluster, "--iam-access-key", OPERATOR_KEY)


def lines(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def enforced(moto_endpoint: str, seeded: dict[str, Any],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One environment's life through the proxy with IAM on, as the operator lives it."""
    log = tmp_path_factory.mktemp("iam-enforced") / "aws-calls.jsonl"
    cluster = "iam-" + uuid.uuid4().hex[:6]
    proc, url = start_proxy(moto_endpoint, 0.0, log, extra=iam_flags(cluster))
    try:
        env = Environment(clients(url), seeded, cluster)
        instance = env.launch(env.resolve_image())
        spare = env.restore_spare()
        env.claim(spare)
        env.bind_parameter(instance)
        env.resolve_digest()
        # The bootstrap script tags its own instance (instance credentials, straight to moto).
        clients(moto_endpoint)["ec2"].create_tags(Resources=[instance["InstanceId"]],
                                                  Tags=[{"Key": BOOTSTRAP_TAG, "Value": "complete"}])
        env.update_services(instance)
        env.sleep(instance, spare)
        env.wake(instance, spare)
        env.janitor()
        env.clean_up(spare)
        yield {"log": log, "url": url, "cluster": cluster, "env": env, "lines": lines(log)}
    finally:
        stop(proc)


def added_since(log: Path, before: int) -> list[dict[str, Any]]:
    return lines(log)[before:]


def other_clusters_spare(aws: Any, seeded: dict[str, Any]) -> tuple[str, str]:
    """(identifier, ARN) of another installation's spare, restored straight in moto."""
    other = "fe-other-" + uuid.uuid4().hex[:8]
    arn = aws("rds").restore_db_instance_from_db_snapshot(
        DBInstanceIdentifier=other, DBSnapshotIdentifier=seeded["snapshots"]["newer"], DBInstanceClass="db.t3.micro",
        Tags=[{"Key": CLUSTER_TAG, "Value": "someone-else"}, {"Key": POOL_TAG, "Value": "integration"}],
    )["DBInstance"]["DBInstanceArn"]
    return other, arn


def tags_in_moto(aws: Any, db_id: str) -> dict[str, str]:
    db = aws("rds").describe_db_instances(DBInstanceIdentifier=db_id)["DBInstances"][0]
    return {t["Key"]: t["Value"] for t in db.get("TagList", [])}


def test_one_environments_calls_are_all_allowed(enforced: dict[str, Any]) -> None:
    entries = enforced["lines"]
    issued = {f"{e['service']}:{e['action']}" for e in entries}
    assert issued >= {
        "ec2:DescribeImages", "ec2:RunInstances", "ec2:DescribeInstances", "ec2:GetConsoleOutput",
        "ec2:TerminateInstances", "rds:DescribeDBSnapshots", "rds:RestoreDBInstanceFromDBSnapshot",
        "rds:DescribeDBInstances", "rds:ModifyDBInstance", "rds:AddTagsToResource", "rds:DeleteDBInstance",
        "ssm:GetParameter", "ssm:PutParameter", "ssm:AddTagsToResource", "ssm:GetParametersByPath",
        "ssm:SendCommand", "ssm:DeleteParameter", "ecr:DescribeImages",
        "ec2:StopInstances", "ec2:StartInstances", "rds:StopDBInstance", "rds:StartDBInstance"}, issued
    assert [e for e in entries if e["status"] != 200 or e.get("rejected")] == []


def test_tagging_another_clusters_database_is_access_denied(enforced: dict[str, Any], aws: Any,
                                                            seeded: dict[str, Any]) -> None:
    other, arn = other_clusters_spare(aws, seeded)
    env: Environment = enforced["env"]
    before = len(lines(enforced["log"]))
    with pytest.raises(ClientError) as refused:
        env.rds.add_tags_to_resource(ResourceName=arn, Tags=[{"Key": CLAIMED_BY_TAG, "Value": env.uid},
                                                             {"Key": ENV_TAG, "Value": env.key}])
    error = refused.value.response
    assert error["Error"]["Code"] == "AccessDenied"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 403
    message = error["Error"]["Message"]
    assert message.startswith(f"User: {ROLE}") and message.endswith(
        f"is not authorized to perform: rds:AddTagsToResource on resource: {arn} "
        "because no identity-based policy allows the rds:AddTagsToResource action"), message
    [entry] = added_since(enforced["log"], before)
    assert (entry["action"], entry["status"], entry["rejected"], entry["rule"]) == (
        "AddTagsToResource", 403, "AccessDenied", "iam")
    assert entry["iam_denied"] and all(d.startswith(f"rds:AddTagsToResource on {arn}") for d in entry["iam_denied"])
    # moto never saw it.
    assert CLAIMED_BY_TAG not in tags_in_moto(aws, other)


def test_deleting_the_parameter_again_is_access_denied(enforced: dict[str, Any]) -> None:
    """A parameter that is gone has no tags to allow its delete by: AWS answers
    AccessDeniedException, not ParameterNotFound (docs/iam.md, Findings)."""
    env: Environment = enforced["env"]
    before = len(lines(enforced["log"]))
    with pytest.raises(ClientError) as refused:
        env.ssm.delete_parameter(Name=env.parameter)
    error = refused.value.response
    assert error["Error"]["Code"] == "AccessDeniedException"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert "is not authorized to perform: ssm:DeleteParameter on resource: arn:aws:ssm:us-east-1:123456789012:" \
           f"parameter{env.parameter} because no identity-based policy allows" in error["Error"]["Message"]
    [entry] = added_since(enforced["log"], before)
    assert (entry["rejected"], entry["rule"], entry["resource_tags"]) == (
        "AccessDeniedException", "iam", {env.parameter: {}})


def test_ec2_denial_is_unauthorized_operation(enforced: dict[str, Any], aws: Any, seeded: dict[str, Any]) -> None:
    """Terminating an instance the cluster does not own: UnauthorizedOperation, HTTP 403,
    EC2's sentence and an encoded message; the instance keeps running in moto."""
    instance = aws("ec2").run_instances(
        ImageId=seeded["vars"]["AMI_ID_NEWER"],
        MinCount=1, MaxCount=1, SubnetId=seeded["subnetId"],
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": CLUSTER_TAG, "Value": "someone-else"}]}],
    )["Instances"][0]["InstanceId"]
    env: Environment = enforced["env"]
    with pytest.raises(ClientError) as refused:
        env.ec2.terminate_instances(InstanceIds=[instance])
    error = refused.value.response
    assert error["Error"]["Code"] == "UnauthorizedOperation"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 403
    message = error["Error"]["Message"]
    assert message.startswith(f"You are not authorized to perform this operation. User: {ROLE}"), message
    assert f"ec2:TerminateInstances on resource: arn:aws:ec2:us-east-1:123456789012:instance/{instance}" in message
    encoded = message.rsplit("Encoded authorization failure message: ", 1)[1]
    assert json.loads(base64.b64decode(encoded))["allowed"] is False
    state = aws("ec2").describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]["State"]["Name"]
    assert state in ("pending", "running")


def test_a_call_the_model_cannot_decide_is_refused(enforced: dict[str, Any], aws: Any, seeded: dict[str, Any]) -> None:
    """No model of RebootInstances's authorization: refused (never guessed), saying why."""
    env: Environment = enforced["env"]
    before = len(lines(enforced["log"]))
    with pytest.raises(ClientError) as refused:
        env.ec2.reboot_instances(InstanceIds=["i-0123456789abcdef0"])
    assert refused.value.response["Error"]["Code"] == "UnauthorizedOperation"
    [entry] = added_since(enforced["log"], before)
    assert entry["rule"] == "iam" and "no model of its authorization" in entry["iam_unsupported"]


def test_stopping_or_starting_another_clusters_resources_is_access_denied(
    enforced: dict[str, Any], aws: Any, seeded: dict[str, Any]
) -> None:
    """The sleep statements at request time: another installation's instance and
    database (made straight in moto) cannot be stopped or started; moto never sees the
    calls, they stay as they were."""
    env: Environment = enforced["env"]
    other_db, other_arn = other_clusters_spare(aws, seeded)
    other_instance = aws("ec2").run_instances(
        ImageId=seeded["amiIds"]["newer"], InstanceType="t3.micro", MinCount=1, MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": CLUSTER_TAG, "Value": "someone-else"}]}],
    )["Instances"][0]["InstanceId"]
    before = len(lines(enforced["log"]))
    for call, code in ((lambda: env.ec2.stop_instances(InstanceIds=[other_instance]), "UnauthorizedOperation"),
                       (lambda: env.ec2.start_instances(InstanceIds=[other_instance]), "UnauthorizedOperation"),
                       (lambda: env.rds.stop_db_instance(DBInstanceIdentifier=other_db), "AccessDenied"),
                       (lambda: env.rds.start_db_instance(DBInstanceIdentifier=other_db), "AccessDenied")):
        with pytest.raises(ClientError) as refused:
            call()
        assert refused.value.response["Error"]["Code"] == code
    added = added_since(enforced["log"], before)
    assert [(e["action"], e["rule"]) for e in added] == [
        ("StopInstances", "iam"), ("StartInstances", "iam"), ("StopDBInstance", "iam"), ("StartDBInstance", "iam")]
    assert f"rds:StopDBInstance on arn:aws:rds:us-east-1:123456789012:db:{other_db}" in added[2]["iam_denied"][0]
    state = aws("ec2").describe_instances(InstanceIds=[other_instance])["Reservations"][0]["Instances"][0]["State"]
    assert state["Name"] == "running"
    assert aws("rds").describe_db_instances(DBInstanceIdentifier=other_db)["DBInstances"][0][
        "DBInstanceStatus"] == "available"


def test_another_access_key_is_not_checked(enforced: dict[str, Any], aws: Any, seeded: dict[str, Any]) -> None:
    other, arn = other_clusters_spare(aws, seeded)
    rds = boto3.client("rds", endpoint_url=enforced["url"], region_name="us-east-1", aws_access_key_id="test-code",
                       aws_secret_access_key="testing", config=NO_RETRY)
    before = len(lines(enforced["log"]))
    rds.add_tags_to_resource(ResourceName=arn, Tags=[{"Key": CLAIMED_BY_TAG, "Value": "x"}])
    [entry] = added_since(enforced["log"], before)
    assert entry["status"] == 200 and "rejected" not in entry
    assert tags_in_moto(aws, other)[CLAIMED_BY_TAG] == "x"


def test_iam_flags_go_together(moto_endpoint: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(REPO / "hack/fault_proxy.py"), "--upstream", moto_endpoint,
                          "--iam-policy", str(REPO / "docs" / "iam-policy.json")],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "go together" in out.stderr


def instance_tags_in_moto(aws: Any, iid: str) -> dict[str, str]:
    found = aws("ec2").describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    return {t["Key"]: t["Value"] for t in found.get("Tags", [])}


def refused_ec2(call: Any) -> str:
    with pytest.raises(ClientError) as refused:
        call()
    error = refused.value.response
    assert (error["Error"]["Code"], error["ResponseMetadata"]["HTTPStatusCode"]) == ("UnauthorizedOperation", 403)
    return str(error["Error"]["Message"])


def test_a_warm_pools_calls_are_all_allowed(enforced: dict[str, Any], moto_endpoint: str, aws: Any) -> None:
    """Launch a spare, stop it, claim it, start it, personalise it; a surplus one terminated."""
    env: Environment = enforced["env"]
    before = len(lines(enforced["log"]))
    spare = env.warm_pool(env.resolve_image(), bootstrap_tag_in(moto_endpoint))["InstanceId"]
    added = added_since(enforced["log"], before)
    assert [e for e in added if e["status"] != 200 or e.get("rejected")] == []
    assert {"RunInstances", "StopInstances", "CreateTags", "StartInstances", "SendCommand",
            "TerminateInstances"} <= {e["action"] for e in added}
    tags = instance_tags_in_moto(aws, spare)
    assert (tags[UID_TAG], tags[ENV_TAG], tags[WARM_POOL_TAG], tags[CLUSTER_TAG]) == (
        env.uid, env.key, "standard", enforced["cluster"])


def test_warm_pool_calls_outside_what_is_ours_are_unauthorized(enforced: dict[str, Any], moto_endpoint: str,
                                                               aws: Any, seeded: dict[str, Any]) -> None:
    """After a spare's legitimate launch and claim: a spare launched without our cluster
    tag, a claim of another cluster's spare, of an environment's instance (no warm-pool
    tag), a claim that writes the cluster or the bootstrap tag: each UnauthorizedOperation,
    none reaches moto."""
    env: Environment = enforced["env"]
    image = env.resolve_image()
    spare = env.launch_spare(image)["InstanceId"]
    env.claim_spare(spare)
    assert instance_tags_in_moto(aws, spare)[UID_TAG] == env.uid
    # Another installation's spare and one of our environments' instances, made in moto.
    theirs = aws("ec2").run_instances(
        ImageId=seeded["amiIds"]["newer"], InstanceType="t3.micro", MinCount=1, MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": CLUSTER_TAG, "Value": "someone-else"},
                                                                 {"Key": WARM_POOL_TAG, "Value": "standard"}]}],
    )["Instances"][0]["InstanceId"]
    environment_instance = env.launch(image)["InstanceId"]
    before = len(lines(enforced["log"]))
    refused_ec2(lambda: env.launch_spare(image, cluster=""))
    message = refused_ec2(lambda: env.claim_spare(theirs))
    assert f"ec2:CreateTags on resource: arn:aws:ec2:us-east-1:123456789012:instance/{theirs}" in message, message
    refused_ec2(lambda: env.claim_spare(environment_instance))
    refused_ec2(lambda: env.claim_spare(spare, {CLUSTER_TAG: "someone-else"}))
    refused_ec2(lambda: env.claim_spare(spare, {BOOTSTRAP_TAG: "failed"}))
    added = added_since(enforced["log"], before)
    assert [(e["action"], e["rule"]) for e in added] == [
        ("RunInstances", "iam"), ("CreateTags", "iam"), ("CreateTags", "iam"), ("CreateTags", "iam"),
        ("CreateTags", "iam")]
    assert all(e["rejected"] == "UnauthorizedOperation" for e in added)
    assert UID_TAG not in instance_tags_in_moto(aws, theirs)
    assert instance_tags_in_moto(aws, spare)[CLUSTER_TAG] == enforced["cluster"]
    assert BOOTSTRAP_TAG not in instance_tags_in_moto(aws, spare)
