"""Pure tests of hack/aws_rules.py (each rule on requests shaped like the operator's) and
of the timing presets in hack/aws_world.py. No moto, no proxy."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

import aws_rules
from aws_rules import Call, NothingObserved, Violation, check
from aws_world import FAST, REALISTIC, instance_matches, Filter, timing_for

REPO = Path(__file__).resolve().parents[2]
# Tag keys the operator writes (src/cloud/mod.rs `tag`, src/controller/environment/mod.rs).
OPERATOR_INSTANCE_TAGS = {
    "Name": "featureenv-default-payments-pr-123",
    "featureenv.io/cluster": "dev",
    "featureenv.io/environment": "default/payments-pr-123",
    "featureenv.io/uid": "0b3c4f8e-1d2a-4c5b-9e8f-7a6b5c4d3e2f",
}


def query(action: str, service: str = "ec2", **params: str) -> Call:
    return Call(service, action, "us-east-1", dict(params))


def run_instances(tags: dict[str, str], imds_tags: bool = False, **extra: str) -> Call:
    params = {"ImageId": "ami-1", "MinCount": "1", "MaxCount": "1", **extra}
    if imds_tags:
        params["MetadataOptions.InstanceMetadataTags"] = "enabled"
    for n, resource in enumerate(("instance", "volume"), start=1):
        params[f"TagSpecification.{n}.ResourceType"] = resource
        for m, (k, v) in enumerate(tags.items(), start=1):
            params[f"TagSpecification.{n}.Tag.{m}.Key"] = k
            params[f"TagSpecification.{n}.Tag.{m}.Value"] = v
    return query("RunInstances", **params)


def create_tags(resource: str, tags: list[tuple[str, str]]) -> Call:
    params = {"ResourceId.1": resource}
    for m, (k, v) in enumerate(tags, start=1):
        params[f"Tag.{m}.Key"] = k
        params[f"Tag.{m}.Value"] = v
    return query("CreateTags", **params)


def rds(action: str, tags: list[tuple[str, str]] = (), **params: str) -> Call:  # type: ignore[assignment]
    fields = dict(params)
    for n, (k, v) in enumerate(tags, start=1):
        fields[f"Tags.Tag.{n}.Key"] = k
        fields[f"Tags.Tag.{n}.Value"] = v
    return Call("rds", action, "us-east-1", fields)


def ssm(action: str, **doc: Any) -> Call:
    return Call("ssm", action, "us-east-1", {}, doc, json_protocol=True)


class Seen(NothingObserved):
    """What the layer has seen; a state "pending (launch)" is `pending` after the launch."""

    def __init__(self, imds: set[str] = frozenset(), engines: dict[str, str] | None = None,
                 db_tags: dict[str, set[str]] | None = None, param_tags: dict[str, set[str]] | None = None,
                 states: dict[str, str] | None = None) -> None:
        self.imds, self.engines = set(imds), engines or {}
        self.db_tags, self.param_tags = db_tags or {}, param_tags or {}
        self.states = states or {}

    def instance_metadata_tags(self, instance_id: str) -> bool:
        return instance_id in self.imds

    def instance_state(self, instance_id: str) -> str | None:
        state = self.states.get(instance_id)
        return "pending" if state == "pending (launch)" else state

    def db_engine(self, db_id: str) -> str | None:
        return self.engines.get(db_id)

    def db_tag_keys(self, db_id: str) -> set[str]:
        return self.db_tags.get(db_id, set())

    def parameter_tag_keys(self, name: str) -> set[str]:
        return self.param_tags.get(name, set())

    def instance_launch_pending(self, instance_id: str) -> bool:
        return self.states.get(instance_id) == "pending (launch)"


NONE = NothingObserved()


def violated(call: Call, seen: Any = NONE) -> tuple[str, str, str] | None:
    v = check(call, seen)
    return (v.code, v.rule, v.message) if v else None


# --- EC2 -------------------------------------------------------------------------------


def test_operator_launch_tags_break_the_instance_metadata_tag_rule() -> None:
    v = check(run_instances(OPERATOR_INSTANCE_TAGS, imds_tags=True), NONE)
    assert v == Violation(
        "InvalidParameterValue",
        "'featureenv.io/cluster' is not a valid tag key. Tag keys must match pattern ([0-9a-zA-Z\\-_+=,.@:]{1,255}), "
        "and must not be a reserved name ('.', '..', '_index')",
        "ec2.tags.imds-key",
    )
    # The same tags without metadata tags, or IMDS-safe keys with them, are fine.
    assert check(run_instances(OPERATOR_INSTANCE_TAGS), NONE) is None
    safe = {k.replace("/", "_"): v for k, v in OPERATOR_INSTANCE_TAGS.items()}
    assert check(run_instances(safe, imds_tags=True), NONE) is None


@pytest.mark.parametrize("key", ["a b", "a/b", ".", "..", "_index", "ü", "a;b"])
def test_imds_keys_outside_the_pattern_are_refused(key: str) -> None:
    assert violated(run_instances({key: "v"}, imds_tags=True))[:2] == ("InvalidParameterValue", "ec2.tags.imds-key")


def test_imds_rule_applies_to_instance_tags_and_to_create_tags_on_such_instances() -> None:
    call = query("RunInstances", **{
        "MetadataOptions.InstanceMetadataTags": "enabled",
        "TagSpecification.1.ResourceType": "volume", "TagSpecification.1.Tag.1.Key": "a/b",
        "TagSpecification.1.Tag.1.Value": "v",
    })
    assert check(call, NONE) is None, "volume tags are not in instance metadata"
    bootstrap = create_tags("i-1", [("featureenv.io/bootstrap", "complete")])
    assert violated(bootstrap, Seen(imds={"i-1"}))[1] == "ec2.tags.imds-key"
    assert check(bootstrap, Seen(imds={"i-2"})) is None


def test_ec2_tag_limits() -> None:
    fifty = {f"k{i}": "v" for i in range(50)}
    assert check(run_instances(fifty), NONE) is None
    assert violated(run_instances({**fifty, "k50": "v"}))[:2] == ("TagLimitExceeded", "ec2.tags.count")
    assert check(run_instances({"k" * 128: "v" * 256}), NONE) is None
    assert violated(run_instances({"k" * 129: "v"})) == (
        "InvalidParameterValue", "ec2.tags.key-length", "Tag key exceeds the maximum length of 128 characters")
    assert violated(run_instances({"k": "v" * 257})) == (
        "InvalidParameterValue", "ec2.tags.value-length", "Tag value exceeds the maximum length of 256 characters")
    assert violated(run_instances({"AWS:x": "v"}))[2] == "Tag keys starting with 'aws:' are reserved for internal use"
    assert violated(create_tags("i-1", [("aws:x", "v")]))[2] == (
        "Value ( aws:x ) for parameter key is invalid. Tag keys starting with 'aws:' are reserved for internal use")
    assert violated(create_tags("i-1", [("k", "1"), ("k", "2")]))[1] == "ec2.tags.unique-key"
    # EC2 itself allows any character in tags (only instance metadata restricts keys).
    assert check(create_tags("i-1", [("owner name (€)", "a/b c#d")]), NONE) is None


def test_client_token_user_data_and_hop_limit() -> None:
    assert check(run_instances({}, ClientToken="t" * 64), NONE) is None
    assert violated(run_instances({}, ClientToken="t" * 65))[:2] == ("InvalidParameterValue", "ec2.run.client-token")
    assert violated(run_instances({}, ClientToken="tök"))[1] == "ec2.run.client-token"
    ok = base64.b64encode(b"x" * 16384).decode()
    too_big = base64.b64encode(b"x" * 16385).decode()
    assert check(run_instances({}, UserData=ok), NONE) is None
    assert violated(run_instances({}, UserData=too_big)) == (
        "InvalidParameterValue", "ec2.run.user-data", "User data is limited to 16384 bytes")
    assert violated(run_instances({}, UserData="not base64!"))[2] == "Invalid BASE64 encoding of user data."
    for good in ("1", "64"):
        assert check(run_instances({}, **{"MetadataOptions.HttpPutResponseHopLimit": good}), NONE) is None
    for bad in ("0", "65", "x"):
        assert violated(run_instances({}, **{"MetadataOptions.HttpPutResponseHopLimit": bad}))[1] == "ec2.run.hop-limit"


def test_describe_instances_page_size() -> None:
    assert check(query("DescribeInstances", MaxResults="1000"), NONE) is None
    assert violated(query("DescribeInstances", MaxResults="4"))[:2] == ("InvalidParameterValue", "ec2.describe.max-results")
    assert violated(query("DescribeInstances", MaxResults="1001"))[1] == "ec2.describe.max-results"
    assert violated(query("DescribeInstances", MaxResults="5", **{"InstanceId.1": "i-1"})) == (
        "InvalidParameterCombination", "ec2.describe.max-results",
        "The parameter instancesSet cannot be used with the parameter maxResults")


OURS = "i-0aaaaaaaaaaaaaaaa"
OTHER = "i-0bbbbbbbbbbbbbbbb"


def stop_start(action: str, *ids: str) -> Call:
    """StopInstances / StartInstances as the operator sends them (one id, nothing else)."""
    return query(action, **{f"InstanceId.{n}": iid for n, iid in enumerate(ids, start=1)})


@pytest.mark.parametrize("state", ["running", "pending", "stopping", "stopped", None])
def test_stop_of_an_instance_that_has_run_passes(state: str | None) -> None:
    """`pending` here is a start's (the instance has been running); stopping and stopped
    are accepted and stay as they are; an unknown state is moto's to answer."""
    assert check(stop_start("StopInstances", OURS), Seen(states={OURS: state} if state else {})) is None


