"""Pure tests of hack/aws_world.py with an injected clock: moto's answers (canned, in moto's
own XML) rewritten as AWS would give them at a moment, and the layer's memory."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import boto3
from botocore.model import ServiceModel
from botocore.parsers import create_parser

import json

from aws_rules import INSTANCE_NOT_FOUND, Call
from aws_world import FAST, STATE_CODES, Answer, AutoStart, World, moto_request, timing_for

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
        f"<item><instanceId>{iid}</instanceId><instanceState><code>{STATE_CODES.get(state, 0)}</code>"
        f"<name>{state}</name></instanceState>"
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


# --- stop and start ------------------------------------------------------------------------


def state_change(action: str, iid: str, current: tuple[int, str], previous: tuple[int, str]) -> bytes:
    """moto's StopInstances / StartInstances answer (it says `stopping` / `pending` always)."""
    return (f'<{action}Response xmlns="{EC2_NS}"><instancesSet><item><instanceId>{iid}</instanceId>'
            f"<currentState><code>{current[0]}</code><name>{current[1]}</name></currentState>"
            f"<previousState><code>{previous[0]}</code><name>{previous[1]}</name></previousState></item>"
            f"</instancesSet></{action}Response>").encode()


def moto_stop(iid: str, previous: tuple[int, str]) -> bytes:
    return state_change("StopInstances", iid, (64, "stopping"), previous)


def moto_start(iid: str, previous: tuple[int, str]) -> bytes:
    return state_change("StartInstances", iid, (0, "pending"), previous)


def described_state(world: World, iid: str, moto_state: str) -> dict[str, object]:
    """DescribeInstances of `iid` (moto has it in `moto_state`) as the layer answers it."""
    answer = Answer(200, [], describe_many({iid: (moto_state, {})}))
    out = parsed("ec2", "DescribeInstances", world.rewrite(Call("ec2", "DescribeInstances"), answer).body)
    return out["Reservations"][0]["Instances"][0]["State"]  # type: ignore[no-any-return]


def transitions(world: World, action: str, iid: str, moto_answer: bytes) -> tuple[str, str]:
    """(previous, current) state names of the answer the layer gives for moto's."""
    call = Call("ec2", action, params={"InstanceId.1": iid})
    world.observe(call, 200, moto_answer)
    out = parsed("ec2", action, world.rewrite(call, Answer(200, [], moto_answer)).body)
    [item] = out["StoppingInstances" if action == "StopInstances" else "StartingInstances"]
    return item["PreviousState"]["Name"], item["CurrentState"]["Name"]


