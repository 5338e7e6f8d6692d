"""Pure tests of hack/aws_world.py with an injected clock: moto's answers (canned, in moto's
own XML) rewritten as AWS would give them at a moment, and the layer's memory."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import boto3
from botocore.model import ServiceModel
from botocore.parsers import create_parser

import json

from aws_rules import INSTANCE_NOT_FOUND, Call
from aws_world import FAST, Answer, World, moto_request

EC2_NS = "http://ec2.amazonaws.com/doc/2016-11-15"
RDS_NS = "http://rds.amazonaws.com/doc/2014-10-31/"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def run_answer(iid: str) -> Answer:
    body = (f'<RunInstancesResponse xmlns="{EC2_NS}"><instancesSet><item><instanceId>{iid}</instanceId>'
            "<instanceState><code>0</code><name>pending</name></instanceState></item></instancesSet>"
            "</RunInstancesResponse>")
    return Answer(200, [], body.encode())


def describe_answer(iid: str, tags: dict[str, str]) -> Answer:
    tag_items = "".join(f"<item><key>{k}</key><value>{v}</value></item>" for k, v in tags.items())
    body = (f'<?xml version="1.0" encoding="utf-8"?>\n<DescribeInstancesResponse xmlns="{EC2_NS}"><reservationSet><item>'
            f"<reservationId>r-1</reservationId><instancesSet><item><instanceId>{iid}</instanceId>"
            "<instanceState><code>16</code><name>running</name></instanceState>"
            f"<tagSet>{tag_items}</tagSet></item></instancesSet></item></reservationSet>"
            "</DescribeInstancesResponse>")
    return Answer(200, [], body.encode())


def parsed(service: str, operation: str, body: bytes) -> dict:  # type: ignore[type-arg]
    """The answer as boto3's own parser reads it."""
    model = ServiceModel(boto3.session.Session()._loader.load_service_model(service, "service-2"))  # noqa: SLF001
    op = model.operation_model(operation)
    return create_parser(model.metadata["protocol"]).parse(  # type: ignore[no-any-return]
        {"body": body, "headers": {}, "status_code": 200}, op.output_shape)


def test_pending_then_running_and_tags_settling_on_the_clock() -> None:
    clock = Clock()
    world = World(FAST, now=clock)
    run = Call("ec2", "RunInstances", params={
        "MetadataOptions.InstanceMetadataTags": "enabled",
        "TagSpecification.1.ResourceType": "instance",
        "TagSpecification.1.Tag.1.Key": "env", "TagSpecification.1.Tag.1.Value": "old",
    })
    world.observe(run, 200, run_answer("i-1").body)
    assert world.instance_metadata_tags("i-1")
    describe = Call("ec2", "DescribeInstances")
    out = parsed("ec2", "DescribeInstances", world.rewrite(describe, describe_answer("i-1", {"env": "old"})).body)
    assert out["Reservations"][0]["Instances"][0]["State"] == {"Code": 0, "Name": "pending"}

    clock.t += FAST.ec2_pending + 0.01
    tag = Call("ec2", "CreateTags", params={"ResourceId.1": "i-1", "Tag.1.Key": "env", "Tag.1.Value": "new",
                                            "Tag.2.Key": "done", "Tag.2.Value": "yes"})
    world.observe(tag, 200, b"<CreateTagsResponse/>")
    moto_now = describe_answer("i-1", {"env": "new", "done": "yes"})
    out = parsed("ec2", "DescribeInstances", world.rewrite(describe, moto_now).body)
    instance = out["Reservations"][0]["Instances"][0]
    assert instance["State"]["Name"] == "running"
    assert instance["Tags"] == [{"Key": "env", "Value": "old"}], "the old value, the new key not yet"
    filtered = Call("ec2", "DescribeInstances", params={"Filter.1.Name": "tag:done", "Filter.1.Value.1": "yes"})
    assert parsed("ec2", "DescribeInstances", world.rewrite(filtered, moto_now).body)["Reservations"] == []

    clock.t += FAST.tag_lag + 0.01
    assert world.rewrite(filtered, moto_now) == moto_now, "settled: moto's answer, untouched"


