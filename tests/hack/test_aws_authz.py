"""Pure tests of hack/aws_authz.py: the fields each call's IAM authorization is decided
on, read from the request as the SDKs serialize it, and the look-up answers (moto's own
formats) read into resource tags, with "unknown" kept apart from "no tags"."""

from __future__ import annotations

import json
from urllib.parse import urlencode

from aws_authz import detail
from aws_rules import Call, parse_call
from aws_world import FAST, World

RDS_NS = "http://rds.amazonaws.com/doc/2014-10-31/"
ARN = "arn:aws:rds:us-east-1:123456789012:db:fe-1"


def query(service: str, action: str, **params: str) -> Call:
    return parse_call(service, action, "eu-west-1", urlencode({"Action": action, **params}).encode(), False)


def jsoncall(service: str, action: str, doc: dict[str, object]) -> Call:
    return parse_call(service, action, "eu-west-1", json.dumps(doc).encode(), True)


def test_run_instances_names_what_it_creates_and_uses_and_asks_iam_for_the_role() -> None:
    call = query("ec2", "RunInstances", ImageId="ami-1", InstanceType="t3.micro", SubnetId="subnet-1",
                 **{"SecurityGroupId.1": "sg-1", "SecurityGroupId.2": "sg-2", "MetadataOptions.HttpTokens": "required",
                    "TagSpecification.1.ResourceType": "instance", "TagSpecification.1.Tag.1.Key": "k",
                    "TagSpecification.1.Tag.1.Value": "v", "TagSpecification.2.ResourceType": "volume",
                    "TagSpecification.2.Tag.1.Key": "k", "TagSpecification.2.Tag.1.Value": "w",
                    "IamInstanceProfile.Arn": "arn:aws:iam::123456789012:instance-profile/path/featureenv-node",
                    "BlockDeviceMapping.1.Ebs.SnapshotId": "snap-1", "Placement.GroupName": "pg"})
    fields, lookup = detail(call)
    assert fields == {
        "region": "eu-west-1", "image_id": "ami-1", "instance_type": "t3.micro", "subnet_id": "subnet-1",
        "security_group_ids": ["sg-1", "sg-2"], "key_name": None, "launch_template": None, "http_tokens": "required",
        "tag_specs": {"instance": {"k": "v"}, "volume": {"k": "w"}},
        "unmodelled": ["BlockDeviceMapping.1.Ebs.SnapshotId", "Placement.GroupName"],
        "instance_profile": "arn:aws:iam::123456789012:instance-profile/path/featureenv-node", "role_arns": None,
    }
    assert lookup is not None and (lookup.service, lookup.region) == ("iam", "us-east-1")
    assert lookup.form == {"Action": "GetInstanceProfile", "Version": "2010-05-08",
                           "InstanceProfileName": "featureenv-node"}
    answer = (b'<GetInstanceProfileResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/"><GetInstanceProfileResult>'
              b"<InstanceProfile><Arn>arn:aws:iam::123456789012:instance-profile/featureenv-node</Arn><Roles><member>"
              b"<Arn>arn:aws:iam::123456789012:role/featureenv-node</Arn></member></Roles></InstanceProfile>"
              b"</GetInstanceProfileResult></GetInstanceProfileResponse>")
    world = World(None)
    assert lookup.read(200, answer, world) == {
        "instance_profile_arn": "arn:aws:iam::123456789012:instance-profile/featureenv-node",
        "role_arns": ["arn:aws:iam::123456789012:role/featureenv-node"]}
    assert lookup.read(404, b"<ErrorResponse><Error><Code>NoSuchEntity</Code></Error></ErrorResponse>", world) is None


def test_a_launch_without_a_profile_needs_no_look_up() -> None:
    fields, lookup = detail(query("ec2", "RunInstances", ImageId="ami-1"))
    assert lookup is None and "role_arns" not in fields and fields["instance_profile"] is None


