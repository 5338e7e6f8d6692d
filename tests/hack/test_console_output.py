"""EC2 GetConsoleOutput through the strict layer: a simulated instance's own console.

The plugin's `logs` and the operator's failure report read an instance's bootstrap log
with GetConsoleOutput (the script mirrors it to the serial console). moto answers every
instance with one canned kernel log; with --instances-dir the proxy answers for the boot
simulator's instances with the console.log their real script wrote, as AWS answers
(https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_GetConsoleOutput.html):
base64, the most recent 64 KB, `Timestamp` the last write, `Latest` honoured. Pure tests
of aws_world.console_output_answer first, then the real processes: moto, the proxy and
the boot simulator running the operator's own bootstrap script.
"""

from __future__ import annotations

import base64
import os
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest
from moto.ec2.responses.general import SAMPLE_CONSOLE_OUTPUT

from aws_rules import Call
from aws_world import CONSOLE_OUTPUT_MAX_BYTES, Answer, Console, World
from test_aws_world import EC2_NS, parsed
from test_boot_simulator import REGISTRY, SECRET, Sim, launch, read, start_sim, wait_until
from test_fault_proxy import clients, start_proxy, stop
from user_data import Spec, render_user_data

REGION = "us-east-1"
UPDATED_AT = 1_790_000_000.25  # 2026-09-21T14:13:20.250Z


def moto_answer(iid: str) -> Answer:
    """moto 5.2.1's answer, as it writes it."""
    body = (f'<?xml version="1.0" encoding="utf-8"?>\n<GetConsoleOutputResponse xmlns="{EC2_NS}">'
            f"<instanceId>{iid}</instanceId><timestamp>2026-12-03T08:59:21.000Z</timestamp>"
            f"<output>{base64.b64encode(SAMPLE_CONSOLE_OUTPUT.encode()).decode()}</output>"
            "</GetConsoleOutputResponse>")
    return Answer(200, [("Content-Type", "text/xml")], body.encode())


def get_console(iid: str, latest: bool | None) -> Call:
    params = {"Action": "GetConsoleOutput", "InstanceId": iid}
    if latest is not None:
        params["Latest"] = "true" if latest else "false"
    return Call("ec2", "GetConsoleOutput", params=params)


def wire_output(body: bytes) -> str | None:
    """The `output` element as sent (base64 on the wire), or None if absent."""
    found = ET.fromstring(body).find(f"{{{EC2_NS}}}output")
    return found.text if found is not None else None


def world_with(consoles: dict[str, Console]) -> World:
    return World(None, consoles=consoles.get)


# --- the answer (pure) -------------------------------------------------------------------


def test_latest_is_the_console_base64_with_its_last_write_time() -> None:
    text = "featureenv: pulling images\nfeatureenv: héllo ünïcode\n".encode()
    world = world_with({"i-0aaaaaaaaaaaaaaa1": Console(text, UPDATED_AT)})
    answer = world.rewrite(get_console("i-0aaaaaaaaaaaaaaa1", latest=True), moto_answer("i-0aaaaaaaaaaaaaaa1"))
    assert answer.status == 200
    assert wire_output(answer.body) == base64.b64encode(text).decode()
    out = parsed("ec2", "GetConsoleOutput", answer.body)  # botocore's parser, without its decode hook
    assert out["InstanceId"] == "i-0aaaaaaaaaaaaaaa1"
    assert base64.b64decode(out["Output"]) == text
    assert out["Timestamp"] == datetime(2026, 9, 21, 14, 13, 20, 250000, tzinfo=timezone.utc)


def test_only_the_most_recent_64_kb() -> None:
    lines = b"".join(b"console line %06d\n" % n for n in range(1, 5001))  # 100,000 bytes
    exact = lines[-CONSOLE_OUTPUT_MAX_BYTES:]
    world = world_with({"i-1": Console(lines, UPDATED_AT), "i-2": Console(exact, UPDATED_AT)})
    for iid in ("i-1", "i-2"):
        output = wire_output(world.rewrite(get_console(iid, latest=True), moto_answer(iid)).body)
        assert output is not None
        assert base64.b64decode(output) == exact, iid
    assert CONSOLE_OUTPUT_MAX_BYTES == 65536 and len(exact) == 65536
    assert not exact.startswith(b"console line"), "cut mid-line, as a byte limit cuts"