def test_an_instance_reads_stopping_then_stopped_and_pending_then_running_again() -> None:
    clock = Clock()
    world = World(FAST, now=clock)
    world.observe(Call("ec2", "RunInstances"), 200, run_answer("i-1").body)
    assert world.instance_launch_pending("i-1"), "pending after its launch: never running yet"
    clock.t += FAST.ec2_pending + 0.01
    world.observe(Call("ec2", "DescribeInstances"), 200, describe_answer("i-1", {}).body)
    assert not world.instance_launch_pending("i-1") and world.instance_state("i-1") == "running"

    # moto has it stopped at once; AWS answers running -> stopping, and reads stopping.
    assert transitions(world, "StopInstances", "i-1", moto_stop("i-1", (16, "running"))) == ("running", "stopping")
    assert described_state(world, "i-1", "stopped") == {"Code": 64, "Name": "stopping"}
    assert world.instance_state("i-1") == "stopping"
    # A second stop while stopping changes nothing (and does not restart the clock).
    clock.t += FAST.ec2_stopping / 2
    assert transitions(world, "StopInstances", "i-1", moto_stop("i-1", (80, "stopped"))) == ("stopping", "stopping")
    clock.t += FAST.ec2_stopping / 2 + 0.01
    assert described_state(world, "i-1", "stopped") == {"Code": 80, "Name": "stopped"}
    assert world.instance_state("i-1") == "stopped" and not world.instance_launch_pending("i-1")
    assert transitions(world, "StopInstances", "i-1", moto_stop("i-1", (80, "stopped"))) == ("stopped", "stopped")

    # Started: moto has it running at once; AWS answers stopped -> pending, reads pending.
    assert transitions(world, "StartInstances", "i-1", moto_start("i-1", (80, "stopped"))) == ("stopped", "pending")
    assert described_state(world, "i-1", "running") == {"Code": 0, "Name": "pending"}
    assert world.instance_state("i-1") == "pending"
    assert not world.instance_launch_pending("i-1"), "pending again after a start: it has been running"
    assert transitions(world, "StartInstances", "i-1", moto_start("i-1", (16, "running"))) == ("pending", "pending")
    clock.t += FAST.ec2_starting + 0.01
    assert described_state(world, "i-1", "running") == {"Code": 16, "Name": "running"}
    assert transitions(world, "StartInstances", "i-1", moto_start("i-1", (16, "running"))) == ("running", "running")
    # A state filter sees the emulated state: stopped again, it is not `stopped` yet.
    world.observe(Call("ec2", "StopInstances"), 200, moto_stop("i-1", (16, "running")))
    filtered = Call("ec2", "DescribeInstances", params={"Filter.1.Name": "instance-state-name",
                                                        "Filter.1.Value.1": "stopped"})
    answer = Answer(200, [], describe_many({"i-1": ("stopped", {})}))
    assert parsed("ec2", "DescribeInstances", world.rewrite(filtered, answer).body)["Reservations"] == []


def test_without_timing_stop_and_start_answers_are_moto_s() -> None:
    world = World(None)
    call = Call("ec2", "StopInstances", params={"InstanceId.1": "i-1"})
    answer = Answer(200, [], moto_stop("i-1", (16, "running")))
    world.observe(call, 200, answer.body)
    assert world.rewrite(call, answer) == answer
    assert world.instance_state("i-1") == "stopped" and not world.instance_launch_pending("i-1")


def db_answer(action: str, db_id: str, status: str) -> bytes:
    return (f'<{action}Response xmlns="{RDS_NS}"><{action}Result>{db_element(db_id, status)}</{action}Result>'
            f"</{action}Response>").encode()


def db_listing(db_id: str, status: str) -> bytes:
    return db_answer("DescribeDBInstances", db_id, status).replace(
        b"<DescribeDBInstancesResult>", b"<DescribeDBInstancesResult><DBInstances>").replace(
        b"</DescribeDBInstancesResult>", b"</DBInstances></DescribeDBInstancesResult>")


def db_status(world: World, db_id: str, moto_status: str) -> str:
    """DescribeDBInstances of `db_id` (moto has it `moto_status`) as the layer answers it."""
    call = Call("rds", "DescribeDBInstances", params={"DBInstanceIdentifier": db_id})
    body = db_listing(db_id, moto_status)
    world.observe(call, 200, body)
    return str(parsed("rds", "DescribeDBInstances", world.rewrite(call, Answer(200, [], body)).body)[
        "DBInstances"][0]["DBInstanceStatus"])


def refusal(world: World, action: str, db_id: str = "fe-1") -> tuple[str, str, str] | None:
    v = world.state_violation(Call("rds", action, params={"DBInstanceIdentifier": db_id}))
    return (v.code, v.rule, v.message) if v else None


def db_call(world: World, action: str, moto_status: str, db_id: str = "fe-1") -> str:
    """Stop/StartDBInstance accepted by moto: the status the layer's answer gives."""
    call = Call("rds", action, params={"DBInstanceIdentifier": db_id})
    body = db_answer(action, db_id, moto_status)
    world.observe(call, 200, body)
    return str(parsed("rds", action, world.rewrite(call, Answer(200, [], body)).body)["DBInstance"]["DBInstanceStatus"])


