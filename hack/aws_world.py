"""The account as hack/fault_proxy.py has seen it, and AWS's timing played over moto.

Owns the layer's memory of the account (instances launched with metadata tags, instance
states, DB engines, statuses and tags, parameter tags, RunInstances client tokens)
learned from requests and moto's answers, and the clock-driven behaviour moto lacks,
applied by rewriting moto's answers:
  * an instance reads `pending` for `ec2_pending` seconds after RunInstances;
  * an instance reads `stopping` for `ec2_stopping` seconds after StopInstances (moto:
    `stopped` at once), and `pending` for `ec2_starting` seconds after StartInstances
    (moto: `running` at once); the answers of both say what AWS says (previous and
    current state, a repeated call changing nothing);
  * a restored DB instance reads `creating` (no endpoint yet) for `rds_creating`
    seconds, then `backing-up` for `rds_backing_up`, then what moto says;
  * a DB instance reads `stopping` for `rds_stopping` seconds after StopDBInstance
    (moto: `stopped` at once) and `starting` for `rds_starting` seconds after
    StartDBInstance (moto: `available` at once); one `stopped` for `rds_auto_start`
    seconds is started again, as AWS starts a DB instance stopped for seven days
    (`take_due_auto_starts`: the proxy then starts it in moto);
  * a deleted DB instance (moto forgets it at once) still reads `deleting` for
    `rds_deleting` seconds, and refuses a second delete, a modify and a new restore
    of the same identifier;
  * tags written by CreateTags / AddTagsToResource stay invisible (old value, or
    absent) in DescribeInstances / DescribeDBInstances, tag filters included, for
    `tag_lag` seconds: AWS's eventual consistency.
Also, whatever the timing, it keeps moto's record of an SSM SendCommand true: moto
5.2.1 records a command sent with InstanceIds and no Targets as sent to *every*
instance of the region (its ListCommands then shows them all), so the request moto
gets also carries Targets `instance-id` = those ids (`moto_request`), and the answer
is given back as AWS gives it (`rewrite`).
And an EC2 GetConsoleOutput of an instance the boot simulator runs is answered with
that instance's own serial console (what its real bootstrap script wrote), as AWS
gives it: base64, the last 64 KB, `Latest` honoured (`console_output_answer`); moto's
canned boot text stays the answer for any other instance.
No I/O; the clock (`now`) and the consoles (`consoles`) are injected, so tests can
drive them.
"""

from __future__ import annotations

import base64
import copy
import fnmatch
import hashlib
import json
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Callable

from aws_rules import (
    INSTANCE_NOT_FOUND,
    Call,
    Violation,
    ec2_run_tag_specs,
    json_tags,
    members,
    query_tags,
    rds_id_from_arn,
    rds_request_tags,
    ssm_instance_ids,
    values,
)

# --- timing ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """Seconds each emulated AWS state lasts."""

    ec2_pending: float
    rds_creating: float
    rds_backing_up: float
    rds_deleting: float
    tag_lag: float
    ec2_stopping: float
    ec2_starting: float
    rds_stopping: float
    rds_starting: float
    # How long a DB instance stays `stopped` before AWS starts it again.
    rds_auto_start: float

    def scaled(self, factor: float) -> "Timing":
        return Timing(*(getattr(self, f) * factor for f in self.__dataclass_fields__))


# The seven days after which RDS starts a stopped DB instance again ("You can stop a DB
# instance for up to seven days. If you don't manually start your DB instance after
# seven days, your DB instance is automatically started": USER_StopInstance.html;
# API_StopDBInstance.html: "The instance restarts automatically after 7 days").
SEVEN_DAYS = 7 * 24 * 3600.0

# Sub-second to a second, so the end-to-end suite stays fast yet meets every
# transition. The auto-start is compressed as the RDS periods are (600 s -> 1 s), to
# 1008 s: never within an ordinary test; --rds-auto-start-seconds shows it.
FAST = Timing(ec2_pending=0.5, rds_creating=1.0, rds_backing_up=0.3, rds_deleting=0.5, tag_lag=0.3,
              ec2_stopping=1.0, ec2_starting=0.5, rds_stopping=1.0, rds_starting=1.0,
              rds_auto_start=SEVEN_DAYS / 600)
# Measured or documented figures; sources in docs/local-stack.md ("Timing").
REALISTIC = Timing(ec2_pending=15.0, rds_creating=600.0, rds_backing_up=120.0, rds_deleting=300.0, tag_lag=2.0,
                   ec2_stopping=30.0, ec2_starting=16.0, rds_stopping=240.0, rds_starting=480.0,
                   rds_auto_start=SEVEN_DAYS)
PRESETS = {"fast": FAST, "realistic": REALISTIC}


def timing_for(mode: str, scale: float, rds_auto_start: float | None = None) -> Timing | None:
    """The timing of `--timing MODE --time-scale SCALE [--rds-auto-start-seconds S]`
    (S as given, not scaled); None for `off`."""
    if mode == "off":
        return None
    timing = PRESETS[mode].scaled(scale)
    if rds_auto_start is not None:
        timing = replace(timing, rds_auto_start=rds_auto_start)
    return timing