def test_an_instance_nobody_plays_keeps_motos_answer() -> None:
    world = world_with({"i-known": Console(b"ours\n", UPDATED_AT)})
    for latest in (True, False, None):
        moto = moto_answer("i-other")
        assert world.rewrite(get_console("i-other", latest), moto) is moto
    assert World(None).rewrite(get_console("i-known", True), moto_answer("i-known")).body == moto_answer("i-known").body
    error = Answer(400, [], b"<Response><Errors><Error><Code>InvalidInstanceID.NotFound</Code></Error></Errors></Response>")
    assert world.rewrite(get_console("i-known", True), error) is error


def test_without_latest_the_console_is_posted_once_the_instance_stops_or_terminates() -> None:
    world = world_with({"i-1": Console(b"bootstrap ran\n", UPDATED_AT)})
    for latest in (None, False):
        moto = moto_answer("i-1")
        assert world.rewrite(get_console("i-1", latest), moto) is moto, "the buffer the boot posted"
    terminated = (f'<TerminateInstancesResponse xmlns="{EC2_NS}"><instancesSet><item><instanceId>i-1</instanceId>'
                  "<currentState><code>32</code><name>shutting-down</name></currentState></item></instancesSet>"
                  "</TerminateInstancesResponse>")
    world.observe(Call("ec2", "TerminateInstances", params={"InstanceId.1": "i-1"}), 200, terminated.encode())
    for latest in (None, False, True):
        output = wire_output(world.rewrite(get_console("i-1", latest), moto_answer("i-1")).body)
        assert output is not None and base64.b64decode(output) == b"bootstrap ran\n", latest


def test_an_empty_console_has_no_output() -> None:
    world = world_with({"i-1": Console(b"", UPDATED_AT)})
    answer = world.rewrite(get_console("i-1", latest=True), moto_answer("i-1"))
    assert wire_output(answer.body) is None
    assert "Output" not in parsed("ec2", "GetConsoleOutput", answer.body)


# --- through the proxy, with the simulator running the real script ---------------------


@dataclass
class Stack:
    sim: Sim
    ec2: Any  # through the proxy
    ids: dict[str, str]


