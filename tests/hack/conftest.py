"""Fixtures for the hack/ tool tests: a moto_server on a free 127.0.0.1 port.

Owns starting moto (`python3 -m moto.server -H 127.0.0.1 -p PORT`) once per test
session, seeding it once with hack/seed_aws.py, and stopping it by PID at teardown.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
HACK = REPO / "hack"
REGION = "us-east-1"

sys.path.insert(0, str(HACK))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10) -> None:
    """SIGTERM by PID, then SIGKILL if it does not exit."""
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint + "/moto-api/", timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start: {log.read_text()[-2000:]}")
                time.sleep(0.2)
        yield endpoint
    finally:
        stop_process(proc)


@pytest.fixture(scope="session")
def seeded(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("seed") / "seed.json"
    subprocess.run(
        [sys.executable, str(HACK / "seed_aws.py"), "--endpoint", moto_endpoint, "--region", REGION,
         "--cluster-id", "test", "--out", str(out)],
        check=True,
        timeout=120,
    )
    data: dict[str, Any] = json.loads(out.read_text())
    data["_path"] = str(out)
    return data


@pytest.fixture()
def aws(moto_endpoint: str) -> Any:
    """Factory: aws('ec2') -> boto3 client against the session's moto."""
    from awsenv import client

    return lambda service: client(service, moto_endpoint, REGION)
