"""Strict AWS request rules for hack/fault_proxy.py: documented constraints moto skips.

Pure: each rule is a function of one parsed request (`Call`) and a read-only view of
what the proxy has seen of the account (`Observed`, implemented by aws_world.World).
A broken rule yields a `Violation` with AWS's error code and message, which the proxy
answers in the protocol's own error format with HTTP 400 before moto sees the request.

Every rule names its source in the AWS documentation (`source`), and says where its
message text comes from (`wording`): AWS's own as seen in real responses ("observed"),
the API reference's description of the error ("documented"), or written after AWS's
style because neither could be found ("modelled").
`python3 hack/fault_proxy.py --list-rules` prints the table kept in docs/local-stack.md.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol
from urllib.parse import parse_qsl

# --- sources ------------------------------------------------------------------------

EC2_TAG_RESTRICTIONS = "https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/Using_Tags.html#tag-restrictions"
EC2_IMDS_TAGS = "https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/work-with-tags-in-IMDS.html"
EC2_RUN_INSTANCES = "https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_RunInstances.html"
EC2_USER_DATA = "https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instancedata-add-user-data.html"
EC2_METADATA_OPTIONS = "https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_InstanceMetadataOptionsRequest.html"
EC2_PAGINATION = "https://docs.aws.amazon.com/AWSEC2/latest/APIReference/Query-Requests.html#api-pagination"
EC2_STOP_INSTANCES = "https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_StopInstances.html"
EC2_START_INSTANCES = "https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_StartInstances.html"
RDS_RESTORE = "https://docs.aws.amazon.com/AmazonRDS/latest/APIReference/API_RestoreDBInstanceFromDBSnapshot.html"
RDS_TAG = "https://docs.aws.amazon.com/AmazonRDS/latest/APIReference/API_Tag.html"
RDS_TAGGING_GUIDE = "https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/USER_Tagging.html"
RDS_ADD_TAGS = "https://docs.aws.amazon.com/AmazonRDS/latest/APIReference/API_AddTagsToResource.html"
RDS_MODIFY = "https://docs.aws.amazon.com/AmazonRDS/latest/APIReference/API_ModifyDBInstance.html"
RDS_DELETE = "https://docs.aws.amazon.com/AmazonRDS/latest/APIReference/API_DeleteDBInstance.html"
RDS_DESCRIBE_INSTANCES = "https://docs.aws.amazon.com/AmazonRDS/latest/APIReference/API_DescribeDBInstances.html"
RDS_DESCRIBE_SNAPSHOTS = "https://docs.aws.amazon.com/AmazonRDS/latest/APIReference/API_DescribeDBSnapshots.html"
SSM_PUT_PARAMETER = "https://docs.aws.amazon.com/systems-manager/latest/APIReference/API_PutParameter.html"
SSM_NAME_CONSTRAINTS = "https://docs.aws.amazon.com/systems-manager/latest/userguide/sysman-parameter-name-constraints.html"
SSM_TAG = "https://docs.aws.amazon.com/systems-manager/latest/APIReference/API_Tag.html"
SSM_ADD_TAGS = "https://docs.aws.amazon.com/systems-manager/latest/APIReference/API_AddTagsToResource.html"
SSM_BY_PATH = "https://docs.aws.amazon.com/systems-manager/latest/APIReference/API_GetParametersByPath.html"
# Its constraints as botocore ships them (data/ssm/2014-11-06/service-2.json,
# SendCommandRequest): the API reference in machine-readable form.
SSM_SEND_COMMAND = "https://docs.aws.amazon.com/systems-manager/latest/APIReference/API_SendCommand.html"
ECR_DESCRIBE_IMAGES = "https://docs.aws.amazon.com/AmazonECR/latest/APIReference/API_DescribeImages.html"
ECR_BATCH_GET_IMAGE = "https://docs.aws.amazon.com/AmazonECR/latest/APIReference/API_BatchGetImage.html"


# --- requests -----------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One AWS request as the rules see it.

    `params` holds a query-protocol form (first value of each field); `doc` the body
    of a JSON-protocol request. Exactly one of them is meaningful for a service.
    """

    service: str
    action: str
    region: str = "us-east-1"
    params: dict[str, str] = field(default_factory=dict)
    doc: dict[str, Any] = field(default_factory=dict)
    json_protocol: bool = False
    access_key: str = "testing"  # the access key id it was signed with (moto picks the account by it)


def parse_call(
    service: str, action: str, region: str, body: bytes, json_protocol: bool, access_key: str = "testing"
) -> Call:
    params: dict[str, str] = {}
    doc: dict[str, Any] = {}
    text = body.decode("utf-8", errors="replace")
    if json_protocol:
        try:
            loaded = json.loads(text) if text.strip() else {}
            doc = loaded if isinstance(loaded, dict) else {}
        except ValueError:
            doc = {}
    else:
        for key, value in parse_qsl(text, keep_blank_values=True):
            params.setdefault(key, value)
    return Call(service, action, region, params, doc, json_protocol, access_key)


def members(params: dict[str, str], prefix: str) -> list[dict[str, str]]:
    """Members of a flattened query list, `prefix.N.rest=value` -> [{rest: value}] by N."""
    found: dict[int, dict[str, str]] = {}
    head = prefix + "."
    for key, value in params.items():
        if key.startswith(head):
            index, _, rest = key[len(head):].partition(".")
            if index.isdigit():
                found.setdefault(int(index), {})[rest] = value
    return [found[i] for i in sorted(found)]


def values(params: dict[str, str], prefix: str) -> list[str]:
    """Scalars of a flattened query list, `prefix.N=value` -> [value] by N."""
    found: dict[int, str] = {}
    head = prefix + "."
    for key, value in params.items():
        if key.startswith(head) and key[len(head):].isdigit():
            found[int(key[len(head):])] = value
    return [found[i] for i in sorted(found)]


Tag = tuple[str, str]


def query_tags(entry: dict[str, str], prefix: str) -> list[Tag]:
    return [(m.get("Key", ""), m.get("Value", "")) for m in members(entry, prefix)]