def db_answer(tags: dict[str, str]) -> bytes:
    tag_list = "".join(f"<Tag><Key>{k}</Key><Value>{v}</Value></Tag>" for k, v in tags.items())
    return (f'<DescribeDBInstancesResponse xmlns="{RDS_NS}"><DescribeDBInstancesResult><DBInstances><DBInstance>'
            f"<DBInstanceIdentifier>fe-1</DBInstanceIdentifier><TagList>{tag_list}</TagList></DBInstance>"
            "</DBInstances></DescribeDBInstancesResult></DescribeDBInstancesResponse>").encode()


NOT_FOUND = (f'<ErrorResponse xmlns="{RDS_NS}"><Error><Type>Sender</Type><Code>DBInstanceNotFound</Code>'
             "<Message>DBInstance fe-1 not found.</Message></Error></ErrorResponse>").encode()


def test_a_database_is_looked_up_by_identifier_even_when_the_call_names_its_arn() -> None:
    fields, lookup = detail(query("rds", "AddTagsToResource", ResourceName=ARN,
                                  **{"Tags.Tag.1.Key": "featureenv.io/claimed-by", "Tags.Tag.1.Value": "u"}))
    assert fields == {"region": "eu-west-1", "resource_name": ARN, "request_tags": {"featureenv.io/claimed-by": "u"},
                      "resource_tags": None}
    assert lookup is not None and lookup.form is not None and lookup.form["DBInstanceIdentifier"] == "fe-1"
    world = World(None)
    assert lookup.read(200, db_answer({"featureenv.io/cluster": "e2e"}), world) == {
        "resource_tags": {ARN: {"featureenv.io/cluster": "e2e"}}}
    assert lookup.read(404, NOT_FOUND, world) == {"resource_tags": {ARN: {}}}, "gone: no tags"
    assert lookup.read(500, b"<ErrorResponse><Error><Code>InternalFailure</Code></Error></ErrorResponse>",
                       world) is None, "unknown, not untagged"


def test_a_database_the_layer_still_plays_deleting_keeps_its_tags() -> None:
    """moto forgets a deleted DB at once; AWS authorizes a second delete on the DB that
    is still `deleting`, with its tags."""
    clock = [1000.0]
    world = World(FAST, now=lambda: clock[0])
    delete = Call("rds", "DeleteDBInstance", params={"DBInstanceIdentifier": "fe-1", "SkipFinalSnapshot": "true"})
    answer = (f'<DeleteDBInstanceResponse xmlns="{RDS_NS}"><DeleteDBInstanceResult><DBInstance>'
              "<DBInstanceIdentifier>fe-1</DBInstanceIdentifier><DBInstanceStatus>deleting</DBInstanceStatus>"
              "<TagList><Tag><Key>featureenv.io/cluster</Key><Value>e2e</Value></Tag></TagList></DBInstance>"
              "</DeleteDBInstanceResult></DeleteDBInstanceResponse>").encode()
    world.observe(delete, 200, answer)
    _, lookup = detail(delete)
    assert lookup is not None
    assert lookup.read(404, NOT_FOUND, world) == {"resource_tags": {"fe-1": {"featureenv.io/cluster": "e2e"}}}
    clock[0] += FAST.rds_deleting + 0.01
    assert lookup.read(404, NOT_FOUND, world) == {"resource_tags": {"fe-1": {}}}


def test_parameters_unknown_to_ssm_have_no_tags() -> None:
    fields, lookup = detail(jsoncall("ssm", "PutParameter", {"Name": "/featureenv/e2e/u/database", "Value": "x",
                                                             "Type": "SecureString", "Overwrite": False}))
    assert fields == {"region": "eu-west-1", "name": "/featureenv/e2e/u/database", "overwrite": False,
                      "request_tags": None, "resource_tags": None}
    assert lookup is not None and lookup.target == "AmazonSSM.ListTagsForResource"
    assert lookup.doc == {"ResourceType": "Parameter", "ResourceId": "/featureenv/e2e/u/database"}
    world = World(None)
    found = json.dumps({"TagList": [{"Key": "featureenv.io/cluster", "Value": "e2e"}]}).encode()
    assert lookup.read(200, found, world) == {"resource_tags": {"/featureenv/e2e/u/database": {
        "featureenv.io/cluster": "e2e"}}}
    missing = json.dumps({"__type": "InvalidResourceId", "Message": "Invalid Resource Id"}).encode()
    assert lookup.read(400, missing, world) == {"resource_tags": {"/featureenv/e2e/u/database": {}}}
    assert lookup.read(500, b"{}", world) is None
    assert lookup.read(200, b"not json", world) is None