@pytest.mark.parametrize("state", ["shutting-down", "terminated"])
def test_stop_of_a_terminated_instance_is_refused(state: str) -> None:
    seen = Seen(states={OTHER: "running", OURS: state})
    assert violated(stop_start("StopInstances", OTHER, OURS), seen) == (
        "IncorrectInstanceState", "ec2.stop.state", f"This instance '{OURS}' is not in a state from which it can be stopped.")


def test_stop_of_an_instance_still_pending_after_its_launch_is_refused() -> None:
    assert violated(stop_start("StopInstances", OURS), Seen(states={OURS: "pending (launch)"})) == (
        "IncorrectInstanceState", "ec2.stop.state",
        f"Instance '{OURS}' cannot be stopped as it has never reached the 'running' state.")


@pytest.mark.parametrize("state", ["stopped", "running", "pending", "pending (launch)", None])
def test_start_of_a_stopped_running_or_pending_instance_passes(state: str | None) -> None:
    assert check(stop_start("StartInstances", OURS), Seen(states={OURS: state} if state else {})) is None


@pytest.mark.parametrize("state", ["stopping", "shutting-down", "terminated"])
def test_start_of_a_stopping_or_terminated_instance_is_refused(state: str) -> None:
    assert violated(stop_start("StartInstances", OURS), Seen(states={OURS: state})) == (
        "IncorrectInstanceState", "ec2.start.state", f"The instance '{OURS}' is not in a state from which it can be started.")


