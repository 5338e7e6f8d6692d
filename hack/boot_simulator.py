#!/usr/bin/env python3
"""Boot simulator: plays a feature environment's instances against moto by running their real user data.

Owns the instance side of the bootstrap contract in the local stack. Every --interval
seconds, one batched DescribeInstances lists the running instances tagged
`featureenv.io/cluster=<cluster-id>`. An instance without a `featureenv.io/bootstrap`
tag is remembered when first seen; once it has been seen for --boot-seconds (the boot
delay), its user data is read (DescribeInstanceAttribute userData, base64; gzip
tolerated) and run with `bash`, in the background, in `<instances-dir>/<instance-id>/`:

  * only host paths are redirected: the script's log file
    (/var/log/featureenv-bootstrap.log) and /dev/console become `bootstrap.log` and
    `console.log` in that directory (text substitution of exactly those strings; a
    redirection to the console appends, as it cannot truncate a device);
  * PATH is hack/instance/ (stand-ins for minikube, docker, kubectl, logger, and
    recording wrappers for curl and aws) and then the system PATH, so bash, tee, sleep,
    cat ... are real; every stand-in appends its argv to `calls.log` (never stdin);
  * the real AWS CLI talks to --endpoint (AWS_ENDPOINT_URL) with test credentials; no
    region is set: the script exports its own, as it must on an instance;
  * instance metadata comes from an IMDS stand-in in this process (127.0.0.1, a free
    port, one path prefix per instance) that plays IMDSv2 as the instance's
    MetadataOptions say (HttpTokens=required: no token, no data); the curl wrapper
    sends http://169.254.169.254/ there.

The outcome is the script's own: it tags its instance `complete`, or `failed` from its
ERR trap, with the real AWS CLI; this simulator never tags. A script still running
after --script-timeout (plus the DATABASE_WAIT_SECONDS it declares), or whose instance
stops running, is killed with its process group. When a script exits, the instance's
tag is read back (DescribeInstances of that id) and one line is printed on stdout:

  <ISO-8601 UTC with ms> bootstrap instance=<id> value=<complete|failed|none> environment=<ns/name> waited=<s> exit=<code> [missing=<image,...>]

The timestamp is taken when the script exits, milliseconds after its tag write (the
script's last command but a log line); the benchmark uses it as "when the bootstrap tag
was written". `waited` counts from when the instance was first seen running, `exit` is
128+N for a script killed by signal N, `missing` lists the images a `docker pull`
could not find.

It also plays each booted instance's SSM Agent for Run Command. When some instance is
its own, each step lists the commands in SSM (ListCommands, all pages: one call with
moto) and runs every AWS-RunShellScript command not run before on each of its
InstanceIds that this simulator booted, whose user data has finished and that is still
running, as the agent does: `"\n".join(Parameters["commands"])` (host paths redirected
as for the user data, so the log file and the console are the boot's) is written to
`<instance dir>/commands/<CommandId>/_script.sh` (mode 755) and run as `sh -c
<that path>` in that directory, its stdout and stderr to `stdout` and `stderr` there,
with the boot's environment plus the agent's own variables (AWS_SSM_INSTANCE_ID,
AWS_SSM_REGION_NAME, SSM_COMMAND_ID), in its own process group. Up to COMMAND_WORKERS
(5) commands at once per instance, as the agent runs them (its CommandWorkersLimit,
default 5): each starts as soon as it is delivered and a worker is free, oldest first
(RequestedDateTime), a sixth waits for one of the five to end; the scripts serialise
what must be serialised themselves (the operator's take a `flock` on their log file). A
command for an instance still booting waits for the boot to end. A command not started
within its TimeoutSeconds (the delivery timeout) never runs (`undelivered` line); one
still running after its `executionTimeout` parameter (default 3600 s, as the
document's), or whose instance stops running, is killed with its process group (every
command running on the instance, each its own group). Commands for instances this
simulator does not run, and other documents, are ignored. When a command exits, the
instance's `featureenv.io/services` tag is read back and one line printed:

  <ISO-8601 UTC with ms> command instance=<id> command=<CommandId> exit=<code> services=<tag value|none> ran=<s>

(`result.json` beside `_script.sh`). Caveat: the real agent does not wait for the user
data, it starts with the instance and runs a command as soon as it is delivered, while
the user data may still run; this simulator holds such a command back.

A stopped instance runs nothing. When a booted instance is no longer running
(StopInstances; moto has it `stopped` at once, and this simulator asks moto directly),
its user data and every command it runs are killed (`killed ...
reason=instance-not-running`, one line each), its metadata service is gone (tokens too),
its Minikube is stopped (`minikube.state` in its directory reads `Stopped`: the docker
driver's node container does not come back with the host) and one `halted
instance=<id>` line is printed. Started again, it boots: once
it has been seen running for --boot-seconds, the metadata service and the SSM Agent are
back (`restarted instance=<id> dir=<dir>`) and commands are delivered again, in the
order sent, those sent while it was stopped included as long as their delivery timeout
has not passed (AWS accepts a command for a stopped instance and tries again until
then: its invocation reads `Delayed`). The user data does NOT run again: cloud-init
runs user scripts once per instance (its scripts-user module, unless a cloud-config sets
it to `always`; "By default, user data scripts and cloud-init directives run only during
the first boot cycle when an EC2 instance is launched", AWS Knowledge Center,
execute-user-data-ec2), so waking the services (`minikube start`, ...) is the job of a
command sent after the start. The boot delay counts from when this simulator first sees
the instance running again (moto's state, not the strict layer's emulated `pending`).

Timing (`--timing fast|realistic --time-scale F`, the pair the strict layer takes for
AWS's own timing): `fast` (the default) is the stand-ins taking no time, as before;
`realistic` plays the instance's own durations, each multiplied by F: the OS boot
before the user data runs (added to --boot-seconds, which stays this simulator's own
delay: `fast` adds 0), and, through FEATUREENV_SIM_* variables in every script's
environment, `minikube start` from its stopped profile, `minikube addons enable`, a
`docker pull` of an image the instance does not have (and of one it has), a
deployment's rollout after its image changed or it was restarted, counted from the
change (rollouts of several deployments overlap, as in a cluster; none when unchanged).
Figures and sources: docs/local-stack.md, "Instance timing".

Other stdout lines (`boot`, `command`, `halted`, `killed`, `restarted`, `started`,
`stopped`, `undelivered`) never contain " bootstrap ". Each instance's directory also
gets `result.json` (exit, value, wall and CPU seconds of the script and what it waited
for). Exits 0 on SIGTERM/SIGINT, after terminating the process groups of every running
script: user data and commands, all of each instance's.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

from botocore.exceptions import BotoCoreError, ClientError

from awsenv import client, iso_now

CLUSTER_TAG = "featureenv.io/cluster"
BOOTSTRAP_TAG = "featureenv.io/bootstrap"
ENVIRONMENT_TAG = "featureenv.io/environment"
SERVICES_TAG = "featureenv.io/services"
# The Run Command document the agent plays, and its `executionTimeout` default.
RUN_SHELL_SCRIPT = "AWS-RunShellScript"
EXECUTION_TIMEOUT_SECONDS = 3600
# How many commands the agent runs at once on one instance; one more waits for a free
# worker. amazon-ssm-agent's agent/appconfig DefaultConfig: `var mds = MdsCfg{
# CommandWorkersLimit: 5, StopTimeoutMillis: 20000, CommandRetryLimit: 15}`; its README:
# "CommandWorkersLimit (int) Default: 5" (`Mds` in amazon-ssm-agent.json).
COMMAND_WORKERS = 5

HACK = Path(__file__).resolve().parent
STAND_INS = HACK / "instance"
# The host paths the script writes to (src/bootstrap.rs LOG_FILE and the console).
SCRIPT_LOG_FILE = "/var/log/featureenv-bootstrap.log"
# Where a script records the sequence of the last change of the services it applied
# (src/bootstrap.rs SEQUENCE_FILE): one per instance.
SCRIPT_SEQUENCE_FILE = "/var/lib/featureenv/services-sequence"
SCRIPT_CONSOLE = "/dev/console"
# Substituted into the script as plain text, so the directory must need no quoting.
SAFE_PATH = re.compile(r"^[A-Za-z0-9._/+-]+$")
KILL_GRACE_SECONDS = 5.0
# The script's own wait for its database parameter (src/bootstrap.rs), which the timeout
# must not cut short: a real instance waits that long.
DATABASE_WAIT_RE = re.compile(r"^readonly DATABASE_WAIT_SECONDS=(\d+)$", re.M)
# Outlives a simulator killed with SIGKILL (the e2e harness stops it that way), so its
# scripts do not run on: reads "+PGID" / "-PGID" lines (a script's process group
# started / gone) and, at end of input (the simulator is gone, however it ended),
# terminates the groups still listed and removes the simulator's cache directory.
WATCHDOG = r"""
trap '' INT TERM HUP
declare -A live=()
while read -r line; do
    case "$line" in
    +*) live[${line#+}]=1 ;;
    -*) unset "live[${line#-}]" ;;
    esac
done
for g in "${!live[@]}"; do kill -TERM -- "-$g" 2>/dev/null; done
rm -rf -- "$1"
if ((${#live[@]})); then
    sleep 3
    for g in "${!live[@]}"; do kill -KILL -- "-$g" 2>/dev/null; done
fi
"""


def decode_user_data(raw: str | None) -> str:
    """Decode the base64 user data DescribeInstanceAttribute returns (gzip tolerated)."""
    if not raw:
        return ""
    data = base64.b64decode(raw)
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data.decode("utf-8", errors="replace")


def redirect_host_paths(script: str, directory: Path) -> str:
    """The script with its log file, its sequence file and /dev/console moved into `directory`; nothing else changes.

    The console is a device: opening it for output never truncates it, so a redirection
    to it (`>/dev/console`, `2>/dev/console`) becomes an append to console.log, and the
    user data and every command after it all land there."""
    console = str(directory / "console.log")
    return (
        script.replace(SCRIPT_LOG_FILE, str(directory / "bootstrap.log"))
        .replace(SCRIPT_SEQUENCE_FILE, str(directory / "services-sequence"))
        .replace(">>" + SCRIPT_CONSOLE, ">>" + console)
        .replace(">" + SCRIPT_CONSOLE, ">>" + console)
        .replace(SCRIPT_CONSOLE, console)
    )


def real_aws_cli() -> str | None:
    """The AWS CLI next to this Python (skips a pyenv shim's start-up cost), else the one on PATH."""
    beside = Path(sys.executable).parent / "aws"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("aws", path=system_path())


def system_path() -> str:
    """This process's PATH without the stand-ins directory."""
    parts = [p for p in os.environ.get("PATH", os.defpath).split(os.pathsep) if p and Path(p).resolve() != STAND_INS]
    return os.pathsep.join(parts)


# --------------------------------------------------------------------------------------
# Instance metadata (IMDS) stand-in


@dataclass
class MetadataInstance:
    values: dict[str, str]  # meta-data path -> value
    user_data: str
    tokens_required: bool = True
    endpoint_enabled: bool = True


class Imds:
    """IMDS for many instances on one 127.0.0.1 port: `/<instance-id>/latest/...`.

    PUT /latest/api/token needs X-aws-ec2-metadata-token-ttl-seconds (1..21600) and is
    refused with X-Forwarded-For, as on EC2. With HttpTokens=required every other
    request needs a token this instance issued and that has not expired (else 401);
    with `optional`, a request without a token is answered too, a bad token still 401.
    """

    MAX_TTL = 21600

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._instances: dict[str, MetadataInstance] = {}
        self._tokens: dict[str, tuple[str, float]] = {}
        imds = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "EC2ws"
            sys_version = ""

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
                pass

            def do_PUT(self) -> None:
                imds._handle(self, "PUT")

            def do_GET(self) -> None:
                imds._handle(self, "GET")

            def do_POST(self) -> None:
                imds._handle(self, "POST")

            def do_DELETE(self) -> None:
                imds._handle(self, "DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.1,), name="imds", daemon=True)
        self._thread.start()

    def url(self, instance_id: str) -> str:
        return f"http://127.0.0.1:{self.port}/{instance_id}"

    def register(self, instance_id: str, entry: MetadataInstance) -> None:
        with self._lock:
            self._instances[instance_id] = entry

    def unregister(self, instance_id: str) -> None:
        with self._lock:
            self._instances.pop(instance_id, None)
            for token in [t for t, (iid, _) in self._tokens.items() if iid == instance_id]:
                del self._tokens[token]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def _reply(h: BaseHTTPRequestHandler, status: int, body: str = "", headers: dict[str, str] | None = None) -> None:
        data = body.encode()
        h.send_response(status)
        h.send_header("Content-Type", "text/plain")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        # Drain any body so the connection stays usable.
        length = int(h.headers.get("Content-Length") or 0)
        if length:
            h.rfile.read(length)
        path = h.path.split("?", 1)[0]
        _, _, rest = path.partition("/")
        instance_id, _, sub = rest.partition("/")
        with self._lock:
            entry = self._instances.get(instance_id)
        if entry is None:
            self._reply(h, 404, "Not Found")
            return
        if not entry.endpoint_enabled:
            # HttpEndpoint=disabled: nothing answers (curl: empty reply from server).
            h.close_connection = True
            return
        sub = "/" + sub
        if sub == "/latest/api/token":
            if method != "PUT":
                self._reply(h, 405, "Method Not Allowed")
                return
            if h.headers.get("X-Forwarded-For"):
                self._reply(h, 403, "Forbidden")
                return
            ttl_header = h.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
            try:
                ttl = int(ttl_header or "")
            except ValueError:
                ttl = 0
            if not 1 <= ttl <= self.MAX_TTL:
                self._reply(h, 400, "Bad Request")
                return
            token = "AQAEA" + secrets.token_urlsafe(40)
            with self._lock:
                self._tokens[token] = (instance_id, time.monotonic() + ttl)
            self._reply(h, 200, token, {"X-aws-ec2-metadata-token-ttl-seconds": str(ttl)})
            return
        if method != "GET":
            self._reply(h, 405, "Method Not Allowed")
            return
        token = h.headers.get("X-aws-ec2-metadata-token")
        if token is not None or entry.tokens_required:
            with self._lock:
                owner, expires = self._tokens.get(token or "", ("", 0.0))
            if owner != instance_id or time.monotonic() >= expires:
                self._reply(h, 401, "Unauthorized")
                return
        if sub in ("/latest/user-data", "/latest/user-data/"):
            self._reply(h, 200, entry.user_data)
            return
        if sub.startswith("/latest/meta-data"):
            key = sub[len("/latest/meta-data") :].strip("/")
            if key in entry.values:
                self._reply(h, 200, entry.values[key])
                return
            prefix = key + "/" if key else ""
            children = sorted(
                {k[len(prefix) :].split("/", 1)[0] + ("/" if "/" in k[len(prefix) :] else "")
                 for k in entry.values if k.startswith(prefix)}
            )
            if children:
                self._reply(h, 200, "\n".join(children))
                return
        self._reply(h, 404, "Not Found")


def metadata_of(instance: dict[str, Any], region: str, user_data: str) -> MetadataInstance:
    """What IMDS tells an instance about itself, from its DescribeInstances entry."""
    az = instance.get("Placement", {}).get("AvailabilityZone") or f"{region}a"
    values = {
        "instance-id": instance["InstanceId"],
        "ami-id": instance.get("ImageId", ""),
        "instance-type": instance.get("InstanceType", ""),
        "placement/region": region,
        "placement/availability-zone": az,
        "local-ipv4": instance.get("PrivateIpAddress", ""),
        "local-hostname": instance.get("PrivateDnsName", ""),
        "hostname": instance.get("PrivateDnsName", ""),
    }
    if instance.get("PublicIpAddress"):
        values["public-ipv4"] = instance["PublicIpAddress"]
    options = instance.get("MetadataOptions") or {}
    return MetadataInstance(
        values={k: v for k, v in values.items() if v},
        user_data=user_data,
        tokens_required=options.get("HttpTokens", "required") != "optional",
        endpoint_enabled=options.get("HttpEndpoint", "enabled") != "disabled",
    )


# --------------------------------------------------------------------------------------
# Instances


@dataclass
class Boot:
    instance_id: str
    environment: str
    directory: Path
    first_seen: float
    proc: subprocess.Popen[bytes] | None = None
    kill_reason: str | None = None
    started: float = 0.0
    thread: threading.Thread | None = None
    timers: list[threading.Timer] = field(default_factory=list)

    def label(self) -> str:
        return f"instance={self.instance_id}"


@dataclass
class Invocation(Boot):
    """One Run Command command on one instance: `directory` is the command's own,
    `instance_dir` the instance's (its logs, calls.log, home)."""

    command_id: str = ""
    instance_dir: Path = Path()
    script: str = ""
    execution_timeout: float = EXECUTION_TIMEOUT_SECONDS

    def label(self) -> str:
        return f"instance={self.instance_id} command={self.command_id}"


@dataclass(frozen=True)
class InstanceTiming:
    """Seconds the instance itself takes, beyond what the stand-ins do at once."""

    # EC2 `running` -> the user data starts (firmware, kernel, systemd, cloud-init).
    boot: float
    # `minikube start` of the stopped, baked profile (docker driver: the node container
    # restarted, the control plane up again).
    minikube_start: float
    # `minikube addons enable|disable NAME` on a running cluster.
    minikube_addon: float
    # `docker pull` of an image the instance's daemon does not have, from in-region ECR.
    docker_pull: float
    # `docker pull` of an image it has (a manifest check, no layers).
    docker_pull_present: float
    # A rollout, from `set image` changing the image (or `rollout restart`) until
    # `rollout status` sees it done: new pods started from an image already pulled,
    # and ready. Rollouts of several deployments run at the same time.
    rollout: float

    def scaled(self, factor: float) -> "InstanceTiming":
        return InstanceTiming(*(getattr(self, f) * factor for f in self.__dataclass_fields__))

    def environment(self) -> dict[str, str]:
        """The FEATUREENV_SIM_* variables hack/instance/ reads (0: no sleep)."""
        return {
            "FEATUREENV_SIM_MINIKUBE_START_SECONDS": f"{self.minikube_start:.3f}",
            "FEATUREENV_SIM_MINIKUBE_ADDON_SECONDS": f"{self.minikube_addon:.3f}",
            "FEATUREENV_SIM_DOCKER_PULL_SECONDS": f"{self.docker_pull:.3f}",
            "FEATUREENV_SIM_DOCKER_PULL_PRESENT_SECONDS": f"{self.docker_pull_present:.3f}",
            "FEATUREENV_SIM_ROLLOUT_SECONDS": f"{self.rollout:.3f}",
        }


# `fast`: nothing takes time (the stand-ins as they always were).
INSTANCE_FAST = InstanceTiming(boot=0.0, minikube_start=0.0, minikube_addon=0.0, docker_pull=0.0,
                               docker_pull_present=0.0, rollout=0.0)
# Measured or documented figures where found, estimates otherwise; sources in
# docs/local-stack.md ("Instance timing").
INSTANCE_REALISTIC = InstanceTiming(boot=20.0, minikube_start=25.0, minikube_addon=8.0, docker_pull=20.0,
                                    docker_pull_present=1.0, rollout=10.0)
# `off` as the strict layer spells "no timing" (the e2e harness passes it the same pair).
INSTANCE_PRESETS = {"fast": INSTANCE_FAST, "off": INSTANCE_FAST, "realistic": INSTANCE_REALISTIC}


def instance_timing_for(mode: str, scale: float) -> InstanceTiming:
    """The instance timing of `--timing MODE --time-scale SCALE`."""
    return INSTANCE_PRESETS[mode].scaled(scale)


def execution_timeout(parameters: dict[str, Any]) -> int:
    """AWS-RunShellScript's `executionTimeout` (seconds, a one-string list), else its default."""
    value = parameters.get("executionTimeout") or []
    try:
        seconds = int(value[0])
    except (IndexError, TypeError, ValueError):
        return EXECUTION_TIMEOUT_SECONDS
    return seconds if seconds > 0 else EXECUTION_TIMEOUT_SECONDS


class Simulator:
    def __init__(
        self,
        endpoint: str,
        region: str,
        cluster_id: str,
        boot_seconds: float,
        instances_dir: Path,
        script_timeout: float = 600.0,
        ecr_cache_seconds: float = 30.0,
        out: Callable[[str], None] | None = None,
        timing: InstanceTiming = INSTANCE_FAST,
    ) -> None:
        self.endpoint = endpoint
        self.region = region
        self.ec2 = client("ec2", endpoint, region)
        self.ssm = client("ssm", endpoint, region)
        self.cluster_id = cluster_id
        self.timing = timing
        # This simulator's own delay plus the OS boot the timing plays (0 when fast).
        self.boot_seconds = boot_seconds + timing.boot
        self.script_timeout = script_timeout
        self.instances_dir = instances_dir.resolve()
        if not SAFE_PATH.match(str(self.instances_dir)):
            raise ValueError(f"--instances-dir {self.instances_dir}: use letters, digits and ._/+- only")
        self.instances_dir.mkdir(parents=True, exist_ok=True)
        # Per simulator: several stacks (parallel e2e tests) may share instances_dir.
        self.cache_dir = self.instances_dir / f".ecr-cache-{os.getpid()}"
        shutil.rmtree(self.cache_dir, ignore_errors=True)
        self.cache_dir.mkdir()
        self.ecr_cache_seconds = ecr_cache_seconds
        self.system_path = system_path()
        aws = real_aws_cli()
        curl = shutil.which("curl", path=self.system_path)
        bash = shutil.which("bash", path=self.system_path)
        sh = shutil.which("sh", path=self.system_path)
        if not aws:
            raise RuntimeError("the AWS CLI is not installed: pip install awscli")
        if not curl or not bash or not sh:
            raise RuntimeError("bash, sh and curl are needed on PATH")
        self.aws, self.curl, self.bash, self.sh = aws, curl, bash, sh
        self._print_lock = threading.Lock()
        self._out = out or self._stdout
        self.imds = Imds()
        self.lock = threading.Lock()
        self.watchdog = subprocess.Popen(
            [self.bash, "-c", WATCHDOG, "watchdog", str(self.cache_dir)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        )
        self.first_seen: dict[str, float] = {}
        self.boots: dict[str, Boot] = {}  # scripts running
        self.booted: set[str] = set()  # never run an instance's user data twice
        self.live: set[str] = set()  # the cluster's running instances at the last step
        self.down: set[str] = set()  # booted instances seen not running (stopped or terminated)
        # booted instances running again after a stop, by when first seen running again:
        # their agent is not online until the boot delay has passed
        self.restarting: dict[str, float] = {}
        # instance id -> command id -> the commands it runs (at most COMMAND_WORKERS)
        self.invocations: dict[str, dict[str, Invocation]] = {}
        self.invoked: set[tuple[str, str]] = set()  # (command id, instance id) run or given up
        self.stopping = False

    def _tell_watchdog(self, line: str) -> None:
        try:
            assert self.watchdog.stdin is not None
            with self._print_lock:
                self.watchdog.stdin.write(line + "\n")
                self.watchdog.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass

    def _stdout(self, line: str) -> None:
        with self._print_lock:
            print(line, flush=True)

    def log(self, line: str) -> None:
        self._out(f"{iso_now()} {line}")

    # -- the poll loop --------------------------------------------------------------

    def _running_instances(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        pages = self.ec2.get_paginator("describe_instances").paginate(
            Filters=[
                {"Name": f"tag:{CLUSTER_TAG}", "Values": [self.cluster_id]},
                {"Name": "instance-state-name", "Values": ["running"]},
            ]
        )
        for page in pages:
            for reservation in page.get("Reservations", []):
                out.extend(reservation.get("Instances", []))
        return out

    def step(self) -> None:
        now = time.monotonic()
        running = self._running_instances()
        live: set[str] = set()
        online: list[dict[str, Any]] = []  # booted instances whose agent comes back now
        for inst in running:
            iid = inst["InstanceId"]
            live.add(iid)
            tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
            with self.lock:
                if self.stopping:
                    continue
                if iid in self.booted:
                    # Started again after a stop: a boot, but not the user data's
                    # (cloud-init runs user scripts once per instance).
                    if iid in self.down:
                        self.down.discard(iid)
                        self.restarting[iid] = now
                    since = self.restarting.get(iid)
                    if since is not None and now - since >= self.boot_seconds:
                        del self.restarting[iid]
                        online.append(inst)
                    continue
            if BOOTSTRAP_TAG in tags:
                continue
            first = self.first_seen.setdefault(iid, now)
            if now - first < self.boot_seconds:
                continue
            self._start(inst, tags.get(ENVIRONMENT_TAG, "-"), first)
        # A stopped or terminated instance stops running its script, its commands, its
        # metadata service and its Minikube.
        with self.lock:
            self.live = live
            gone: list[Boot] = [b for iid, b in self.boots.items() if iid not in live]
            gone += [c for iid, running in self.invocations.items() if iid not in live for c in running.values()]
            halted = sorted(self.booted - live - self.down)
            self.down |= self.booted - live
            for iid in self.booted - live:
                self.restarting.pop(iid, None)
                self.imds.unregister(iid)
        for boot in gone:
            self.kill(boot, "instance-not-running")
        for iid in halted:
            self._halted(iid)
        for inst in online:
            self._restarted(inst)
        for iid in list(self.first_seen):
            if iid not in live:
                del self.first_seen[iid]
        self._deliver_commands()

    def _halted(self, instance_id: str) -> None:
        """A booted instance seen not running (stopped, or terminated): whatever ran on
        it is gone, Minikube's node container included."""
        directory = self.instances_dir / instance_id
        if directory.is_dir():
            (directory / "minikube.state").write_text("Stopped\n")
        self.log(f"halted instance={instance_id}")

    def _restarted(self, inst: dict[str, Any]) -> None:
        """A booted instance running again for the boot delay: its metadata service and
        its SSM Agent are back (commands are delivered again); its user data does not
        run again."""
        iid = inst["InstanceId"]
        directory = self.instances_dir / iid
        try:
            user_data = (directory / "user-data").read_text()
        except FileNotFoundError:
            user_data = ""
        self.imds.register(iid, metadata_of(inst, self.region, user_data))
        self.log(f"restarted instance={iid} dir={directory}")

    # -- Run Command ------------------------------------------------------------------

    def _ours(self, instance_id: str) -> bool:
        """Whether this simulator runs (or is about to boot) the instance."""
        return instance_id in self.booted or instance_id in self.first_seen

    def _list_commands(self) -> list[dict[str, Any]]:
        """Every command in SSM, in the order sent."""
        commands: list[dict[str, Any]] = []
        for page in self.ssm.get_paginator("list_commands").paginate():
            commands.extend(page.get("Commands", []))
        # ListCommands documents no order; sorted() is stable for equal timestamps.
        return sorted(commands, key=lambda c: c.get("RequestedDateTime") or datetime.min.replace(tzinfo=timezone.utc))

    def _deliver_commands(self) -> None:
        """Starts, per instance, the AWS-RunShellScript commands it has not run, oldest
        first, as many as it has free workers (COMMAND_WORKERS, less those running), when
        it may run commands now."""
        with self.lock:
            if self.stopping or not (self.booted or self.first_seen):
                return
        commands = self._list_commands()
        now = datetime.now(timezone.utc)
        waiting: set[str] = set()  # instances with an older command that cannot start yet
        for command in commands:
            if command.get("DocumentName") != RUN_SHELL_SCRIPT:
                continue
            cid = str(command.get("CommandId"))
            for iid in command.get("InstanceIds") or []:
                with self.lock:
                    if (cid, iid) in self.invoked or iid in waiting or not self._ours(iid):
                        continue
                    requested = command.get("RequestedDateTime")
                    timeout = command.get("TimeoutSeconds") or EXECUTION_TIMEOUT_SECONDS
                    if requested is not None and (now - requested).total_seconds() > timeout:
                        self.invoked.add((cid, iid))
                        self.log(f"undelivered instance={iid} command={cid} timeout={timeout}")
                        continue
                    ready = (
                        iid in self.booted and iid not in self.boots and iid in self.live
                        and iid not in self.restarting and iid not in self.down
                        and len(self.invocations.get(iid, {})) < COMMAND_WORKERS
                    )
                    if not ready:
                        waiting.add(iid)  # and those sent after it wait too: oldest first
                        continue
                    self.invoked.add((cid, iid))
                    parameters = command.get("Parameters") or {}
                    directory = self.instances_dir / iid
                    invocation = Invocation(
                        iid, "-", directory / "commands" / cid, time.monotonic(), command_id=cid,
                        instance_dir=directory, script="\n".join(parameters.get("commands") or []),
                        execution_timeout=execution_timeout(parameters),
                    )
                    self.invocations.setdefault(iid, {})[cid] = invocation
                invocation.thread = threading.Thread(
                    target=self._invoke, args=(invocation,), name=f"command-{iid}-{cid}", daemon=True
                )
                invocation.thread.start()

    def _invoke(self, inv: Invocation) -> None:
        iid = inv.instance_id
        try:
            inv.directory.mkdir(parents=True, exist_ok=True)
            script = inv.directory / "_script.sh"
            script.write_text(redirect_host_paths(inv.script, inv.instance_dir))
            script.chmod(0o755)
            env = {
                **self._environment(iid, inv.instance_dir),
                "AWS_SSM_INSTANCE_ID": iid, "AWS_SSM_REGION_NAME": self.region, "SSM_COMMAND_ID": inv.command_id,
            }
            with open(inv.directory / "stdout", "wb") as out, open(inv.directory / "stderr", "wb") as err, self.lock:
                if inv.kill_reason is not None or self.stopping:
                    return
                inv.started = time.monotonic()
                inv.proc = subprocess.Popen(
                    [self.sh, "-c", str(script)],
                    cwd=inv.directory,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                )
            self._tell_watchdog(f"+{inv.proc.pid}")
            timer = threading.Timer(inv.execution_timeout, self.kill, args=(inv, f"timeout-{inv.execution_timeout:g}s"))
            timer.daemon = True
            inv.timers.append(timer)
            timer.start()
            _, status, usage = os.wait4(inv.proc.pid, 0)
            exited_at, exited = iso_now(), time.monotonic()
            inv.proc.returncode = os.waitstatus_to_exitcode(status)
            for t in inv.timers:
                t.cancel()
            self._drain(inv)
            self._tell_watchdog(f"-{inv.proc.pid}")
            if self.stopping:
                return
            code = inv.proc.returncode if inv.proc.returncode >= 0 else 128 - inv.proc.returncode
            value = self._tag(iid, SERVICES_TAG)
            ran = exited - (inv.started or exited)
            self._out(
                f"{exited_at} command instance={iid} command={inv.command_id} exit={code} "
                f"services={value or 'none'} ran={ran:.3f}"
            )
            (inv.directory / "result.json").write_text(
                json.dumps(
                    {
                        "instance": iid,
                        "command": inv.command_id,
                        "services": value,
                        "exit": code,
                        "killed": inv.kill_reason,
                        "exited_at": exited_at,
                        "wall_seconds": round(exited - inv.started, 3),
                        "cpu_user_seconds": round(usage.ru_utime, 3),
                        "cpu_system_seconds": round(usage.ru_stime, 3),
                    },
                    indent=2,
                )
                + "\n"
            )
        except Exception as e:  # noqa: BLE001 - one command must not stop the others
            print(f"{iso_now()} error instance={iid} command={inv.command_id} {type(e).__name__}: {e}",
                  file=sys.stderr, flush=True)
        finally:
            with self.lock:  # its worker is free
                running = self.invocations.get(iid, {})
                if running.get(inv.command_id) is inv:
                    del running[inv.command_id]
                if not running:
                    self.invocations.pop(iid, None)

    # -- one instance -----------------------------------------------------------------

    def _start(self, inst: dict[str, Any], environment: str, first_seen: float) -> None:
        iid = inst["InstanceId"]
        boot = Boot(iid, environment, self.instances_dir / iid, first_seen)
        with self.lock:
            self.booted.add(iid)
            self.boots[iid] = boot
        self.first_seen.pop(iid, None)
        boot.thread = threading.Thread(target=self._boot, args=(boot, inst), name=f"boot-{iid}", daemon=True)
        boot.thread.start()

    def _environment(self, instance_id: str, directory: Path) -> dict[str, str]:
        """What a script of the instance (its user data, a command) runs with."""
        return {
            "PATH": f"{STAND_INS}{os.pathsep}{self.system_path}",
            "HOME": str(directory / "home"),
            "LANG": "C.UTF-8",
            "TERM": "dumb",
            # The real AWS CLI against the stack, with credentials as an instance
            # profile would give them (and no IMDS look-up for them).
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
            "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_PAGER": "",
            # For the stand-ins in hack/instance/.
            "FEATUREENV_SIM_DIR": str(directory),
            "FEATUREENV_SIM_IMDS": self.imds.url(instance_id),
            "FEATUREENV_SIM_AWS": self.aws,
            "FEATUREENV_SIM_CURL": self.curl,
            "FEATUREENV_SIM_CACHE": str(self.cache_dir),
            "FEATUREENV_SIM_ECR_CACHE_SECONDS": str(int(self.ecr_cache_seconds)),
            **self.timing.environment(),
        }

    def _boot(self, boot: Boot, inst: dict[str, Any]) -> None:
        iid = boot.instance_id
        try:
            attr = self.ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")
            user_data = decode_user_data(attr.get("UserData", {}).get("Value"))
            shutil.rmtree(boot.directory, ignore_errors=True)
            (boot.directory / "home").mkdir(parents=True)
            (boot.directory / "calls.log").touch()
            (boot.directory / "user-data").write_text(user_data)
            script = boot.directory / "user-data.sh"
            script.write_text(redirect_host_paths(user_data, boot.directory))
            self.imds.register(iid, metadata_of(inst, self.region, user_data))
            self.log(f"boot instance={iid} environment={boot.environment} dir={boot.directory}")
            with open(boot.directory / "bash.out", "wb") as out, self.lock:
                if boot.kill_reason is not None:
                    return
                boot.started = time.monotonic()
                boot.proc = subprocess.Popen(
                    [self.bash, str(script)],
                    cwd=boot.directory,
                    env=self._environment(iid, boot.directory),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self._tell_watchdog(f"+{boot.proc.pid}")
            wait = DATABASE_WAIT_RE.search(user_data)
            timeout = self.script_timeout + (int(wait.group(1)) if wait else 0)
            timer = threading.Timer(timeout, self.kill, args=(boot, f"timeout-{timeout:g}s"))
            timer.daemon = True
            boot.timers.append(timer)
            timer.start()
            _, status, usage = os.wait4(boot.proc.pid, 0)
            exited_at, exited = iso_now(), time.monotonic()
            boot.proc.returncode = os.waitstatus_to_exitcode(status)
            for t in boot.timers:
                t.cancel()
            self._drain(boot)
            self._tell_watchdog(f"-{boot.proc.pid}")
            if self.stopping:
                return
            code = boot.proc.returncode if boot.proc.returncode >= 0 else 128 - boot.proc.returncode
            value = self._tag(iid, BOOTSTRAP_TAG)
            missing = self._read_lines(boot.directory / "pull-failures")
            line = (
                f"{exited_at} bootstrap instance={iid} value={value or 'none'} "
                f"environment={boot.environment} waited={exited - boot.first_seen:.1f} exit={code}"
            )
            if missing:
                line += " missing=" + ",".join(dict.fromkeys(missing))
            self._out(line)
            (boot.directory / "result.json").write_text(
                json.dumps(
                    {
                        "instance": iid,
                        "environment": boot.environment,
                        "value": value,
                        "exit": code,
                        "killed": boot.kill_reason,
                        "exited_at": exited_at,
                        "waited_seconds": round(exited - boot.first_seen, 3),
                        "wall_seconds": round(exited - boot.started, 3),
                        "cpu_user_seconds": round(usage.ru_utime, 3),
                        "cpu_system_seconds": round(usage.ru_stime, 3),
                        "missing": missing,
                    },
                    indent=2,
                )
                + "\n"
            )
        except Exception as e:  # noqa: BLE001 - one instance must not stop the others
            print(f"{iso_now()} error instance={iid} {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            with self.lock:
                if boot.proc is None and boot.kill_reason is None:
                    self.booted.discard(iid)  # its script never ran: try again next step
        finally:
            # Metadata stays up for the instance's commands until it stops running (step).
            with self.lock:
                self.boots.pop(iid, None)

    @staticmethod
    def _read_lines(path: Path) -> list[str]:
        try:
            return [line for line in path.read_text().splitlines() if line]
        except FileNotFoundError:
            return []

    def _tag(self, instance_id: str, key: str) -> str | None:
        try:
            r = self.ec2.describe_instances(InstanceIds=[instance_id])
        except ClientError:
            return None
        for reservation in r.get("Reservations", []):
            for inst in reservation.get("Instances", []):
                tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
                return tags.get(key)
        return None

    @staticmethod
    def _group_alive(pgid: int) -> bool:
        """Whether a process of group `pgid` still runs. Zombies do not count: an orphan
        is reaped by init, sometimes seconds later, and can no longer do anything."""
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        proc = Path("/proc")
        if not proc.is_dir():
            return True
        for entry in proc.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            # fields: state, ppid, pgrp, ...
            if fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
                return True
        return False

    def _drain(self, boot: Boot, seconds: float = 2.0) -> None:
        """After bash exits, its log pipeline (tee, logger) finishes on its own; anything
        of the script's process group still there after `seconds` is killed."""
        assert boot.proc is not None
        pgid = boot.proc.pid
        deadline = time.monotonic() + seconds
        while self._group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._group_alive(pgid):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def kill(self, boot: Boot, reason: str) -> None:
        """SIGTERM the script's process group, SIGKILL it KILL_GRACE_SECONDS later."""
        with self.lock:
            if boot.kill_reason is not None:
                return
            boot.kill_reason = reason
            proc = boot.proc
        if proc is None or proc.returncode is not None:
            return
        if not self.stopping:
            self.log(f"killed {boot.label()} reason={reason}")
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return

        def hard_kill() -> None:
            if proc.returncode is None or self._group_alive(proc.pid):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

        timer = threading.Timer(KILL_GRACE_SECONDS, hard_kill)
        timer.daemon = True
        timer.start()

    def shutdown(self) -> None:
        """Terminates every running script (by process group), then stops IMDS."""
        with self.lock:
            self.stopping = True
            boots: list[Boot] = [*self.boots.values(), *(c for running in self.invocations.values()
                                                           for c in running.values())]
        for boot in boots:
            self.kill(boot, "shutdown")
        deadline = time.monotonic() + KILL_GRACE_SECONDS + 1
        for boot in boots:
            if boot.thread is not None:
                boot.thread.join(max(0.0, deadline - time.monotonic()))
        for boot in boots:
            if boot.proc is not None and self._group_alive(boot.proc.pid):
                try:
                    os.killpg(boot.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.imds.close()
        if self.watchdog.stdin is not None:
            try:
                self.watchdog.stdin.close()
            except OSError:
                pass
        try:
            self.watchdog.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.watchdog.kill()
        shutil.rmtree(self.cache_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--endpoint", required=True)
    p.add_argument("--region", required=True)
    p.add_argument("--cluster-id", required=True)
    p.add_argument(
        "--boot-seconds",
        type=float,
        default=float(os.environ.get("FEATUREENV_SIM_BOOT_SECONDS", "3")),
        help="boot delay before the user data runs (env FEATUREENV_SIM_BOOT_SECONDS, default 3)",
    )
    p.add_argument(
        "--timing",
        choices=sorted(INSTANCE_PRESETS),
        default="fast",
        help="instance-side durations: fast (none, the default; off: the same) or realistic "
        "(docs/local-stack.md, 'Instance timing'); the realistic OS boot is added to --boot-seconds",
    )
    p.add_argument("--time-scale", type=float, default=1.0, help="multiplies the --timing durations (default 1)")
    p.add_argument("--interval", type=float, default=0.5, help="poll interval in seconds")
    p.add_argument(
        "--instances-dir",
        type=Path,
        default=Path(os.environ.get("FEATUREENV_DEV_DIR") or HACK.parent / ".dev") / "instances",
        help="one directory per instance: the script, bootstrap.log, calls.log "
        "(default .dev/instances of the repository, or $FEATUREENV_DEV_DIR/instances)",
    )
    p.add_argument(
        "--script-timeout",
        type=float,
        default=600.0,
        help="kill a script (its whole process group) still running after this many seconds, plus the "
        "DATABASE_WAIT_SECONDS it declares (default 600)",
    )
    p.add_argument(
        "--ecr-cache-seconds",
        type=float,
        default=30.0,
        help="how long docker pull remembers that an ECR image exists (default 30; 0 checks every pull)",
    )
    args = p.parse_args(argv)

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    sim = Simulator(
        args.endpoint,
        args.region,
        args.cluster_id,
        args.boot_seconds,
        args.instances_dir,
        script_timeout=args.script_timeout,
        ecr_cache_seconds=args.ecr_cache_seconds,
        timing=instance_timing_for(args.timing, args.time_scale),
    )
    sim.log(
        f"started cluster={args.cluster_id} boot_seconds={sim.boot_seconds:g} timing={args.timing} "
        f"time_scale={args.time_scale:g} interval={args.interval} "
        f"endpoint={args.endpoint} instances_dir={sim.instances_dir} imds=127.0.0.1:{sim.imds.port} aws={sim.aws}"
    )
    try:
        while not stop.is_set():
            try:
                sim.step()
            except (ClientError, BotoCoreError) as e:
                print(f"{iso_now()} error {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            stop.wait(args.interval)
    finally:
        sim.shutdown()
    sim.log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