NOT_AVAILABLE = ("InvalidDBInstanceState", "rds.state.not-available", "Database instance is not in available state.")


def test_a_database_reads_stopping_then_stopped_and_starting_then_available() -> None:
    clock = Clock()
    world = World(FAST, now=clock)
    assert db_status(world, "fe-1", "available") == "available"
    assert refusal(world, "StopDBInstance") is None and refusal(world, "ModifyDBInstance") is None

    assert db_call(world, "StopDBInstance", "stopped") == "stopping"
    assert db_status(world, "fe-1", "stopped") == "stopping"
    assert refusal(world, "StartDBInstance") == (
        "InvalidDBInstanceState", "rds.state.start", "Instance fe-1 is not stopped, it cannot be started.")
    assert refusal(world, "ModifyDBInstance") == NOT_AVAILABLE
    clock.t += FAST.rds_stopping + 0.01
    assert db_status(world, "fe-1", "stopped") == "stopped"
    assert refusal(world, "StartDBInstance") is None, "moto itself refuses a stop of what it has stopped"
    assert refusal(world, "ModifyDBInstance") == (
        "InvalidDBInstanceState", "rds.state.modify-stopped",
        "You can't modify a stopped DB instance. Start the DB instance, and then modify it.")

    assert db_call(world, "StartDBInstance", "available") == "starting"
    assert db_status(world, "fe-1", "available") == "starting"
    assert refusal(world, "StopDBInstance") == (
        "InvalidDBInstanceState", "rds.state.stop", "Instance fe-1 is not in available state.")
    assert refusal(world, "ModifyDBInstance") == NOT_AVAILABLE
    clock.t += FAST.rds_starting + 0.01
    assert db_status(world, "fe-1", "available") == "available"
    assert refusal(world, "StopDBInstance") is None and refusal(world, "ModifyDBInstance") is None


def test_a_restore_still_creating_cannot_be_stopped() -> None:
    clock = Clock()
    world = World(FAST, now=clock)
    restore = Call("rds", "RestoreDBInstanceFromDBSnapshot", params={"DBInstanceIdentifier": "fe-2"})
    world.observe(restore, 200, db_answer("RestoreDBInstanceFromDBSnapshot", "fe-2", "available"))
    for status in ("creating", "backing-up"):
        assert db_status(world, "fe-2", "available") == status
        assert refusal(world, "StopDBInstance", "fe-2") == (
            "InvalidDBInstanceState", "rds.state.stop", "Instance fe-2 is not in available state.")
        clock.t += FAST.rds_creating
    clock.t += FAST.rds_backing_up
    assert db_status(world, "fe-2", "available") == "available"
    assert refusal(world, "StopDBInstance", "fe-2") is None


def test_a_stopped_database_cannot_be_modified_whatever_the_timing() -> None:
    world = World(None)
    assert db_status(world, "fe-1", "stopped") == "stopped"
    assert refusal(world, "ModifyDBInstance")[1] == "rds.state.modify-stopped"  # type: ignore[index]
    assert refusal(world, "StopDBInstance") is None and refusal(world, "StartDBInstance") is None
    assert world.take_due_auto_starts() == [], "no timing, no clock"


def stopped_by_the_operator(world: World, db_id: str) -> None:
    call = Call("rds", "StopDBInstance", region="eu-west-1", params={"DBInstanceIdentifier": db_id},
                access_key="operator-key")
    world.observe(call, 200, db_answer("StopDBInstance", db_id, "stopped"))