def test_stop_and_start_rules_apply_to_their_own_action_only() -> None:
    seen = Seen(states={OURS: "stopping"})
    assert check(stop_start("StopInstances", OURS), seen) is None
    assert check(stop_start("TerminateInstances", OURS), Seen(states={OURS: "terminated"})) is None


# --- RDS -------------------------------------------------------------------------------


def restore(db_id: str, tags: list[tuple[str, str]] = ()) -> Call:  # type: ignore[assignment]
    return rds("RestoreDBInstanceFromDBSnapshot", tags, DBInstanceIdentifier=db_id, DBSnapshotIdentifier="s")


@pytest.mark.parametrize("db_id", ["a", "fe-integration-0123456789-0", "A-b-C", "a" * 63])
def test_valid_rds_identifiers_pass(db_id: str) -> None:
    assert check(restore(db_id), NONE) is None


@pytest.mark.parametrize("db_id", ["", "1a", "-a", "a-", "a--b", "a_b", "a.b", "é"])
def test_invalid_rds_identifiers_are_refused_with_rds_wording(db_id: str) -> None:
    assert violated(restore(db_id)) == (
        "InvalidParameterValue", "rds.db-identifier",
        "The parameter DBInstanceIdentifier is not a valid identifier. Identifiers must begin with a letter; must "
        "contain only ASCII letters, digits, and hyphens; and must not end with a hyphen or contain two consecutive "
        "hyphens.",
    )


