#!/usr/bin/env python3
"""The strict AWS layer in front of moto: documented rules, AWS timing, injected faults.

Owns, for the local stack and the end-to-end suite, everything moto does not do like
AWS, and the record of which AWS operations the operator issued (used by the IAM
least-privilege test). Each request goes through, in this order:

1. Faults. With probability --rate, instead of forwarding the request the proxy
   injects one fault, chosen by the --mix weights:
     * throttle: HTTP 400 in the protocol's own error format
         EC2 query   -> <Response><Errors><Error><Code>RequestLimitExceeded</Code>...
         other query -> <ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code>...
         JSON 1.0/1.1 (X-Amz-Target) -> {"__type": "ThrottlingException", ...}
                                        with header x-amzn-ErrorType
     * error: HTTP 500 in the same formats (InternalError / InternalFailure)
     * drop: the connection is closed without any response
2. Strict rules (on unless --no-strict): documented constraints moto skips (tag syntax
   and limits, identifier rules, ClientToken, user-data size, ...; see aws_rules.py and
   `--list-rules`). A violation is answered with HTTP 400, AWS's error code and message,
   in the same formats. So are requests the account's state refuses (a second delete of a
   database still `deleting`, a modify of one still `creating` or `stopped`, a start of an
   instance still `stopping`, a stop of a terminated one). RunInstances with a
   ClientToken used before is answered as AWS does: the first answer again, or
   IdempotentParameterMismatch for other parameters. Before an SSM SendCommand the
   proxy asks moto for its target instances (one DescribeInstances filtered by
   instance-id, not logged), so a terminated or unknown target is refused.
3. Timing (--timing fast|realistic|off, scaled by --time-scale; see aws_world.py):
   the request is forwarded unchanged (but for Host) and moto's answer rewritten so that
   instances read `pending` (launched or started) and `stopping`, restores `creating`,
   databases `stopping` and `starting`, deletions `deleting`, and new tags stay
   invisible for a while. Before any request, a DB instance stopped for the timing's
   `rds_auto_start` (AWS: seven days; --rds-auto-start-seconds) is started in moto, as
   AWS starts it on its own (sent straight to moto, not logged). One exception, whatever
   the flags: a SendCommand with
   InstanceIds and no Targets reaches moto with Targets `instance-id` = those ids added
   (moto 5.2.1 would record it as sent to every instance of the region), and its
   answer is given back as AWS gives it (see aws_world.moto_request).
4. Consoles (--instances-dir, the boot simulator's): an EC2 GetConsoleOutput of an
   instance that has a directory there is answered with its `console.log` (the
   /dev/console its real bootstrap script wrote), as AWS answers: base64, the last
   64 KB, `timestamp` the time of the last write, and with `Latest=true` (or once the
   instance has stopped or terminated; see aws_world.console_output_answer). Any
   other instance keeps moto's canned answer, and so does every instance without the
   flag.

stdout's first line is the bound address `127.0.0.1:PORT` (so --listen 127.0.0.1:0
works). Every request is logged (to --log, default stderr) as one JSON line:
  {"ts": ..., "received": ..., "agent": "op-a", "service": "ec2", "action": "RunInstances",
   "status": 200, "fault": null}
`ts` is when the answer was logged, `received` when the request arrived (both Unix
seconds); `agent` is the caller's SDK app id (`app/<id>` in its user agent, set by
AWS_SDK_UA_APP_ID), or null;
`service` comes from the Authorization header's credential scope, `action` from the
form body's `Action=` or the `X-Amz-Target` header (text after the last dot);
`fault` is null for forwarded requests, else "throttle" | "error" | "drop"
(`status` is then the injected status, null for a drop). A request the strict layer
refused also carries `"rejected": "<AWS error code>"` and `"rule": "<rule id>"`; one
answered from an earlier RunInstances with the same ClientToken carries
`"replayed": true`. Every request that was not faulted also carries what its IAM
authorization is decided on (aws_authz.py; tests/chart/test_iam_policy.py evaluates
it): `"region"` (the credential scope's) always, and per operation
  ec2 RunInstances      image_id, instance_type, subnet_id, security_group_ids, key_name,
                        launch_template, http_tokens (MetadataOptions.HttpTokens),
                        tag_specs {resource type: tags}, unmodelled (parameters naming
                        other resources), instance_profile (name or ARN as sent) and,
                        looked up, instance_profile_arn, role_arns
  ec2 TerminateInstances, StopInstances, StartInstances, GetConsoleOutput,
      DescribeInstanceAttribute
                        instance_ids, resource_tags {instance id: tags}
  ec2 CreateTags        resource_ids, request_tags, resource_tags {id: tags}
  rds RestoreDBInstanceFromDBSnapshot
                        db_instance_id, snapshot_id, subnet_group, option_group,
                        parameter_group (null: not sent), request_tags, snapshot
                        {arn, engine, engine_version, tags} (looked up)
  rds AddTagsToResource resource_name, request_tags, resource_tags {ARN: tags}
  rds ModifyDBInstance, DeleteDBInstance, StartDBInstance
                        db_instance_id, resource_tags {identifier: tags}
  rds StopDBInstance    the same and snapshot_id (DBSnapshotIdentifier, null: not sent)
  rds DescribeDBInstances, DescribeDBSnapshots
                        db_instance_id, snapshot_id (null: not sent)
  ssm PutParameter      name, overwrite, request_tags (null: no Tags), resource_tags
  ssm AddTagsToResource resource_type, resource_id, request_tags, resource_tags
  ssm GetParameter, DeleteParameter
                        name, resource_tags {name: tags}
  ssm GetParametersByPath  path, recursive
  ssm SendCommand       document (DocumentName), instance_ids (as sent), instance_tags
                        {instance id: tags}
  ecr DescribeImages, BatchGetImage
                        registry_id, repository
`resource_tags`, `instance_tags` and `snapshot` are the tags moto had just before the
request, from one look-up (DescribeInstances, DescribeTags, DescribeDBInstances,
ListTagsForResource, DescribeDBSnapshots, IAM GetInstanceProfile) sent straight to moto
and not logged; a resource moto does not know has `{}` (a DB the layer still plays
`deleting` keeps its tags), and a look-up moto did not answer leaves the field null.
The random choice uses random.Random(--seed), so a run is reproducible for a given
request order. Exits 0 on SIGTERM/SIGINT.

IAM at request time (--iam-policy PATH --iam-cluster-id ID --iam-access-key KEY, all
three or none; moto enforces no IAM): a request signed with access key id KEY (the
Authorization header's Credential=) that passed the strict rules is turned, after its
authorization look-up, into the authorizations AWS makes for it exactly as the post-run
check does (iam_eval.call_requests over the fields it would be logged with) and
evaluated against PATH rendered for cluster ID and moto's account
(iam_eval.render_policy). One denied authorization, or a call the model cannot decide
(iam_eval.Unsupported), is answered without forwarding: EC2 UnauthorizedOperation
(HTTP 403), RDS AccessDenied (403, query XML), SSM and ECR AccessDeniedException (400,
JSON), the message in AWS's style, logged with "rejected", "rule": "iam" and
"iam_denied" (the authorizations refused) or "iam_unsupported" (why the model cannot
decide). Requests signed with any other key (test code, the boot simulator) are not
checked. Faults still come first, the strict rules before IAM.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import random
import re
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aws_authz
import aws_rules
import iam_eval
from aws_world import CONSOLE_OUTPUT_MAX_BYTES, Answer, Console, Consoles, World, moto_request, no_consoles, timing_for

HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
    "te", "trailers", "transfer-encoding", "upgrade", "host", "content-length",
}
CREDENTIAL_SCOPE_RE = re.compile(r"Credential=[^/]+/\d{8}/([^/]+)/([^/]+)/aws4_request")


def service_of(headers: Any) -> str:
    m = CREDENTIAL_SCOPE_RE.search(headers.get("Authorization", "") or "")
    return m.group(2) if m else "unknown"


def region_of(headers: Any) -> str:
    m = CREDENTIAL_SCOPE_RE.search(headers.get("Authorization", "") or "")
    return m.group(1) if m else "us-east-1"


ACCESS_KEY_RE = re.compile(r"Credential=([^/]+)/")


def access_key_of(headers: Any) -> str:
    m = ACCESS_KEY_RE.search(headers.get("Authorization", "") or "")
    return m.group(1) if m else "testing"


def lookup_request(lookup: aws_authz.Lookup, region: str, access_key: str) -> tuple[dict[str, str], bytes]:
    """(headers, body) of a look-up for moto. moto (started without authentication)
    reads the region and the account from the credential scope and the access key, not
    the signature, so none is computed."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    scope = f"{stamp[:8]}/{lookup.region or region}/{lookup.service}/aws4_request"
    headers = {
        "X-Amz-Date": stamp,
        "Authorization": f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
                         f"SignedHeaders=host;x-amz-date, Signature={'0' * 64}",
    }
    if lookup.target:
        headers.update({"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": lookup.target})
        return headers, json.dumps(lookup.doc or {}).encode()
    headers["Content-Type"] = "application/x-www-form-urlencoded; charset=utf-8"
    return headers, urlencode(lookup.form or {}).encode()