def test_a_database_stopped_for_the_auto_start_delay_is_started_again() -> None:
    clock = Clock()
    timing = timing_for("fast", 1.0, rds_auto_start=5.0)
    world = World(timing, now=clock)
    stopped_by_the_operator(world, "fe-1")
    stopped_at = clock.t
    due_at = stopped_at + FAST.rds_stopping + 5.0  # five seconds after it reads `stopped`
    clock.t = due_at - 0.01
    assert world.take_due_auto_starts() == []
    assert db_status(world, "fe-1", "stopped") == "stopped"
    clock.t = due_at + 0.2
    [due] = world.take_due_auto_starts()
    assert due == AutoStart("fe-1", "eu-west-1", "operator-key", stopped_at=stopped_at, start_at=due_at)
    assert world.take_due_auto_starts() == [], "taken once"
    # moto started it (the proxy's part): `starting` from when AWS started it, then available.
    assert db_status(world, "fe-1", "available") == "starting"
    assert refusal(world, "StopDBInstance") == (
        "InvalidDBInstanceState", "rds.state.stop", "Instance fe-1 is not in available state.")
    clock.t = due_at + FAST.rds_starting + 0.01
    assert db_status(world, "fe-1", "available") == "available"
    # ... and the operator stops it again: the seven days count anew.
    stopped_by_the_operator(world, "fe-1")
    clock.t += FAST.rds_stopping + 4.0
    assert world.take_due_auto_starts() == []


def test_an_auto_start_moto_refused_is_tried_again() -> None:
    clock = Clock()
    world = World(timing_for("fast", 1.0, rds_auto_start=5.0), now=clock)
    stopped_by_the_operator(world, "fe-1")
    clock.t += FAST.rds_stopping + 5.0
    [due] = world.take_due_auto_starts()
    world.auto_start_failed(due)
    assert world.db_status("fe-1") == "stopped"
    assert [d.db_id for d in world.take_due_auto_starts()] == ["fe-1"]


def test_only_databases_still_stopped_are_started_and_late_notice_reads_available() -> None:
    clock = Clock()
    world = World(timing_for("fast", 1.0, rds_auto_start=5.0), now=clock)
    for db_id in ("fe-started", "fe-deleted", "fe-late"):
        stopped_by_the_operator(world, db_id)
    assert db_call(world, "StartDBInstance", "available", "fe-started") == "starting"
    world.observe(Call("rds", "DeleteDBInstance", params={"DBInstanceIdentifier": "fe-deleted"}), 200,
                  db_answer("DeleteDBInstance", "fe-deleted", "deleting"))
    # Nobody asked for an hour: AWS started it long ago, it is available by now.
    clock.t += 3600
    assert [d.db_id for d in world.take_due_auto_starts()] == ["fe-late"]
    assert world.db_status("fe-late") == "available"


def test_a_deleted_stopped_database_is_forgotten_and_its_identifier_restored_anew() -> None:
    """AWS deletes a stopped DB instance; once gone, nothing of it is left to refuse or
    to start, and a restore under its identifier is a new instance."""
    clock = Clock()
    world = World(timing_for("fast", 1.0, rds_auto_start=5.0), now=clock)
    stopped_by_the_operator(world, "fe-1")
    clock.t += FAST.rds_stopping + 0.01
    assert world.db_status("fe-1") == "stopped"
    world.observe(Call("rds", "DeleteDBInstance", params={"DBInstanceIdentifier": "fe-1"}), 200,
                  db_answer("DeleteDBInstance", "fe-1", "deleting"))
    assert world.db_status("fe-1") == "deleting"
    clock.t += FAST.rds_deleting + 0.01
    assert world.db_status("fe-1") is None
    assert refusal(world, "ModifyDBInstance") is None, "moto answers DBInstanceNotFound itself"
    restore = Call("rds", "RestoreDBInstanceFromDBSnapshot", params={"DBInstanceIdentifier": "fe-1"})
    world.observe(restore, 200, db_answer("RestoreDBInstanceFromDBSnapshot", "fe-1", "available"))
    clock.t += 3600
    assert world.take_due_auto_starts() == [] and world.db_status("fe-1") == "available"
    # Stopped behind the layer's back (straight in moto): the old instance's stop does not count.
    assert db_status(world, "fe-1", "stopped") == "stopped"
    clock.t += 3600
    assert world.take_due_auto_starts() == []