def ec2_run_tag_specs(params: dict[str, str]) -> list[tuple[str, list[Tag]]]:
    """RunInstances `TagSpecification.N`: (ResourceType, tags) per specification."""
    return [(spec.get("ResourceType", ""), query_tags(spec, "Tag")) for spec in members(params, "TagSpecification")]


def rds_request_tags(params: dict[str, str]) -> list[Tag]:
    # The RDS model names list members `Tag` (Tags.Tag.N); accept the generic form too.
    return query_tags(params, "Tags.Tag") or query_tags(params, "Tags.member")


def json_tags(doc: dict[str, Any]) -> list[Tag]:
    tags = doc.get("Tags") or []
    return [(str(t.get("Key", "")), str(t.get("Value", ""))) for t in tags if isinstance(t, dict)]


def rds_id_from_arn(arn: str) -> str | None:
    m = re.fullmatch(r"arn:aws[a-z-]*:rds:[a-z0-9-]+:\d{12}:db:(.+)", arn)
    return m.group(1).lower() if m else None


def truthy(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def ssm_instance_ids(call: Call) -> list[str]:
    """SendCommand's `InstanceIds` (strings only; anything else is the model rule's to refuse)."""
    ids = call.doc.get("InstanceIds")
    return [i for i in ids if isinstance(i, str)] if isinstance(ids, list) else []


# --- what the rules may ask about the account ---------------------------------------


# `Observed.instance_state` of an instance id moto does not know.
INSTANCE_NOT_FOUND = "not-found"


class Observed(Protocol):
    def instance_metadata_tags(self, instance_id: str) -> bool:
        """Whether the instance was launched (or last seen) with InstanceMetadataTags=enabled."""

    def instance_state(self, instance_id: str) -> str | None:
        """The instance's state as AWS would give it now (pending, running, stopping,
        stopped, shutting-down, terminated: moto's last known state with the emulated
        transitions over it), INSTANCE_NOT_FOUND if it is known not to exist, None if
        nothing is known."""

    def instance_launch_pending(self, instance_id: str) -> bool:
        """Whether the instance is still `pending` after its launch: it has never been
        `running` (as opposed to `pending` again after a StartInstances)."""

    def db_engine(self, db_id: str) -> str | None:
        """The engine of a DB instance seen in a response, if any."""

    def db_tag_keys(self, db_id: str) -> set[str]:
        """Tag keys the DB instance is known to carry."""

    def parameter_tag_keys(self, name: str) -> set[str]:
        """Tag keys the SSM parameter is known to carry."""


class NothingObserved:
    """An `Observed` that has seen nothing (for stateless checks and tests)."""

    def instance_metadata_tags(self, instance_id: str) -> bool:
        return False

    def instance_state(self, instance_id: str) -> str | None:
        return None

    def instance_launch_pending(self, instance_id: str) -> bool:
        return False

    def db_engine(self, db_id: str) -> str | None:
        return None

    def db_tag_keys(self, db_id: str) -> set[str]:
        return set()

    def parameter_tag_keys(self, name: str) -> set[str]:
        return set()


# --- rules --------------------------------------------------------------------------


@dataclass(frozen=True)
class Violation:
    code: str
    message: str
    rule: str
    status: int = 400


@dataclass(frozen=True)
class Rule:
    id: str
    service: str
    actions: tuple[str, ...]
    summary: str
    code: str
    source: str
    # "observed": AWS's own text, seen in real responses quoted in public issues;
    # "documented": the error's description in the API reference; "modelled": written
    # in AWS's style because neither could be found.
    wording: str
    check: Callable[[Call, Observed], Violation | None]
    also: str | None = None  # a second code some violations of the rule carry


RULES: list[Rule] = []


class Combination(Exception):
    """Raised by a check when the request combines parameters that exclude each other:
    the violation then carries InvalidParameterCombination instead of the rule's code."""


def rule(
    id: str, service: str, actions: Iterable[str], summary: str, code: str, source: str, wording: str,
    also: str | None = None,
) -> Callable[[Callable[[Call, Observed], str | None]], Callable[[Call, Observed], str | None]]:
    """Registers a check returning the violation message (or None) under `id`."""

    def register(fn: Callable[[Call, Observed], str | None]) -> Callable[[Call, Observed], str | None]:
        def check(call: Call, seen: Observed) -> Violation | None:
            try:
                message = fn(call, seen)
            except Combination as combination:
                return Violation("InvalidParameterCombination", str(combination), id)
            return Violation(code, message, id) if message is not None else None

        RULES.append(Rule(id, service, tuple(actions), summary, code, source, wording, check, also))
        return fn

    return register


def check(call: Call, seen: Observed) -> Violation | None:
    """The first rule `call` breaks, or None."""
    for r in RULES:
        if r.service == call.service and call.action in r.actions:
            violation = r.check(call, seen)
            if violation is not None:
                return violation
    return None


def first(items: Iterable[str | None]) -> str | None:
    return next((item for item in items if item is not None), None)


# Characters the RDS and SSM models allow in tag keys and values:
# ^([\p{L}\p{Z}\p{N}_.:/=+\-@]*)$ (Python's re has no \p{..}, hence the category test).
TAG_PATTERN = r"^([\p{L}\p{Z}\p{N}_.:/=+\-@]*)$"


def tag_chars_ok(text: str) -> bool:
    return all(c in "_.:/=+-@" or unicodedata.category(c)[0] in "LZN" for c in text)


# EC2 ---------------------------------------------------------------------------------

EC2_TAG_LIMIT = 50
EC2_TAG_KEY_MAX = 128
EC2_TAG_VALUE_MAX = 256
IMDS_TAG_KEY = re.compile(r"[0-9a-zA-Z\-_+=,.@:]{1,255}")
IMDS_RESERVED_KEYS = (".", "..", "_index")


def ec2_tag_sets(call: Call) -> list[tuple[str, list[Tag]]]:
    """(resource type or '', tags) for each set of tags a request applies to one resource."""
    if call.action == "RunInstances":
        return ec2_run_tag_specs(call.params)
    if call.action == "CreateTags":
        return [("", query_tags(call.params, "Tag"))]
    return []


@rule(
    "ec2.tags.count", "ec2", ("RunInstances", "CreateTags"),
    "at most 50 tags per resource (moto checks CreateTags against existing tags; this checks each request)",
    "TagLimitExceeded", EC2_TAG_RESTRICTIONS, "modelled (moto's own text)",
)
def _ec2_tag_count(call: Call, seen: Observed) -> str | None:
    for _, tags in ec2_tag_sets(call):
        if len([k for k, _ in tags if not k.lower().startswith("aws:")]) > EC2_TAG_LIMIT:
            return "The maximum number of Tags for a resource has been reached."
    return None


@rule(
    "ec2.tags.reserved-prefix", "ec2", ("RunInstances", "CreateTags"),
    "tag keys may not begin with aws: (any case)",
    "InvalidParameterValue", EC2_TAG_RESTRICTIONS, "observed",
)
def _ec2_tag_prefix(call: Call, seen: Observed) -> str | None:
    for _, tags in ec2_tag_sets(call):
        for key, _ in tags:
            if key.lower().startswith("aws:"):
                if call.action == "CreateTags":
                    return f"Value ( {key} ) for parameter key is invalid. Tag keys starting with 'aws:' are reserved for internal use"
                return "Tag keys starting with 'aws:' are reserved for internal use"
    return None


@rule(
    "ec2.tags.key-length", "ec2", ("RunInstances", "CreateTags"),
    "tag key 1..128 characters",
    "InvalidParameterValue", EC2_TAG_RESTRICTIONS, "modelled",
)
def _ec2_tag_key_length(call: Call, seen: Observed) -> str | None:
    for _, tags in ec2_tag_sets(call):
        for key, _ in tags:
            if not key:
                return "Tag key must not be empty"
            if len(key) > EC2_TAG_KEY_MAX:
                return f"Tag key exceeds the maximum length of {EC2_TAG_KEY_MAX} characters"
    return None


@rule(
    "ec2.tags.value-length", "ec2", ("RunInstances", "CreateTags"),
    "tag value 0..256 characters",
    "InvalidParameterValue", EC2_TAG_RESTRICTIONS, "observed",
)
def _ec2_tag_value_length(call: Call, seen: Observed) -> str | None:
    for _, tags in ec2_tag_sets(call):
        for _, value in tags:
            if len(value) > EC2_TAG_VALUE_MAX:
                return f"Tag value exceeds the maximum length of {EC2_TAG_VALUE_MAX} characters"
    return None


@rule(
    "ec2.tags.unique-key", "ec2", ("RunInstances", "CreateTags"),
    "each tag key once per resource",
    "InvalidParameterValue", EC2_TAG_RESTRICTIONS, "modelled",
)
def _ec2_tag_unique(call: Call, seen: Observed) -> str | None:
    for _, tags in ec2_tag_sets(call):
        keys = [k for k, _ in tags]
        for key in keys:
            if keys.count(key) > 1:
                return f"Duplicate tag key '{key}' specified."
    return None


def imds_key_problem(key: str) -> str | None:
    if IMDS_TAG_KEY.fullmatch(key) and key not in IMDS_RESERVED_KEYS:
        return None
    return (
        f"'{key}' is not a valid tag key. Tag keys must match pattern ([0-9a-zA-Z\\-_+=,.@:]{{1,255}}), "
        "and must not be a reserved name ('.', '..', '_index')"
    )


@rule(
    "ec2.tags.imds-key", "ec2", ("RunInstances", "CreateTags"),
    "with InstanceMetadataTags=enabled, instance tag keys match [0-9a-zA-Z-_+=,.@:]{1,255} (no '/', no space) "
    "and are not '.', '..' or '_index' (RunInstances; CreateTags on an instance launched or seen with it enabled)",
    "InvalidParameterValue", EC2_IMDS_TAGS, "observed",
)
def _ec2_imds_tag_keys(call: Call, seen: Observed) -> str | None:
    if call.action == "RunInstances":
        if call.params.get("MetadataOptions.InstanceMetadataTags", "").lower() != "enabled":
            return None
        keys = [k for rtype, tags in ec2_run_tag_specs(call.params) if rtype == "instance" for k, _ in tags]
    else:
        instances = [r for r in values(call.params, "ResourceId") if seen.instance_metadata_tags(r)]
        if not instances:
            return None
        keys = [k for k, _ in query_tags(call.params, "Tag")]
    return first(imds_key_problem(k) for k in keys)


@rule(
    "ec2.run.client-token", "ec2", ("RunInstances",),
    "ClientToken at most 64 ASCII characters",
    "InvalidParameterValue", EC2_RUN_INSTANCES, "modelled",
)
def _ec2_client_token(call: Call, seen: Observed) -> str | None:
    token = call.params.get("ClientToken")
    if token is None:
        return None
    if len(token) > 64 or not token.isascii():
        return f"Value ({token}) for parameter clientToken is invalid. Must be at most 64 ASCII characters"
    return None


USER_DATA_MAX = 16384


@rule(
    "ec2.run.user-data", "ec2", ("RunInstances",),
    "UserData is base64 and at most 16 KB (16384 bytes) before encoding",
    "InvalidParameterValue", EC2_USER_DATA, "observed (bad base64: modelled)",
)
def _ec2_user_data(call: Call, seen: Observed) -> str | None:
    encoded = call.params.get("UserData")
    if encoded is None:
        return None
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return "Invalid BASE64 encoding of user data."
    if len(raw) > USER_DATA_MAX:
        return f"User data is limited to {USER_DATA_MAX} bytes"
    return None


@rule(
    "ec2.run.hop-limit", "ec2", ("RunInstances",),
    "MetadataOptions.HttpPutResponseHopLimit is an integer 1..64",
    "InvalidParameterValue", EC2_METADATA_OPTIONS, "modelled",
)
def _ec2_hop_limit(call: Call, seen: Observed) -> str | None:
    raw = call.params.get("MetadataOptions.HttpPutResponseHopLimit")
    if raw is None:
        return None
    try:
        ok = 1 <= int(raw) <= 64
    except ValueError:
        ok = False
    if ok:
        return None
    return f"Value ( {raw} ) for parameter httpPutResponseHopLimit is invalid. Expecting a value between 1 and 64."


@rule(
    "ec2.describe.max-results", "ec2", ("DescribeInstances",),
    "MaxResults 5..1000 and not together with InstanceId.N",
    "InvalidParameterValue", EC2_PAGINATION, "observed (over 1000: modelled)", also="InvalidParameterCombination",
)
def _ec2_max_results(call: Call, seen: Observed) -> str | None:
    raw = call.params.get("MaxResults")
    if raw is None:
        return None
    if values(call.params, "InstanceId"):
        raise Combination("The parameter instancesSet cannot be used with the parameter maxResults")
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 5:
        return f"Value ( {raw} ) for parameter maxResults is invalid. Expecting a value greater than 5."
    if n > 1000:
        return f"Value ( {raw} ) for parameter maxResults is invalid. Expecting a value less than 1000."
    return None


# StopInstances / StartInstances: moto (5.2.1) changes the state of any instance it
# knows, a terminated one included (it even "starts" a terminated instance again).
# The states come from the look-up the proxy makes just before the request (the
# authorization look-up, DescribeInstances by instance-id) with the emulated transitions
# over them, so an instance terminated behind the layer's back is refused too.
STOP_REFUSED_STATES = ("shutting-down", "terminated")
# `stopping` cannot be started until it is `stopped`; `pending` and `running` are left to
# moto (a start of a running instance is accepted and changes nothing).
START_REFUSED_STATES = ("stopping", "shutting-down", "terminated")


def ec2_instance_ids(call: Call) -> list[str]:
    """A query request's `InstanceId.N`."""
    return values(call.params, "InstanceId")


@rule(
    "ec2.stop.state", "ec2", ("StopInstances",),
    "each of InstanceIds is not shutting-down or terminated, and has been running (an instance still pending "
    "after its launch cannot be stopped); stopping or stopped ones are accepted and stay as they are",
    "IncorrectInstanceState", EC2_STOP_INSTANCES,
    "observed (terminated: ansible-collections/amazon.aws#146; never running: cloud-custodian/cloud-custodian#6014)",
)
def _ec2_stop_state(call: Call, seen: Observed) -> str | None:
    for iid in ec2_instance_ids(call):
        if seen.instance_state(iid) in STOP_REFUSED_STATES:
            return f"This instance '{iid}' is not in a state from which it can be stopped."
        if seen.instance_launch_pending(iid):
            return f"Instance '{iid}' cannot be stopped as it has never reached the 'running' state."
    return None


@rule(
    "ec2.start.state", "ec2", ("StartInstances",),
    "each of InstanceIds is not stopping (it starts once stopped), shutting-down or terminated; pending or "
    "running ones are accepted and stay as they are",
    "IncorrectInstanceState", EC2_START_INSTANCES,
    "observed (canonical/ubuntu-pro-client#1697; stopping: burstable-ai/burst#42)",
)
def _ec2_start_state(call: Call, seen: Observed) -> str | None:
    for iid in ec2_instance_ids(call):
        if seen.instance_state(iid) in START_REFUSED_STATES:
            return f"The instance '{iid}' is not in a state from which it can be started."
    return None


# RDS ---------------------------------------------------------------------------------

RDS_ID = re.compile(r"[A-Za-z](?:[A-Za-z0-9]|-(?!-))*")


def rds_identifier_problem(parameter: str, value: str, max_len: int) -> str | None:
    if len(value) > max_len:
        return f"The parameter {parameter} is not a valid identifier because it is longer than {max_len} characters."
    if not value or not RDS_ID.fullmatch(value) or value.endswith("-"):
        return (
            f"The parameter {parameter} is not a valid identifier. Identifiers must begin with a letter; "
            "must contain only ASCII letters, digits, and hyphens; and must not end with a hyphen or "
            "contain two consecutive hyphens."
        )
    return None


@rule(
    "rds.db-identifier", "rds", ("RestoreDBInstanceFromDBSnapshot", "ModifyDBInstance"),
    "new DBInstanceIdentifier: 1..63 letters, digits, hyphens; a letter first; no trailing hyphen; no '--'",
    "InvalidParameterValue", RDS_RESTORE, "observed",
)
def _rds_identifier(call: Call, seen: Observed) -> str | None:
    if call.action == "RestoreDBInstanceFromDBSnapshot":
        return rds_identifier_problem("DBInstanceIdentifier", call.params.get("DBInstanceIdentifier", ""), 63)
    new_id = call.params.get("NewDBInstanceIdentifier")
    return rds_identifier_problem("NewDBInstanceIdentifier", new_id, 63) if new_id is not None else None


@rule(
    "rds.delete.final-snapshot", "rds", ("DeleteDBInstance",),
    "FinalDBSnapshotIdentifier required unless SkipFinalSnapshot, and not with it; "
    "when given, 1..255 letters/digits/hyphens, a letter first",
    "InvalidParameterValue", RDS_DELETE, "observed (both given: modelled)", also="InvalidParameterCombination",
)
def _rds_final_snapshot(call: Call, seen: Observed) -> str | None:
    skip = truthy(call.params.get("SkipFinalSnapshot"))
    final = call.params.get("FinalDBSnapshotIdentifier")
    if not skip and not final:
        raise Combination("FinalDBSnapshotIdentifier is required unless SkipFinalSnapshot is specified.")
    if skip and final:
        raise Combination("Cannot specify both SkipFinalSnapshot and FinalDBSnapshotIdentifier.")
    return rds_identifier_problem("FinalDBSnapshotIdentifier", final, 255) if final else None


RDS_TAG_LIMIT = 50


def rds_tag_problem(key: str, value: str) -> str | None:
    if not 1 <= len(key) <= 128:
        return f"Tag key length must be between 1 and 128 characters: '{key}'"
    if len(value) > 256:
        return f"Tag value length must not exceed 256 characters for key '{key}'"
    for prefix in ("aws:", "rds:"):
        if key.lower().startswith(prefix):
            return f'Tag keys cannot start with the reserved prefix "{prefix}".'
        if value.lower().startswith(prefix):
            return f'Tag values cannot start with the reserved prefix "{prefix}".'
    if not tag_chars_ok(key):
        return "Tag keys may only contain unicode letters, digits, whitespace, or one of these symbols: _ . : / = + - @"
    if not tag_chars_ok(value):
        return "Tag values may only contain unicode letters, digits, whitespace, or one of these symbols: _ . : / = + \\ - @"
    return None


@rule(
    "rds.tags", "rds", ("RestoreDBInstanceFromDBSnapshot", "AddTagsToResource"),
    "tag key 1..128, value 0..256, both in [\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*, neither prefixed aws: or rds:",
    "InvalidParameterValue", RDS_TAG, "observed (lengths: modelled)",
)
def _rds_tags(call: Call, seen: Observed) -> str | None:
    return first(rds_tag_problem(k, v) for k, v in rds_request_tags(call.params))


@rule(
    "rds.tags.count", "rds", ("RestoreDBInstanceFromDBSnapshot", "AddTagsToResource"),
    "at most 50 tags per resource (the request plus the keys the layer has seen on it)",
    "InvalidParameterValue", RDS_TAGGING_GUIDE, "modelled (code too: RDS documents no error for it)",
)
def _rds_tag_count(call: Call, seen: Observed) -> str | None:
    keys = {k for k, _ in rds_request_tags(call.params)}
    if call.action == "AddTagsToResource":
        db_id = rds_id_from_arn(call.params.get("ResourceName", ""))
        if db_id:
            keys |= seen.db_tag_keys(db_id)
    if len(keys) > RDS_TAG_LIMIT:
        return f"Cannot have more than {RDS_TAG_LIMIT} tags on a resource ({len(keys)} requested)."
    return None


@rule(
    "rds.resource-name", "rds", ("AddTagsToResource",),
    "ResourceName is an RDS ARN",
    "InvalidParameterValue", RDS_ADD_TAGS, "observed",
)
def _rds_resource_name(call: Call, seen: Observed) -> str | None:
    name = call.params.get("ResourceName", "")
    if re.fullmatch(r"arn:aws[a-z-]*:rds:[a-z0-9-]+:\d{12}:[a-z-]+:.+", name):
        return None
    return f"Invalid resource name: {name}"


# Printable ASCII is 0x20..0x7e; the password may use all of it but for these four.
RDS_PASSWORD_FORBIDDEN = '/"@ '
RDS_PASSWORD_LENGTH = {
    "db2": (8, 255), "mariadb": (8, 41), "mysql": (8, 41), "oracle": (8, 30),
    "postgres": (8, 128), "sqlserver": (8, 128),
}


def engine_family(engine: str | None) -> str:
    e = (engine or "postgres").lower()
    for family in RDS_PASSWORD_LENGTH:
        if e.startswith(family):
            return family
    return "postgres"


@rule(
    "rds.master-password", "rds", ("ModifyDBInstance",),
    "MasterUserPassword: printable ASCII except / \" @ and space; length by engine "
    "(PostgreSQL/SQL Server 8..128, MySQL/MariaDB 8..41, Oracle 8..30, Db2 8..255; unknown engine: PostgreSQL)",
    "InvalidParameterValue", RDS_MODIFY, "observed (lengths: modelled)",
)
def _rds_password(call: Call, seen: Observed) -> str | None:
    password = call.params.get("MasterUserPassword")
    if password is None:
        return None
    if any(c in RDS_PASSWORD_FORBIDDEN or not (0x20 <= ord(c) <= 0x7E) for c in password):
        return (
            "The parameter MasterUserPassword is not a valid password. Only printable ASCII characters "
            "besides '/', '@', '\"', ' ' may be used."
        )
    family = engine_family(seen.db_engine(call.params.get("DBInstanceIdentifier", "").lower()))
    low, high = RDS_PASSWORD_LENGTH[family]
    if len(password) < low:
        return f"The parameter MasterUserPassword is not a valid password because it is shorter than {low} characters."
    if len(password) > high:
        return f"The parameter MasterUserPassword is not a valid password because it is longer than {high} characters."
    return None


@rule(
    "rds.describe.max-records", "rds", ("DescribeDBInstances", "DescribeDBSnapshots"),
    "MaxRecords 20..100",
    "InvalidParameterValue", RDS_DESCRIBE_INSTANCES, "modelled",
)
def _rds_max_records(call: Call, seen: Observed) -> str | None:
    raw = call.params.get("MaxRecords")
    if raw is None:
        return None
    try:
        ok = 20 <= int(raw) <= 100
    except ValueError:
        ok = False
    return None if ok else f"Invalid value {raw} for MaxRecords. Must be between 20 and 100"


@rule(
    "rds.describe-snapshots.automated", "rds", ("DescribeDBSnapshots",),
    "a DBSnapshotIdentifier of an automated snapshot (rds:...) needs SnapshotType",
    "InvalidParameterCombination", RDS_DESCRIBE_SNAPSHOTS, "modelled", also="InvalidParameterCombination",
)
def _rds_automated_snapshot(call: Call, seen: Observed) -> str | None:
    snapshot = call.params.get("DBSnapshotIdentifier", "")
    if snapshot.lower().startswith("rds:") and not call.params.get("SnapshotType"):
        raise Combination(
            f"DBSnapshotIdentifier {snapshot} identifies an automated snapshot; SnapshotType must also be specified."
        )
    return None


# SSM ---------------------------------------------------------------------------------

SSM_NAME_CHARS = re.compile(r"[a-zA-Z0-9_.\-/]+")
SSM_NAME_MESSAGE = (
    'Parameter name: can\'t be prefixed with "ssm" (case-insensitive). If formed as a path, it can consist of '
    "sub-paths divided by slash symbol; each sub-path can be formed as a mix of letters, numbers and the "
    "following 3 symbols .-_"
)
SSM_PATH_MESSAGE = (
    'The parameter doesn\'t meet the parameter name requirements. The parameter name must begin with a forward '
    'slash "/". It can\'t be prefixed with \\"aws\\" or \\"ssm\\" (case-insensitive). It must use only letters, '
    "numbers, or the following symbols: . (period), - (hyphen), _ (underscore). Special characters are not "
    'allowed. All sub-paths, if specified, must use the forward slash symbol "/". Valid example: '
    "/get/parameters2-/by1./path0_."
)
SSM_NAME_WITH_ARN_MAX = 1011
SSM_MAX_DEPTH = 15
SSM_ACCOUNT_ID_LEN = 12


def ssm_name_shape_ok(name: str) -> bool:
    """Valid characters, and a path only when fully qualified with no empty sub-path."""
    if not SSM_NAME_CHARS.fullmatch(name):
        return False
    if "/" in name:
        return name.startswith("/") and all(name.split("/")[1:])
    return True


def ssm_depth(name: str) -> int:
    return len([part for part in name.split("/") if part])


@rule(
    "ssm.name.chars", "ssm", ("PutParameter",),
    "Name uses a-zA-Z0-9_.- and '/' between sub-paths; a path starts with '/' (no spaces)",
    "ValidationException", SSM_NAME_CONSTRAINTS, "observed",
)
def _ssm_name_chars(call: Call, seen: Observed) -> str | None:
    return None if ssm_name_shape_ok(str(call.doc.get("Name", "")).strip()) else SSM_NAME_MESSAGE


@rule(
    "ssm.name.length", "ssm", ("PutParameter",),
    "Name at most 1011 characters counting the ARN before it (arn:aws:ssm:REGION:ACCOUNT:parameter)",
    "ValidationException", SSM_NAME_CONSTRAINTS, "modelled",
)
def _ssm_name_length(call: Call, seen: Observed) -> str | None:
    name = str(call.doc.get("Name", "")).strip()
    arn_prefix = f"arn:aws:ssm:{call.region}:{'0' * SSM_ACCOUNT_ID_LEN}:parameter"
    total = len(arn_prefix) + len(name if name.startswith("/") else "/" + name)
    if total > SSM_NAME_WITH_ARN_MAX:
        return (
            f"Parameter name is too long: {total} characters including its ARN; "
            f"the maximum is {SSM_NAME_WITH_ARN_MAX}."
        )
    return None


@rule(
    "ssm.name.depth", "ssm", ("PutParameter",),
    "at most 15 levels in the hierarchy",
    "HierarchyLevelLimitExceededException", SSM_NAME_CONSTRAINTS, "documented (the exception's text in the API reference)",
)
def _ssm_name_depth(call: Call, seen: Observed) -> str | None:
    if ssm_depth(str(call.doc.get("Name", ""))) > SSM_MAX_DEPTH:
        return (
            "A hierarchy can have a maximum of 15 levels. For more information, see Requirements and constraints "
            "for parameter names in the Amazon Web Services Systems Manager User Guide."
        )
    return None


SSM_STANDARD_VALUE_MAX = 4096
SSM_ADVANCED_VALUE_MAX = 8192


@rule(
    "ssm.value.size", "ssm", ("PutParameter",),
    "Value at most 4 KB (4096 characters) in the Standard tier (the default), 8 KB in Advanced",
    "ValidationException", SSM_PUT_PARAMETER, "observed",
)
def _ssm_value_size(call: Call, seen: Observed) -> str | None:
    value = str(call.doc.get("Value", ""))
    tier = str(call.doc.get("Tier") or "Standard")
    limit = SSM_STANDARD_VALUE_MAX if tier in ("Standard", "Intelligent-Tiering") else SSM_ADVANCED_VALUE_MAX
    if len(value) <= limit:
        return None
    if limit == SSM_STANDARD_VALUE_MAX:
        return (
            "Standard tier parameters support a maximum parameter value of 4096 characters. To create a larger "
            "parameter value, upgrade the parameter to use the advanced-parameter tier. For more information, see "
            "https://docs.aws.amazon.com/systems-manager/latest/userguide/parameter-store-advanced-parameters.html"
        )
    return "Advanced tier parameters support a maximum parameter value of 8192 characters."


@rule(
    "ssm.value.no-reference", "ssm", ("PutParameter",),
    "Value may not nest a parameter reference ({{...}})",
    "ValidationException", SSM_PUT_PARAMETER, "modelled",
)
def _ssm_value_reference(call: Call, seen: Observed) -> str | None:
    if re.search(r"\{\{.*?\}\}", str(call.doc.get("Value", "")), re.S):
        return "Parameter values can't reference or nest other parameters: remove the {{ }} from the value."
    return None


def validation_message(problems: list[str]) -> str:
    """AWS's JSON-protocol validation message for model constraints."""
    word = "error" if len(problems) == 1 else "errors"
    return f"{len(problems)} validation {word} detected: " + "; ".join(problems)


def ssm_tag_problems(tags: list[Tag]) -> list[str]:
    problems: list[str] = []
    for i, (key, value) in enumerate(tags, start=1):
        for field_name, text, low, high in (("key", key, 1, 128), ("value", value, 0, 256)):
            at = f"Value '{text}' at 'tags.{i}.member.{field_name}' failed to satisfy constraint: Member must"
            if len(text) > high:
                problems.append(f"{at} have length less than or equal to {high}")
            elif len(text) < low:
                problems.append(f"{at} have length greater than or equal to {low}")
            if not tag_chars_ok(text):
                problems.append(f"{at} satisfy regular expression pattern: {TAG_PATTERN}")
    return problems


@rule(
    "ssm.tags", "ssm", ("PutParameter", "AddTagsToResource"),
    "tag key 1..128, value 0..256, both in [\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*",
    "ValidationException", SSM_TAG, "observed (AWS's validation format)",
)
def _ssm_tags(call: Call, seen: Observed) -> str | None:
    problems = ssm_tag_problems(json_tags(call.doc))
    return validation_message(problems) if problems else None


@rule(
    "ssm.tags.count", "ssm", ("PutParameter", "AddTagsToResource"),
    "at most 50 tags on a parameter (the request plus the keys the layer has seen on it)",
    "TooManyTagsError", SSM_ADD_TAGS, "documented (the exception's text in the API reference)",
)
def _ssm_tag_count(call: Call, seen: Observed) -> str | None:
    keys = {k for k, _ in json_tags(call.doc)}
    if call.action == "AddTagsToResource" and call.doc.get("ResourceType") == "Parameter":
        keys |= seen.parameter_tag_keys(str(call.doc.get("ResourceId", "")))
    if len(keys) > 50:
        return "The Targets parameter includes too many tags. Remove one or more tags and try the command again."
    return None


@rule(
    "ssm.by-path", "ssm", ("GetParametersByPath",),
    "Path starts with '/', uses the name characters, at most 15 levels; MaxResults 1..10",
    "ValidationException", SSM_BY_PATH, "observed (MaxResults: AWS's validation format)",
)
def _ssm_by_path(call: Call, seen: Observed) -> str | None:
    path = str(call.doc.get("Path", ""))
    if not path.startswith("/") or not SSM_NAME_CHARS.fullmatch(path) or ssm_depth(path) > SSM_MAX_DEPTH:
        return SSM_PATH_MESSAGE
    limit = call.doc.get("MaxResults")
    if limit is not None and not (isinstance(limit, int) and 1 <= limit <= 10):
        return validation_message(
            [f"Value '{limit}' at 'maxResults' failed to satisfy constraint: Member must have value less than or equal to 10"]
        )
    return None


SSM_DOCUMENT_NAME = r"^[a-zA-Z0-9_\-.:/]{3,128}$"
SSM_INSTANCE_ID = r"(^i-(\w{8}|\w{17})$)|(^mi-\w{17}$)"
SSM_INSTANCE_IDS_MAX = 50
SSM_COMMENT_MAX = 100
SSM_TIMEOUT_SECONDS = (30, 2592000)


def model_match(pattern: str, text: str) -> bool:
    """A model pattern as AWS (Java) applies it: the whole value, \\w ASCII-only."""
    return re.fullmatch(pattern, text, re.ASCII) is not None


def aws_list(values: list[Any]) -> str:
    """A list value as AWS's validation messages print it: [a, b]."""
    return "[" + ", ".join(str(v) for v in values) + "]"


@rule(
    "ssm.send-command.model", "ssm", ("SendCommand",),
    "DocumentName required, ^[a-zA-Z0-9_\\-.:/]{3,128}$; InstanceIds at most 50, each "
    "(^i-(\\w{8}|\\w{17})$)|(^mi-\\w{17}$); Comment at most 100 characters; TimeoutSeconds 30..2592000 "
    "(botocore's data/ssm/2014-11-06/service-2.json, SendCommandRequest)",
    "ValidationException", SSM_SEND_COMMAND, "observed (AWS's validation format; the instance id pattern: aws/aws-cli#7048)",
)
def _ssm_send_command_model(call: Call, seen: Observed) -> str | None:
    doc, problems = call.doc, []
    name = doc.get("DocumentName")
    if name is None:
        problems.append("Value null at 'documentName' failed to satisfy constraint: Member must not be null")
    elif not model_match(SSM_DOCUMENT_NAME, str(name)):
        problems.append(
            f"Value '{name}' at 'documentName' failed to satisfy constraint: "
            f"Member must satisfy regular expression pattern: {SSM_DOCUMENT_NAME}"
        )
    ids = doc.get("InstanceIds")
    if isinstance(ids, list):
        if len(ids) > SSM_INSTANCE_IDS_MAX:
            problems.append(
                f"Value '{aws_list(ids)}' at 'instanceIds' failed to satisfy constraint: "
                f"Member must have length less than or equal to {SSM_INSTANCE_IDS_MAX}"
            )
        if not all(isinstance(i, str) and model_match(SSM_INSTANCE_ID, i) for i in ids):
            problems.append(
                f"Value '{aws_list(ids)}' at 'instanceIds' failed to satisfy constraint: Member must satisfy "
                f"constraint: [Member must satisfy regular expression pattern: {SSM_INSTANCE_ID}]"
            )
    comment = doc.get("Comment")
    if comment is not None and len(str(comment)) > SSM_COMMENT_MAX:
        problems.append(
            f"Value '{comment}' at 'comment' failed to satisfy constraint: "
            f"Member must have length less than or equal to {SSM_COMMENT_MAX}"
        )
    timeout = doc.get("TimeoutSeconds")
    low, high = SSM_TIMEOUT_SECONDS
    if isinstance(timeout, int) and not isinstance(timeout, bool):
        if timeout < low:
            problems.append(
                f"Value '{timeout}' at 'timeoutSeconds' failed to satisfy constraint: "
                f"Member must have value greater than or equal to {low}"
            )
        elif timeout > high:
            problems.append(
                f"Value '{timeout}' at 'timeoutSeconds' failed to satisfy constraint: "
                f"Member must have value less than or equal to {high}"
            )
    return validation_message(problems) if problems else None


# The parameters the AWS-owned document AWS-RunShellScript declares (`aws ssm
# describe-document --name AWS-RunShellScript`): commands (StringList, required),
# workingDirectory (String), executionTimeout (String, seconds, 1..172800, default 3600).
RUN_SHELL_SCRIPT = "AWS-RunShellScript"
RUN_SHELL_SCRIPT_PARAMETERS = {"commands", "workingDirectory", "executionTimeout"}
EXECUTION_TIMEOUT_MAX = 172800
SSM_INVALID_PARAMETERS = (
    "You must specify values for all required parameters in the Amazon Web Services Systems Manager document "
    "(SSM document). You can only supply values to parameters defined in the SSM document."
)


def execution_timeout_ok(values: Any) -> bool:
    if not (isinstance(values, list) and len(values) == 1 and isinstance(values[0], str)):
        return False
    return bool(re.fullmatch(r"[1-9][0-9]{0,5}", values[0])) and int(values[0]) <= EXECUTION_TIMEOUT_MAX


@rule(
    "ssm.send-command.parameters", "ssm", ("SendCommand",),
    "AWS-RunShellScript: Parameters has `commands` (a list of strings), may have `workingDirectory` and "
    "`executionTimeout` (one string, 1..172800 seconds), and nothing else",
    "InvalidParameters", SSM_SEND_COMMAND, "documented (the exception's text in the API reference)",
)
def _ssm_send_command_parameters(call: Call, seen: Observed) -> str | None:
    if call.doc.get("DocumentName") != RUN_SHELL_SCRIPT:
        return None
    parameters = call.doc.get("Parameters")
    if not isinstance(parameters, dict):
        return SSM_INVALID_PARAMETERS
    commands = parameters.get("commands")
    if not (isinstance(commands, list) and commands and all(isinstance(c, str) for c in commands)):
        return SSM_INVALID_PARAMETERS
    if set(parameters) - RUN_SHELL_SCRIPT_PARAMETERS:
        return SSM_INVALID_PARAMETERS
    if "executionTimeout" in parameters and not execution_timeout_ok(parameters["executionTimeout"]):
        return SSM_INVALID_PARAMETERS
    return None


# moto's account (the layer answers for one account; AWS names the caller's).
MOTO_ACCOUNT_ID = "123456789012"
# The API reference: "The managed node isn't in a valid state. Valid states are:
# Running, Pending, Stopped, and Stopping. Invalid states are: Shutting-down and
# Terminated." An id that does not exist is refused the same way. A command sent to a
# stopped (or stopping) instance is accepted and waits: its invocation reads `Delayed`
# ("The managed node might not be available because ... the node was stopped ... The
# system will try to send the command again", API_GetCommandInvocation StatusDetails)
# until the node is back or the delivery timeout ends it (`Delivery Timed Out`). The
# boot simulator delivers it after the restart, within TimeoutSeconds.
SEND_COMMAND_INVALID_STATES = ("shutting-down", "terminated", INSTANCE_NOT_FOUND)


@rule(
    "ssm.send-command.instance-state", "ssm", ("SendCommand",),
    "each of InstanceIds exists and is not shutting-down or terminated (states asked of moto just before; "
    "stopped and stopping are valid states: the command waits for delivery; not modelled: an agent that has "
    "not registered yet)",
    "InvalidInstanceId", SSM_SEND_COMMAND, "observed",
)
def _ssm_send_command_instance_state(call: Call, seen: Observed) -> str | None:
    invalid = [i for i in ssm_instance_ids(call) if seen.instance_state(i) in SEND_COMMAND_INVALID_STATES]
    if not invalid:
        return None
    return f"Instances [[{', '.join(invalid)}]] not in a valid state for account {MOTO_ACCOUNT_ID}"


# ECR ---------------------------------------------------------------------------------

ECR_REPOSITORY_NAME = re.compile(r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*")
ECR_REPOSITORY_PATTERN = "(?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+(?:[._-][a-z0-9]+)*"


def ecr_parameter(name: str, constraint: str) -> str:
    return f"Invalid parameter at '{name}' failed to satisfy constraint: '{constraint}'"


def _ecr_repository_and_images(call: Call) -> str | None:
    """What DescribeImages and BatchGetImage share: repositoryName, registryId, imageIds."""
    repo = str(call.doc.get("repositoryName", ""))
    if len(repo) < 2:
        return ecr_parameter("repositoryName", "must have length greater than or equal to 2")
    if len(repo) > 256:
        return ecr_parameter("repositoryName", "must have length less than or equal to 256")
    if not ECR_REPOSITORY_NAME.fullmatch(repo):
        return ecr_parameter("repositoryName", f"must satisfy regular expression '{ECR_REPOSITORY_PATTERN}'")
    registry = call.doc.get("registryId")
    if registry is not None and not re.fullmatch(r"[0-9]{12}", str(registry)):
        return ecr_parameter("registryId", "must satisfy regular expression '[0-9]{12}'")
    image_ids = call.doc.get("imageIds")
    if image_ids is not None:
        if not 1 <= len(image_ids) <= 100:
            return ecr_parameter("imageIds", "Member must have length less than or equal to 100")
        for image in image_ids:
            tag = image.get("imageTag") if isinstance(image, dict) else None
            if tag is not None and not 1 <= len(str(tag)) <= 300:
                return ecr_parameter("imageIds.member.imageTag", "Member must have length less than or equal to 300")
    return None


@rule(
    "ecr.describe-images", "ecr", ("DescribeImages",),
    "repositoryName 2..256 matching the model's pattern; registryId 12 digits; imageIds 1..100 with tags 1..300; "
    "maxResults 1..1000 and not with imageIds",
    "InvalidParameterException", ECR_DESCRIBE_IMAGES, "observed (maxResults with imageIds: modelled)",
)
def _ecr_describe_images(call: Call, seen: Observed) -> str | None:
    wrong = _ecr_repository_and_images(call)
    if wrong:
        return wrong
    limit = call.doc.get("maxResults")
    if limit is not None:
        if call.doc.get("imageIds"):
            return "maxResults can't be used with imageIds: specify one or the other."
        if not (isinstance(limit, int) and 1 <= limit <= 1000):
            return ecr_parameter("maxResults", "Member must have value less than or equal to 1000")
    return None


@rule(
    "ecr.batch-get-image", "ecr", ("BatchGetImage",),
    "repositoryName 2..256 matching the model's pattern; registryId 12 digits; imageIds 1..100 with tags 1..300; "
    "acceptedMediaTypes 1..100 (the service model's ImageIdentifierList and MediaTypeList)",
    "InvalidParameterException", ECR_BATCH_GET_IMAGE, "modelled",
)
def _ecr_batch_get_image(call: Call, seen: Observed) -> str | None:
    wrong = _ecr_repository_and_images(call)
    if wrong:
        return wrong
    media_types = call.doc.get("acceptedMediaTypes")
    if media_types is not None and not 1 <= len(media_types) <= 100:
        return ecr_parameter("acceptedMediaTypes", "Member must have length less than or equal to 100")
    return None


def rules_table() -> str:
    """The rule table (Markdown) that docs/local-stack.md carries."""
    lines = ["| rule | operations | constraint | AWS error code | message | source |", "|---|---|---|---|---|---|"]
    for r in RULES:
        ops = ", ".join(f"{r.service}:{a}" for a in r.actions)
        summary = r.summary.replace("|", "\\|")
        codes = r.code if r.also in (None, r.code) else f"{r.code}, {r.also}"
        page = r.source.rsplit("/", 1)[-1].replace(".html", "")
        lines.append(f"| `{r.id}` | {ops} | {summary} | {codes} | {r.wording} | [{page}]({r.source}) |")
    return "\n".join(lines)