def test_rds_identifier_length() -> None:
    assert violated(restore("a" * 64))[2] == (
        "The parameter DBInstanceIdentifier is not a valid identifier because it is longer than 63 characters.")


def test_rds_tags() -> None:
    pool_tags = [("featureenv.io/cluster", "dev"), ("featureenv.io/pool", "integration"),
                 ("featureenv.io/snapshot", "integration-db-2026-11-27")]
    assert check(restore("fe-a-1", pool_tags), NONE) is None
    # The automated snapshot's id as a tag value: RDS reserves the rds: prefix for values too.
    automated = [("featureenv.io/snapshot", "rds:integration-db-2026-11-28-03-00")]
    assert violated(restore("fe-a-1", automated)) == (
        "InvalidParameterValue", "rds.tags", 'Tag values cannot start with the reserved prefix "rds:".')
    assert violated(restore("fe-a-1", [("rds:x", "v")]))[2] == 'Tag keys cannot start with the reserved prefix "rds:".'
    assert violated(restore("fe-a-1", [("k", "a,b")]))[2].startswith("Tag values may only contain")
    assert violated(restore("fe-a-1", [("k#", "v")]))[2].startswith("Tag keys may only contain")
    assert violated(restore("fe-a-1", [("k" * 129, "v")]))[1] == "rds.tags"
    assert violated(restore("fe-a-1", [("k", "v" * 257)]))[1] == "rds.tags"
    assert check(restore("fe-a-1", [("k" * 128, "ünïcödé v@l:u=e+/ " * 10)]), NONE) is None
    many = [(f"k{i}", "v") for i in range(51)]
    assert violated(restore("fe-a-1", many))[:2] == ("InvalidParameterValue", "rds.tags.count")


def test_rds_add_tags_counts_known_tags_and_needs_an_arn() -> None:
    arn = "arn:aws:rds:us-east-1:123456789012:db:fe-a-1"
    claim = rds("AddTagsToResource", [("featureenv.io/claimed-by", "uid"), ("featureenv.io/environment", "ns/n")],
                ResourceName=arn)
    assert check(claim, NONE) is None
    full = Seen(db_tags={"fe-a-1": {f"k{i}" for i in range(49)}})
    assert violated(claim, full)[1] == "rds.tags.count"
    assert violated(rds("AddTagsToResource", [("k", "v")], ResourceName=""))[:2] == (
        "InvalidParameterValue", "rds.resource-name")


@pytest.mark.parametrize("password,engine,ok", [
    ("A" * 32, None, True),              # what the operator generates: 32 alphanumerics
    ("A" * 32, "oracle-ee", False),      # Oracle: 8..30
    ("A" * 42, "mysql", False),          # MySQL: 8..41
    ("A" * 128, "postgres", True),
    ("A" * 129, "postgres", False),
    ("A" * 7, None, False),
    ("Abcdefg/1", None, False),
    ('Abcdefg"1', None, False),
    ("Abcdefg@1", None, False),
    ("Abcdefg 1", None, False),
    ("Abcdefg\t1", None, False),
    ("Ab!#$%^&*()-_=+[]{}<>?~", None, True),
])
def test_master_password(password: str, engine: str | None, ok: bool) -> None:
    call = rds("ModifyDBInstance", DBInstanceIdentifier="db1", MasterUserPassword=password, ApplyImmediately="true")
    v = check(call, Seen(engines={"db1": engine} if engine else {}))
    assert (v is None) == ok, v
    if v:
        assert (v.code, v.rule) == ("InvalidParameterValue", "rds.master-password")


def test_master_password_wording() -> None:
    call = rds("ModifyDBInstance", DBInstanceIdentifier="db1", MasterUserPassword="p@ssword1")
    assert violated(call)[2] == ("The parameter MasterUserPassword is not a valid password. Only printable ASCII "
                                 "characters besides '/', '@', '\"', ' ' may be used.")


