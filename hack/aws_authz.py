"""What the IAM authorization of each AWS call is decided on, for the call log of
hack/fault_proxy.py (tests/chart/test_iam_policy.py turns each logged call into the
authorization requests AWS makes and evaluates them against docs/iam-policy.json).

Owns, per operation the operator issues, the fields of the request its authorization
depends on (the resources it names, the tags it writes, the settings a policy can put
conditions on) and, where the decision also depends on the tags the resources already
carry (or on a role an instance profile stands for), the one look-up in moto that
tells (`Lookup`: the request to send and how to read moto's answer). Fields a look-up
fills are null until it answers, so an unanswered look-up reads as "unknown", never as
"no tags". No I/O: the proxy sends the look-up, straight to moto and not logged.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from aws_rules import (
    Call,
    ec2_run_tag_specs,
    json_tags,
    query_tags,
    rds_id_from_arn,
    rds_request_tags,
    values,
)
from aws_world import Doc, parse

EC2_VERSION = "2016-11-15"
RDS_VERSION = "2014-10-31"
IAM_VERSION = "2010-05-08"


class DeletingDatabases(Protocol):
    """What a look-up may ask the layer: moto forgets a deleted DB at once, while the
    layer still plays it `deleting` (with its tags) for a while, as AWS does."""

    def deleting_db_tags(self, db_id: str) -> dict[str, str] | None: ...


Reader = Callable[[int, bytes, DeletingDatabases], "dict[str, Any] | None"]


@dataclass(frozen=True)
class Lookup:
    """One request to moto (query protocol: `form`; JSON protocol: `target` + `doc`)
    and how its answer becomes log fields (None: moto's answer said nothing)."""

    service: str
    read: Reader
    form: dict[str, str] | None = None
    target: str | None = None
    doc: dict[str, Any] | None = None
    region: str | None = None  # the credential scope's region, if not the call's (IAM: us-east-1)


Detail = tuple[dict[str, Any], "Lookup | None"]


def detail(call: Call) -> Detail:
    """The log fields of `call`'s authorization and the look-up that completes them.
    Every call gets at least `region`; an operation this module does not model gets
    nothing more (the IAM test then refuses to guess)."""
    build = MODELS.get((call.service, call.action))
    if build is None:
        return {"region": call.region}, None
    fields, lookup = build(call)
    return {"region": call.region, **fields}, lookup


def tag_dict(tags: list[tuple[str, str]]) -> dict[str, str]:
    return {k: v for k, v in tags}


# --- EC2 ------------------------------------------------------------------------------------


def ec2_tag_items(doc: Doc, element: Any) -> dict[str, str]:
    return {doc.text(t, "key") or "": doc.text(t, "value") or "" for t in doc.findall(element, "tagSet/item")}


def read_instance_tags(ids: list[str]) -> Reader:
    """DescribeInstances filtered by instance-id -> {"resource_tags": {id: tags}} for the
    ids moto knows (an id it does not know has no tags to authorize on)."""

    def read(status: int, body: bytes, _: DeletingDatabases) -> dict[str, Any] | None:
        doc = parse(body) if status == 200 else None
        if doc is None:
            return None
        found = {}
        for item in doc.findall(doc.root, "reservationSet/item/instancesSet/item"):
            iid = doc.text(item, "instanceId") or ""
            if iid in ids:
                found[iid] = ec2_tag_items(doc, item)
        return {"resource_tags": found}

    return read


def instances_lookup(ids: list[str]) -> Lookup | None:
    if not ids:
        return None
    form = {"Action": "DescribeInstances", "Version": EC2_VERSION, "Filter.1.Name": "instance-id"}
    form.update({f"Filter.1.Value.{n}": iid for n, iid in enumerate(ids, start=1)})
    return Lookup("ec2", read_instance_tags(ids), form=form)


def on_instances(ids: list[str]) -> Detail:
    return {"instance_ids": ids, "resource_tags": None}, instances_lookup(ids)


def ec2_instance_ids(call: Call) -> Detail:
    """TerminateInstances, StopInstances, StartInstances: `InstanceId.N`."""
    return on_instances(values(call.params, "InstanceId"))


def ec2_one_instance(call: Call) -> Detail:
    """GetConsoleOutput, DescribeInstanceAttribute: one `InstanceId`."""
    iid = call.params.get("InstanceId")
    return on_instances([iid] if iid else [])


def ec2_create_tags(call: Call) -> Detail:
    """CreateTags on existing resources (any EC2 type): their tags from DescribeTags
    filtered by resource-id (a resource without tags is absent from its answer)."""
    ids = values(call.params, "ResourceId")
    fields = {"resource_ids": ids, "request_tags": tag_dict(query_tags(call.params, "Tag")), "resource_tags": None}
    if not ids:
        return fields, None
    form = {"Action": "DescribeTags", "Version": EC2_VERSION, "Filter.1.Name": "resource-id"}
    form.update({f"Filter.1.Value.{n}": rid for n, rid in enumerate(ids, start=1)})

    def read(status: int, body: bytes, _: DeletingDatabases) -> dict[str, Any] | None:
        doc = parse(body) if status == 200 else None
        if doc is None:
            return None
        found: dict[str, dict[str, str]] = {rid: {} for rid in ids}
        for item in doc.findall(doc.root, "tagSet/item"):
            rid = doc.text(item, "resourceId") or ""
            if rid in found:
                found[rid][doc.text(item, "key") or ""] = doc.text(item, "value") or ""
        return {"resource_tags": found}

    return fields, Lookup("ec2", read, form=form)


# RunInstances parameters naming resources the IAM test has no model for: a launch
# that uses one is reported as unsupported rather than evaluated without it.
RUN_UNMODELLED = re.compile(
    r"^(NetworkInterface\.|SecurityGroup\.|Placement\.(GroupName|GroupId|HostId|HostResourceGroupArn)$"
    r"|CapacityReservationSpecification\.|ElasticGpuSpecification\.|ElasticInferenceAccelerator\."
    r"|LicenseSpecification\.|BlockDeviceMapping\.\d+\.Ebs\.(SnapshotId|KmsKeyId)$)"
)


def ec2_run_instances(call: Call) -> Detail:
    """RunInstances: what it creates (tags per TagSpecification resource type), what it
    uses (image, subnet, security groups, key pair, launch template) and the instance
    profile, whose role (iam:PassRole) GetInstanceProfile tells."""
    p = call.params
    specs: dict[str, dict[str, str]] = {}
    for rtype, tags in ec2_run_tag_specs(p):
        specs.setdefault(rtype, {}).update(tag_dict(tags))
    template = p.get("LaunchTemplate.LaunchTemplateId") or p.get("LaunchTemplate.LaunchTemplateName")
    profile_name, profile_arn = p.get("IamInstanceProfile.Name"), p.get("IamInstanceProfile.Arn")
    fields: dict[str, Any] = {
        "image_id": p.get("ImageId"),
        "instance_type": p.get("InstanceType"),
        "subnet_id": p.get("SubnetId"),
        "security_group_ids": values(p, "SecurityGroupId"),
        "key_name": p.get("KeyName"),
        "launch_template": template,
        "http_tokens": p.get("MetadataOptions.HttpTokens"),
        "tag_specs": specs,
        "unmodelled": sorted({m.group(0).rstrip(".") for k in p if (m := RUN_UNMODELLED.match(k))}),
        "instance_profile": profile_arn or profile_name,
    }
    if not (profile_name or profile_arn):
        return fields, None
    fields["role_arns"] = None
    # GetInstanceProfile takes the name: the ARN's last path element.
    name = profile_name or (profile_arn or "").rsplit("/", 1)[-1]

    def read(status: int, body: bytes, _: DeletingDatabases) -> dict[str, Any] | None:
        doc = parse(body) if status == 200 else None
        profile = doc.find(doc.root, "GetInstanceProfileResult/InstanceProfile") if doc else None
        if doc is None or profile is None:
            return None
        roles = [doc.text(m, "Arn") or "" for m in doc.findall(profile, "Roles/member")]
        return {"instance_profile_arn": doc.text(profile, "Arn"), "role_arns": roles}

    form = {"Action": "GetInstanceProfile", "Version": IAM_VERSION, "InstanceProfileName": name}
    return fields, Lookup("iam", read, form=form, region="us-east-1")


def ec2_no_resource(call: Call) -> Detail:
    """DescribeImages, DescribeInstances: no resource-level permissions."""
    return {}, None


# --- RDS --------------------------------------------------------------------------------


def rds_tag_list(doc: Doc, element: Any) -> dict[str, str]:
    return {doc.text(t, "Key") or "": doc.text(t, "Value") or "" for t in doc.findall(element, "TagList/Tag")}


def db_lookup(db_id: str, key: str) -> Lookup:
    """DescribeDBInstances of one DB -> {"resource_tags": {key: its TagList}}; a DB
    moto does not know has none, unless the layer still plays it `deleting`."""

    def read(status: int, body: bytes, world: DeletingDatabases) -> dict[str, Any] | None:
        doc = parse(body)
        if doc is None:
            return None
        if status == 200:
            element = doc.find(doc.root, "DescribeDBInstancesResult/DBInstances/DBInstance")
            return {"resource_tags": {key: rds_tag_list(doc, element) if element is not None else {}}}
        code = doc.text(doc.root, "Error/Code")
        if status == 404 and code in ("DBInstanceNotFound", "DBInstanceNotFoundFault"):
            return {"resource_tags": {key: world.deleting_db_tags(db_id) or {}}}
        return None

    form = {"Action": "DescribeDBInstances", "Version": RDS_VERSION, "DBInstanceIdentifier": db_id}
    return Lookup("rds", read, form=form)


def rds_on_db(call: Call) -> Detail:
    """ModifyDBInstance, DeleteDBInstance, StartDBInstance: the DB named by
    DBInstanceIdentifier."""
    db_id = call.params.get("DBInstanceIdentifier", "")
    fields = {"db_instance_id": db_id, "resource_tags": None}
    return fields, db_lookup(db_id, db_id) if db_id else None


def rds_stop(call: Call) -> Detail:
    """StopDBInstance: the DB, and the snapshot it would take first (DBSnapshotIdentifier,
    null: not sent; the operator sends none)."""
    fields, lookup = rds_on_db(call)
    return {**fields, "snapshot_id": call.params.get("DBSnapshotIdentifier")}, lookup


def rds_add_tags(call: Call) -> Detail:
    """AddTagsToResource on an RDS ARN: its tags now (a DB: DescribeDBInstances;
    another resource type: ListTagsForResource)."""
    arn = call.params.get("ResourceName", "")
    fields = {"resource_name": arn, "request_tags": tag_dict(rds_request_tags(call.params)), "resource_tags": None}
    db_id = rds_id_from_arn(arn)
    if db_id:
        return fields, db_lookup(db_id, arn)
    if not arn.startswith("arn:"):
        return fields, None

    def read(status: int, body: bytes, _: DeletingDatabases) -> dict[str, Any] | None:
        doc = parse(body) if status == 200 else None
        result = doc.find(doc.root, "ListTagsForResourceResult") if doc else None
        if doc is None or result is None:
            return None
        return {"resource_tags": {arn: rds_tag_list(doc, result)}}

    form = {"Action": "ListTagsForResource", "Version": RDS_VERSION, "ResourceName": arn}
    return fields, Lookup("rds", read, form=form)


def rds_restore(call: Call) -> Detail:
    """RestoreDBInstanceFromDBSnapshot: the new DB (with its request tags), the snapshot
    (its engine names the default option and parameter groups, its tags are its
    resource tags: DescribeDBSnapshots), the groups it is restored into."""
    p = call.params
    snapshot = p.get("DBSnapshotIdentifier", "")
    fields = {
        "db_instance_id": p.get("DBInstanceIdentifier"),
        "snapshot_id": snapshot,
        "subnet_group": p.get("DBSubnetGroupName"),
        "option_group": p.get("OptionGroupName"),
        "parameter_group": p.get("DBParameterGroupName"),
        "request_tags": tag_dict(rds_request_tags(p)),
        "snapshot": None,
    }
    if not snapshot:
        return fields, None

    def read(status: int, body: bytes, _: DeletingDatabases) -> dict[str, Any] | None:
        doc = parse(body) if status == 200 else None
        element = doc.find(doc.root, "DescribeDBSnapshotsResult/DBSnapshots/DBSnapshot") if doc else None
        if doc is None or element is None:
            return None
        return {"snapshot": {
            "arn": doc.text(element, "DBSnapshotArn"), "engine": doc.text(element, "Engine"),
            "engine_version": doc.text(element, "EngineVersion"), "tags": rds_tag_list(doc, element),
        }}

    form = {"Action": "DescribeDBSnapshots", "Version": RDS_VERSION, "DBSnapshotIdentifier": snapshot}
    return fields, Lookup("rds", read, form=form)


def rds_describe_instances(call: Call) -> Detail:
    return {"db_instance_id": call.params.get("DBInstanceIdentifier")}, None


def rds_describe_snapshots(call: Call) -> Detail:
    return {"db_instance_id": call.params.get("DBInstanceIdentifier"),
            "snapshot_id": call.params.get("DBSnapshotIdentifier")}, None


# --- SSM, ECR ------------------------------------------------------------------------------


def parameter_lookup(name: str) -> Lookup:
    """ListTagsForResource of a parameter -> {"resource_tags": {name: tags}}; one that
    does not exist (InvalidResourceId) has none."""

    def read(status: int, body: bytes, _: DeletingDatabases) -> dict[str, Any] | None:
        try:
            answer = json.loads(body or b"{}")
        except ValueError:
            return None
        if status == 200 and isinstance(answer.get("TagList"), list):
            return {"resource_tags": {name: {str(t.get("Key")): str(t.get("Value")) for t in answer["TagList"]}}}
        if status == 400 and answer.get("__type", "").rsplit("#", 1)[-1] == "InvalidResourceId":
            return {"resource_tags": {name: {}}}
        return None

    return Lookup("ssm", read, target="AmazonSSM.ListTagsForResource",
                  doc={"ResourceType": "Parameter", "ResourceId": name})


def ssm_on_parameter(call: Call) -> Detail:
    """GetParameter, DeleteParameter: the parameter `Name` and its tags."""
    name = str(call.doc.get("Name", ""))
    return {"name": name, "resource_tags": None}, parameter_lookup(name) if name else None


def ssm_put_parameter(call: Call) -> Detail:
    name = str(call.doc.get("Name", ""))
    fields = {
        "name": name,
        "overwrite": call.doc.get("Overwrite") is True,
        "request_tags": tag_dict(json_tags(call.doc)) if call.doc.get("Tags") else None,
        "resource_tags": None,
    }
    return fields, parameter_lookup(name) if name else None


def ssm_add_tags(call: Call) -> Detail:
    rtype, rid = str(call.doc.get("ResourceType", "")), str(call.doc.get("ResourceId", ""))
    fields = {"resource_type": rtype, "resource_id": rid, "request_tags": tag_dict(json_tags(call.doc)),
              "resource_tags": None}
    return fields, parameter_lookup(rid) if rtype == "Parameter" and rid else None


def ssm_by_path(call: Call) -> Detail:
    return {"path": call.doc.get("Path"), "recursive": call.doc.get("Recursive") is True}, None


def ecr_repository(call: Call) -> Detail:
    """DescribeImages, BatchGetImage: the repository (the registry defaults to the caller's)."""
    return {"registry_id": call.doc.get("registryId"), "repository": call.doc.get("repositoryName")}, None


MODELS: dict[tuple[str, str], Callable[[Call], Detail]] = {
    ("ec2", "DescribeImages"): ec2_no_resource,
    ("ec2", "DescribeInstances"): ec2_no_resource,
    ("ec2", "RunInstances"): ec2_run_instances,
    ("ec2", "CreateTags"): ec2_create_tags,
    ("ec2", "TerminateInstances"): ec2_instance_ids,
    ("ec2", "StopInstances"): ec2_instance_ids,
    ("ec2", "StartInstances"): ec2_instance_ids,
    ("ec2", "GetConsoleOutput"): ec2_one_instance,
    ("ec2", "DescribeInstanceAttribute"): ec2_one_instance,
    ("rds", "DescribeDBInstances"): rds_describe_instances,
    ("rds", "DescribeDBSnapshots"): rds_describe_snapshots,
    ("rds", "RestoreDBInstanceFromDBSnapshot"): rds_restore,
    ("rds", "AddTagsToResource"): rds_add_tags,
    ("rds", "ModifyDBInstance"): rds_on_db,
    ("rds", "DeleteDBInstance"): rds_on_db,
    ("rds", "StopDBInstance"): rds_stop,
    ("rds", "StartDBInstance"): rds_on_db,
    ("ssm", "GetParameter"): ssm_on_parameter,
    ("ssm", "DeleteParameter"): ssm_on_parameter,
    ("ssm", "PutParameter"): ssm_put_parameter,
    ("ssm", "AddTagsToResource"): ssm_add_tags,
    ("ssm", "GetParametersByPath"): ssm_by_path,
    ("ecr", "DescribeImages"): ecr_repository,
    ("ecr", "BatchGetImage"): ecr_repository,
}
