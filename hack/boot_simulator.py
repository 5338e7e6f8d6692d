#!/usr/bin/env python3
"""Boot simulator: plays the part of a feature environment's instance against moto.

Owns the instance side of the bootstrap contract in the local stack. A real instance
runs its user data (pull images, start services) and then tags itself
`featureenv.io/bootstrap=complete` (or `failed`). Here, every --interval seconds:

  1. one batched DescribeInstances for running instances tagged
     `featureenv.io/cluster=<cluster-id>`;
  2. an instance without a `featureenv.io/bootstrap` tag is remembered when first seen;
  3. once it has been seen for --boot-seconds, its user data is read
     (DescribeInstanceAttribute userData, base64; gzip tolerated), every ECR image
     reference in it (`<acct>.dkr.ecr.<region>.amazonaws.com/<repo>:<tag>` or
     `...@sha256:<hex>`) is checked, and the instance is tagged
     `featureenv.io/bootstrap=failed` if any referenced repository does not exist,
     else `complete`.

Each tag write is logged on stdout as one line:
  <ISO-8601 UTC with ms> bootstrap instance=<id> value=<complete|failed> environment=<ns/name> waited=<s> [missing=<repo,...>]
The timestamp is taken right after CreateTags returned (the benchmark uses it as
"when the bootstrap tag was written"). Exits 0 on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import os
import re
import signal
import sys
import threading
import time
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from awsenv import client, iso_now

CLUSTER_TAG = "featureenv.io/cluster"
BOOTSTRAP_TAG = "featureenv.io/bootstrap"
ENVIRONMENT_TAG = "featureenv.io/environment"

# <account>.dkr.ecr.<region>.amazonaws.com/<repo>[:tag][@sha256:digest]
ECR_IMAGE_RE = re.compile(
    r"(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/"
    r"(?P<repo>[a-z0-9][a-z0-9._/-]*?)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[a-f0-9]{64}))?"
    r"(?=$|[\s\"'`;,)\]}|&<>])"
)


def decode_user_data(raw: str | None) -> str:
    """Decode the base64 user data DescribeInstanceAttribute returns (gzip tolerated)."""
    if not raw:
        return ""
    data = base64.b64decode(raw)
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data.decode("utf-8", errors="replace")


def image_refs(script: str) -> list[dict[str, str]]:
    """Every ECR image reference in a script, in order, de-duplicated."""
    seen: set[str] = set()
    out: list[dict[str, str]] = []
    for m in ECR_IMAGE_RE.finditer(script):
        if not (m.group("tag") or m.group("digest")):
            continue  # a bare repository URI is not an image reference
        if m.group(0) in seen:
            continue
        seen.add(m.group(0))
        out.append({k: v for k, v in m.groupdict().items() if v} | {"ref": m.group(0)})
    return out


class Simulator:
    def __init__(self, endpoint: str, region: str, cluster_id: str, boot_seconds: float) -> None:
        self.ec2 = client("ec2", endpoint, region)
        self.ecr = client("ecr", endpoint, region)
        self.cluster_id = cluster_id
        self.boot_seconds = boot_seconds
        self.first_seen: dict[str, float] = {}
        # Repository existence, per step (see `_repository_exists`).
        self._repositories: dict[tuple[str, str], bool] = {}

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

    def _repository_exists(self, repo: str, account: str) -> bool:
        # Answers are kept for one step only: many instances share repositories, and
        # a burst of 50 should not cost 50 look-ups of each; a repository created
        # later is still seen on the next step.
        key = (account, repo)
        if key not in self._repositories:
            try:
                self.ecr.describe_repositories(registryId=account, repositoryNames=[repo])
                self._repositories[key] = True
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") != "RepositoryNotFoundException":
                    raise
                self._repositories[key] = False
        return self._repositories[key]

    def verdict(self, instance_id: str) -> tuple[str, list[str]]:
        """('complete'|'failed', missing repositories) for one instance's user data."""
        attr = self.ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
        script = decode_user_data(attr.get("UserData", {}).get("Value"))
        missing = sorted(
            {ref["repo"] for ref in image_refs(script) if not self._repository_exists(ref["repo"], ref["account"])}
        )
        return ("failed" if missing else "complete"), missing

    def step(self) -> None:
        now = time.monotonic()
        self._repositories = {}
        running = self._running_instances()
        live: set[str] = set()
        for inst in running:
            iid = inst["InstanceId"]
            tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
            if BOOTSTRAP_TAG in tags:
                continue
            live.add(iid)
            first = self.first_seen.setdefault(iid, now)
            if now - first < self.boot_seconds:
                continue
            value, missing = self.verdict(iid)
            self.ec2.create_tags(Resources=[iid], Tags=[{"Key": BOOTSTRAP_TAG, "Value": value}])
            line = (
                f"{iso_now()} bootstrap instance={iid} value={value} "
                f"environment={tags.get(ENVIRONMENT_TAG, '-')} waited={now - first:.1f}"
            )
            if missing:
                line += " missing=" + ",".join(missing)
            print(line, flush=True)
            live.discard(iid)
        # forget instances that were tagged, stopped or terminated
        for iid in list(self.first_seen):
            if iid not in live:
                del self.first_seen[iid]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--endpoint", required=True)
    p.add_argument("--region", required=True)
    p.add_argument("--cluster-id", required=True)
    p.add_argument(
        "--boot-seconds",
        type=float,
        default=float(os.environ.get("FEATUREENV_SIM_BOOT_SECONDS", "3")),
        help="simulated boot time (env FEATUREENV_SIM_BOOT_SECONDS, default 3)",
    )
    p.add_argument("--interval", type=float, default=0.5, help="poll interval in seconds")
    args = p.parse_args(argv)

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    sim = Simulator(args.endpoint, args.region, args.cluster_id, args.boot_seconds)
    print(
        f"{iso_now()} started cluster={args.cluster_id} boot_seconds={args.boot_seconds} "
        f"interval={args.interval} endpoint={args.endpoint}",
        flush=True,
    )
    while not stop.is_set():
        try:
            sim.step()
        except (ClientError, BotoCoreError) as e:
            print(f"{iso_now()} error {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        stop.wait(args.interval)
    print(f"{iso_now()} stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