def test_delete_db_instance_final_snapshot() -> None:
    operator = rds("DeleteDBInstance", DBInstanceIdentifier="db1", SkipFinalSnapshot="true",
                   DeleteAutomatedBackups="true")
    assert check(operator, NONE) is None
    assert violated(rds("DeleteDBInstance", DBInstanceIdentifier="db1")) == (
        "InvalidParameterCombination", "rds.delete.final-snapshot",
        "FinalDBSnapshotIdentifier is required unless SkipFinalSnapshot is specified.")
    both = rds("DeleteDBInstance", DBInstanceIdentifier="db1", SkipFinalSnapshot="true", FinalDBSnapshotIdentifier="f")
    assert violated(both)[0] == "InvalidParameterCombination"
    assert check(rds("DeleteDBInstance", DBInstanceIdentifier="db1", FinalDBSnapshotIdentifier="final-1"), NONE) is None
    assert violated(rds("DeleteDBInstance", DBInstanceIdentifier="db1", FinalDBSnapshotIdentifier="f--1"))[0] == (
        "InvalidParameterValue")


def test_rds_describe_page_size_and_automated_snapshots() -> None:
    for action in ("DescribeDBInstances", "DescribeDBSnapshots"):
        assert check(rds(action, MaxRecords="20"), NONE) is None
        assert check(rds(action, MaxRecords="100"), NONE) is None
        assert violated(rds(action, MaxRecords="19"))[1] == "rds.describe.max-records"
        assert violated(rds(action, MaxRecords="101"))[1] == "rds.describe.max-records"
    automated = rds("DescribeDBSnapshots", DBSnapshotIdentifier="rds:integration-db-2026-11-28-03-00")
    assert violated(automated)[:2] == ("InvalidParameterCombination", "rds.describe-snapshots.automated")
    assert check(rds("DescribeDBSnapshots", DBSnapshotIdentifier="rds:x", SnapshotType="automated"), NONE) is None


# --- SSM -------------------------------------------------------------------------------


def put(name: str, value: str = "v", **doc: Any) -> Call:
    return ssm("PutParameter", Name=name, Value=value, Type="SecureString", Overwrite=False, **doc)


def test_operator_parameter_passes() -> None:
    value = json.dumps({"host": "h", "port": "5432", "username": "u", "password": "A" * 32,
                        "dbInstanceIdentifier": "fe-integration-0123456789-0"})
    tags = [{"Key": "featureenv.io/cluster", "Value": "dev"}, {"Key": "featureenv.io/environment", "Value": "ns/n"}]
    assert check(put("/featureenv/dev/0b3c4f8e-1d2a-4c5b-9e8f-7a6b5c4d3e2f/database", value, Tags=tags), NONE) is None


@pytest.mark.parametrize("name", ["/a b", "a/b", "/a//b", "/a/", "/a/b$", "/ä"])
def test_parameter_names(name: str) -> None:
    assert violated(put(name))[:2] == ("ValidationException", "ssm.name.chars")


def test_parameter_name_length_counts_the_arn() -> None:
    prefix = len("arn:aws:ssm:us-east-1:123456789012:parameter")
    fits = "/" + "a" * (1011 - prefix - 1)
    assert check(put(fits), NONE) is None
    assert violated(put(fits + "a"))[:2] == ("ValidationException", "ssm.name.length")


def test_parameter_hierarchy_depth() -> None:
    fifteen = "/" + "/".join(f"l{i}" for i in range(15))
    assert check(put(fifteen), NONE) is None
    assert violated(put(fifteen + "/x"))[:2] == ("HierarchyLevelLimitExceededException", "ssm.name.depth")


def test_parameter_value() -> None:
    assert check(put("/a", "x" * 4096), NONE) is None
    assert violated(put("/a", "x" * 4097))[:2] == ("ValidationException", "ssm.value.size")
    assert check(put("/a", "x" * 8192, Tier="Advanced"), NONE) is None
    assert violated(put("/a", "x" * 8193, Tier="Advanced"))[1] == "ssm.value.size"
    assert violated(put("/a", "pre {{ssm:/other}} post"))[1] == "ssm.value.no-reference"
    assert check(put("/a", '{"a": {"b": 1}}'), NONE) is None


