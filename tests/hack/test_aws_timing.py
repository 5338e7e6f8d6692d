"""hack/fault_proxy.py's AWS timing through boto3 against proxy + moto: each emulated state
(pending instances, creating restores, deleting databases, tag propagation) is visible
right after the call, in answers boto3 parses, and ends. Waits poll a condition with a
deadline; no fixed sleeps."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import pytest
from botocore.exceptions import ClientError

from test_fault_proxy import REPO, clients, start_proxy, stop
from test_strict_layer import OPERATOR_TAGS, launch, refused, restore

T = TypeVar("T")
# Three times the 'fast' periods: pending 1.5 s, creating 3 s, backing-up 0.9 s,
# deleting 1.5 s, tag lag 0.9 s; margin for the first look on a busy 2-core machine.
SCALE = "3"


@pytest.fixture(scope="module")
def timed(moto_endpoint: str, seeded: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    log = tmp_path_factory.mktemp("timing") / "proxy.jsonl"
    proc, url = start_proxy(moto_endpoint, 0.0, log, extra=("--timing", "fast", "--time-scale", SCALE))
    try:
        cs = clients(url)
        raw: list[bytes] = []
        for client in cs.values():
            client.meta.events.register("after-call", lambda http_response, **_: raw.append(http_response.content))
        yield {"raw": raw, **cs}
    finally:
        stop(proc)


def until(probe: Callable[[], T], done: Callable[[T], bool], timeout: float = 20.0) -> list[T]:
    """Polls `probe` until `done` holds for its value; returns every distinct value seen, in order."""
    seen: list[T] = []
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if not seen or seen[-1] != value:
            seen.append(value)
        if done(value):
            return seen
        assert time.monotonic() < deadline, f"still not done after {timeout} s; seen {seen}"
        time.sleep(0.05)


def instance(ec2: Any, iid: str) -> dict[str, Any]:
    return ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]  # type: ignore[no-any-return]


def test_instances_read_pending_then_running(timed: dict[str, Any], seeded: dict[str, Any], aws: Any) -> None:
    ec2 = timed["ec2"]
    iid = launch(ec2, seeded, OPERATOR_TAGS)
    assert instance(aws("ec2"), iid)["State"] == {"Code": 16, "Name": "running"}, "moto: running at once"
    first = instance(ec2, iid)
    assert first["State"] == {"Code": 0, "Name": "pending"}
    assert {t["Key"]: t["Value"] for t in first["Tags"]} == OPERATOR_TAGS, "the rest of the answer is moto's"
    assert b"ns0:" not in timed["raw"][-1] and b'xmlns="http://ec2.amazonaws.com/doc/2016-11-15"' in timed["raw"][-1]
    states = until(lambda: instance(ec2, iid)["State"]["Name"], lambda s: s == "running")
    assert states == ["pending", "running"]
    # A state filter sees the emulated state, not moto's.
    fresh = launch(ec2, seeded, {"featureenv.io/uid": uuid.uuid4().hex})
    running = ec2.describe_instances(Filters=[{"Name": "instance-state-name", "Values": ["running"]}])
    assert fresh not in [i["InstanceId"] for r in running["Reservations"] for i in r["Instances"]]


def database(rds: Any, db_id: str) -> dict[str, Any]:
    return rds.describe_db_instances(DBInstanceIdentifier=db_id)["DBInstances"][0]  # type: ignore[no-any-return]


def test_restore_reads_creating_then_backing_up_then_available(timed: dict[str, Any]) -> None:
    rds = timed["rds"]
    db_id = "fe-timing-" + uuid.uuid4().hex[:8]
    restored = restore(rds, db_id, {"featureenv.io/cluster": "timing"})["DBInstance"]
    assert restored["DBInstanceStatus"] == "creating" and "Endpoint" not in restored
    described = database(rds, db_id)
    assert described["DBInstanceStatus"] == "creating" and "Endpoint" not in described
    refused(lambda: rds.modify_db_instance(DBInstanceIdentifier=db_id, MasterUserPassword="A" * 32,
                                           ApplyImmediately=True),
            "InvalidDBInstanceState", "Database instance is not in available state.")
    statuses = until(lambda: database(rds, db_id)["DBInstanceStatus"], lambda s: s == "available")
    assert statuses == ["creating", "backing-up", "available"]
    assert database(rds, db_id)["Endpoint"]["Address"]
    rds.modify_db_instance(DBInstanceIdentifier=db_id, MasterUserPassword="A" * 32, ApplyImmediately=True)


def test_deleted_database_reads_deleting_then_is_gone(timed: dict[str, Any], aws: Any) -> None:
    rds = timed["rds"]
    db_id = "fe-timing-" + uuid.uuid4().hex[:8]
    restore(rds, db_id, {"featureenv.io/cluster": "timing-delete"})
    deleted = rds.delete_db_instance(DBInstanceIdentifier=db_id, SkipFinalSnapshot=True, DeleteAutomatedBackups=True)
    assert deleted["DBInstance"]["DBInstanceStatus"] == "deleting"
    with pytest.raises(ClientError, match="DBInstanceNotFound"):
        aws("rds").describe_db_instances(DBInstanceIdentifier=db_id)  # moto forgot it at once
    ghost = database(rds, db_id)
    assert ghost["DBInstanceStatus"] == "deleting"
    listed = {d["DBInstanceIdentifier"]: d for d in rds.describe_db_instances()["DBInstances"]}
    assert listed[db_id]["DBInstanceStatus"] == "deleting"
    assert {t["Key"]: t["Value"] for t in listed[db_id]["TagList"]} == {"featureenv.io/cluster": "timing-delete"}
    refused(lambda: rds.delete_db_instance(DBInstanceIdentifier=db_id, SkipFinalSnapshot=True),
            "InvalidDBInstanceState", f"Instance {db_id} is already being deleted.")
    refused(lambda: restore(rds, db_id), "DBInstanceAlreadyExists")

    def status() -> str:
        try:
            return str(database(rds, db_id)["DBInstanceStatus"])
        except ClientError as e:
            return str(e.response["Error"]["Code"])

    assert until(status, lambda s: s == "DBInstanceNotFound") == ["deleting", "DBInstanceNotFound"]
    assert db_id not in [d["DBInstanceIdentifier"] for d in rds.describe_db_instances()["DBInstances"]]


def test_new_instance_tags_are_invisible_for_a_while(timed: dict[str, Any], seeded: dict[str, Any]) -> None:
    ec2 = timed["ec2"]
    uid = uuid.uuid4().hex
    iid = launch(ec2, seeded, {**OPERATOR_TAGS, "featureenv.io/uid": uid})
    instance(ec2, iid)  # the layer has seen its tags
    ec2.create_tags(Resources=[iid], Tags=[{"Key": "featureenv.io/bootstrap", "Value": "complete"},
                                          {"Key": "featureenv.io/environment", "Value": "default/renamed"}])
    tags = {t["Key"]: t["Value"] for t in instance(ec2, iid)["Tags"]}
    assert "featureenv.io/bootstrap" not in tags
    assert tags["featureenv.io/environment"] == OPERATOR_TAGS["featureenv.io/environment"], "the old value, still"

    def by_tag() -> list[str]:
        found = ec2.describe_instances(Filters=[{"Name": "tag:featureenv.io/bootstrap", "Values": ["complete"]},
                                                {"Name": "tag:featureenv.io/uid", "Values": [uid]}])
        return [i["InstanceId"] for r in found["Reservations"] for i in r["Instances"]]

    assert until(by_tag, lambda ids: ids == [iid]) == [[], [iid]]
    tags = {t["Key"]: t["Value"] for t in instance(ec2, iid)["Tags"]}
    assert tags["featureenv.io/bootstrap"] == "complete" and tags["featureenv.io/environment"] == "default/renamed"


def test_new_database_tags_are_invisible_for_a_while(timed: dict[str, Any]) -> None:
    rds = timed["rds"]
    db_id = "fe-timing-" + uuid.uuid4().hex[:8]
    arn = restore(rds, db_id, {"featureenv.io/cluster": "timing-tags"})["DBInstance"]["DBInstanceArn"]
    rds.add_tags_to_resource(ResourceName=arn, Tags=[{"Key": "featureenv.io/claimed-by", "Value": "uid-1"}])

    def claimed_by() -> str | None:
        tags = {t["Key"]: t["Value"] for t in database(rds, db_id)["TagList"]}
        return tags.get("featureenv.io/claimed-by")

    assert until(claimed_by, lambda v: v == "uid-1") == [None, "uid-1"]


def test_realistic_timing_scales(moto_endpoint: str, seeded: dict[str, Any], tmp_path: Path) -> None:
    # realistic: 15 s pending; at 1/15 scale, 1 s.
    proc, url = start_proxy(moto_endpoint, 0.0, tmp_path / "p.jsonl",
                            extra=("--timing", "realistic", "--time-scale", str(1 / 15)))
    try:
        ec2 = clients(url)["ec2"]
        iid = launch(ec2, seeded, OPERATOR_TAGS)
        assert until(lambda: instance(ec2, iid)["State"]["Name"], lambda s: s == "running") == ["pending", "running"]
    finally:
        stop(proc)
    proc, url = start_proxy(moto_endpoint, 0.0, tmp_path / "q.jsonl", extra=("--timing", "off"))
    try:
        ec2 = clients(url)["ec2"]
        assert instance(ec2, launch(ec2, seeded, OPERATOR_TAGS))["State"]["Name"] == "running"
    finally:
        stop(proc)


# --- stop and start ---------------------------------------------------------------------


def state_change(answer: dict[str, Any], key: str) -> tuple[str, str]:
    [item] = answer[key]
    return item["PreviousState"]["Name"], item["CurrentState"]["Name"]


def test_stop_reads_stopping_then_stopped_and_start_pending_then_running(
    timed: dict[str, Any], seeded: dict[str, Any], aws: Any
) -> None:
    ec2 = timed["ec2"]
    iid = launch(ec2, seeded, OPERATOR_TAGS)
    # Still pending after its launch: AWS refuses to stop what has never run.
    refused(lambda: ec2.stop_instances(InstanceIds=[iid]), "IncorrectInstanceState",
            f"Instance '{iid}' cannot be stopped as it has never reached the 'running' state.")
    until(lambda: instance(ec2, iid)["State"]["Name"], lambda s: s == "running")

    assert state_change(ec2.stop_instances(InstanceIds=[iid]), "StoppingInstances") == ("running", "stopping")
    assert instance(aws("ec2"), iid)["State"]["Name"] == "stopped", "moto: stopped at once"
    assert instance(ec2, iid)["State"] == {"Code": 64, "Name": "stopping"}
    refused(lambda: ec2.start_instances(InstanceIds=[iid]), "IncorrectInstanceState",
            f"The instance '{iid}' is not in a state from which it can be started.")
    assert state_change(ec2.stop_instances(InstanceIds=[iid]), "StoppingInstances") == ("stopping", "stopping")
    assert until(lambda: instance(ec2, iid)["State"]["Name"], lambda s: s == "stopped") == ["stopping", "stopped"]

    assert state_change(ec2.start_instances(InstanceIds=[iid]), "StartingInstances") == ("stopped", "pending")
    assert instance(aws("ec2"), iid)["State"]["Name"] == "running", "moto: running at once"
    assert until(lambda: instance(ec2, iid)["State"]["Name"], lambda s: s == "running") == ["pending", "running"]
    assert state_change(ec2.start_instances(InstanceIds=[iid]), "StartingInstances") == ("running", "running")
    # Running again, it can be stopped again (it has been running: no launch refusal).
    assert state_change(ec2.stop_instances(InstanceIds=[iid]), "StoppingInstances") == ("running", "stopping")


def test_database_stop_reads_stopping_then_stopped_and_start_starting_then_available(timed: dict[str, Any]) -> None:
    rds = timed["rds"]
    db_id = "fe-timing-" + uuid.uuid4().hex[:8]
    restore(rds, db_id, {"featureenv.io/cluster": "timing-sleep"})
    refused(lambda: rds.stop_db_instance(DBInstanceIdentifier=db_id), "InvalidDBInstanceState",
            f"Instance {db_id} is not in available state.")  # still creating
    until(lambda: database(rds, db_id)["DBInstanceStatus"], lambda s: s == "available")

    assert rds.stop_db_instance(DBInstanceIdentifier=db_id)["DBInstance"]["DBInstanceStatus"] == "stopping"
    refused(lambda: rds.start_db_instance(DBInstanceIdentifier=db_id), "InvalidDBInstanceState",
            f"Instance {db_id} is not stopped, it cannot be started.")
    refused(lambda: rds.modify_db_instance(DBInstanceIdentifier=db_id, MasterUserPassword="A" * 32,
                                           ApplyImmediately=True), "InvalidDBInstanceState")
    assert until(lambda: database(rds, db_id)["DBInstanceStatus"], lambda s: s == "stopped") == ["stopping", "stopped"]
    refused(lambda: rds.modify_db_instance(DBInstanceIdentifier=db_id, MasterUserPassword="A" * 32,
                                           ApplyImmediately=True), "InvalidDBInstanceState",
            "You can't modify a stopped DB instance. Start the DB instance, and then modify it.")
    # moto's own refusal, with the same words: a stop of what is stopped.
    refused(lambda: rds.stop_db_instance(DBInstanceIdentifier=db_id), "InvalidDBInstanceState",
            f"Instance {db_id} is not in available state.")

    assert rds.start_db_instance(DBInstanceIdentifier=db_id)["DBInstance"]["DBInstanceStatus"] == "starting"
    refused(lambda: rds.stop_db_instance(DBInstanceIdentifier=db_id), "InvalidDBInstanceState",
            f"Instance {db_id} is not in available state.")
    assert until(lambda: database(rds, db_id)["DBInstanceStatus"], lambda s: s == "available") == [
        "starting", "available"]
    rds.modify_db_instance(DBInstanceIdentifier=db_id, MasterUserPassword="A" * 32, ApplyImmediately=True)


def test_a_database_stopped_too_long_is_started_again(moto_endpoint: str, tmp_path: Path) -> None:
    """--rds-auto-start-seconds 2 for AWS's seven days: the DB starts on its own, reads
    `starting` (a stop is refused), then `available`, and can be stopped again."""
    proc, url = start_proxy(moto_endpoint, 0.0, tmp_path / "p.jsonl",
                            extra=("--timing", "fast", "--rds-auto-start-seconds", "2"))
    try:
        rds = clients(url)["rds"]
        db_id = "fe-timing-" + uuid.uuid4().hex[:8]
        restore(rds, db_id, {"featureenv.io/cluster": "timing-auto-start"})
        until(lambda: database(rds, db_id)["DBInstanceStatus"], lambda s: s == "available")
        rds.stop_db_instance(DBInstanceIdentifier=db_id)
        seen = until(lambda: database(rds, db_id)["DBInstanceStatus"], lambda s: s == "starting")
        assert seen == ["stopping", "stopped", "starting"]
        refused(lambda: rds.stop_db_instance(DBInstanceIdentifier=db_id), "InvalidDBInstanceState")
        assert until(lambda: database(rds, db_id)["DBInstanceStatus"], lambda s: s == "available")[-1] == "available"
        assert rds.stop_db_instance(DBInstanceIdentifier=db_id)["DBInstance"]["DBInstanceStatus"] == "stopping"
    finally:
        stop(proc)
    entries = [e for e in (json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines())]
    assert not any(e["action"] == "StartDBInstance" for e in entries), "no client made that call: not in the log"


def test_auto_start_flag_needs_timing(moto_endpoint: str) -> None:
    out = subprocess.run([sys.executable, str(REPO / "hack/fault_proxy.py"), "--upstream", moto_endpoint,
                          "--timing", "off", "--rds-auto-start-seconds", "5"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "--rds-auto-start-seconds needs AWS timing" in out.stderr
