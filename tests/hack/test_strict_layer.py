"""hack/fault_proxy.py's strict rules through boto3 against proxy + moto: each rule refuses a
request that breaks it, with AWS's code and HTTP 400 in the protocol's format, while the
compliant request next to it goes through to moto; --no-strict lets everything through."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from botocore.exceptions import ClientError

from test_fault_proxy import REPO, clients, read_log, start_proxy, stop

OPERATOR_TAGS = {
    "featureenv.io/cluster": "strict",
    "featureenv.io/environment": "default/payments-pr-123",
    "featureenv.io/uid": "0b3c4f8e-1d2a-4c5b-9e8f-7a6b5c4d3e2f",
}


@pytest.fixture(scope="module")
def layer(moto_endpoint: str, seeded: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A strict proxy (timing off, so only the rules are under test) and its clients."""
    log = tmp_path_factory.mktemp("strict") / "proxy.jsonl"
    proc, url = start_proxy(moto_endpoint, 0.0, log, extra=("--timing", "off"))
    try:
        yield {"log": log, **clients(url)}
    finally:
        stop(proc)


def refused(call: Callable[[], Any], code: str, message: str | None = None) -> str:
    with pytest.raises(ClientError) as exc:
        call()
    response = exc.value.response
    assert (response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]) == (code, 400), response
    if message is not None:
        assert response["Error"]["Message"] == message
    return str(response["Error"]["Message"])


def launch(ec2: Any, seeded: dict[str, Any], tags: dict[str, str], imds: bool = False, **extra: Any) -> str:
    spec = [{"Key": k, "Value": v} for k, v in tags.items()]
    args: dict[str, Any] = {
        "ImageId": seeded["amiIds"]["newer"], "InstanceType": "t3.micro", "MinCount": 1, "MaxCount": 1,
        "SubnetId": seeded["subnetId"], **extra,
    }
    if spec:
        args["TagSpecifications"] = [{"ResourceType": "instance", "Tags": spec}, {"ResourceType": "volume", "Tags": spec}]
    if imds:
        args["MetadataOptions"] = {"HttpTokens": "required", "InstanceMetadataTags": "enabled"}
    return str(ec2.run_instances(**args)["Instances"][0]["InstanceId"])


# --- EC2 -------------------------------------------------------------------------------


def test_instance_metadata_tags_refuse_slash_keys_and_log_the_refusal(layer: dict[str, Any], seeded: dict[str, Any]) -> None:
    ec2 = layer["ec2"]
    refused(
        lambda: launch(ec2, seeded, OPERATOR_TAGS, imds=True), "InvalidParameterValue",
        "'featureenv.io/cluster' is not a valid tag key. Tag keys must match pattern ([0-9a-zA-Z\\-_+=,.@:]{1,255}), "
        "and must not be a reserved name ('.', '..', '_index')",
    )
    safe = {k.replace("/", ":"): v for k, v in OPERATOR_TAGS.items()}
    imds_instance = launch(ec2, seeded, safe, imds=True)
    plain_instance = launch(ec2, seeded, OPERATOR_TAGS)
    # The instance's own bootstrap tag (user data: aws ec2 create-tags) on each of them.
    bootstrap = [{"Key": "featureenv.io/bootstrap", "Value": "complete"}]
    refused(lambda: ec2.create_tags(Resources=[imds_instance], Tags=bootstrap), "InvalidParameterValue")
    refused(lambda: ec2.create_tags(Resources=[imds_instance], Tags=[{"Key": "_index", "Value": "x"}]),
            "InvalidParameterValue")
    ec2.create_tags(Resources=[imds_instance], Tags=[{"Key": "featureenv.io:bootstrap", "Value": "complete"}])
    ec2.create_tags(Resources=[plain_instance], Tags=bootstrap)
    described = ec2.describe_instances(InstanceIds=[plain_instance])["Reservations"][0]["Instances"][0]
    assert {t["Key"]: t["Value"] for t in described["Tags"]}["featureenv.io/bootstrap"] == "complete"

    entries = read_log(layer["log"])
    rejected = [e for e in entries if e.get("rejected")]
    assert rejected[0] == {**rejected[0], "service": "ec2", "action": "RunInstances", "status": 400, "fault": None,
                           "rejected": "InvalidParameterValue", "rule": "ec2.tags.imds-key"}
    forwarded = [e for e in entries if not e.get("rejected")]
    assert forwarded and not any({"rejected", "rule"} & set(e) for e in forwarded)
    # What the IAM test evaluates CreateTags on: the resource, the tags it writes and
    # those it had (looked up in moto just before).
    tagged = [e for e in forwarded if e["action"] == "CreateTags" and e["resource_ids"] == [plain_instance]][-1]
    assert {k: tagged[k] for k in ("region", "request_tags", "resource_tags")} == {
        "region": "us-east-1", "request_tags": {"featureenv.io/bootstrap": "complete"},
        "resource_tags": {plain_instance: OPERATOR_TAGS}}