# --- XML --------------------------------------------------------------------------------


def namespace(root: ET.Element) -> str:
    return root.tag[1:].split("}", 1)[0] if root.tag.startswith("{") else ""


def serialize(root: ET.Element) -> bytes:
    """The document with its namespace as the default one, as AWS (and moto) write it:
    SDK parsers match element names, and some of them do not expect prefixes."""
    ns = namespace(root)
    text = ET.tostring(root, encoding="unicode", default_namespace=ns or None)
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + text).encode()


class Doc:
    """An AWS XML answer with namespace-aware helpers."""

    def __init__(self, body: bytes) -> None:
        self.root = ET.fromstring(body)
        self.ns = namespace(self.root)

    def q(self, path: str) -> str:
        """`a/b` -> `{ns}a/{ns}b` (ElementPath with the document's namespace)."""
        if not self.ns:
            return path
        return "/".join(part if part in (".", "..") or not part else f"{{{self.ns}}}{part}" for part in path.split("/"))

    def find(self, el: ET.Element, path: str) -> ET.Element | None:
        return el.find(self.q(path))

    def findall(self, el: ET.Element, path: str) -> list[ET.Element]:
        return el.findall(self.q(path))

    def text(self, el: ET.Element, path: str) -> str | None:
        found = self.find(el, path)
        return found.text if found is not None else None

    def new(self, parent: ET.Element, name: str, text: str | None = None) -> ET.Element:
        child = ET.SubElement(parent, f"{{{self.ns}}}{name}" if self.ns else name)
        child.text = text
        return child

    def bytes(self) -> bytes:
        return serialize(self.root)


def parse(body: bytes) -> Doc | None:
    try:
        return Doc(body)
    except ET.ParseError:
        return None


# --- filters ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Filter:
    name: str
    values: tuple[str, ...]


def query_filters(params: dict[str, str]) -> list[Filter]:
    return [
        Filter(m.get("Name", ""), tuple(values(m, "Value")))
        for m in members(params, "Filter")
    ]


def wildcard(pattern: str, text: str) -> bool:
    # EC2 filter values take * and ? as wildcards; fnmatchcase also knows [..], which
    # a tag value containing '[' would then misread: escape it.
    return fnmatch.fnmatchcase(text, pattern.replace("[", "[[]"))


def instance_matches(filters: list[Filter], state: str, tags: dict[str, str]) -> bool:
    """Whether an instance with this state and tags passes the filters the layer re-checks."""
    for f in filters:
        if f.name == "instance-state-name":
            ok = any(wildcard(v, state) for v in f.values)
        elif f.name.startswith("tag:"):
            key = f.name[4:]
            ok = key in tags and any(wildcard(v, tags[key]) for v in f.values)
        elif f.name == "tag-key":
            ok = any(wildcard(v, k) for v in f.values for k in tags)
        elif f.name == "tag-value":
            ok = any(wildcard(v, t) for v in f.values for t in tags.values())
        else:
            continue
        if not ok:
            return False
    return True


# --- the world --------------------------------------------------------------------------


@dataclass
class TagWrite:
    value: str
    previous: str | None  # None: the key did not exist (as far as the layer knows)
    visible_at: float


@dataclass
class Database:
    engine: str | None = None
    restored_at: float | None = None
    deleted_at: float | None = None
    deleted_xml: bytes | None = None  # the DBInstance element DeleteDBInstance returned
    tag_keys: set[str] = field(default_factory=set)
    status: str | None = None  # as moto last gave it (moto changes it at once)
    stopped_at: float | None = None  # StopDBInstance accepted
    started_at: float | None = None  # StartDBInstance accepted, or started by the auto-start
    # Where (region, access key id) the stop was made: the auto-start starts it there.
    stopped_by: tuple[str, str] | None = None