def test_parameter_tags() -> None:
    bad = put("/a", Tags=[{"Key": "ok", "Value": "a,b"}])
    assert violated(bad) == (
        "ValidationException", "ssm.tags",
        "1 validation error detected: Value 'a,b' at 'tags.1.member.value' failed to satisfy constraint: Member must "
        "satisfy regular expression pattern: ^([\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*)$")
    assert violated(put("/a", Tags=[{"Key": "k" * 129, "Value": "v"}]))[1] == "ssm.tags"
    many = [{"Key": f"k{i}", "Value": "v"} for i in range(51)]
    assert violated(put("/a", Tags=many))[:2] == ("TooManyTagsError", "ssm.tags.count")
    add = ssm("AddTagsToResource", ResourceType="Parameter", ResourceId="/a", Tags=[{"Key": "new", "Value": "v"}])
    assert check(add, Seen(param_tags={"/a": {f"k{i}" for i in range(49)}})) is None
    assert violated(add, Seen(param_tags={"/a": {f"k{i}" for i in range(50)}}))[1] == "ssm.tags.count"


def test_parameters_by_path() -> None:
    assert check(ssm("GetParametersByPath", Path="/featureenv/dev", Recursive=True, MaxResults=10), NONE) is None
    assert violated(ssm("GetParametersByPath", Path="featureenv/dev"))[:2] == ("ValidationException", "ssm.by-path")
    assert violated(ssm("GetParametersByPath", Path="/featureenv", MaxResults=11))[1] == "ssm.by-path"


INSTANCE = "i-0123456789abcdef0"
SERVICES_SCRIPT = "#!/bin/bash\nset -Eeuo pipefail\n# update services\n"


def send_command(**doc: Any) -> Call:
    """SendCommand as the operator sends it, with `doc` replacing fields (None: absent)."""
    fields = {
        "DocumentName": "AWS-RunShellScript", "InstanceIds": [INSTANCE],
        "Parameters": {"commands": [SERVICES_SCRIPT]},
        "Comment": "featureenv: update services of team-a/my-env", "TimeoutSeconds": 1200, **doc,
    }
    return ssm("SendCommand", **{k: v for k, v in fields.items() if v is not None})


def test_operator_send_command_passes() -> None:
    assert check(send_command(), Seen(states={INSTANCE: "running"})) is None
    assert check(send_command(), NONE) is None, "nothing known of the instance: moto decides"
    for ok in ({"TimeoutSeconds": 30}, {"TimeoutSeconds": 2592000}, {"Comment": "c" * 100}, {"Comment": None},
               {"TimeoutSeconds": None}, {"InstanceIds": [f"i-{n:017x}" for n in range(50)]},
               {"InstanceIds": ["i-01234567", "mi-0123456789abcdef0"]}, {"DocumentName": "arn:aws:ssm:x:1:document/My_doc-1.0"}):
        assert check(send_command(**ok), NONE) is None, ok


@pytest.mark.parametrize("doc,message", [
    ({"DocumentName": None}, "Value null at 'documentName' failed to satisfy constraint: Member must not be null"),
    ({"DocumentName": "ab"}, "Value 'ab' at 'documentName' failed to satisfy constraint: Member must satisfy "
                             "regular expression pattern: ^[a-zA-Z0-9_\\-.:/]{3,128}$"),
    ({"DocumentName": "d" * 129}, None),
    ({"DocumentName": "AWS RunShellScript"}, None),
    ({"InstanceIds": ["i-bad"]}, "Value '[i-bad]' at 'instanceIds' failed to satisfy constraint: Member must satisfy "
                                 "constraint: [Member must satisfy regular expression pattern: "
                                 "(^i-(\\w{8}|\\w{17})$)|(^mi-\\w{17}$)]"),
    ({"InstanceIds": ["i-0123456789abcdef"]}, None),  # 16 characters: neither 8 nor 17
    ({"InstanceIds": ["i-0123456789abcdef0\n"]}, None),
    ({"InstanceIds": ["i-0123456789abcdéf0"]}, None),  # \w is ASCII in AWS's (Java) patterns
    ({"InstanceIds": [f"i-{n:017x}" for n in range(51)]}, None),
    ({"Comment": "c" * 101}, "Value '" + "c" * 101 + "' at 'comment' failed to satisfy constraint: Member must have "
                             "length less than or equal to 100"),
    ({"TimeoutSeconds": 29}, "Value '29' at 'timeoutSeconds' failed to satisfy constraint: Member must have value "
                             "greater than or equal to 30"),
    ({"TimeoutSeconds": 2592001}, None),
], ids=["no-document", "short-document", "long-document", "document-space", "bad-id", "16-char-id", "id-newline",
        "id-non-ascii", "51-ids", "long-comment", "short-timeout", "long-timeout"])