def test_instances_launched_behind_the_layer_are_learned_from_describe(
    layer: dict[str, Any], seeded: dict[str, Any], aws: Any
) -> None:
    iid = launch(aws("ec2"), seeded, {"env": "x"}, imds=True)  # straight to moto
    bootstrap = [{"Key": "featureenv.io/bootstrap", "Value": "complete"}]
    layer["ec2"].describe_instances(InstanceIds=[iid])
    refused(lambda: layer["ec2"].create_tags(Resources=[iid], Tags=bootstrap), "InvalidParameterValue")


def test_ec2_tag_limits(layer: dict[str, Any], seeded: dict[str, Any]) -> None:
    ec2 = layer["ec2"]
    fifty = {f"k{i}": "v" for i in range(50)}
    launch(ec2, seeded, fifty)
    refused(lambda: launch(ec2, seeded, {**fifty, "k50": "v"}), "TagLimitExceeded")
    iid = launch(ec2, seeded, {"k" * 128: "v" * 256})
    refused(lambda: launch(ec2, seeded, {"k" * 129: "v"}), "InvalidParameterValue",
            "Tag key exceeds the maximum length of 128 characters")
    refused(lambda: ec2.create_tags(Resources=[iid], Tags=[{"Key": "k", "Value": "v" * 257}]), "InvalidParameterValue",
            "Tag value exceeds the maximum length of 256 characters")
    refused(lambda: launch(ec2, seeded, {"aws:owner": "me"}), "InvalidParameterValue",
            "Tag keys starting with 'aws:' are reserved for internal use")
    refused(lambda: ec2.create_tags(Resources=[iid], Tags=[{"Key": "k", "Value": "1"}, {"Key": "k", "Value": "2"}]),
            "InvalidParameterValue")


def test_client_token_length_and_idempotency(layer: dict[str, Any], seeded: dict[str, Any]) -> None:
    ec2 = layer["ec2"]
    refused(lambda: launch(ec2, seeded, {}, ClientToken="t" * 65), "InvalidParameterValue")
    token = "fe-" + uuid.uuid4().hex + "-0"
    tags = {**OPERATOR_TAGS, "featureenv.io/uid": token}
    first = launch(ec2, seeded, tags, ClientToken=token)
    again = launch(ec2, seeded, tags, ClientToken=token)
    assert again == first, "a retried launch with the same ClientToken is the same launch"
    ours = ec2.describe_instances(Filters=[{"Name": "tag:featureenv.io/uid", "Values": [token]}])["Reservations"]
    assert [i["InstanceId"] for r in ours for i in r["Instances"]] == [first], "moto launched once"
    refused(lambda: launch(ec2, seeded, {**tags, "extra": "1"}, ClientToken=token),
            "IdempotentParameterMismatch",
            "Arguments on this idempotent request are inconsistent with arguments used in previous request(s).")
    assert [e.get("replayed") for e in read_log(layer["log"]) if e["action"] == "RunInstances"].count(True) >= 1