# EC2's instance state codes (API_InstanceState).
STATE_CODES = {"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48, "stopping": 64, "stopped": 80}


@dataclass(frozen=True)
class AutoStart:
    """A DB instance AWS starts on its own after it has been stopped for seven days."""

    db_id: str
    region: str
    access_key: str
    stopped_at: float
    start_at: float  # when AWS starts it (it reads `starting` from then)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(frozen=True)
class Console:
    """An instance's serial console as its instance wrote it, oldest byte first."""

    text: bytes  # all of it, or at least its last CONSOLE_OUTPUT_MAX_BYTES
    updated_at: float  # Unix seconds of the last write


# instance id -> its console, or None for an instance nobody plays (moto's answer stands)
Consoles = Callable[[str], Console | None]


def no_consoles(_instance_id: str) -> Console | None:
    return None


class World:
    """What the layer knows of the account, and the emulated AWS timing.

    Thread-safe: the proxy serves requests from several threads.
    """

    def __init__(
        self, timing: Timing | None, now: Callable[[], float] = time.monotonic, consoles: Consoles = no_consoles
    ) -> None:
        self.timing = timing
        self.now = now
        self.consoles = consoles
        self.lock = threading.RLock()
        self.launched_at: dict[str, float] = {}
        # instance id -> when a StopInstances / StartInstances changed its state
        self.stopped_at: dict[str, float] = {}
        self.started_at: dict[str, float] = {}
        # instance id -> (previous, current) state of the last Stop/StartInstances answer
        self.transitions: dict[str, tuple[str, str]] = {}
        self.metadata_tags: set[str] = set()
        # instance id -> state name as moto last gave it (or INSTANCE_NOT_FOUND)
        self.instance_states: dict[str, str] = {}
        self.dbs: dict[str, Database] = {}
        self.parameter_tags: dict[str, set[str]] = {}
        # resource id (instance id, DB identifier) -> key -> last value seen / pending write
        self.seen_tags: dict[str, dict[str, str]] = {}
        self.tag_writes: dict[str, dict[str, TagWrite]] = {}
        # (region, ClientToken) -> (fingerprint of the parameters, first answer)
        self.launches: dict[tuple[str, str], tuple[str, Answer]] = {}
        self.token_locks: dict[tuple[str, str], threading.Lock] = {}

    # -- Observed (read by aws_rules) --------------------------------------------------

    def instance_metadata_tags(self, instance_id: str) -> bool:
        with self.lock:
            return instance_id in self.metadata_tags

    def instance_state(self, instance_id: str) -> str | None:
        with self.lock:
            state = self.instance_states.get(instance_id)
            return self._instance_view(instance_id, state, self.now()) if state else state

    def instance_launch_pending(self, instance_id: str) -> bool:
        with self.lock:
            launched = self.launched_at.get(instance_id)
            return bool(
                self.timing and launched is not None and instance_id not in self.stopped_at
                and self.instance_states.get(instance_id) in ("pending", "running")
                and self.now() - launched < self.timing.ec2_pending
            )

    def _instance_view(self, instance_id: str, state: str, now: float) -> str:
        """moto's `state` of the instance as AWS gives it at `now`: `pending` for a while
        after its launch or a start, `stopping` for a while after a stop."""
        if self.timing is None:
            return state
        if state == "running":
            launched = self.launched_at.get(instance_id)
            started = self.started_at.get(instance_id)
            if launched is not None and now - launched < self.timing.ec2_pending:
                return "pending"
            if started is not None and now - started < self.timing.ec2_starting:
                return "pending"
        if state == "stopped":
            stopped = self.stopped_at.get(instance_id)
            if stopped is not None and now - stopped < self.timing.ec2_stopping:
                return "stopping"
        return state

    def db_engine(self, db_id: str) -> str | None:
        with self.lock:
            db = self.dbs.get(db_id.lower())
            return db.engine if db else None

    def db_tag_keys(self, db_id: str) -> set[str]:
        with self.lock:
            db = self.dbs.get(db_id.lower())
            return set(db.tag_keys) if db else set()

    def parameter_tag_keys(self, name: str) -> set[str]:
        with self.lock:
            return set(self.parameter_tags.get(name, set()))

    def deleting_db_tags(self, db_id: str) -> dict[str, str] | None:
        """The tags of a DB moto has forgotten and the layer still plays `deleting`
        (from the DBInstance its DeleteDBInstance returned); None for any other."""
        with self.lock:
            db = self.dbs.get(db_id.lower())
            if db is None or db.deleted_xml is None or not self.deleting(db_id):
                return None
            doc = Doc(db.deleted_xml)
            return {doc.text(t, "Key") or "": doc.text(t, "Value") or "" for t in doc.findall(doc.root, "TagList/Tag")}

    def db(self, db_id: str) -> Database:
        return self.dbs.setdefault(db_id.lower(), Database())

    def db_status(self, db_id: str) -> str | None:
        """The DB instance's status as AWS would give it now (moto's last known status
        with the emulated transitions over it), None if nothing is known."""
        with self.lock:
            db = self.dbs.get(db_id.lower())
            if db is None:
                return None
            if db.deleted_at is not None:  # gone (moto forgot it), or still played `deleting`
                return "deleting" if self.deleting(db_id) else None
            return self._db_view(db, db.status, self.now()) if db.status else None

    def _db_view(self, db: Database, status: str, now: float) -> str:
        """moto's `status` of `db` as AWS gives it at `now`."""
        if self.timing is None or db.deleted_at is not None:
            return status
        t = self.timing
        if status == "available" and db.restored_at is not None:
            age = now - db.restored_at
            if age < t.rds_creating:
                return "creating"
            if age < t.rds_creating + t.rds_backing_up:
                return "backing-up"
        if status == "available" and db.started_at is not None and now - db.started_at < t.rds_starting:
            return "starting"
        if status == "stopped" and db.stopped_at is not None and now - db.stopped_at < t.rds_stopping:
            return "stopping"
        return status

    # -- the seven-day automatic start --------------------------------------------------

    def take_due_auto_starts(self) -> list["AutoStart"]:
        """Each DB instance `stopped` (as moto has it, stopped through the layer) for
        `rds_auto_start` seconds: AWS starts it then. Each is taken once: it reads
        `starting` from the moment AWS would have started it, as if started then; the
        caller starts it in moto (and calls `auto_start_failed` if moto would not)."""
        if self.timing is None:
            return []
        due = []
        with self.lock:
            now = self.now()
            for db_id, db in self.dbs.items():
                if (db.status != "stopped" or db.stopped_at is None or db.stopped_by is None
                        or db.deleted_at is not None):
                    continue
                start_at = db.stopped_at + self.timing.rds_stopping + self.timing.rds_auto_start
                if now < start_at:
                    continue
                due.append(AutoStart(db_id, *db.stopped_by, stopped_at=db.stopped_at, start_at=start_at))
                db.status, db.started_at, db.stopped_at = "available", start_at, None
        return due

    def auto_start_failed(self, start: "AutoStart") -> None:
        """moto did not start it: the DB stays stopped (and is tried again)."""
        with self.lock:
            db = self.db(start.db_id)
            db.status, db.started_at, db.stopped_at = "stopped", None, start.stopped_at

    # -- RunInstances client tokens ----------------------------------------------------

    def token_lock(self, region: str, token: str) -> threading.Lock:
        with self.lock:
            return self.token_locks.setdefault((region, token), threading.Lock())

    @staticmethod
    def fingerprint(call: Call) -> str:
        fields = sorted((k, v) for k, v in call.params.items() if k not in ("Action", "Version"))
        return hashlib.sha256(repr(fields).encode()).hexdigest()

    def launch_replay(self, call: Call) -> Answer | Violation | None:
        """For a RunInstances whose ClientToken was used before: the first answer again
        (same parameters), IdempotentParameterMismatch (other parameters). The caller
        holds `token_lock`."""
        token = call.params.get("ClientToken")
        if not token:
            return None
        with self.lock:
            launch = self.launches.get((call.region, token))
        if launch is None:
            return None
        fingerprint, answer = launch
        if fingerprint != self.fingerprint(call):
            return Violation(
                "IdempotentParameterMismatch",
                "Arguments on this idempotent request are inconsistent with arguments used in previous request(s).",
                "ec2.run.client-token-idempotency",
            )
        return answer

    def remember_launch(self, call: Call, answer: Answer) -> None:
        token = call.params.get("ClientToken")
        if token and answer.status == 200:
            with self.lock:
                self.launches[(call.region, token)] = (self.fingerprint(call), answer)

    # -- refusals that follow from the emulated state --------------------------------

    def deleting(self, db_id: str) -> bool:
        db = self.dbs.get(db_id.lower())
        return bool(
            self.timing and db and db.deleted_at is not None
            and self.now() - db.deleted_at < self.timing.rds_deleting
        )

    def state_violation(self, call: Call) -> Violation | None:
        """A request the account's state refuses and moto would not: the emulated states
        (moto has none of them), and a stopped DB instance (moto modifies it)."""
        if call.service != "rds":
            return None
        db_id = call.params.get("DBInstanceIdentifier", "")
        with self.lock:
            status = self.db_status(db_id)
            if call.action == "ModifyDBInstance" and status == "stopped":
                # moto knows the DB is stopped, but modifies it: a refusal in every timing mode.
                return Violation(
                    "InvalidDBInstanceState",
                    "You can't modify a stopped DB instance. Start the DB instance, and then modify it.",
                    "rds.state.modify-stopped",
                )
            if self.timing is None:
                return None
            if call.action == "DeleteDBInstance" and self.deleting(db_id):
                return Violation(
                    "InvalidDBInstanceState", f"Instance {db_id} is already being deleted.", "rds.state.deleting"
                )
            if call.action == "ModifyDBInstance" and status in ("creating", "deleting", "stopping", "starting"):
                return Violation(
                    "InvalidDBInstanceState", "Database instance is not in available state.", "rds.state.not-available"
                )
            if call.action == "RestoreDBInstanceFromDBSnapshot" and self.deleting(db_id):
                return Violation("DBInstanceAlreadyExists", "DB instance already exists", "rds.state.exists")
            # moto refuses a stop of what it has `stopped` and a start of what it has
            # `available`, with these words; the emulated states are the layer's to refuse.
            if call.action == "StopDBInstance" and status in ("creating", "backing-up", "starting", "deleting"):
                return Violation(
                    "InvalidDBInstanceState", f"Instance {db_id} is not in available state.", "rds.state.stop"
                )
            if call.action == "StartDBInstance" and status in ("stopping", "deleting"):
                return Violation(
                    "InvalidDBInstanceState", f"Instance {db_id} is not stopped, it cannot be started.",
                    "rds.state.start",
                )
        return None

    # -- learning from a forwarded request and moto's answer --------------------------

    def observe(self, call: Call, status: int, body: bytes) -> None:
        """Learns what the request did, if moto accepted it."""
        with self.lock:
            if call.service == "ec2":
                self._observe_ec2(call, status, body)
            elif call.service == "rds":
                self._observe_rds(call, status, body)
            elif call.service == "ssm" and status == 200:
                self._observe_ssm(call)

    def _observe_ec2(self, call: Call, status: int, body: bytes) -> None:
        if status != 200:
            return
        now = self.now()
        if call.action == "RunInstances":
            doc = parse(body)
            if doc is None:
                return
            enabled = call.params.get("MetadataOptions.InstanceMetadataTags", "").lower() == "enabled"
            tags = {k: v for rtype, spec in ec2_run_tag_specs(call.params) if rtype == "instance" for k, v in spec}
            for item in doc.findall(doc.root, "instancesSet/item"):
                iid = doc.text(item, "instanceId")
                if not iid:
                    continue
                self.instance_states[iid] = doc.text(item, "instanceState/name") or "pending"
                self.launched_at.setdefault(iid, now)
                if enabled:
                    self.metadata_tags.add(iid)
                self.seen_tags.setdefault(iid, {}).update(tags)
        elif call.action == "DescribeInstances":
            # Instances launched behind the layer's back (or before it started).
            doc = parse(body)
            for item in doc.findall(doc.root, "reservationSet/item/instancesSet/item") if doc else []:
                iid = doc.text(item, "instanceId") or ""
                if (doc.text(item, "metadataOptions/instanceMetadataTags") or "").lower() == "enabled":
                    self.metadata_tags.add(iid)
                state = doc.text(item, "instanceState/name")
                if iid and state:
                    self.instance_states[iid] = state
        elif call.action == "TerminateInstances":
            doc = parse(body)
            for item in doc.findall(doc.root, "instancesSet/item") if doc else []:
                iid, state = doc.text(item, "instanceId"), doc.text(item, "currentState/name")
                if iid and state:
                    self.instance_states[iid] = state
        elif call.action in ("StopInstances", "StartInstances"):
            self._observe_stop_start(call, body, now)
        elif call.action == "CreateTags" and self.timing:
            for resource in values(call.params, "ResourceId"):
                self._write_tags(resource, query_tags(call.params, "Tag"), now)

    def _observe_stop_start(self, call: Call, body: bytes, now: float) -> None:
        """A StopInstances / StartInstances moto accepted: moto has the instances
        `stopped` / `running` at once; AWS has them `stopping` / `pending` for a while,
        from the state they were in (the look-up just before the call taught it). A
        stop of one already stopping or stopped, or a start of one pending or running,
        changes nothing."""
        doc = parse(body)
        stop = call.action == "StopInstances"
        for item in doc.findall(doc.root, "instancesSet/item") if doc else []:
            iid = doc.text(item, "instanceId")
            if not iid:
                continue
            known = self.instance_states.get(iid) or doc.text(item, "previousState/name") or ""
            before = self._instance_view(iid, known, now)
            if stop:
                if before in ("running", "pending"):
                    self.stopped_at[iid] = now
                    self.started_at.pop(iid, None)
                    self.launched_at.pop(iid, None)
                    after = "stopping"
                else:
                    after = before
                self.instance_states[iid] = "stopped"
            else:
                if before == "stopped":
                    self.started_at[iid] = now
                    self.stopped_at.pop(iid, None)
                    after = "pending"
                else:
                    after = before
                self.instance_states[iid] = "running"
            if self.timing:  # without timing moto's answer stands (`rewrite`)
                self.transitions[iid] = (before, after)

    def _observe_rds(self, call: Call, status: int, body: bytes) -> None:
        now = self.now()
        if status != 200:
            return
        db_id = call.params.get("DBInstanceIdentifier", "").lower()
        if call.action == "RestoreDBInstanceFromDBSnapshot":
            db = self.db(db_id)
            db.restored_at, db.deleted_at, db.deleted_xml = now, None, None
            # A new instance under an identifier used before: nothing of the old one's.
            db.stopped_at = db.started_at = db.stopped_by = None
            db.tag_keys = {k for k, _ in rds_request_tags(call.params)}
            self.seen_tags[db_id] = dict(rds_request_tags(call.params))
            self.tag_writes.pop(db_id, None)
        elif call.action == "DeleteDBInstance":
            doc = parse(body)
            element = doc.find(doc.root, "DeleteDBInstanceResult/DBInstance") if doc else None
            db = self.db(db_id)
            db.deleted_at = now
            if element is not None:
                db.deleted_xml = ET.tostring(element)
        elif call.action == "StopDBInstance":
            db = self.db(db_id)
            db.status, db.stopped_at, db.started_at = "stopped", now, None
            db.stopped_by = (call.region, call.access_key)
        elif call.action == "StartDBInstance":
            db = self.db(db_id)
            db.status, db.started_at, db.stopped_at, db.stopped_by = "available", now, None, None
        elif call.action == "AddTagsToResource":
            target = rds_id_from_arn(call.params.get("ResourceName", ""))
            if target:
                tags = rds_request_tags(call.params)
                self.db(target).tag_keys |= {k for k, _ in tags}
                if self.timing:
                    self._write_tags(target, tags, now)
        doc = parse(body) if call.action in ("DescribeDBInstances", "RestoreDBInstanceFromDBSnapshot") else None
        if doc is not None:
            for element in doc.root.iter(f"{{{doc.ns}}}DBInstance" if doc.ns else "DBInstance"):
                found = (doc.text(element, "DBInstanceIdentifier") or "").lower()
                if not found:
                    continue
                db = self.db(found)
                db.engine = doc.text(element, "Engine") or db.engine
                db.status = doc.text(element, "DBInstanceStatus") or db.status
                tags = {doc.text(t, "Key") or "": doc.text(t, "Value") or "" for t in doc.findall(element, "TagList/Tag")}
                db.tag_keys = set(tags)

    def learn_instances(self, ids: list[str], status: int, body: bytes) -> dict[str, dict[str, str]] | None:
        """Learns the states of `ids` from moto's answer to a DescribeInstances filtered
        by instance-id (the proxy asks it before a SendCommand): an id missing from a
        good answer does not exist. The tags of those found; None if the answer says
        nothing (an error, or not XML)."""
        doc = parse(body) if status == 200 else None
        if doc is None:
            return None
        found: dict[str, dict[str, str]] = {}
        with self.lock:
            for item in doc.findall(doc.root, "reservationSet/item/instancesSet/item"):
                iid = doc.text(item, "instanceId") or ""
                if iid not in ids:
                    continue
                self.instance_states[iid] = doc.text(item, "instanceState/name") or ""
                found[iid] = {doc.text(t, "key") or "": doc.text(t, "value") or "" for t in doc.findall(item, "tagSet/item")}
            for iid in ids:
                if iid not in found:
                    self.instance_states[iid] = INSTANCE_NOT_FOUND
        return found

    def _observe_ssm(self, call: Call) -> None:
        if call.action == "PutParameter" and call.doc.get("Tags"):
            self.parameter_tags.setdefault(str(call.doc.get("Name")), set()).update(k for k, _ in json_tags(call.doc))
        elif call.action == "AddTagsToResource" and call.doc.get("ResourceType") == "Parameter":
            name = str(call.doc.get("ResourceId", ""))
            self.parameter_tags.setdefault(name, set()).update(k for k, _ in json_tags(call.doc))
        elif call.action == "DeleteParameter":
            self.parameter_tags.pop(str(call.doc.get("Name", "")), None)

    def _write_tags(self, resource: str, tags: list[tuple[str, str]], now: float) -> None:
        assert self.timing is not None
        writes = self.tag_writes.setdefault(resource, {})
        seen = self.seen_tags.get(resource, {})
        for key, value in tags:
            earlier = writes.get(key)
            # A write over a still-invisible one keeps what readers see today.
            previous = earlier.previous if earlier and earlier.visible_at > now else seen.get(key)
            writes[key] = TagWrite(value, previous, now + self.timing.tag_lag)

    def _visible_tags(self, resource: str, actual: dict[str, str], now: float) -> dict[str, str]:
        """`actual` (moto's tags) as a reader sees them while writes propagate; learns the
        settled ones."""
        writes = self.tag_writes.get(resource, {})
        visible = dict(actual)
        for key, write in list(writes.items()):
            if write.visible_at <= now:
                del writes[key]
                continue
            if write.previous is None:
                visible.pop(key, None)
            else:
                visible[key] = write.previous
        seen = self.seen_tags.setdefault(resource, {})
        for key, value in actual.items():
            if key not in writes:
                seen[key] = value
        return visible

    # -- rewriting moto's answers -----------------------------------------------------

    def rewrite(self, call: Call, answer: Answer) -> Answer:
        """moto's answer as AWS would give it at this moment."""
        if call.service == "ssm" and call.action == "SendCommand" and answer.status == 200:
            return send_command_answer(call, answer)
        if call.service == "ec2" and call.action == "GetConsoleOutput" and answer.status == 200:
            iid = call.params.get("InstanceId", "")
            console = self.consoles(iid) if iid else None
            if console is None:
                return answer
            return console_output_answer(call, answer, console, self.instance_state(iid))
        if self.timing is None:
            return answer
        with self.lock:
            if call.service == "ec2" and call.action == "DescribeInstances" and answer.status == 200:
                return self._rewrite_describe_instances(call, answer)
            if call.service == "ec2" and call.action in ("StopInstances", "StartInstances") and answer.status == 200:
                return self._rewrite_stop_start(answer)
            if call.service == "rds" and answer.status == 200 and call.action in DB_ANSWERS:
                return self._rewrite_db_instances(call, answer, DB_ANSWERS[call.action])
            if call.service == "rds" and call.action == "DescribeDBInstances":
                return self._rewrite_describe_db_instances(call, answer)
        return answer

    def _rewrite_stop_start(self, answer: Answer) -> Answer:
        """moto answers every stop with currentState `stopping` and every start with
        `pending`, whatever the instance was; AWS answers with the transition it made
        (a stop of a stopped instance: stopped -> stopped)."""
        doc = parse(answer.body)
        if doc is None:
            return answer
        for item in doc.findall(doc.root, "instancesSet/item"):
            transition = self.transitions.pop(doc.text(item, "instanceId") or "", None)
            if transition is None:
                continue
            for path, state in zip(("previousState", "currentState"), transition):
                element = doc.find(item, path)
                if element is None:
                    element = doc.new(item, path)
                for child, text in (("code", str(STATE_CODES.get(state, 0))), ("name", state)):
                    node = doc.find(element, child)
                    if node is None:
                        node = doc.new(element, child)
                    node.text = text
        return Answer(answer.status, answer.headers, doc.bytes())

    def _rewrite_describe_instances(self, call: Call, answer: Answer) -> Answer:
        doc = parse(answer.body)
        if doc is None:
            return answer
        assert self.timing is not None
        now = self.now()
        filters = query_filters(call.params)
        changed = False
        for reservation in doc.findall(doc.root, "reservationSet/item"):
            instances = doc.find(reservation, "instancesSet")
            if instances is None:
                continue
            for item in list(instances):
                iid = doc.text(item, "instanceId") or ""
                touched = False
                name = doc.find(item, "instanceState/name")
                shown = self._instance_view(iid, name.text or "", now) if name is not None else None
                if name is not None and shown != name.text:
                    name.text = shown
                    code = doc.find(item, "instanceState/code")
                    if code is not None:
                        code.text = str(STATE_CODES.get(shown or "", 0))
                    touched = True
                tag_set = doc.find(item, "tagSet")
                actual = {
                    doc.text(t, "key") or "": doc.text(t, "value") or "" for t in doc.findall(item, "tagSet/item")
                }
                visible = self._visible_tags(iid, actual, now)
                if visible != actual:
                    touched = True
                    if tag_set is None:
                        tag_set = doc.new(item, "tagSet")
                    for t in list(tag_set):
                        tag_set.remove(t)
                    for key, value in visible.items():
                        entry = doc.new(tag_set, "item")
                        doc.new(entry, "key", key)
                        doc.new(entry, "value", value)
                if touched:
                    changed = True
                    current = name.text if name is not None else ""
                    if not instance_matches(filters, current or "", visible):
                        instances.remove(item)
            if len(instances) == 0:
                reservations = doc.find(doc.root, "reservationSet")
                if reservations is not None:
                    reservations.remove(reservation)
        return Answer(answer.status, answer.headers, doc.bytes()) if changed else answer

    def _db_rewrite(self, doc: Doc, element: ET.Element, now: float) -> bool:
        """Applies the emulated status and tag lag to one DBInstance element."""
        assert self.timing is not None
        db_id = (doc.text(element, "DBInstanceIdentifier") or "").lower()
        db = self.dbs.get(db_id)
        changed = False
        status = doc.find(element, "DBInstanceStatus")
        if db and status is not None and status.text:
            shown = self._db_view(db, status.text, now)
            if shown != status.text:
                status.text = shown
                changed = True
                if shown == "creating":
                    endpoint = doc.find(element, "Endpoint")
                    if endpoint is not None:
                        element.remove(endpoint)  # AWS assigns the endpoint once creation ends
        tag_list = doc.find(element, "TagList")
        actual = {doc.text(t, "Key") or "": doc.text(t, "Value") or "" for t in doc.findall(element, "TagList/Tag")}
        visible = self._visible_tags(db_id, actual, now)
        if visible != actual:
            if tag_list is None:
                tag_list = doc.new(element, "TagList")
            for t in list(tag_list):
                tag_list.remove(t)
            for key, value in visible.items():
                tag = doc.new(tag_list, "Tag")
                doc.new(tag, "Key", key)
                doc.new(tag, "Value", value)
            changed = True
        return changed

    def _rewrite_db_instances(self, call: Call, answer: Answer, path: str) -> Answer:
        doc = parse(answer.body)
        if doc is None:
            return answer
        now = self.now()
        changed = False
        for element in doc.findall(doc.root, path):
            changed |= self._db_rewrite(doc, element, now)
        return Answer(answer.status, answer.headers, doc.bytes()) if changed else answer

    def _deleting_elements(self, wanted: str | None, present: set[str]) -> list[ET.Element]:
        """DBInstance elements of deleted instances still `deleting`, status set."""
        found = []
        for db_id, db in sorted(self.dbs.items()):
            if db.deleted_xml is None or db_id in present or not self.deleting(db_id):
                continue
            if wanted is not None and db_id != wanted:
                continue
            element = copy.deepcopy(ET.fromstring(db.deleted_xml))
            for child in element:
                if child.tag.endswith("}DBInstanceStatus") or child.tag == "DBInstanceStatus":
                    child.text = "deleting"
            found.append(element)
        return found

    def _rewrite_describe_db_instances(self, call: Call, answer: Answer) -> Answer:
        wanted = call.params.get("DBInstanceIdentifier")
        wanted = wanted.lower() if wanted else None
        if answer.status != 200:
            # moto forgot a deleted instance at once; AWS still describes it as deleting.
            ghosts = self._deleting_elements(wanted, set()) if wanted else []
            if not ghosts:
                return answer
            return Answer(200, [("Content-Type", "text/xml")], describe_db_instances_body(ghosts))
        doc = parse(answer.body)
        if doc is None:
            return answer
        now = self.now()
        changed = False
        container = doc.find(doc.root, "DescribeDBInstancesResult/DBInstances")
        present: set[str] = set()
        for element in doc.findall(doc.root, "DescribeDBInstancesResult/DBInstances/DBInstance"):
            present.add((doc.text(element, "DBInstanceIdentifier") or "").lower())
            changed |= self._db_rewrite(doc, element, now)
        last_page = not doc.text(doc.root, "DescribeDBInstancesResult/Marker")
        unfiltered = not members(call.params, "Filters.Filter") and not members(call.params, "Filters.member")
        if container is not None and last_page and unfiltered:
            for ghost in self._deleting_elements(wanted, present):
                container.append(ghost)
                changed = True
        return Answer(answer.status, answer.headers, doc.bytes()) if changed else answer


# --- moto's SendCommand ------------------------------------------------------------------


def moto_request(call: Call, body: bytes) -> bytes:
    """The request body to forward to moto: a SendCommand with InstanceIds and no
    Targets also gets Targets `instance-id` = the same ids, which moto (5.2.1, which
    adds every instance matching Targets, and with no Targets matches all) then turns
    into exactly those instances. Any other request is forwarded as it came."""
    if call.service != "ssm" or call.action != "SendCommand" or call.doc.get("Targets"):
        return body
    ids = ssm_instance_ids(call)
    if not ids:
        return body
    return json.dumps({**call.doc, "Targets": [{"Key": "instance-id", "Values": ids}]}).encode()


def send_command_answer(call: Call, answer: Answer) -> Answer:
    """moto's SendCommand answer as AWS gives it: the Targets and InstanceIds as sent
    (in order), and a command that has only been requested (Pending, counts 0; moto
    says Success at once)."""
    try:
        doc = json.loads(answer.body)
        command = doc["Command"]
    except (ValueError, KeyError, TypeError):
        return answer
    if not isinstance(command, dict):
        return answer
    ids = ssm_instance_ids(call)
    targets = call.doc.get("Targets") or []
    command.update({
        "InstanceIds": ids, "Targets": targets, "Status": "Pending", "StatusDetails": "Pending",
        "CompletedCount": 0, "ErrorCount": 0, "DeliveryTimedOutCount": 0,
    })
    if not targets:
        command["TargetCount"] = len(ids)
    return Answer(answer.status, answer.headers, json.dumps(doc).encode())


# --- the serial console ----------------------------------------------------------------

# https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_GetConsoleOutput.html
# "Only the most recent 64 KB of console output is available."
CONSOLE_OUTPUT_MAX_BYTES = 64 * 1024
# Same page: without `Latest`, the answer is the "buffered information that was posted
# shortly after an instance transition state (start, stop, reboot, or terminate)". A
# bootstrap runs after the start, so only a stop or terminate posts what it wrote; a
# running instance's buffer is what its boot posted (moto's canned boot text).
CONSOLE_POSTED_STATES = frozenset({"stopping", "stopped", "shutting-down", "terminated"})


def console_output_answer(call: Call, answer: Answer, console: Console, state: str | None) -> Answer:
    """moto's GetConsoleOutput answer with `console`, as AWS gives it: `output` is the
    last 64 KB of the console, base64-encoded (absent while the console is empty),
    `timestamp` when it was last written. Without `Latest=true` that is only the case
    once the instance has stopped or terminated (`state`, as the layer last saw it);
    until then moto's answer stands for what the boot posted."""
    latest = call.params.get("Latest", "").lower() == "true"
    if not latest and state not in CONSOLE_POSTED_STATES:
        return answer
    doc = parse(answer.body)
    if doc is None:
        return answer
    for name in ("output", "timestamp"):
        for old in doc.findall(doc.root, name):
            doc.root.remove(old)
    updated = datetime.fromtimestamp(console.updated_at, timezone.utc)
    doc.new(doc.root, "timestamp", updated.strftime("%Y-%m-%dT%H:%M:%S.") + f"{updated.microsecond // 1000:03d}Z")
    tail = console.text[-CONSOLE_OUTPUT_MAX_BYTES:]
    if tail:
        doc.new(doc.root, "output", base64.b64encode(tail).decode("ascii"))
    return Answer(answer.status, answer.headers, doc.bytes())


RDS_NS = "http://rds.amazonaws.com/doc/2014-10-31/"
# RDS answers that carry the DBInstance they changed (moto: in its new state at once).
DB_ANSWERS = {
    "RestoreDBInstanceFromDBSnapshot": "RestoreDBInstanceFromDBSnapshotResult/DBInstance",
    "StopDBInstance": "StopDBInstanceResult/DBInstance",
    "StartDBInstance": "StartDBInstanceResult/DBInstance",
}


def describe_db_instances_body(elements: list[ET.Element]) -> bytes:
    root = ET.Element(f"{{{RDS_NS}}}DescribeDBInstancesResponse")
    result = ET.SubElement(root, f"{{{RDS_NS}}}DescribeDBInstancesResult")
    container = ET.SubElement(result, f"{{{RDS_NS}}}DBInstances")
    for element in elements:
        container.append(element)
    metadata = ET.SubElement(root, f"{{{RDS_NS}}}ResponseMetadata")
    ET.SubElement(metadata, f"{{{RDS_NS}}}RequestId").text = str(uuid.uuid4())
    return serialize(root)