def test_calls_without_resource_tags_need_no_look_up_and_unknown_ones_only_their_region() -> None:
    assert detail(jsoncall("ssm", "GetParametersByPath", {"Path": "/featureenv/e2e", "Recursive": True})) == (
        {"region": "eu-west-1", "path": "/featureenv/e2e", "recursive": True}, None)
    assert detail(jsoncall("ecr", "DescribeImages", {"repositoryName": "payments"})) == (
        {"region": "eu-west-1", "registry_id": None, "repository": "payments"}, None)
    assert detail(query("rds", "DescribeDBInstances")) == ({"region": "eu-west-1", "db_instance_id": None}, None)
    assert detail(query("ec2", "RebootInstances", **{"InstanceId.1": "i-1"})) == ({"region": "eu-west-1"}, None)


EC2_NS = "http://ec2.amazonaws.com/doc/2016-11-15"


def test_stop_and_start_are_decided_on_the_instances_tags_and_teach_their_states() -> None:
    """StopInstances / StartInstances: the instances and the tags they carry now (one
    DescribeInstances by instance-id), the same look-up teaching the layer their states."""
    for action in ("StopInstances", "StartInstances"):
        fields, lookup = detail(query("ec2", action, **{"InstanceId.1": "i-1", "InstanceId.2": "i-2"}))
        assert fields == {"region": "eu-west-1", "instance_ids": ["i-1", "i-2"], "resource_tags": None}, action
        assert lookup is not None and lookup.form == {
            "Action": "DescribeInstances", "Version": "2016-11-15", "Filter.1.Name": "instance-id",
            "Filter.1.Value.1": "i-1", "Filter.1.Value.2": "i-2"}, action
        answer = (f'<DescribeInstancesResponse xmlns="{EC2_NS}"><reservationSet><item><instancesSet><item>'
                  "<instanceId>i-1</instanceId><instanceState><code>80</code><name>stopped</name></instanceState>"
                  "<tagSet><item><key>featureenv.io/cluster</key><value>e2e</value></item></tagSet></item>"
                  "</instancesSet></item></reservationSet></DescribeInstancesResponse>").encode()
        assert lookup.read(200, answer, World(None)) == {"resource_tags": {"i-1": {"featureenv.io/cluster": "e2e"}}}


def test_stop_and_start_db_are_decided_on_the_databases_tags() -> None:
    fields, lookup = detail(query("rds", "StopDBInstance", DBInstanceIdentifier="fe-1"))
    assert fields == {"region": "eu-west-1", "db_instance_id": "fe-1", "resource_tags": None, "snapshot_id": None}
    assert lookup is not None and lookup.form is not None and lookup.form["DBInstanceIdentifier"] == "fe-1"
    assert lookup.read(200, db_answer({"featureenv.io/cluster": "e2e"}), World(None)) == {
        "resource_tags": {"fe-1": {"featureenv.io/cluster": "e2e"}}}
    fields, _ = detail(query("rds", "StopDBInstance", DBInstanceIdentifier="fe-1", DBSnapshotIdentifier="before"))
    assert fields["snapshot_id"] == "before"
    fields, lookup = detail(query("rds", "StartDBInstance", DBInstanceIdentifier="fe-1"))
    assert fields == {"region": "eu-west-1", "db_instance_id": "fe-1", "resource_tags": None}
    assert lookup is not None and lookup.form is not None and lookup.form["Action"] == "DescribeDBInstances"