def test_user_data_hop_limit_and_page_size(layer: dict[str, Any], seeded: dict[str, Any]) -> None:
    ec2 = layer["ec2"]
    launch(ec2, seeded, {}, UserData="x" * 16384)  # boto3 base64-encodes it
    refused(lambda: launch(ec2, seeded, {}, UserData="x" * 16385), "InvalidParameterValue",
            "User data is limited to 16384 bytes")
    launch(ec2, seeded, {}, MetadataOptions={"HttpPutResponseHopLimit": 64})
    refused(lambda: launch(ec2, seeded, {}, MetadataOptions={"HttpPutResponseHopLimit": 65}), "InvalidParameterValue")
    ec2.describe_instances(MaxResults=5)
    refused(lambda: ec2.describe_instances(MaxResults=4), "InvalidParameterValue")
    refused(lambda: ec2.describe_instances(MaxResults=5, InstanceIds=["i-0123456789abcdef0"]),
            "InvalidParameterCombination")


def test_stop_and_start_of_a_terminated_instance_are_refused(
    layer: dict[str, Any], seeded: dict[str, Any], aws: Any
) -> None:
    """moto stops and even starts again a terminated instance; AWS refuses both. The
    state comes from moto just before the call, so a termination behind the layer's
    back counts too."""
    ec2 = layer["ec2"]
    ours, behind, alive = (launch(ec2, seeded, OPERATOR_TAGS) for _ in range(3))
    ec2.terminate_instances(InstanceIds=[ours])
    aws("ec2").terminate_instances(InstanceIds=[behind])
    for iid in (ours, behind):
        refused(lambda iid=iid: ec2.stop_instances(InstanceIds=[iid]), "IncorrectInstanceState",
                f"This instance '{iid}' is not in a state from which it can be stopped.")
        refused(lambda iid=iid: ec2.start_instances(InstanceIds=[iid]), "IncorrectInstanceState",
                f"The instance '{iid}' is not in a state from which it can be started.")
        assert instance_state(aws("ec2"), iid) == "terminated", "moto never saw the calls"
    # One bad id refuses the whole request, as AWS does.
    refused(lambda: ec2.stop_instances(InstanceIds=[alive, ours]), "IncorrectInstanceState")
    assert instance_state(aws("ec2"), alive) == "running"
    stopped = ec2.stop_instances(InstanceIds=[alive])["StoppingInstances"][0]
    assert stopped["InstanceId"] == alive and instance_state(aws("ec2"), alive) == "stopped"
    ec2.start_instances(InstanceIds=[alive])
    entries = [e for e in read_log(layer["log"]) if e["action"] in ("StopInstances", "StartInstances")]
    assert {(e["action"], e.get("rule")) for e in entries if e.get("rejected")} == {
        ("StopInstances", "ec2.stop.state"), ("StartInstances", "ec2.start.state")}
    assert entries[-1]["instance_ids"] == [alive] and entries[-1]["resource_tags"] == {alive: OPERATOR_TAGS}
    # Without the layer, moto does both.
    aws("ec2").start_instances(InstanceIds=[behind])
    assert instance_state(aws("ec2"), behind) == "running"


def test_a_stopped_database_cannot_be_modified(layer: dict[str, Any]) -> None:
    """moto modifies a stopped DB instance; AWS refuses (whatever the timing: here off)."""
    rds = layer["rds"]
    db_id = "fe-stopped-" + uuid.uuid4().hex[:6]
    restore(rds, db_id, {"featureenv.io/cluster": "strict"})
    rds.stop_db_instance(DBInstanceIdentifier=db_id)
    refused(lambda: rds.modify_db_instance(DBInstanceIdentifier=db_id, MasterUserPassword="A" * 32,
                                           ApplyImmediately=True), "InvalidDBInstanceState",
            "You can't modify a stopped DB instance. Start the DB instance, and then modify it.")
    rds.start_db_instance(DBInstanceIdentifier=db_id)
    rds.modify_db_instance(DBInstanceIdentifier=db_id, MasterUserPassword="A" * 32, ApplyImmediately=True)
    entry = [e for e in read_log(layer["log"]) if e["action"] == "StopDBInstance"][-1]
    assert (entry["db_instance_id"], entry["snapshot_id"]) == (db_id, None)
    assert entry["resource_tags"][db_id]["featureenv.io/cluster"] == "strict", "looked up in moto"


