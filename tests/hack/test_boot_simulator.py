"""Tests for hack/boot_simulator.py: tags our running instances complete/failed after the boot delay."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from boot_simulator import decode_user_data, image_refs

REPO = Path(__file__).resolve().parents[2]
REGISTRY = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
LINE_RE = re.compile(
    r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) bootstrap instance=(i-[0-9a-f]+) value=(complete|failed) "
    r"environment=(\S+) waited=([\d.]+)( missing=\S+)?$"
)


def test_image_refs_parses_tags_and_digests() -> None:
    digest = "sha256:" + "ab" * 32
    script = (
        f"#!/bin/bash\ndocker pull {REGISTRY}/payments:pr-123\n"
        f"IMG='{REGISTRY}/team/orders@{digest}'\n"
        f"echo {REGISTRY}/frontend   # bare repo, not an image\n"
        f"x=\"{REGISTRY}/payments:pr-123\"\n"
    )
    refs = image_refs(script)
    assert [(r["repo"], r.get("tag"), r.get("digest")) for r in refs] == [
        ("payments", "pr-123", None),
        ("team/orders", None, digest),
    ]
    assert refs[0]["account"] == "123456789012"
    assert decode_user_data("") == ""


def _launch(ec2: Any, ami: str, cluster: str, name: str, images: list[str], tags: dict[str, str] | None = None) -> str:
    user_data = "#!/bin/bash\nset -euo pipefail\n" + "".join(f"docker pull {i}\n" for i in images)
    all_tags = {"featureenv.io/cluster": cluster, "featureenv.io/environment": f"default/{name}", **(tags or {})}
    r = ec2.run_instances(
        ImageId=ami, MinCount=1, MaxCount=1, InstanceType="t3.xlarge", UserData=user_data,
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in all_tags.items()]}],
    )
    return str(r["Instances"][0]["InstanceId"])


def _bootstrap_tag(ec2: Any, iid: str) -> str | None:
    inst = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    return {t["Key"]: t["Value"] for t in inst.get("Tags", [])}.get("featureenv.io/bootstrap")


def test_simulator_tags_complete_and_failed(seeded: dict[str, Any], aws: Any, moto_endpoint: str) -> None:
    ec2 = aws("ec2")
    cluster = "sim-" + uuid.uuid4().hex[:6]
    ami = seeded["amiIds"]["newer"]
    good = _launch(ec2, ami, cluster, "good", [f"{REGISTRY}/payments:pr-123", f"{REGISTRY}/orders:latest"])
    bad = _launch(ec2, ami, cluster, "bad", [f"{REGISTRY}/payments:latest", f"{REGISTRY}/no-such-repo:pr-1"])
    foreign = _launch(ec2, ami, "someone-else", "foreign", [])
    done = _launch(ec2, ami, cluster, "done", [], {"featureenv.io/bootstrap": "complete"})
    stopped = _launch(ec2, ami, cluster, "stopped", [])
    ec2.stop_instances(InstanceIds=[stopped])

    proc = subprocess.Popen(
        [sys.executable, str(REPO / "hack/boot_simulator.py"), "--endpoint", moto_endpoint, "--region", "us-east-1",
         "--cluster-id", cluster, "--interval", "0.2"],
        env={**os.environ, "FEATUREENV_SIM_BOOT_SECONDS": "1.5"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        started = time.monotonic()
        time.sleep(0.8)
        assert _bootstrap_tag(ec2, good) is None, "tagged before the simulated boot time"
        deadline = started + 20
        while time.monotonic() < deadline and (_bootstrap_tag(ec2, good) is None or _bootstrap_tag(ec2, bad) is None):
            time.sleep(0.2)
        assert _bootstrap_tag(ec2, good) == "complete"
        assert _bootstrap_tag(ec2, bad) == "failed"
        time.sleep(0.5)
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert _bootstrap_tag(ec2, foreign) is None
    assert _bootstrap_tag(ec2, stopped) is None
    assert _bootstrap_tag(ec2, done) == "complete"

    lines = [m for m in (LINE_RE.match(line) for line in out.splitlines()) if m]
    assert {(m.group(2), m.group(3)) for m in lines} == {(good, "complete"), (bad, "failed")}, out
    assert len(lines) == 2, "exactly one tag write per instance"
    for m in lines:
        assert float(m.group(5)) >= 1.5
    bad_line = next(m for m in lines if m.group(2) == bad)
    assert bad_line.group(6) == " missing=no-such-repo"
    assert bad_line.group(4) == "default/bad"