def describe_instances_request(ids: list[str], region: str, access_key: str) -> tuple[dict[str, str], bytes]:
    """(headers, body) of an EC2 DescribeInstances filtered by instance-id, for moto."""
    lookup = aws_authz.instances_lookup(ids)
    assert lookup is not None, "no instance ids"
    return lookup_request(lookup, region, access_key)


# EC2 instance ids (the only names looked up under --instances-dir: no path escapes).
INSTANCE_ID_RE = re.compile(r"^i-(?:[0-9a-f]{8}|[0-9a-f]{17})$")


def simulator_consoles(instances_dir: Path) -> Consoles:
    """The consoles hack/boot_simulator.py writes: `<instances_dir>/<instance id>/console.log`
    (the instance's /dev/console; see its redirect_host_paths). An instance with a
    directory there is the simulator's, and its console is empty until the file exists;
    any other instance is not (None)."""

    def console(instance_id: str) -> Console | None:
        if not INSTANCE_ID_RE.match(instance_id):
            return None
        directory = instances_dir / instance_id
        try:
            with open(directory / "console.log", "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                fh.seek(max(0, size - CONSOLE_OUTPUT_MAX_BYTES))
                text = fh.read()
                return Console(text, os.fstat(fh.fileno()).st_mtime)
        except FileNotFoundError:
            pass
        try:
            return Console(b"", directory.stat().st_mtime) if directory.is_dir() else None
        except FileNotFoundError:
            return None

    return console


def action_of(headers: Any, body: bytes) -> str:
    target = headers.get("X-Amz-Target")
    if target:
        return target.rsplit(".", 1)[-1]
    try:
        form = parse_qs(body.decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError:
        form = {}
    if form.get("Action"):
        return form["Action"][0]
    return "unknown"


def error_response(service: str, json_protocol: bool, content_type: str, kind: str) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of an injected `throttle` or `error` for the protocol."""
    if kind == "throttle":
        code = "RequestLimitExceeded" if service == "ec2" else ("ThrottlingException" if json_protocol else "Throttling")
        return aws_error(service, json_protocol, content_type, 400, code, "Rate exceeded (injected by fault_proxy)")
    code = "InternalError" if service == "ec2" else "InternalFailure"
    message = "We encountered an internal error. Please try again. (injected by fault_proxy)"
    return aws_error(service, json_protocol, content_type, 500, code, message)


def xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def aws_error(
    service: str, json_protocol: bool, content_type: str, status: int, code: str, message: str
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of an AWS error in the request's protocol."""
    request_id = str(uuid.uuid4())
    if json_protocol:
        body = json.dumps({"__type": code, "message": message}).encode()
        return status, {
            "Content-Type": content_type or "application/x-amz-json-1.1",
            "x-amzn-ErrorType": code,
            "x-amzn-RequestId": request_id,
        }, body
    if service == "ec2":
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Response><Errors><Error><Code>{code}</Code><Message>{xml_escape(message)}</Message></Error></Errors>"
            f"<RequestID>{request_id}</RequestID></Response>"
        )
    else:
        error_type = "Sender" if status < 500 else "Receiver"
        xml = (
            f'<ErrorResponse xmlns="http://{service}.amazonaws.com/doc/">'
            f"<Error><Type>{error_type}</Type><Code>{code}</Code><Message>{xml_escape(message)}</Message></Error>"
            f"<RequestId>{request_id}</RequestId></ErrorResponse>"
        )
    return status, {"Content-Type": "text/xml", "x-amzn-RequestId": request_id}, xml.encode()


# The operator's role (deploy/cloudformation/operator.yaml's default role name) and the
# error each service answers an IAM denial with: (code, HTTP status).
OPERATOR_ROLE = "featureenv-operator"
IAM_ERRORS = {
    "ec2": ("UnauthorizedOperation", 403),
    "rds": ("AccessDenied", 403),
    "ssm": ("AccessDeniedException", 400),
    "ecr": ("AccessDeniedException", 400),
}


class IamCheck:
    """--iam-policy: the operator's policy, rendered for the run's cluster, evaluated on
    each request signed with the operator's access key before it is forwarded."""

    def __init__(self, policy_path: str, cluster: str, access_key: str,
                 account: str = iam_eval.MOTO_ACCOUNT) -> None:
        self.policy = iam_eval.render_policy(Path(policy_path).read_text(), cluster, account)
        # The evaluator reads the Service Authorization Reference bundled with parliament:
        # load it now, so a missing parliament fails at start, not on the first request.
        iam_eval.resource_type_of("ec2:RunInstances", "*")
        self.access_key = access_key
        self.account = account

    def applies(self, headers: Any) -> bool:
        """Only requests signed with the operator's access key id are checked."""
        m = ACCESS_KEY_RE.search(headers.get("Authorization", "") or "")
        return m is not None and m.group(1) == self.access_key

    def principal(self, agent: str | None) -> str:
        return f"arn:aws:sts::{self.account}:assumed-role/{OPERATOR_ROLE}/{agent or 'fault-proxy'}"

    def refusal(self, call: aws_rules.Call, detail: dict[str, Any],
                agent: str | None) -> tuple[aws_rules.Violation, dict[str, Any]] | None:
        """(the error, extra log fields) if the policy does not allow the call, else None.
        `detail`: the fields the call is logged with (aws_authz, looked up in moto)."""
        code, status = IAM_ERRORS.get(call.service) or (
            ("AccessDeniedException", 400) if call.json_protocol else ("AccessDenied", 403))
        entry = {"service": call.service, "action": call.action, "fault": None, **detail}
        user = self.principal(agent)
        try:
            requests = iam_eval.call_requests(entry, self.account) or []
            decided = [(r, iam_eval.decide(self.policy, r)) for r in requests]
        except iam_eval.Unsupported as e:
            message = (f"User: {user} is not authorized to perform: {call.service}:{call.action} because the "
                       f"strict layer's IAM model cannot decide this call: {e}")
            return aws_rules.Violation(code, self._ec2_wrap(call, message), "iam", status), {"iam_unsupported": str(e)}
        denied = [(r, d) for r, d in decided if not d.allowed]
        if not denied:
            return None
        request, decision = denied[0]
        why = ("with an explicit deny in an identity-based policy" if decision.denied_by
               else f"because no identity-based policy allows the {request.action} action")
        message = f"User: {user} is not authorized to perform: {request.action} on resource: {request.resource} {why}"
        return (aws_rules.Violation(code, self._ec2_wrap(call, message, denied), "iam", status),
                {"iam_denied": [str(r) for r, _ in denied]})

    @staticmethod
    def _ec2_wrap(call: aws_rules.Call, message: str, denied: list[Any] | None = None) -> str:
        """EC2 puts the reason between its fixed sentence and an encoded message (which
        `sts decode-authorization-message` would decode; here plain base64 JSON)."""
        if call.service != "ec2":
            return message
        detail = {"allowed": False, "explicitDeny": any(d.denied_by for _, d in denied or []),
                  "denied": [str(r) for r, _ in denied or []]}
        encoded = base64.b64encode(json.dumps(detail).encode()).decode()
        return f"You are not authorized to perform this operation. {message}. Encoded authorization failure message: {encoded}"


class FaultPlan:
    """Seeded, thread-safe choice of forward / throttle / error / drop."""

    def __init__(self, rate: float, seed: int, mix: dict[str, float]) -> None:
        self.rate = rate
        self.rng = random.Random(seed)
        self.kinds = list(mix)
        self.weights = [mix[k] for k in self.kinds]
        self.lock = threading.Lock()

    def choose(self) -> str | None:
        with self.lock:
            if self.rng.random() >= self.rate:
                return None
            return self.rng.choices(self.kinds, weights=self.weights)[0]


class Proxy(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, listen: tuple[str, int], upstream: str, plan: FaultPlan, log: IO[str],
        strict: bool = True, world: World | None = None, iam: IamCheck | None = None,
    ) -> None:
        super().__init__(listen, Handler)
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be http://host:port, got {upstream!r}")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self.upstream_netloc = parts.netloc
        self.plan = plan
        self.log = log
        self.log_lock = threading.Lock()
        self.strict = strict
        self.world = world or World(None)
        self.iam = iam

    def record(self, service: str, action: str, status: int | None, fault: str | None, **extra: Any) -> None:
        request = getattr(_current, "request", {})
        entry = {
            "ts": round(time.time(), 3), **request,
            "service": service, "action": action, "status": status, "fault": fault,
            **getattr(_current, "detail", {}),
        }
        line = json.dumps({**entry, **extra})
        with self.log_lock:
            self.log.write(line + "\n")
            self.log.flush()


# The request each handler thread is serving (ThreadingHTTPServer: one thread per
# connection, its requests one after another), for `Proxy.record`: `request` (when it
# arrived, who sent it) and `detail` (fields logged for some operations).
_current = threading.local()


def app_id(user_agent: str) -> str | None:
    """The SDK app id in a user agent (`... app/<id> ...`), if any."""
    for part in user_agent.split():
        if part.startswith("app/"):
            return part[len("app/"):]
    return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Proxy

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet default logging
        pass

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in two writes; with Nagle on, the body waits for the
        # client's delayed ACK (~40 ms a request on Linux loopback).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, headers: dict[str, str] | list[tuple[str, str]], body: bytes) -> None:
        self.send_response_only(status)
        items = headers.items() if isinstance(headers, dict) else headers
        for k, v in items:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        agent = app_id(self.headers.get("x-amz-user-agent", "") + " " + self.headers.get("User-Agent", ""))
        _current.request = {"received": round(time.time(), 3), "agent": agent}
        _current.detail = {}
        body = self._read_body()
        service = service_of(self.headers)
        action = action_of(self.headers, body)
        json_protocol = bool(self.headers.get("X-Amz-Target"))
        content_type = self.headers.get("Content-Type", "")
        self._start_databases_stopped_too_long()
        fault = self.server.plan.choose()
        if fault == "drop":
            self.server.record(service, action, None, fault)
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if fault in ("throttle", "error"):
            status, headers, payload = error_response(service, json_protocol, content_type, fault)
            self.server.record(service, action, status, fault)
            self._send(status, headers, payload)
            return
        call = aws_rules.parse_call(service, action, region_of(self.headers), body, json_protocol,
                                    access_key_of(self.headers))
        world = self.server.world
        if service == "ssm" and action == "SendCommand":
            self._look_up_targets(call)
        else:
            self._look_up_authorization(call)
        violation = (aws_rules.check(call, world) or world.state_violation(call)) if self.server.strict else None
        if violation is not None:
            self._refuse(call, content_type, violation)
            return
        iam = self.server.iam
        if iam is not None and iam.applies(self.headers):
            refused = iam.refusal(call, dict(_current.detail), agent)
            if refused is not None:
                self._refuse(call, content_type, refused[0], **refused[1])
                return
        token = call.params.get("ClientToken") if self.server.strict and call.action == "RunInstances" else None
        if service == "ec2" and token:
            # Two launches with one token run one at a time, as AWS makes them one launch.
            with world.token_lock(call.region, token):
                earlier = world.launch_replay(call)
                if isinstance(earlier, aws_rules.Violation):
                    self._refuse(call, content_type, earlier)
                    return
                if earlier is not None:
                    self.server.record(service, action, earlier.status, None, replayed=True)
                    self._send(earlier.status, earlier.headers, earlier.body)
                    return
                answer = self._forward_and_play(call, body)
                if answer is not None:
                    world.remember_launch(call, answer)
            return
        self._forward_and_play(call, body)

    def _start_databases_stopped_too_long(self) -> None:
        """AWS starts a DB instance that has been stopped for seven days (the timing's
        `rds_auto_start`): each one due is started in moto (StartDBInstance, sent straight
        to moto and not logged: no client made that call), before any request sees it."""
        world = self.server.world
        for due in world.take_due_auto_starts():
            lookup = aws_authz.Lookup("rds", lambda *_: None, form={
                "Action": "StartDBInstance", "Version": aws_authz.RDS_VERSION, "DBInstanceIdentifier": due.db_id})
            headers, body = lookup_request(lookup, due.region, due.access_key)
            answer = self._ask_moto(headers, body, f"to start {due.db_id}")
            if answer is None or answer[0] != 200:
                world.auto_start_failed(due)
                sys.stderr.write(f"fault_proxy: moto did not start {due.db_id} "
                                 f"(HTTP {answer[0] if answer else 'none'}); trying again later\n")
                continue
            sys.stderr.write(f"fault_proxy: started {due.db_id}, stopped for the timing's rds_auto_start "
                             "(AWS starts a DB instance stopped for seven days)\n")

    def _look_up_targets(self, call: aws_rules.Call) -> None:
        """Asks moto for the states and tags of a SendCommand's instances (the world
        learns the states, the log keeps the tags). Ids the model rule refuses, and a
        moto that cannot answer, leave the world knowing what it knew."""
        ids = aws_rules.ssm_instance_ids(call)
        _current.detail = {
            "region": call.region, "document": call.doc.get("DocumentName"), "instance_ids": ids,
            "instance_tags": {},
        }
        wellformed = [i for i in ids if aws_rules.model_match(aws_rules.SSM_INSTANCE_ID, i)]
        if not wellformed or len(ids) > aws_rules.SSM_INSTANCE_IDS_MAX:
            return
        headers, body = describe_instances_request(wellformed, call.region, access_key_of(self.headers))
        answer = self._ask_moto(headers, body, f"the instances {wellformed}")
        if answer is None:
            return
        status, payload = answer
        tags = self.server.world.learn_instances(wellformed, status, payload)
        if tags is None:
            sys.stderr.write(f"fault_proxy: moto did not describe {wellformed} (HTTP {status})\n")
            return
        _current.detail["instance_tags"] = tags

    def _ask_moto(self, headers: dict[str, str], body: bytes, what: str) -> tuple[int, bytes] | None:
        """One look-up of the layer's own in moto (not logged): (status, payload), or
        None, reported on stderr, when moto cannot be reached."""
        try:
            status, _, payload = self._upstream(headers, body)
        except (OSError, http.client.HTTPException) as e:
            sys.stderr.write(f"fault_proxy: could not ask moto for {what}: {e}\n")
            return None
        return status, payload

    def _look_up_authorization(self, call: aws_rules.Call) -> None:
        """The fields the call's IAM authorization is decided on (aws_authz), completed
        by one look-up in moto when it needs the existing tags of what it acts on. A
        moto that cannot answer leaves those fields null (unknown)."""
        fields, lookup = aws_authz.detail(call)
        _current.detail = fields
        if lookup is None:
            return
        headers, body = lookup_request(lookup, call.region, access_key_of(self.headers))
        answer = self._ask_moto(headers, body, f"{call.action}'s resources")
        if answer is None:
            return
        status, payload = answer
        action = (lookup.form or {}).get("Action")
        if action in ("DescribeInstances", "DescribeDBInstances"):
            # The states moto has now, for the rules on this request (ec2.stop.state, ...).
            self.server.world.observe(
                aws_rules.Call(lookup.service, action, call.region, dict(lookup.form or {})), status, payload)
        found = lookup.read(status, payload, self.server.world)
        if found is None:
            sys.stderr.write(f"fault_proxy: moto did not answer the look-up for {call.action} (HTTP {status})\n")
            return
        fields.update(found)

    def _refuse(self, call: aws_rules.Call, content_type: str, violation: aws_rules.Violation, **extra: Any) -> None:
        status, headers, payload = aws_error(
            call.service, call.json_protocol, content_type, violation.status, violation.code, violation.message
        )
        self.server.record(call.service, call.action, status, None, rejected=violation.code, rule=violation.rule,
                           **extra)
        self._send(status, headers, payload)

    def _forward_and_play(self, call: aws_rules.Call, body: bytes) -> Answer | None:
        """Forwards to moto, learns from its answer, plays AWS's timing over it, sends it."""
        try:
            status, resp_headers, payload = self._forward(moto_request(call, body))
        except (OSError, http.client.HTTPException) as e:
            self.server.record(call.service, call.action, 502, None)
            self._send(502, {"Content-Type": "text/plain"}, f"fault_proxy: upstream error: {e}".encode())
            return None
        answer = Answer(status, resp_headers, payload)
        world = self.server.world
        encoded = any(k.lower() == "content-encoding" for k, _ in resp_headers)
        if not encoded:
            try:
                world.observe(call, status, payload)
                answer = world.rewrite(call, answer)
            except Exception:  # noqa: BLE001 - a bug in the layer must not eat moto's answer
                sys.stderr.write(f"fault_proxy: could not play AWS over {call.action}:\n{traceback.format_exc()}")
        self.server.record(call.service, call.action, answer.status, None)
        self._send(answer.status, answer.headers, answer.body)
        return answer

    def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        return self._upstream(headers, body, self.command, self.path)

    def _upstream(
        self, headers: dict[str, str], body: bytes, method: str = "POST", path: str = "/"
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(self.server.upstream_host, self.server.upstream_port, timeout=60)
        try:
            headers = {**headers, "Host": self.server.upstream_netloc, "Content-Length": str(len(body))}
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
            out = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP]
            return resp.status, out, payload
        finally:
            conn.close()

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _handle


def parse_mix(text: str) -> dict[str, float]:
    mix: dict[str, float] = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        key = key.strip()
        if key not in ("throttle", "error", "drop"):
            raise argparse.ArgumentTypeError(f"unknown fault kind {key!r} (throttle, error, drop)")
        mix[key] = float(value)
    if not mix or sum(mix.values()) <= 0:
        raise argparse.ArgumentTypeError("mix needs at least one positive weight")
    return mix


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", default="127.0.0.1:0", help="host:port to bind (port 0 = any free)")
    p.add_argument("--upstream", help="moto endpoint, e.g. http://127.0.0.1:5000 (required)")
    p.add_argument("--rate", type=float, default=0.3, help="probability of a fault per request")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mix", type=parse_mix, default=parse_mix("throttle=0.6,error=0.25,drop=0.15"),
                   help="relative weights of fault kinds (default throttle=0.6,error=0.25,drop=0.15)")
    p.add_argument("--log", help="append JSON lines here (default stderr)")
    # Defaults may come from the environment, so a harness that starts the proxy with
    # fixed flags (tests/support/stack.rs) can still pick e.g. realistic timing for a bench.
    env = os.environ
    p.add_argument("--no-strict", dest="strict", action="store_false",
                   default=env.get("FEATUREENV_AWS_STRICT", "1") not in ("0", "false", "no"),
                   help="forward requests that break documented AWS constraints (default: refuse them; "
                        "FEATUREENV_AWS_STRICT=0 sets --no-strict)")
    p.add_argument("--timing", choices=("fast", "realistic", "off"), default=env.get("FEATUREENV_AWS_TIMING", "fast"),
                   help="AWS timing to play over moto's answers (default $FEATUREENV_AWS_TIMING or fast: "
                        "sub-second periods)")
    p.add_argument("--time-scale", type=float, default=env.get("FEATUREENV_AWS_TIME_SCALE", "1.0"),
                   help="multiply every timing period by this factor (default $FEATUREENV_AWS_TIME_SCALE or 1.0)")
    p.add_argument("--rds-auto-start-seconds", type=float, metavar="S",
                   default=env.get("FEATUREENV_AWS_RDS_AUTO_START_SECONDS") or None,
                   help="start a DB instance stopped (through this layer) for S seconds, as AWS starts one stopped "
                        "for seven days (default $FEATUREENV_AWS_RDS_AUTO_START_SECONDS or the timing's own: "
                        "realistic 7 days, fast 1008 s, both times --time-scale; S is not scaled)")
    p.add_argument("--iam-policy", metavar="PATH",
                   help="refuse, as AWS would, requests signed with --iam-access-key that this IAM policy "
                        "(docs/iam-policy.json) does not allow (needs --iam-cluster-id and --iam-access-key)")
    p.add_argument("--iam-cluster-id", metavar="ID", help="the cluster id the policy's CLUSTER_ID placeholder becomes")
    p.add_argument("--iam-access-key", metavar="KEY",
                   help="the operator's access key id; requests signed with another key are not checked")
    p.add_argument("--instances-dir", metavar="PATH", type=Path,
                   help="the boot simulator's --instances-dir: answer GetConsoleOutput of its instances with "
                        "their console.log, as AWS would (default: moto's canned answer for every instance)")
    p.add_argument("--list-rules", action="store_true", help="print the strict rules as a Markdown table and exit")
    args = p.parse_args(argv)
    if args.timing not in ("fast", "realistic", "off"):
        p.error(f"--timing (or FEATUREENV_AWS_TIMING) must be fast, realistic or off, not {args.timing!r}")
    if args.list_rules:
        print(aws_rules.rules_table())
        return 0
    if not args.upstream:
        p.error("--upstream is required")
    if not 0.0 <= args.rate <= 1.0:
        p.error("--rate must be within [0, 1]")
    if args.time_scale < 0:
        p.error("--time-scale must not be negative")
    if args.rds_auto_start_seconds is not None:
        if args.rds_auto_start_seconds < 0:
            p.error("--rds-auto-start-seconds must not be negative")
        if args.timing == "off":
            p.error("--rds-auto-start-seconds needs AWS timing (--timing fast or realistic, not off)")
    iam_flags = (args.iam_policy, args.iam_cluster_id, args.iam_access_key)
    if any(iam_flags) and not all(iam_flags):
        p.error("--iam-policy, --iam-cluster-id and --iam-access-key go together")
    iam = None
    if args.iam_policy:
        try:
            iam = IamCheck(args.iam_policy, args.iam_cluster_id, args.iam_access_key)
        except (OSError, ValueError, ImportError) as e:
            p.error(f"--iam-policy {args.iam_policy}: {e}")
    host, _, port = args.listen.rpartition(":")
    log: IO[str] = open(args.log, "a", encoding="utf-8") if args.log else sys.stderr
    consoles = simulator_consoles(args.instances_dir.resolve()) if args.instances_dir else no_consoles
    world = World(timing_for(args.timing, args.time_scale, args.rds_auto_start_seconds), consoles=consoles)
    server = Proxy(
        (host or "127.0.0.1", int(port)), args.upstream, FaultPlan(args.rate, args.seed, args.mix), log,
        strict=args.strict, world=world, iam=iam,
    )
    bound_host, bound_port = server.server_address[:2]
    print(f"{bound_host}:{bound_port}", flush=True)

    def on_signal(signum: int, _frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        if log is not sys.stderr:
            log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