# --- RDS -------------------------------------------------------------------------------


def restore(rds: Any, db_id: str, tags: dict[str, str] | None = None) -> Any:
    return rds.restore_db_instance_from_db_snapshot(
        DBInstanceIdentifier=db_id, DBSnapshotIdentifier="integration-db-2026-11-27", DBInstanceClass="db.t3.micro",
        Tags=[{"Key": k, "Value": v} for k, v in (tags or {}).items()],
    )


def test_rds_identifiers_and_tags(layer: dict[str, Any], aws: Any) -> None:
    rds = layer["rds"]
    for bad in ("1fe", "fe--x", "fe-", "fe_x"):
        refused(lambda: restore(rds, bad), "InvalidParameterValue",
                "The parameter DBInstanceIdentifier is not a valid identifier. Identifiers must begin with a letter; "
                "must contain only ASCII letters, digits, and hyphens; and must not end with a hyphen or contain two "
                "consecutive hyphens.")
    refused(lambda: restore(rds, "a" * 64), "InvalidParameterValue")
    db_id = "fe-strict-" + uuid.uuid4().hex[:8]
    refused(lambda: restore(rds, db_id, {"featureenv.io/snapshot": "rds:integration-db-2026-11-28-03-00"}),
            "InvalidParameterValue", 'Tag values cannot start with the reserved prefix "rds:".')
    refused(lambda: restore(rds, db_id, {"aws:x": "v"}), "InvalidParameterValue")
    refused(lambda: restore(rds, db_id, {"k": "a,b"}), "InvalidParameterValue")
    arn = restore(rds, db_id, {"featureenv.io/cluster": "strict", "featureenv.io/snapshot": "integration-db-2026-11-27"})[
        "DBInstance"]["DBInstanceArn"]
    rds.add_tags_to_resource(ResourceName=arn, Tags=[{"Key": "featureenv.io/claimed-by", "Value": "uid-1"}])
    rds.describe_db_instances(DBInstanceIdentifier=db_id)  # the layer learns the 3 keys
    many = [{"Key": f"k{i}", "Value": "v"} for i in range(48)]
    assert "50 tags" in refused(lambda: rds.add_tags_to_resource(ResourceName=arn, Tags=many), "InvalidParameterValue")
    rds.add_tags_to_resource(ResourceName=arn, Tags=many[:47])
    refused(lambda: rds.add_tags_to_resource(ResourceName=db_id, Tags=[{"Key": "k", "Value": "v"}]),
            "InvalidParameterValue", f"Invalid resource name: {db_id}")


def test_master_password_rules_follow_the_engine(layer: dict[str, Any], aws: Any) -> None:
    rds, direct = layer["rds"], aws("rds")
    db_id = "strict-mysql-" + uuid.uuid4().hex[:6]
    direct.create_db_instance(DBInstanceIdentifier=db_id, Engine="mysql", DBInstanceClass="db.t3.micro",
                              MasterUsername="admin", MasterUserPassword="initial-pw1", AllocatedStorage=20)
    rds.describe_db_instances(DBInstanceIdentifier=db_id)  # the layer learns the engine

    def modify(password: str) -> Any:
        return rds.modify_db_instance(DBInstanceIdentifier=db_id, MasterUserPassword=password, ApplyImmediately=True)

    modify("A" * 32)  # what the operator generates
    refused(lambda: modify("A" * 42), "InvalidParameterValue",
            "The parameter MasterUserPassword is not a valid password because it is longer than 41 characters.")
    refused(lambda: modify("short"), "InvalidParameterValue")
    for bad in ("pass/word1", 'pass"word1', "pass@word1", "pass word1"):
        refused(lambda: modify(bad), "InvalidParameterValue",
                "The parameter MasterUserPassword is not a valid password. Only printable ASCII characters besides "
                "'/', '@', '\"', ' ' may be used.")