def test_send_command_model_constraints(doc: dict[str, Any], message: str | None) -> None:
    code, rule_id, text = violated(send_command(**doc))
    assert (code, rule_id) == ("ValidationException", "ssm.send-command.model")
    if message is not None:
        assert text == "1 validation error detected: " + message


def test_send_command_model_violations_come_in_one_message() -> None:
    text = violated(send_command(Comment="c" * 101, TimeoutSeconds=10))[2]
    assert text.startswith("2 validation errors detected: Value '") and "at 'comment'" in text
    assert text.endswith("at 'timeoutSeconds' failed to satisfy constraint: Member must have value greater than or "
                         "equal to 30")


@pytest.mark.parametrize("parameters", [
    None, {}, {"commands": []}, {"commands": "echo"}, {"commands": [SERVICES_SCRIPT], "command": ["x"]},
    {"commands": [SERVICES_SCRIPT], "executionTimeout": ["0"]},
    {"commands": [SERVICES_SCRIPT], "executionTimeout": ["172801"]},
    {"commands": [SERVICES_SCRIPT], "executionTimeout": "1200"},
], ids=["none", "empty", "no-command", "not-a-list", "unknown-name", "timeout-0", "timeout-over", "timeout-not-list"])
def test_run_shell_script_parameters(parameters: Any) -> None:
    assert violated(send_command(Parameters=parameters))[:2] == ("InvalidParameters", "ssm.send-command.parameters")


def test_run_shell_script_parameters_the_document_declares_pass() -> None:
    full = {"commands": ["a", "b"], "workingDirectory": ["/root"], "executionTimeout": ["172800"]}
    assert check(send_command(Parameters=full), NONE) is None
    other = send_command(DocumentName="AWS-RunPowerShellScript", Parameters={"anything": ["x"]})
    assert check(other, NONE) is None, "only AWS-RunShellScript's parameters are known here"


@pytest.mark.parametrize("state", ["shutting-down", "terminated", aws_rules.INSTANCE_NOT_FOUND])
def test_send_command_to_an_instance_in_an_invalid_state(state: str) -> None:
    other = "i-0fedcba9876543210"
    seen = Seen(states={INSTANCE: state, other: "running"})
    assert violated(send_command(InstanceIds=[other, INSTANCE]), seen) == (
        "InvalidInstanceId", "ssm.send-command.instance-state",
        f"Instances [[{INSTANCE}]] not in a valid state for account 123456789012")


@pytest.mark.parametrize("state", ["pending", "running", "stopping", "stopped"])
def test_send_command_to_an_instance_in_a_valid_state(state: str) -> None:
    assert check(send_command(), Seen(states={INSTANCE: state})) is None


# --- ECR -------------------------------------------------------------------------------


def test_ecr_describe_images() -> None:
    def images(**doc: Any) -> Call:
        return Call("ecr", "DescribeImages", "us-east-1", {}, doc, json_protocol=True)

    operator = images(registryId="123456789012", repositoryName="team/payments", imageIds=[{"imageTag": "pr-123"}])
    assert check(operator, NONE) is None
    assert violated(images(repositoryName="Payments"))[:2] == ("InvalidParameterException", "ecr.describe-images")
    assert violated(images(repositoryName="p"))[2] == (
        "Invalid parameter at 'repositoryName' failed to satisfy constraint: 'must have length greater than or equal to 2'")
    assert violated(images(repositoryName="pay", registryId="12345"))[1] == "ecr.describe-images"
    assert violated(images(repositoryName="pay", imageIds=[{"imageTag": "t" * 301}]))[1] == "ecr.describe-images"
    assert violated(images(repositoryName="pay", imageIds=[{"imageTag": "t"}], maxResults=10))[1] == "ecr.describe-images"