def db_element(db_id: str, status: str) -> str:
    return (f"<DBInstance><DBInstanceIdentifier>{db_id}</DBInstanceIdentifier><Engine>postgres</Engine>"
            f"<DBInstanceStatus>{status}</DBInstanceStatus><Endpoint><Address>{db_id}.rds</Address>"
            "<Port>5432</Port></Endpoint><TagList><Tag><Key>featureenv.io/pool</Key><Value>p</Value></Tag></TagList>"
            "</DBInstance>")


def test_restore_creating_backing_up_and_a_deleted_instance_kept_as_deleting() -> None:
    clock = Clock()
    world = World(FAST, now=clock)
    restore = Call("rds", "RestoreDBInstanceFromDBSnapshot", params={"DBInstanceIdentifier": "fe-1"})
    moto_restore = (f'<RestoreDBInstanceFromDBSnapshotResponse xmlns="{RDS_NS}"><RestoreDBInstanceFromDBSnapshotResult>'
                    f"{db_element('fe-1', 'available')}</RestoreDBInstanceFromDBSnapshotResult>"
                    "</RestoreDBInstanceFromDBSnapshotResponse>").encode()
    world.observe(restore, 200, moto_restore)
    out = parsed("rds", "RestoreDBInstanceFromDBSnapshot", world.rewrite(restore, Answer(200, [], moto_restore)).body)
    assert out["DBInstance"]["DBInstanceStatus"] == "creating" and "Endpoint" not in out["DBInstance"]
    assert world.db_engine("fe-1") == "postgres"
    assert world.state_violation(Call("rds", "ModifyDBInstance", params={"DBInstanceIdentifier": "fe-1"})).code == (
        "InvalidDBInstanceState")

    describe = Call("rds", "DescribeDBInstances")
    listing = (f'<DescribeDBInstancesResponse xmlns="{RDS_NS}"><DescribeDBInstancesResult><DBInstances>'
               f"{db_element('fe-1', 'available')}</DBInstances></DescribeDBInstancesResult>"
               "</DescribeDBInstancesResponse>").encode()
    clock.t += FAST.rds_creating
    out = parsed("rds", "DescribeDBInstances", world.rewrite(describe, Answer(200, [], listing)).body)
    assert out["DBInstances"][0]["DBInstanceStatus"] == "backing-up"
    clock.t += FAST.rds_backing_up + 0.01
    assert world.rewrite(describe, Answer(200, [], listing)).body == listing

    delete = Call("rds", "DeleteDBInstance", params={"DBInstanceIdentifier": "fe-1", "SkipFinalSnapshot": "true"})
    moto_delete = (f'<DeleteDBInstanceResponse xmlns="{RDS_NS}"><DeleteDBInstanceResult>{db_element("fe-1", "deleting")}'
                   "</DeleteDBInstanceResult></DeleteDBInstanceResponse>").encode()
    world.observe(delete, 200, moto_delete)
    empty = (f'<DescribeDBInstancesResponse xmlns="{RDS_NS}"><DescribeDBInstancesResult><DBInstances/>'
             "</DescribeDBInstancesResult></DescribeDBInstancesResponse>").encode()
    rewritten = world.rewrite(describe, Answer(200, [], empty)).body
    assert ET.fromstring(rewritten).tag == f"{{{RDS_NS}}}DescribeDBInstancesResponse"
    assert b"ns0:" not in rewritten
    out = parsed("rds", "DescribeDBInstances", rewritten)
    assert [(d["DBInstanceIdentifier"], d["DBInstanceStatus"]) for d in out["DBInstances"]] == [("fe-1", "deleting")]
    not_found = Answer(404, [], b"<ErrorResponse/>")
    by_id = Call("rds", "DescribeDBInstances", params={"DBInstanceIdentifier": "fe-1"})
    assert world.rewrite(by_id, not_found).status == 200
    assert world.state_violation(delete).message == "Instance fe-1 is already being deleted."

    clock.t += FAST.rds_deleting + 0.01
    assert world.rewrite(by_id, not_found) == not_found
    assert world.rewrite(describe, Answer(200, [], empty)).body == empty
    assert world.state_violation(delete) is None


def test_without_timing_answers_pass_untouched() -> None:
    world = World(None)
    answer = describe_answer("i-1", {"k": "v"})
    world.observe(Call("ec2", "RunInstances"), 200, run_answer("i-1").body)
    assert world.rewrite(Call("ec2", "DescribeInstances"), answer) == answer
    assert world.state_violation(Call("rds", "DeleteDBInstance", params={"DBInstanceIdentifier": "x"})) is None