def test_rds_delete_and_describe_parameters(layer: dict[str, Any]) -> None:
    rds = layer["rds"]
    refused(lambda: rds.delete_db_instance(DBInstanceIdentifier="integration-db"), "InvalidParameterCombination",
            "FinalDBSnapshotIdentifier is required unless SkipFinalSnapshot is specified.")
    rds.describe_db_instances(MaxRecords=20)
    refused(lambda: rds.describe_db_instances(MaxRecords=10), "InvalidParameterValue")
    refused(lambda: rds.describe_db_snapshots(DBSnapshotIdentifier="rds:integration-db-2026-11-28-03-00"),
            "InvalidParameterCombination")
    rds.describe_db_snapshots(DBSnapshotIdentifier="integration-db-2026-11-27")


# --- SSM, ECR ------------------------------------------------------------------------------


def test_parameter_rules(layer: dict[str, Any]) -> None:
    ssm = layer["ssm"]
    base = "/featureenv/strict/" + uuid.uuid4().hex[:8]

    def put(name: str, value: str = "v", **extra: Any) -> Any:
        return ssm.put_parameter(Name=name, Value=value, Type="SecureString", **extra)

    put(base + "/database", json.dumps({"password": "A" * 32}),
        Tags=[{"Key": "featureenv.io/cluster", "Value": "strict"}])
    refused(lambda: put(base + "/data base"), "ValidationException")
    refused(lambda: put("featureenv/relative/name"), "ValidationException")
    deep = base + "".join(f"/l{i}" for i in range(13))
    refused(lambda: put(deep), "HierarchyLevelLimitExceededException")
    put(deep.rsplit("/", 1)[0])
    refused(lambda: put(base + "/" + "n" * 1000), "ValidationException")
    put(base + "/big", "x" * 4096)
    message = refused(lambda: put(base + "/bigger", "x" * 4097), "ValidationException")
    assert message.startswith("Standard tier parameters support a maximum parameter value of 4096 characters.")
    refused(lambda: put(base + "/ref", "{{ssm:/other}}"), "ValidationException")
    refused(lambda: put(base + "/t", Tags=[{"Key": "k", "Value": "a,b"}]), "ValidationException")
    refused(lambda: put(base + "/many", Tags=[{"Key": f"k{i}", "Value": "v"} for i in range(51)]), "TooManyTagsError")
    ssm.add_tags_to_resource(ResourceType="Parameter", ResourceId=base + "/database",
                             Tags=[{"Key": f"k{i}", "Value": "v"} for i in range(49)])
    refused(lambda: ssm.add_tags_to_resource(ResourceType="Parameter", ResourceId=base + "/database",
                                             Tags=[{"Key": "one-too-many", "Value": "v"}]), "TooManyTagsError")
    assert ssm.get_parameters_by_path(Path=base, Recursive=True, MaxResults=10)["Parameters"]
    refused(lambda: ssm.get_parameters_by_path(Path="featureenv"), "ValidationException")
    refused(lambda: ssm.get_parameters_by_path(Path=base, MaxResults=11), "ValidationException")


def unvalidated(client: Any) -> Any:
    """The same client without boto3's own checks (the operator's Rust SDK makes none)."""
    import boto3
    from botocore.config import Config

    return boto3.client(client.meta.service_model.service_name, endpoint_url=client.meta.endpoint_url,
                        region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing",
                        config=Config(retries={"total_max_attempts": 1}, parameter_validation=False))


def send_command(ssm: Any, iid: str, **extra: Any) -> Any:
    """SendCommand as the operator sends it (extra fields replace its own)."""
    args = {"DocumentName": "AWS-RunShellScript", "InstanceIds": [iid],
            "Parameters": {"commands": ["#!/bin/bash\necho update\n"]},
            "Comment": "featureenv: update services of team-a/my-env", "TimeoutSeconds": 1200, **extra}
    return ssm.send_command(**args)["Command"]