@pytest.fixture(scope="module")
def stack(seeded: dict[str, Any], moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """moto, the boot simulator (straight to moto, as the harness runs it) and the proxy
    with the simulator's --instances-dir; three instances: one running the operator's
    bootstrap, one writing 80 KB to its console, one of another cluster (not booted)."""
    from awsenv import client

    direct_ec2, ssm = client("ec2", moto_endpoint, REGION), client("ssm", moto_endpoint, REGION)
    ami = seeded["amiIds"]["newer"]
    cluster = "console-" + uuid.uuid4().hex[:6]
    parameter = f"/featureenv/{cluster}/logs/database"
    ssm.put_parameter(Name=parameter, Value=SECRET, Type="SecureString")
    bootstrap = render_user_data(Spec(environment="default/logs", region=REGION, database_parameter=parameter,
                                      services=[("payments", f"{REGISTRY}/payments:pr-123")]))
    # Lines of 20 bytes: 80,000 bytes, more than the 64 KB AWS keeps.
    chatty = "#!/bin/bash\nseq -f 'console line %06g' 1 4000 >/dev/console\n"
    ids = {
        "bootstrap": launch(direct_ec2, ami, cluster, "logs", bootstrap),
        "chatty": launch(direct_ec2, ami, cluster, "chatty", chatty),
        "foreign": launch(direct_ec2, ami, "someone-else", "foreign", chatty),
    }
    instances = tmp_path_factory.mktemp("instances")
    log = tmp_path_factory.mktemp("console-proxy") / "proxy.jsonl"
    proc, url = start_proxy(moto_endpoint, 0.0, log, extra=("--instances-dir", str(instances)))
    sim = start_sim(moto_endpoint, cluster, instances, boot_seconds=0.5)
    try:
        wait_until("both boots to end", lambda: {ids["bootstrap"], ids["chatty"]} <= set(sim.results())
                   or sim.proc.poll() is not None, 90)
        assert sim.proc.poll() is None, "\n".join(sim.stderr)
        # The console pipeline (tee | logger) may flush after the script exits.
        wait_until("the bootstrap's last line on its console",
                   lambda: "featureenv: bootstrap complete" in read(sim.dir(ids["bootstrap"]) / "console.log"), 10)
        yield Stack(sim, clients(url)["ec2"], ids)
    finally:
        sim.stop()
        stop(proc)


def console_output(ec2: Any, iid: str, **latest: bool) -> tuple[str | None, dict[str, Any]]:
    """(the `output` element as sent, boto3's result with Output decoded)."""
    raw: list[bytes] = []

    def keep(http_response: Any, **_: Any) -> None:
        raw.append(http_response.content)

    ec2.meta.events.register("after-call.ec2.GetConsoleOutput", keep)
    try:
        result = ec2.get_console_output(InstanceId=iid, **latest)
    finally:
        ec2.meta.events.unregister("after-call.ec2.GetConsoleOutput", keep)
    return wire_output(raw[0]), result


def test_the_bootstrap_log_is_the_instances_console(stack: Stack) -> None:
    iid = stack.ids["bootstrap"]
    path = stack.sim.dir(iid) / "console.log"
    wire, result = console_output(stack.ec2, iid, Latest=True)
    console = path.read_bytes()
    assert 0 < len(console) < CONSOLE_OUTPUT_MAX_BYTES
    assert wire == base64.b64encode(console).decode(), "the simulator's console.log, base64"
    assert result["Output"] == console.decode()
    assert "featureenv: bootstrap complete" in result["Output"]
    assert "S3cretPW" not in result["Output"]
    written = os.stat(path).st_mtime
    assert 0 <= written - result["Timestamp"].timestamp() < 0.001, "when the console was last written"


def test_a_console_over_64_kb_is_cut_to_its_last_64_kb(stack: Stack) -> None:
    iid = stack.ids["chatty"]
    console = (stack.sim.dir(iid) / "console.log").read_bytes()
    assert len(console) == 80_000
    wire, result = console_output(stack.ec2, iid, Latest=True)
    assert wire is not None
    assert base64.b64decode(wire) == console[-CONSOLE_OUTPUT_MAX_BYTES:]
    assert result["Output"].endswith("console line 004000\n")
    assert not result["Output"].startswith("console line 000001")


def test_an_instance_the_simulator_does_not_run_keeps_motos_text(stack: Stack) -> None:
    iid = stack.ids["foreign"]
    assert not stack.sim.dir(iid).exists()
    wire, result = console_output(stack.ec2, iid, Latest=True)
    assert wire == base64.b64encode(SAMPLE_CONSOLE_OUTPUT.encode()).decode()
    assert result["Output"] == SAMPLE_CONSOLE_OUTPUT


def test_without_latest_a_running_instance_shows_its_boot_then_its_console_once_terminated(stack: Stack) -> None:
    # Last in the file: it terminates an instance the tests above read.
    iid = stack.ids["chatty"]
    for latest in ({}, {"Latest": False}):
        assert console_output(stack.ec2, iid, **latest)[1]["Output"] == SAMPLE_CONSOLE_OUTPUT, latest
    stack.ec2.terminate_instances(InstanceIds=[iid])
    console = (stack.sim.dir(iid) / "console.log").read_bytes()
    assert console_output(stack.ec2, iid)[1]["Output"] == console[-CONSOLE_OUTPUT_MAX_BYTES:].decode()
