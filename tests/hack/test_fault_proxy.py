"""Tests for hack/fault_proxy.py: faults at about the configured rate, in each protocol's error format.

The strict rules and the AWS timing have their own files: test_aws_rules.py (pure),
test_strict_layer.py and test_aws_timing.py (through boto3 against proxy + moto).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError

REPO = Path(__file__).resolve().parents[2]
NO_RETRY = Config(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=5, read_timeout=10)


def start_proxy(
    upstream: str, rate: float, log: Path, seed: int = 7, mix: str | None = None, extra: tuple[str, ...] = ()
) -> tuple[subprocess.Popen[str], str]:
    """Starts hack/fault_proxy.py as the e2e harness does (plus `extra` flags)."""
    cmd = [sys.executable, str(REPO / "hack/fault_proxy.py"), "--listen", "127.0.0.1:0", "--upstream", upstream,
           "--rate", str(rate), "--seed", str(seed), "--log", str(log), *extra]
    if mix:
        cmd += ["--mix", mix]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    addr = proc.stdout.readline().strip()
    assert addr.startswith("127.0.0.1:"), addr
    return proc, f"http://{addr}"


def stop(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=10)
    assert proc.returncode == 0


def clients(endpoint: str) -> dict[str, Any]:
    return {
        s: boto3.client(s, endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing", config=NO_RETRY)
        for s in ("ec2", "rds", "ssm", "ecr")
    }


CALLS = {
    "ec2": ("DescribeImages", lambda c: c.describe_images(Owners=["self"])),
    "rds": ("DescribeDBInstances", lambda c: c.describe_db_instances()),
    "ssm": ("GetParameter", lambda c: c.get_parameter(Name="/featureenv/ami/latest")),
    "ecr": ("DescribeImages", lambda c: c.describe_images(repositoryName="payments")),
}


def read_log(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


@pytest.fixture()
def proxy_log(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "proxy.jsonl"


def test_rate_zero_forwards_everything_and_logs(seeded: dict[str, Any], moto_endpoint: str, proxy_log: Path) -> None:
    proc, url = start_proxy(moto_endpoint, 0.0, proxy_log)
    try:
        cs = clients(url)
        for svc, (_, call) in CALLS.items():
            call(cs[svc])
        value = cs["ssm"].get_parameter(Name="/featureenv/ami/latest")["Parameter"]["Value"]
        assert value == seeded["amiIds"]["newer"]
    finally:
        stop(proc)
    entries = read_log(proxy_log)
    assert [(e["service"], e["action"], e["status"], e["fault"]) for e in entries[:4]] == [
        (svc, action, 200, None) for svc, (action, _) in CALLS.items()
    ]


def test_error_formats_per_protocol(seeded: dict[str, Any], moto_endpoint: str, proxy_log: Path) -> None:
    proc, url = start_proxy(moto_endpoint, 1.0, proxy_log, mix="throttle=1")
    try:
        cs = clients(url)
        codes = {}
        for svc, (_, call) in CALLS.items():
            with pytest.raises(ClientError) as exc:
                call(cs[svc])
            codes[svc] = (exc.value.response["Error"]["Code"], exc.value.response["ResponseMetadata"]["HTTPStatusCode"])
    finally:
        stop(proc)
    assert codes == {
        "ec2": ("RequestLimitExceeded", 400),
        "rds": ("Throttling", 400),
        "ssm": ("ThrottlingException", 400),
        "ecr": ("ThrottlingException", 400),
    }
    assert {e["fault"] for e in read_log(proxy_log)} == {"throttle"}


def test_server_errors_and_drops(seeded: dict[str, Any], moto_endpoint: str, proxy_log: Path) -> None:
    proc, url = start_proxy(moto_endpoint, 1.0, proxy_log, mix="error=1")
    try:
        with pytest.raises(ClientError) as exc:
            clients(url)["rds"].describe_db_instances()
        assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
        assert exc.value.response["Error"]["Code"] == "InternalFailure"
    finally:
        stop(proc)
    proc, url = start_proxy(moto_endpoint, 1.0, proxy_log, mix="drop=1")
    try:
        with pytest.raises((ConnectionClosedError, EndpointConnectionError)):
            clients(url)["ec2"].describe_instances()
    finally:
        stop(proc)
    faults = [e["fault"] for e in read_log(proxy_log)]
    assert faults == ["error", "drop"]


def test_fault_rate_is_roughly_respected(seeded: dict[str, Any], moto_endpoint: str, proxy_log: Path) -> None:
    n = 200
    proc, url = start_proxy(moto_endpoint, 0.3, proxy_log, seed=42)
    outcomes: Counter[str] = Counter()
    try:
        ssm = clients(url)["ssm"]
        for _ in range(n):
            try:
                ssm.get_parameter(Name="/featureenv/ami/latest")
                outcomes["ok"] += 1
            except ClientError as e:
                outcomes[e.response["Error"]["Code"]] += 1
            except (ConnectionClosedError, EndpointConnectionError):
                outcomes["dropped"] += 1
    finally:
        stop(proc)
    entries = read_log(proxy_log)
    assert len(entries) == n
    faulted = sum(1 for e in entries if e["fault"])
    assert 0.2 * n <= faulted <= 0.4 * n, Counter(e["fault"] for e in entries)
    assert outcomes["ok"] == n - faulted
    kinds = Counter(e["fault"] for e in entries if e["fault"])
    assert set(kinds) == {"throttle", "error", "drop"}
    assert all(e["service"] == "ssm" and e["action"] == "GetParameter" for e in entries)
    assert all(e["status"] == 200 for e in entries if not e["fault"])


def test_log_names_the_caller_and_when_its_request_arrived(
    seeded: dict[str, Any], moto_endpoint: str, proxy_log: Path
) -> None:
    """The partition e2e test tells the operators' calls apart by their SDK app id."""
    proc, url = start_proxy(moto_endpoint, 0.0, proxy_log)
    try:
        named = boto3.client("ec2", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing",
                             aws_secret_access_key="testing", config=NO_RETRY.merge(Config(user_agent_appid="op-a")))
        named.describe_images(Owners=["self"])
        clients(url)["ec2"].describe_images(Owners=["self"])
    finally:
        stop(proc)
    entries = read_log(proxy_log)
    assert [e["agent"] for e in entries] == ["op-a", None]
    assert all(e["received"] <= e["ts"] for e in entries)