def test_send_command_model_and_parameters(layer: dict[str, Any], seeded: dict[str, Any]) -> None:
    ssm = unvalidated(layer["ssm"])
    iid = launch(layer["ec2"], seeded, OPERATOR_TAGS)
    assert send_command(ssm, iid)["InstanceIds"] == [iid]
    refused(lambda: send_command(ssm, iid, TimeoutSeconds=29), "ValidationException",
            "1 validation error detected: Value '29' at 'timeoutSeconds' failed to satisfy constraint: Member must "
            "have value greater than or equal to 30")
    refused(lambda: send_command(ssm, iid, Comment="c" * 101), "ValidationException")
    refused(lambda: send_command(ssm, "i-bad"), "ValidationException")
    refused(lambda: send_command(ssm, iid, InstanceIds=[iid] * 51), "ValidationException")
    refused(lambda: send_command(ssm, iid, DocumentName="no"), "ValidationException")
    refused(lambda: send_command(ssm, iid, Parameters={"commands": ["x"], "timeout": ["5"]}), "InvalidParameters",
            "You must specify values for all required parameters in the Amazon Web Services Systems Manager document "
            "(SSM document). You can only supply values to parameters defined in the SSM document.")
    send_command(ssm, iid, Parameters={"commands": ["x"], "executionTimeout": ["1200"]})


def test_send_command_targets_must_exist_and_not_be_terminated(
    layer: dict[str, Any], seeded: dict[str, Any], aws: Any
) -> None:
    ssm, ec2 = layer["ssm"], layer["ec2"]
    stopped, gone = launch(ec2, seeded, OPERATOR_TAGS), launch(ec2, seeded, OPERATOR_TAGS)
    behind = launch(aws("ec2"), seeded, OPERATOR_TAGS)  # straight to moto: the layer never saw it
    ec2.stop_instances(InstanceIds=[stopped])
    send_command(ssm, stopped)  # stopped is a valid state: the command waits for delivery
    send_command(ssm, behind)
    aws("ec2").terminate_instances(InstanceIds=[gone, behind])  # behind the layer's back
    for iid in (gone, behind, "i-0123456789abcdef0"):
        refused(lambda iid=iid: send_command(ssm, iid), "InvalidInstanceId",
                f"Instances [[{iid}]] not in a valid state for account 123456789012")
    entries = [e for e in read_log(layer["log"]) if e["action"] == "SendCommand"]
    assert entries[-1] == {**entries[-1], "status": 400, "rejected": "InvalidInstanceId",
                           "rule": "ssm.send-command.instance-state", "instance_tags": {}}


def test_send_command_reaches_only_its_instances_and_is_logged_for_iam(
    layer: dict[str, Any], seeded: dict[str, Any], aws: Any
) -> None:
    ssm = layer["ssm"]
    ours, other = launch(layer["ec2"], seeded, OPERATOR_TAGS), launch(layer["ec2"], seeded, {"team": "x"})
    command = send_command(ssm, ours)
    # AWS's answer: what was sent, nothing run yet.
    assert (command["InstanceIds"], command["Targets"], command["Status"], command["TargetCount"]) == (
        [ours], [], "Pending", 1)
    # moto's own record (what the boot simulator reads) names that instance alone.
    recorded = {c["CommandId"]: c for c in aws("ssm").list_commands()["Commands"]}[command["CommandId"]]
    assert recorded["InstanceIds"] == [ours] and other not in recorded["InstanceIds"]
    entry = [e for e in read_log(layer["log"]) if e["action"] == "SendCommand" and e["status"] == 200][-1]
    assert {k: entry[k] for k in ("region", "document", "instance_ids", "instance_tags")} == {
        "region": "us-east-1", "document": "AWS-RunShellScript", "instance_ids": [ours],
        "instance_tags": {ours: OPERATOR_TAGS}}


def test_ecr_describe_images(layer: dict[str, Any], seeded: dict[str, Any]) -> None:
    ecr = layer["ecr"]
    found = ecr.describe_images(registryId="123456789012", repositoryName="payments", imageIds=[{"imageTag": "pr-123"}])
    assert found["imageDetails"][0]["imageDigest"] == seeded["ecr"]["payments"]["digests"]["pr-123"]
    refused(lambda: ecr.describe_images(repositoryName="Payments"), "InvalidParameterException")
    refused(lambda: ecr.describe_images(repositoryName="payments", imageIds=[{"imageTag": "latest"}], maxResults=5),
            "InvalidParameterException")



