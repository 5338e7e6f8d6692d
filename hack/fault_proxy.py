#!/usr/bin/env python3
"""Fault-injecting HTTP reverse proxy for AWS protocols, placed in front of moto.

Owns fault injection for the end-to-end suite and the record of which AWS operations
the operator issued (used by the IAM least-privilege test).

For each request, with probability --rate, instead of forwarding it the proxy injects
one fault, chosen by the --mix weights:
  * throttle: HTTP 400 in the protocol's own error format
      EC2 query   -> <Response><Errors><Error><Code>RequestLimitExceeded</Code>...
      other query -> <ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code>...
      JSON 1.0/1.1 (X-Amz-Target) -> {"__type": "ThrottlingException", ...}
                                     with header x-amzn-ErrorType
  * error: HTTP 500 in the same formats (InternalError / InternalFailure)
  * drop: the connection is closed without any response
Otherwise the request is forwarded unchanged (but for Host) and the answer relayed.

stdout's first line is the bound address `127.0.0.1:PORT` (so --listen 127.0.0.1:0
works). Every request is logged (to --log, default stderr) as one JSON line:
  {"ts": ..., "service": "ec2", "action": "RunInstances", "status": 200, "fault": null}
`service` comes from the Authorization header's credential scope, `action` from the
form body's `Action=` or the `X-Amz-Target` header (text after the last dot);
`fault` is null for forwarded requests, else "throttle" | "error" | "drop"
(`status` is then the injected status, null for a drop).
The random choice uses random.Random(--seed), so a run is reproducible for a given
request order. Exits 0 on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import re
import signal
import socket
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, Any
from urllib.parse import parse_qs, urlsplit

HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
    "te", "trailers", "transfer-encoding", "upgrade", "host", "content-length",
}
CREDENTIAL_SCOPE_RE = re.compile(r"Credential=[^/]+/\d{8}/[^/]+/([^/]+)/aws4_request")


def service_of(headers: Any) -> str:
    m = CREDENTIAL_SCOPE_RE.search(headers.get("Authorization", "") or "")
    return m.group(1) if m else "unknown"


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
    request_id = str(uuid.uuid4())
    if kind == "throttle":
        status = 400
        code = "RequestLimitExceeded" if service == "ec2" else ("ThrottlingException" if json_protocol else "Throttling")
        message = "Rate exceeded (injected by fault_proxy)"
        error_type = "Sender"
    else:
        status = 500
        code = "InternalError" if service == "ec2" else "InternalFailure"
        message = "We encountered an internal error. Please try again. (injected by fault_proxy)"
        error_type = "Receiver"
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
            f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors>"
            f"<RequestID>{request_id}</RequestID></Response>"
        )
    else:
        xml = (
            f'<ErrorResponse xmlns="http://{service}.amazonaws.com/doc/">'
            f"<Error><Type>{error_type}</Type><Code>{code}</Code><Message>{message}</Message></Error>"
            f"<RequestId>{request_id}</RequestId></ErrorResponse>"
        )
    return status, {"Content-Type": "text/xml", "x-amzn-RequestId": request_id}, xml.encode()


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

    def __init__(self, listen: tuple[str, int], upstream: str, plan: FaultPlan, log: IO[str]) -> None:
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

    def record(self, service: str, action: str, status: int | None, fault: str | None) -> None:
        line = json.dumps(
            {"ts": round(time.time(), 3), "service": service, "action": action, "status": status, "fault": fault}
        )
        with self.log_lock:
            self.log.write(line + "\n")
            self.log.flush()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Proxy

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet default logging
        pass

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
        body = self._read_body()
        service = service_of(self.headers)
        action = action_of(self.headers, body)
        json_protocol = bool(self.headers.get("X-Amz-Target"))
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
            status, headers, payload = error_response(
                service, json_protocol, self.headers.get("Content-Type", ""), fault
            )
            self.server.record(service, action, status, fault)
            self._send(status, headers, payload)
            return
        try:
            status, resp_headers, payload = self._forward(body)
        except (OSError, http.client.HTTPException) as e:
            self.server.record(service, action, 502, None)
            self._send(502, {"Content-Type": "text/plain"}, f"fault_proxy: upstream error: {e}".encode())
            return
        self.server.record(service, action, status, None)
        self._send(status, resp_headers, payload)

    def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(self.server.upstream_host, self.server.upstream_port, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            headers["Host"] = self.server.upstream_netloc
            headers["Content-Length"] = str(len(body))
            conn.request(self.command, self.path, body=body, headers=headers)
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
    p.add_argument("--upstream", required=True, help="moto endpoint, e.g. http://127.0.0.1:5000")
    p.add_argument("--rate", type=float, default=0.3, help="probability of a fault per request")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mix", type=parse_mix, default=parse_mix("throttle=0.6,error=0.25,drop=0.15"),
                   help="relative weights of fault kinds (default throttle=0.6,error=0.25,drop=0.15)")
    p.add_argument("--log", help="append JSON lines here (default stderr)")
    args = p.parse_args(argv)
    if not 0.0 <= args.rate <= 1.0:
        p.error("--rate must be within [0, 1]")
    host, _, port = args.listen.rpartition(":")
    log: IO[str] = open(args.log, "a", encoding="utf-8") if args.log else sys.stderr
    server = Proxy((host or "127.0.0.1", int(port)), args.upstream, FaultPlan(args.rate, args.seed, args.mix), log)
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
