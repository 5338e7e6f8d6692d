"""The end-to-end IAM check without cargo: one environment's AWS calls, made with boto3
the way the operator makes them (src/cloud/aws/*.rs, with the tags and names the
controllers give: src/controller/environment/act.rs, claim.rs, pool.rs, cleanup.rs),
through moto + hack/fault_proxy.py (fast timing, as the e2e stack runs it). The proxy's
call log is then checked exactly as tests/e2e.rs `iam_check` does it: pytest on
tests/chart/test_iam_policy.py with FEATUREENV_AWS_CALL_LOG and FEATUREENV_CLUSTER_ID.

It passes for the environment as the operator runs it, and fails, naming the call, when
one call tags another cluster's database, or deletes the parameter a second time (what
the operator's cleanup does on every pass after the first: a finding, see
docs/iam.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import string
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from test_fault_proxy import REPO, clients, start_proxy, stop

CLUSTER_TAG = "featureenv.io/cluster"
ENV_TAG = "featureenv.io/environment"
UID_TAG = "featureenv.io/uid"
POOL_TAG = "featureenv.io/pool"
SNAPSHOT_TAG = "featureenv.io/snapshot"
CLAIMED_BY_TAG = "featureenv.io/claimed-by"
INSTANCE_TAG = "featureenv.io/instance"
BOOTSTRAP_TAG = "featureenv.io/bootstrap"
WARM_POOL_TAG = "featureenv.io/warm-pool"
SPARE_TAG = "featureenv.io/spare"


# --- naming.rs, in Python ----------------------------------------------------------------


def short_hash(parts: list[str], length: int) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()[:length]


def slug(text: str, limit: int) -> str:
    out = ""
    for c in text:
        if c.isascii() and c.isalnum():
            out += c.lower()
        elif not out.endswith("-"):
            out += "-"
    return out.strip("-")[:limit].rstrip("-")


def pool_database_id(pool: str, snapshot: str, slot: int) -> str:
    digest = short_hash([pool, snapshot], 10)
    room = 63 - 3 - 1 - len(digest) - 1 - len(str(slot))
    pool_slug = slug(pool, min(room, 30))
    return f"fe-{pool_slug}-{digest}-{slot}" if pool_slug else f"fe-{digest}-{slot}"


def snapshot_tag(snapshot_id: str) -> str:
    return "automated:" + snapshot_id[len("rds:"):] if snapshot_id.startswith("rds:") else snapshot_id


def password() -> str:
    return "".join(random.choice(string.ascii_letters + string.digits) for _ in range(32))


# --- the replay -------------------------------------------------------------------------------


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


class Environment:
    """One FeatureEnvironment of cluster `cluster`, its pool and its class, as the
    operator's AWS adapter calls them."""

    def __init__(self, aws: dict[str, Any], seeded: dict[str, Any], cluster: str) -> None:
        self.ec2, self.rds, self.ssm, self.ecr = aws["ec2"], aws["rds"], aws["ssm"], aws["ecr"]
        self.seeded, self.cluster = seeded, cluster
        self.uid = str(uuid.uuid4())
        self.key = "team-payments/payments-pr-123"
        self.pool = "integration-" + cluster
        self.parameter = f"/featureenv/{cluster}/{self.uid}/database"

    def resolve_image(self) -> str:
        """ec2.rs resolve_image: the class's tag selector term, newest available."""
        filters = [{"Name": "state", "Values": ["available"]},
                   {"Name": "tag:featureenv.io/pipeline", "Values": ["minikube-service"]}]
        images = self.ec2.describe_images(Filters=filters)["Images"]
        return str(max(images, key=lambda i: (i["CreationDate"], i["ImageId"]))["ImageId"])

    def launch(self, image: str) -> dict[str, Any]:
        """act.rs launch_request + ec2.rs launch_instance."""
        self.ssm.get_parameter(Name=self.seeded["ssmAmiParameter"])  # an ssmParameter selector term
        root = self.ec2.describe_images(ImageIds=[image])["Images"][0].get("RootDeviceName", "/dev/xvda")
        tags = {"team": "platform", "Name": "featureenv-team-payments-payments-pr-123", CLUSTER_TAG: self.cluster,
                ENV_TAG: self.key, UID_TAG: self.uid, "featureenv.io/owner": "alice@example.com"}
        spec = [{"Key": k, "Value": v} for k, v in tags.items()]
        out = self.ec2.run_instances(
            ClientToken=f"fe-{short_hash([self.uid], 40)}-1", ImageId=image, InstanceType="t3.2xlarge",
            MinCount=1, MaxCount=1, SubnetId=self.seeded["subnetId"], SecurityGroupIds=[self.seeded["securityGroupId"]],
            MetadataOptions={"HttpTokens": "required", "HttpEndpoint": "enabled", "InstanceMetadataTags": "disabled",
                             "HttpPutResponseHopLimit": 1},
            BlockDeviceMappings=[{"DeviceName": root, "Ebs": {"VolumeSize": 100, "VolumeType": "gp3",
                                                              "DeleteOnTermination": True}}],
            TagSpecifications=[{"ResourceType": t, "Tags": spec} for t in ("instance", "volume", "network-interface")],
            UserData="#!/bin/bash\necho bootstrap\n", IamInstanceProfile={"Name": self.seeded["instanceProfile"]["name"]},
        )
        instance = out["Instances"][0]
        instance["Arn"] = f"arn:aws:ec2:us-east-1:{out['OwnerId']}:instance/{instance['InstanceId']}"
        return instance

    def launch_spare(self, image: str, warm_class: str = "standard", slot: int = 0,
                     cluster: str | None = None) -> dict[str, Any]:
        """A warm-pool spare of `warm_class` (spec.warmPool): the launch of an environment's
        instance but tagged cluster, warm-pool, spare (its client token), its own Name and
        the class's tags; no uid, no environment; user data without a database. `cluster`:
        the cluster tag's value (this environment's by default), "" for none."""
        token = f"fe-warm-{short_hash([self.cluster, warm_class, uuid.uuid4().hex], 10)}-{slot}"  # one per launch
        tags = {"team": "platform", "Name": f"featureenv-spare-{warm_class}", WARM_POOL_TAG: warm_class,
                SPARE_TAG: token, **({CLUSTER_TAG: cluster or self.cluster} if cluster != "" else {})}
        spec = [{"Key": k, "Value": v} for k, v in tags.items()]
        out = self.ec2.run_instances(
            ClientToken=token, ImageId=image, InstanceType="t3.2xlarge", MinCount=1, MaxCount=1,
            SubnetId=self.seeded["subnetId"], SecurityGroupIds=[self.seeded["securityGroupId"]],
            MetadataOptions={"HttpTokens": "required", "HttpEndpoint": "enabled", "InstanceMetadataTags": "disabled",
                             "HttpPutResponseHopLimit": 1},
            TagSpecifications=[{"ResourceType": t, "Tags": spec} for t in ("instance", "volume", "network-interface")],
            UserData="#!/bin/bash\necho bootstrap spare\n",
            IamInstanceProfile={"Name": self.seeded["instanceProfile"]["name"]},
        )
        return dict(out["Instances"][0])

    def claim_tags(self) -> dict[str, str]:
        return {UID_TAG: self.uid, ENV_TAG: self.key, "Name": "featureenv-" + self.key.replace("/", "-")}

    def claim_spare(self, iid: str, extra: dict[str, str] | None = None) -> None:
        """The claim: CreateTags of exactly uid, environment and Name on the spare."""
        tags = {**self.claim_tags(), **(extra or {})}
        self.ec2.create_tags(Resources=[iid], Tags=[{"Key": k, "Value": v} for k, v in tags.items()])

    def warm_pool(self, image: str, bootstrap_tag: Callable[[str], None]) -> dict[str, Any]:
        """A Stopped warm pool's spare, from launch to the personalised environment, and a
        surplus spare terminated."""
        spare = self.launch_spare(image)
        iid = spare["InstanceId"]
        wait_for("the spare to run", lambda: self.instance_state(iid) == "running")
        bootstrap_tag(iid)
        self.ec2.stop_instances(InstanceIds=[iid])
        wait_for("the spare to stop", lambda: self.instance_state(iid) == "stopped")
        self.claim_spare(iid)
        self.ec2.start_instances(InstanceIds=[iid])
        wait_for("the claimed spare to run", lambda: self.instance_state(iid) == "running")
        self.ssm.send_command(DocumentName="AWS-RunShellScript", InstanceIds=[iid],
                              Parameters={"commands": ["#!/bin/bash\necho personalise\n"], "executionTimeout": ["1200"]},
                              Comment=f"featureenv: personalise {self.key}", TimeoutSeconds=1200)
        surplus = self.launch_spare(image, slot=1)["InstanceId"]
        self.ec2.terminate_instances(InstanceIds=[surplus])
        return spare

    def inventory(self) -> list[dict[str, Any]]:
        """inventory.rs: one DescribeInstances by cluster tag, one DescribeDBInstances page."""
        self.ec2.describe_instances(Filters=[{"Name": f"tag:{CLUSTER_TAG}", "Values": [self.cluster]}], MaxResults=1000)
        dbs = self.rds.describe_db_instances(MaxRecords=100)["DBInstances"]
        return [d for d in dbs if {t["Key"]: t["Value"] for t in d.get("TagList", [])}.get(CLUSTER_TAG) == self.cluster]

    def restore_spare(self) -> dict[str, Any]:
        """pool.rs newest_snapshot + restore_spare, then the poll that sees it available
        and reset_spare_passwords."""
        snapshots = self.rds.describe_db_snapshots(DBInstanceIdentifier=self.seeded["integrationDb"],
                                                   MaxRecords=100)["DBSnapshots"]
        newest = max((s for s in snapshots if s["Status"] == "available"),
                     key=lambda s: (s["SnapshotCreateTime"], s["DBSnapshotIdentifier"]))
        snapshot = newest["DBSnapshotIdentifier"]
        db_id = pool_database_id(self.pool, snapshot, 0)
        tags = {CLUSTER_TAG: self.cluster, POOL_TAG: self.pool, SNAPSHOT_TAG: snapshot_tag(snapshot)}
        self.rds.restore_db_instance_from_db_snapshot(
            DBInstanceIdentifier=db_id, DBSnapshotIdentifier=snapshot, DBInstanceClass="db.t3.micro",
            DBSubnetGroupName=self.seeded["dbSubnetGroupName"], VpcSecurityGroupIds=[self.seeded["securityGroupId"]],
            PubliclyAccessible=False, Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
        spare = wait_for("the spare to be available", lambda: next(
            (d for d in self.inventory() if d["DBInstanceIdentifier"] == db_id and d["DBInstanceStatus"] == "available"),
            None))
        self.rds.modify_db_instance(DBInstanceIdentifier=db_id, MasterUserPassword=password(), ApplyImmediately=True)
        return dict(spare)

    def claim(self, spare: dict[str, Any]) -> None:
        """claim.rs tag_spare, the poll that confirms it, hand_out_credentials."""
        tags = {CLAIMED_BY_TAG: self.uid, ENV_TAG: self.key}
        self.rds.add_tags_to_resource(ResourceName=spare["DBInstanceArn"],
                                      Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
        wait_for("the claim to be visible", lambda: any(
            d["DBInstanceIdentifier"] == spare["DBInstanceIdentifier"]
            and {t["Key"]: t["Value"] for t in d.get("TagList", [])}.get(CLAIMED_BY_TAG) == self.uid
            for d in self.inventory()))
        secret = password()
        value = {"host": "h", "port": "5432", "username": "integration", "password": secret,
                 "dbInstanceIdentifier": spare["DBInstanceIdentifier"]}
        self.ssm.put_parameter(Name=self.parameter, Value=json.dumps(value), Type="SecureString", Overwrite=False,
                               Tags=[{"Key": CLUSTER_TAG, "Value": self.cluster}, {"Key": ENV_TAG, "Value": self.key}])
        self.rds.modify_db_instance(DBInstanceIdentifier=spare["DBInstanceIdentifier"], MasterUserPassword=secret,
                                    ApplyImmediately=True)

    def bind_parameter(self, instance: dict[str, Any]) -> None:
        """act.rs bind_parameter."""
        self.ssm.add_tags_to_resource(ResourceType="Parameter", ResourceId=self.parameter,
                                      Tags=[{"Key": INSTANCE_TAG, "Value": instance["Arn"]}])

    def resolve_digest(self) -> None:
        """ecr.rs resolve_digest."""
        self.ecr.describe_images(registryId="123456789012", repositoryName="payments",
                                 imageIds=[{"imageTag": "latest"}])

    def update_services(self, instance: dict[str, Any]) -> None:
        """update.rs + ssm.rs run_script (after the instance tagged itself bootstrapped)."""
        self.ec2.get_console_output(InstanceId=instance["InstanceId"], Latest=True)
        self.ssm.send_command(DocumentName="AWS-RunShellScript", InstanceIds=[instance["InstanceId"]],
                              Parameters={"commands": ["#!/bin/bash\necho update\n"], "executionTimeout": ["1200"]},
                              Comment=f"featureenv: update services of {self.key}", TimeoutSeconds=1200)

    def instance_state(self, iid: str) -> str:
        return str(self.ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["State"]["Name"])

    def database_status(self, db_id: str) -> str:
        return str(self.rds.describe_db_instances(DBInstanceIdentifier=db_id)["DBInstances"][0]["DBInstanceStatus"])

    def sleep(self, instance: dict[str, Any], spare: dict[str, Any]) -> None:
        """spec.sleeping: true, as the operator is to make it: StopInstances with one id
        (no Force, no Hibernate), StopDBInstance without a snapshot, on what it launched
        and claimed, once each can be stopped."""
        iid, db_id = instance["InstanceId"], spare["DBInstanceIdentifier"]
        wait_for("the instance to run", lambda: self.instance_state(iid) == "running")
        self.ec2.stop_instances(InstanceIds=[iid])
        self.rds.stop_db_instance(DBInstanceIdentifier=db_id)
        wait_for("both to be stopped", lambda: (self.instance_state(iid), self.database_status(db_id)) == (
            "stopped", "stopped"))

    def wake(self, instance: dict[str, Any], spare: dict[str, Any]) -> None:
        """spec.sleeping: false: StartDBInstance, StartInstances, and once the instance
        runs again the wake command (minikube start, wait, tag the outcome)."""
        iid, db_id = instance["InstanceId"], spare["DBInstanceIdentifier"]
        self.rds.start_db_instance(DBInstanceIdentifier=db_id)
        self.ec2.start_instances(InstanceIds=[iid])
        wait_for("both to be back", lambda: (self.instance_state(iid), self.database_status(db_id)) == (
            "running", "available"))
        self.ssm.send_command(DocumentName="AWS-RunShellScript", InstanceIds=[iid],
                              Parameters={"commands": ["#!/bin/bash\nminikube start\n"], "executionTimeout": ["1200"]},
                              Comment=f"featureenv: wake {self.key}", TimeoutSeconds=1200)

    def janitor(self) -> None:
        """janitor.rs sweep: list the tree (names only)."""
        self.ssm.get_parameters_by_path(Path=f"/featureenv/{self.cluster}", Recursive=True, WithDecryption=False,
                                        MaxResults=10)

    def clean_up(self, spare: dict[str, Any]) -> None:
        """cleanup.rs, first pass: terminate, delete the claimed database, the parameter."""
        found = self.ec2.describe_instances(Filters=[{"Name": f"tag:{UID_TAG}", "Values": [self.uid]}],
                                            MaxResults=1000)["Reservations"]
        for iid in [i["InstanceId"] for r in found for i in r["Instances"]]:
            self.ec2.terminate_instances(InstanceIds=[iid])
        db = self.rds.describe_db_instances(DBInstanceIdentifier=spare["DBInstanceIdentifier"])["DBInstances"][0]
        assert {t["Key"]: t["Value"] for t in db["TagList"]}[CLAIMED_BY_TAG] == self.uid
        self.rds.delete_db_instance(DBInstanceIdentifier=spare["DBInstanceIdentifier"], SkipFinalSnapshot=True,
                                    DeleteAutomatedBackups=True)
        self.ssm.delete_parameter(Name=self.parameter)


@pytest.fixture(scope="module")
def replayed(moto_endpoint: str, seeded: dict[str, Any],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The proxy, its log after one environment's life, and what the replay made."""
    log = tmp_path_factory.mktemp("iam-replay") / "aws-calls.jsonl"
    proc, url = start_proxy(moto_endpoint, 0.0, log, extra=("--timing", "fast"))
    try:
        through = clients(url)
        cluster = "replay-" + uuid.uuid4().hex[:6]
        env = Environment(through, seeded, cluster)
        instance = env.launch(env.resolve_image())
        spare = env.restore_spare()
        env.claim(spare)
        env.bind_parameter(instance)
        env.resolve_digest()
        # The bootstrap script tags its own instance (instance credentials, not through the proxy).
        clients(moto_endpoint)["ec2"].create_tags(Resources=[instance["InstanceId"]], Tags=[{"Key": BOOTSTRAP_TAG, "Value": "complete"}])
        env.update_services(instance)
        env.sleep(instance, spare)
        env.wake(instance, spare)
        env.janitor()
        env.clean_up(spare)
        yield {"log": log, "lines": log.read_text().splitlines(), "cluster": cluster, "env": env, "aws": through}
    finally:
        stop(proc)


def iam_check(tmp_path: Path, lines: list[str], cluster: str) -> tuple[bool, str]:
    """tests/e2e.rs iam_check on `lines`: (passed, pytest's output)."""
    log = tmp_path / "aws-calls.jsonl"
    log.write_text("\n".join(lines) + "\n")
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/chart/test_iam_policy.py",
         "-k", "test_every_recorded_operation_is_allowed"],
        cwd=REPO, env={**os.environ, "FEATUREENV_AWS_CALL_LOG": str(log), "FEATUREENV_CLUSTER_ID": cluster},
        capture_output=True, text=True, timeout=300,
    )
    return out.returncode == 0, out.stdout + out.stderr


REPORTED = re.compile(r"^E\s+(\w+:\w+ \(HTTP [^)]*\): .* \[\d+ call\(s\), first logged at [\d.]+\])$")


def denied_lines(output: str) -> list[str]:
    """The authorizations the failure reports, once each (pytest prefixes them with E)."""
    text = output.split("AssertionError: denied by docs/iam-policy.json:", 1)[-1].split("unsupported (", 1)[0]
    return sorted({m.group(1) for line in text.splitlines() if (m := REPORTED.match(line))})


def test_one_environments_calls_pass_the_iam_check(replayed: dict[str, Any], seeded: dict[str, Any],
                                                   tmp_path: Path) -> None:
    entries = [json.loads(line) for line in replayed["lines"]]
    issued = {f"{e['service']}:{e['action']}" for e in entries}
    assert issued >= {
        "ec2:DescribeImages", "ec2:RunInstances", "ec2:DescribeInstances", "ec2:GetConsoleOutput",
        "ec2:TerminateInstances", "rds:DescribeDBSnapshots", "rds:RestoreDBInstanceFromDBSnapshot",
        "rds:DescribeDBInstances", "rds:ModifyDBInstance", "rds:AddTagsToResource", "rds:DeleteDBInstance",
        "ssm:GetParameter", "ssm:PutParameter", "ssm:AddTagsToResource", "ssm:GetParametersByPath",
        "ssm:SendCommand", "ssm:DeleteParameter", "ecr:DescribeImages",
        "ec2:StopInstances", "ec2:StartInstances", "rds:StopDBInstance", "rds:StartDBInstance"}, issued
    assert [e for e in entries if e["status"] != 200] == [], "the replay is the operator's good path"
    stop = next(e for e in entries if e["action"] == "StopDBInstance")
    assert stop["resource_tags"][stop["db_instance_id"]][CLAIMED_BY_TAG] == replayed["env"].uid
    # The tags the checks decide on were learned from moto, not assumed.
    claim = next(e for e in entries if (e["service"], e["action"]) == ("rds", "AddTagsToResource"))
    assert claim["resource_tags"][claim["resource_name"]][CLUSTER_TAG] == replayed["cluster"]
    launch = next(e for e in entries if e["action"] == "RunInstances")
    assert launch["role_arns"] == [seeded["instanceProfile"]["roleArn"]]
    passed, output = iam_check(tmp_path, replayed["lines"], replayed["cluster"])
    assert passed and "1 passed" in output, output


def test_tagging_another_clusters_database_fails_the_iam_check(replayed: dict[str, Any], aws: Any,
                                                                 seeded: dict[str, Any], tmp_path: Path) -> None:
    # Another installation's spare, restored straight in moto.
    other = "fe-other-" + uuid.uuid4().hex[:8]
    arn = aws("rds").restore_db_instance_from_db_snapshot(
        DBInstanceIdentifier=other, DBSnapshotIdentifier=seeded["snapshots"]["newer"], DBInstanceClass="db.t3.micro",
        Tags=[{"Key": CLUSTER_TAG, "Value": "someone-else"}, {"Key": POOL_TAG, "Value": "integration"}],
    )["DBInstance"]["DBInstanceArn"]
    before = len(replayed["log"].read_text().splitlines())
    env: Environment = replayed["env"]
    env.rds.add_tags_to_resource(ResourceName=arn, Tags=[{"Key": CLAIMED_BY_TAG, "Value": env.uid},
                                                         {"Key": ENV_TAG, "Value": env.key}])
    added = replayed["log"].read_text().splitlines()[before:]
    assert [json.loads(line)["action"] for line in added] == ["AddTagsToResource"]
    passed, output = iam_check(tmp_path, replayed["lines"] + added, replayed["cluster"])
    assert not passed, output
    denied = denied_lines(output)
    assert denied and all(line.startswith(f"rds:AddTagsToResource (HTTP 200): rds:AddTagsToResource on {arn} ")
                          for line in denied), output


def test_deleting_the_parameter_again_fails_the_iam_check(replayed: dict[str, Any], tmp_path: Path) -> None:
    """Why cleanup must never delete a parameter that is gone (it did on every pass until
    it listed first; docs/iam.md, Findings): the policy deletes only parameters tagged
    with our cluster, and a missing one has no tag to allow it by, so AWS answers
    AccessDeniedException, not ParameterNotFound."""
    env: Environment = replayed["env"]
    before = len(replayed["log"].read_text().splitlines())
    with pytest.raises(env.ssm.exceptions.ParameterNotFound):
        env.ssm.delete_parameter(Name=env.parameter)
    added = replayed["log"].read_text().splitlines()[before:]
    assert json.loads(added[-1])["resource_tags"] == {env.parameter: {}}
    passed, output = iam_check(tmp_path, replayed["lines"] + added, replayed["cluster"])
    assert not passed, output
    denied = denied_lines(output)
    assert len(denied) == 1 and denied[0].startswith("ssm:DeleteParameter (HTTP 400): ssm:DeleteParameter on "), output



def bootstrap_tag_in(moto: str) -> Callable[[str], None]:
    """The bootstrap script tags its own instance (instance credentials, straight to moto)."""
    return lambda iid: clients(moto)["ec2"].create_tags(Resources=[iid],
                                                        Tags=[{"Key": BOOTSTRAP_TAG, "Value": "complete"}])


def test_a_warm_pools_calls_pass_the_iam_check(replayed: dict[str, Any], moto_endpoint: str,
                                               tmp_path: Path) -> None:
    """Launch a spare, stop it, claim it, start it, personalise it; terminate a surplus one."""
    env: Environment = replayed["env"]
    before = len(replayed["log"].read_text().splitlines())
    spare = env.warm_pool(env.resolve_image(), bootstrap_tag_in(moto_endpoint))
    added = replayed["log"].read_text().splitlines()[before:]
    entries = [json.loads(line) for line in added]
    assert [e["action"] for e in entries if e["action"] not in ("DescribeInstances", "DescribeImages")] == [
        "RunInstances", "StopInstances", "CreateTags", "StartInstances", "SendCommand", "RunInstances",
        "TerminateInstances"]
    assert all(e["status"] == 200 for e in entries)
    # The claim was decided on the tags the spare had in moto: ours, and a warm-pool spare.
    claim = next(e for e in entries if e["action"] == "CreateTags")
    assert claim["request_tags"] == env.claim_tags()
    assert claim["resource_tags"][spare["InstanceId"]][WARM_POOL_TAG] == "standard"
    assert claim["resource_tags"][spare["InstanceId"]][CLUSTER_TAG] == env.cluster
    passed, output = iam_check(tmp_path, added, replayed["cluster"])
    assert passed and "1 passed" in output, output


def test_claiming_an_environments_instance_fails_the_iam_check(replayed: dict[str, Any], moto_endpoint: str,
                                                               tmp_path: Path) -> None:
    """The claim's keys on an instance that is ours but no spare (no warm-pool tag)."""
    env: Environment = replayed["env"]
    before = len(replayed["log"].read_text().splitlines())
    env.warm_pool(env.resolve_image(), bootstrap_tag_in(moto_endpoint))
    good = replayed["log"].read_text().splitlines()[before:]
    passed, output = iam_check(tmp_path, good, replayed["cluster"])
    assert passed, output
    instance = env.launch(env.resolve_image())["InstanceId"]
    mark = len(replayed["log"].read_text().splitlines())
    env.claim_spare(instance)
    added = replayed["log"].read_text().splitlines()[mark:]
    assert [json.loads(line)["action"] for line in added] == ["CreateTags"]
    passed, output = iam_check(tmp_path, good + added, replayed["cluster"])
    assert not passed, output
    denied = denied_lines(output)
    assert denied and all(line.startswith(f"ec2:CreateTags (HTTP 200): ec2:CreateTags on "
                                          f"arn:aws:ec2:us-east-1:123456789012:instance/{instance} ")
                          for line in denied), output