def describe_many(instances: dict[str, tuple[str, dict[str, str]]]) -> bytes:
    items = "".join(
        f"<item><instanceId>{iid}</instanceId><instanceState><code>0</code><name>{state}</name></instanceState>"
        f"<tagSet>{''.join(f'<item><key>{k}</key><value>{v}</value></item>' for k, v in tags.items())}</tagSet></item>"
        for iid, (state, tags) in instances.items())
    return (f'<DescribeInstancesResponse xmlns="{EC2_NS}"><reservationSet><item><instancesSet>{items}</instancesSet>'
            "</item></reservationSet></DescribeInstancesResponse>").encode()


def test_instance_states_are_learned_from_moto() -> None:
    world = World(None)
    assert world.instance_state("i-1") is None
    world.observe(Call("ec2", "RunInstances"), 200, run_answer("i-1").body)
    assert world.instance_state("i-1") == "pending"
    world.observe(Call("ec2", "DescribeInstances"), 200, describe_answer("i-1", {}).body)
    assert world.instance_state("i-1") == "running"
    terminate = (f'<TerminateInstancesResponse xmlns="{EC2_NS}"><instancesSet><item><instanceId>i-1</instanceId>'
                 "<currentState><code>32</code><name>shutting-down</name></currentState>"
                 "<previousState><code>16</code><name>running</name></previousState></item></instancesSet>"
                 "</TerminateInstancesResponse>").encode()
    world.observe(Call("ec2", "TerminateInstances"), 200, terminate)
    assert world.instance_state("i-1") == "shutting-down"
    # The proxy's own look-up before a SendCommand: found ones with their tags, the rest unknown to moto.
    tags = world.learn_instances(["i-1", "i-2", "i-3"], 200, describe_many(
        {"i-1": ("terminated", {"featureenv.io/cluster": "c"}), "i-2": ("running", {}), "i-9": ("running", {})}))
    assert tags == {"i-1": {"featureenv.io/cluster": "c"}, "i-2": {}}
    assert [world.instance_state(i) for i in ("i-1", "i-2", "i-3", "i-9")] == [
        "terminated", "running", INSTANCE_NOT_FOUND, None]
    assert world.learn_instances(["i-2"], 503, b"<Response/>") is None
    assert world.instance_state("i-2") == "running", "an answer that says nothing changes nothing"


def send_command(**doc: object) -> Call:
    return Call("ssm", "SendCommand", doc=dict(doc), json_protocol=True)


def test_moto_gets_the_targets_of_a_send_command_and_the_answer_is_as_sent() -> None:
    call = send_command(DocumentName="AWS-RunShellScript", InstanceIds=["i-1", "i-2"],
                        Parameters={"commands": ["x"]}, TimeoutSeconds=1200)
    body = json.dumps(call.doc).encode()
    forwarded = json.loads(moto_request(call, body))
    assert forwarded == {**call.doc, "Targets": [{"Key": "instance-id", "Values": ["i-1", "i-2"]}]}
    for untouched in (send_command(InstanceIds=["i-1"], Targets=[{"Key": "tag:a", "Values": ["b"]}]),
                      send_command(DocumentName="AWS-RunShellScript"), Call("ssm", "GetParameter", doc={"Name": "/a"})):
        assert moto_request(untouched, b"{}") == b"{}"
    moto = {"Command": {"CommandId": "c-1", "InstanceIds": ["i-2", "i-1"],
                        "Targets": [{"Key": "instance-id", "Values": ["i-1", "i-2"]}], "Status": "Success",
                        "CompletedCount": 4, "TargetCount": 4, "TimeoutSeconds": 1200}}
    answer = World(None).rewrite(call, Answer(200, [], json.dumps(moto).encode()))
    command = json.loads(answer.body)["Command"]
    assert command == {"CommandId": "c-1", "InstanceIds": ["i-1", "i-2"], "Targets": [], "Status": "Pending",
                       "StatusDetails": "Pending", "CompletedCount": 0, "ErrorCount": 0, "DeliveryTimedOutCount": 0,
                       "TargetCount": 2, "TimeoutSeconds": 1200}
    refused = Answer(400, [], b'{"__type": "InvalidInstanceId"}')
    assert World(None).rewrite(call, refused) == refused