def test_ecr_batch_get_image(layer: dict[str, Any], seeded: dict[str, Any]) -> None:
    """A pull's manifest read passes with the manifest moto holds; a malformed one does not reach moto."""
    ecr = layer["ecr"]
    digest = seeded["ecr"]["payments"]["digests"]["pr-123"]
    got = ecr.batch_get_image(registryId="123456789012", repositoryName="payments", imageIds=[{"imageDigest": digest}])
    assert [i["imageId"]["imageDigest"] for i in got["images"]] == [digest]
    assert len(json.loads(got["images"][0]["imageManifest"])["layers"]) == 4
    refused(lambda: ecr.batch_get_image(repositoryName="Payments", imageIds=[{"imageDigest": digest}]),
            "InvalidParameterException")

# --- --no-strict -----------------------------------------------------------------------------


def test_no_strict_passes_everything_through(moto_endpoint: str, seeded: dict[str, Any], tmp_path: Path) -> None:
    log = tmp_path / "proxy.jsonl"
    proc, url = start_proxy(moto_endpoint, 0.0, log, extra=("--no-strict", "--timing", "off"))
    try:
        cs = clients(url)
        iid = launch(cs["ec2"], seeded, OPERATOR_TAGS, imds=True, ClientToken="t" * 65, UserData="x" * 20000)
        cs["ec2"].create_tags(Resources=[iid], Tags=[{"Key": "featureenv.io/bootstrap", "Value": "complete"}])
        token = "nostrict-" + uuid.uuid4().hex
        twice = {launch(cs["ec2"], seeded, {}, ClientToken=token) for _ in range(2)}
        assert len(twice) == 2, "moto's own behaviour: no idempotency without the strict layer"
        db_id = "fe-nostrict-" + uuid.uuid4().hex[:6]
        restore(cs["rds"], db_id, {"featureenv.io/snapshot": "rds:integration-db-2026-11-28-03-00"})
        cs["rds"].modify_db_instance(DBInstanceIdentifier=db_id, MasterUserPassword="p@ss word", ApplyImmediately=True)
        cs["ssm"].put_parameter(Name="/nostrict" + "".join(f"/l{i}" for i in range(16)), Value="x" * 5000,
                                Type="String")
        cs["ec2"].terminate_instances(InstanceIds=[iid])
        sent = cs["ssm"].send_command(DocumentName="AWS-RunShellScript", InstanceIds=[iid],
                                      Parameters={"commands": ["x"], "unknown": ["y"]})["Command"]
        assert sent["InstanceIds"] == [iid], "moto's record is corrected in every mode"
    finally:
        stop(proc)
    entries = read_log(log)
    assert entries and not any("rejected" in e for e in entries)
    assert all(e["status"] == 200 for e in entries), entries


def test_environment_sets_the_defaults(
    moto_endpoint: str, seeded: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # tests/support/stack.rs starts the proxy with fixed flags; the environment chooses.
    monkeypatch.setenv("FEATUREENV_AWS_STRICT", "0")
    monkeypatch.setenv("FEATUREENV_AWS_TIMING", "off")
    proc, url = start_proxy(moto_endpoint, 0.0, tmp_path / "proxy.jsonl")
    try:
        ec2 = clients(url)["ec2"]
        iid = launch(ec2, seeded, OPERATOR_TAGS, imds=True)
        assert instance_state(ec2, iid) == "running"
    finally:
        stop(proc)


def instance_state(ec2: Any, iid: str) -> str:
    return str(ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["State"]["Name"])


def test_rules_are_listed() -> None:
    out = subprocess.run([sys.executable, str(REPO / "hack/fault_proxy.py"), "--list-rules"], check=True,
                         capture_output=True, text=True).stdout
    assert out.startswith("| rule |") and "`ec2.tags.imds-key`" in out