def test_ecr_batch_get_image() -> None:
    """What a pull asks for its manifest (the docker stand-in does, as a daemon does)."""

    def get(**doc: Any) -> Call:
        return Call("ecr", "BatchGetImage", "us-east-1", {}, doc, json_protocol=True)

    pull = get(registryId="123456789012", repositoryName="payments", imageIds=[{"imageDigest": "sha256:" + "a" * 64}])
    assert check(pull, NONE) is None
    assert violated(get(repositoryName="Payments", imageIds=[{"imageTag": "t"}]))[:2] == (
        "InvalidParameterException", "ecr.batch-get-image")
    assert violated(get(repositoryName="pay", imageIds=[]))[2] == (
        "Invalid parameter at 'imageIds' failed to satisfy constraint: 'Member must have length less than or equal to 100'")
    assert violated(get(repositoryName="pay", imageIds=[{"imageTag": "t"}] * 101))[1] == "ecr.batch-get-image"
    assert violated(get(repositoryName="pay", registryId="1", imageIds=[{"imageTag": "t"}]))[1] == "ecr.batch-get-image"
    assert violated(get(repositoryName="pay", imageIds=[{"imageTag": "t"}], acceptedMediaTypes=[]))[1] == (
        "ecr.batch-get-image")
    assert check(get(repositoryName="pay", imageIds=[{"imageTag": "t"}], maxResults=10), NONE) is None, (
        "maxResults is DescribeImages' rule")

# --- the table, the docs, the timing presets --------------------------------------------


def test_every_rule_has_a_source_and_is_documented() -> None:
    docs = (REPO / "docs/local-stack.md").read_text()
    ids = [r.id for r in aws_rules.RULES]
    assert len(ids) == len(set(ids))
    for r in aws_rules.RULES:
        assert r.source.startswith("https://docs.aws.amazon.com/"), r.id
        assert r.wording.split()[0] in ("observed", "documented", "modelled"), r.id
        assert f"`{r.id}`" in docs, f"docs/local-stack.md does not list rule {r.id}"
    assert aws_rules.rules_table() in docs, "docs/local-stack.md: paste `hack/fault_proxy.py --list-rules` again"
    for state_rule in ("rds.state.deleting", "rds.state.not-available", "rds.state.exists",
                       "rds.state.modify-stopped", "rds.state.stop", "rds.state.start",
                       "ec2.run.client-token-idempotency"):
        assert f"`{state_rule}`" in docs


def test_timing_presets_and_scale() -> None:
    assert timing_for("off", 1.0) is None
    assert timing_for("fast", 1.0) == FAST
    assert FAST.ec2_pending == 0.5 and FAST.rds_creating == 1.0 and FAST.rds_deleting == 0.5 and FAST.tag_lag == 0.3
    assert (FAST.ec2_stopping, FAST.ec2_starting, FAST.rds_stopping, FAST.rds_starting) == (1.0, 0.5, 1.0, 1.0)
    assert (REALISTIC.ec2_stopping, REALISTIC.ec2_starting, REALISTIC.rds_stopping, REALISTIC.rds_starting) == (
        30.0, 16.0, 240.0, 480.0)
    assert REALISTIC.rds_auto_start == 7 * 24 * 3600 and FAST.rds_auto_start == 1008.0
    half = timing_for("realistic", 0.5)
    assert half is not None and half.rds_creating == REALISTIC.rds_creating / 2 == 300.0
    assert half.ec2_pending == 7.5 and half.rds_auto_start == 302400.0 and half.rds_starting == 240.0


def test_the_auto_start_delay_is_given_in_seconds_not_scaled() -> None:
    timing = timing_for("fast", 3.0, rds_auto_start=5.0)
    assert timing is not None and timing.rds_auto_start == 5.0 and timing.rds_stopping == 3.0
    assert timing_for("off", 1.0, rds_auto_start=5.0) is None


def test_filters_the_layer_rechecks() -> None:
    tags = {"featureenv.io/cluster": "dev", "Name": "a[1]"}
    assert instance_matches([Filter("tag:featureenv.io/cluster", ("dev",))], "running", tags)
    assert not instance_matches([Filter("tag:featureenv.io/cluster", ("prod",))], "running", tags)
    assert instance_matches([Filter("tag:Name", ("a[1]",))], "running", tags)
    assert instance_matches([Filter("tag:Name", ("a*",)), Filter("tag-key", ("featureenv.io/*",))], "running", tags)
    assert not instance_matches([Filter("instance-state-name", ("running",))], "pending", tags)
    assert instance_matches([Filter("image-id", ("ami-x",))], "pending", tags), "filters moto applied stay moto's"
