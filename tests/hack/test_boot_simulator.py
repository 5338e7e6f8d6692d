"""Tests for hack/boot_simulator.py: it runs each instance's real user data with bash.

The user data is the operator's own script (tests/hack/user_data.py renders it from
src/bootstrap.rs), run against moto with the stand-ins in hack/instance/ and the real
AWS CLI; the outcome is the tag the script writes itself.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from boot_simulator import Imds, MetadataInstance, decode_user_data, redirect_host_paths
from user_data import Spec, UpdateSpec, log_file, render_update_script, render_user_data

REPO = Path(__file__).resolve().parents[2]
REGISTRY = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
REGION = "us-east-1"
SECRET = "postgres://app:S3cretPW@db:5432/app"
BOOT_SECONDS = 1.0
LINE_RE = re.compile(
    r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) bootstrap instance=(i-[0-9a-f]+) value=(complete|failed|none) "
    r"environment=(\S+) waited=([\d.]+) exit=(\d+)(?: missing=(\S+))?$"
)


# --------------------------------------------------------------------------------------
# helpers


def launch(ec2: Any, ami: str, cluster: str, name: str, user_data: str, tags: dict[str, str] | None = None) -> str:
    """RunInstances as the operator does it (IMDSv2 required), tagged for `cluster`."""
    all_tags = {"featureenv.io/cluster": cluster, "featureenv.io/environment": f"default/{name}", **(tags or {})}
    r = ec2.run_instances(
        ImageId=ami, MinCount=1, MaxCount=1, InstanceType="t3.xlarge", UserData=user_data,
        MetadataOptions={"HttpTokens": "required", "HttpEndpoint": "enabled"},
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in all_tags.items()]}],
    )
    return str(r["Instances"][0]["InstanceId"])


def bootstrap_tag(ec2: Any, iid: str) -> str | None:
    inst = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    return {t["Key"]: t["Value"] for t in inst.get("Tags", [])}.get("featureenv.io/bootstrap")


def wait_until(what: str, predicate: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def epoch(iso: str) -> float:
    """Seconds since the epoch of the simulator's ISO-8601 UTC timestamps."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is not running.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@dataclass
class Sim:
    """hack/boot_simulator.py started as the e2e harness starts it, plus --instances-dir."""

    proc: subprocess.Popen[str]
    instances_dir: Path
    lines: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)

    def results(self) -> dict[str, re.Match[str]]:
        return {m.group(2): m for m in (LINE_RE.match(line) for line in list(self.lines)) if m}

    def dir(self, iid: str) -> Path:
        return self.instances_dir / iid

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
            raise


def start_sim(endpoint: str, cluster: str, instances_dir: Path, *extra: str, boot_seconds: float = BOOT_SECONDS) -> Sim:
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "hack/boot_simulator.py"), "--endpoint", endpoint, "--region", REGION,
         "--cluster-id", cluster, "--interval", "0.25", "--instances-dir", str(instances_dir), *extra],
        env={**os.environ, "FEATUREENV_SIM_BOOT_SECONDS": str(boot_seconds), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    sim = Sim(proc, instances_dir)

    def pump(stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))

    threading.Thread(target=pump, args=(proc.stdout, sim.lines), daemon=True).start()
    threading.Thread(target=pump, args=(proc.stderr, sim.stderr), daemon=True).start()
    return sim


# --------------------------------------------------------------------------------------
# the operator's script, as rendered


def test_rendering_mirrors_the_rust_unit_test_expectations() -> None:
    """tests/hack/user_data.py renders what src/bootstrap.rs's unit tests expect."""
    script = render_user_data(Spec(
        "team-payments/payments-pr-123", "ap-southeast-1",
        [("payments", "123456789012.dkr.ecr.ap-southeast-1.amazonaws.com/payments:pr-123"),
         ("search", "docker.io/library/nginx:1.27")],
        ["ingress", "dashboard", "logs"], "/featureenv/prod/x/database", 1200,
    ))
    assert script.startswith("#!/bin/bash\n")
    assert "set -Eeuo pipefail" in script
    assert "readonly DATABASE_PARAMETER='/featureenv/prod/x/database'" in script
    assert "readonly -a ADDONS=('ingress' 'dashboard' 'logviewer')" in script
    assert "readonly -a ECR_HOSTS=('123456789012.dkr.ecr.ap-southeast-1.amazonaws.com')" in script
    assert "readonly OUTCOME_TAG='featureenv.io/bootstrap'" in script
    assert "readonly COMPLETE_VALUE='complete'" in script and "readonly FAILED_VALUE='failed'" in script
    assert "trap 'on_error \"$LINENO\"' ERR" in script
    assert log_file() == "/var/log/featureenv-bootstrap.log"
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    update = render_update_script(UpdateSpec("team-payments/payments-pr-123", "ap-southeast-1", [
        ("payments", "123456789012.dkr.ecr.ap-southeast-1.amazonaws.com/payments:pr-124")], "0123456789abcdef"))
    assert update.startswith("#!/bin/bash\n")
    assert "readonly OUTCOME_TAG='featureenv.io/services'" in update
    assert "readonly COMPLETE_VALUE='complete:0123456789abcdef'" in update
    assert "readonly FAILED_VALUE='failed:0123456789abcdef'" in update
    assert "ssm get-parameter" not in update and "minikube start" not in update
    assert subprocess.run(["bash", "-n"], input=update, text=True).returncode == 0


def test_only_the_host_paths_are_redirected(tmp_path: Path) -> None:
    script = render_user_data(Spec("default/x", "us-east-1", [], []))
    redirected = redirect_host_paths(script, tmp_path)
    assert f"readonly LOG_FILE='{tmp_path}/bootstrap.log'" in redirected
    assert f"2>>{tmp_path}/console.log)" in redirected, "a device is appended to, never truncated"
    assert f"readonly SEQUENCE_FILE='{tmp_path}/services-sequence'" in redirected
    assert "/var/log/" not in redirected and "/var/lib/" not in redirected and "/dev/console" not in redirected
    before, after = script.splitlines(), redirected.splitlines()
    assert len(before) == len(after)
    assert sum(a != b for a, b in zip(before, after)) == 3
    assert decode_user_data("") == ""
    console = f"{tmp_path}/console.log"
    assert redirect_host_paths("a >/dev/console; b >>/dev/console; c 2>/dev/console; tee -a /dev/console",
                               tmp_path) == f"a >>{console}; b >>{console}; c 2>>{console}; tee -a {console}"


# --------------------------------------------------------------------------------------
# instance metadata


def test_imds_plays_imdsv2(tmp_path: Path) -> None:
    imds = Imds()
    try:
        imds.register("i-0aaa", MetadataInstance({"instance-id": "i-0aaa", "placement/region": "eu-west-1"}, "#!/bin/bash\n"))
        imds.register("i-0bbb", MetadataInstance({"instance-id": "i-0bbb"}, ""))
        imds.register("i-0v1", MetadataInstance({"instance-id": "i-0v1"}, "", tokens_required=False))
        imds.register("i-0off", MetadataInstance({"instance-id": "i-0off"}, "", endpoint_enabled=False))

        def call(method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
            req = urllib.request.Request(f"http://127.0.0.1:{imds.port}{path}", method=method, headers=headers or {})
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as e:
                return e.code, ""

        ttl = {"X-aws-ec2-metadata-token-ttl-seconds": "300"}
        assert call("GET", "/i-0aaa/latest/meta-data/instance-id")[0] == 401, "IMDSv1 on a tokens-required instance"
        assert call("PUT", "/i-0aaa/latest/api/token")[0] == 400, "a token needs a TTL"
        assert call("PUT", "/i-0aaa/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "21601"})[0] == 400
        assert call("PUT", "/i-0aaa/latest/api/token", {**ttl, "X-Forwarded-For": "10.0.0.1"})[0] == 403
        status, token = call("PUT", "/i-0aaa/latest/api/token", ttl)
        assert status == 200 and token
        auth = {"X-aws-ec2-metadata-token": token}
        assert call("GET", "/i-0aaa/latest/meta-data/instance-id", auth) == (200, "i-0aaa")
        assert call("GET", "/i-0aaa/latest/meta-data/placement/region", auth) == (200, "eu-west-1")
        assert call("GET", "/i-0aaa/latest/meta-data/placement/", auth) == (200, "region")
        assert call("GET", "/i-0aaa/latest/meta-data/no-such-thing", auth)[0] == 404
        assert call("GET", "/i-0aaa/latest/user-data", auth) == (200, "#!/bin/bash\n")
        assert call("GET", "/i-0bbb/latest/meta-data/instance-id", auth)[0] == 401, "another instance's token"
        assert call("GET", "/i-0aaa/latest/meta-data/instance-id", {"X-aws-ec2-metadata-token": "forged"})[0] == 401
        # HttpTokens=optional: IMDSv1 answers, a bad token still does not.
        assert call("GET", "/i-0v1/latest/meta-data/instance-id") == (200, "i-0v1")
        assert call("GET", "/i-0v1/latest/meta-data/instance-id", {"X-aws-ec2-metadata-token": "forged"})[0] == 401
        # HttpEndpoint=disabled: no answer at all.
        with pytest.raises((urllib.error.URLError, ConnectionError, http.client.RemoteDisconnected)):
            call("PUT", "/i-0off/latest/api/token", ttl)
        status, short = call("PUT", "/i-0aaa/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "1"})
        time.sleep(1.1)
        assert call("GET", "/i-0aaa/latest/meta-data/instance-id", {"X-aws-ec2-metadata-token": short})[0] == 401, "expired"

        # The curl stand-in sends the script's requests there, the rest of argv untouched.
        env = {**os.environ, "PATH": f"{REPO / 'hack/instance'}:{os.environ['PATH']}",
               "FEATUREENV_SIM_DIR": str(tmp_path), "FEATUREENV_SIM_IMDS": imds.url("i-0aaa"),
               "FEATUREENV_SIM_CURL": shutil.which("curl") or "curl"}
        no_token = subprocess.run(["curl", "-fsS", "http://169.254.169.254/latest/meta-data/instance-id"],
                                  env=env, capture_output=True, text=True)
        assert no_token.returncode == 22 and "401" in no_token.stderr
        token = subprocess.run(["curl", "-fsS", "-X", "PUT", "http://169.254.169.254/latest/api/token",
                                "-H", "X-aws-ec2-metadata-token-ttl-seconds: 300"], env=env, capture_output=True, text=True,
                               check=True).stdout
        got = subprocess.run(["curl", "-fsS", "-H", f"X-aws-ec2-metadata-token: {token}",
                              "http://169.254.169.254/latest/meta-data/instance-id"], env=env, capture_output=True,
                             text=True, check=True).stdout
        assert got == "i-0aaa"
        calls = read(tmp_path / "calls.log")
        assert token not in calls, "the metadata token is masked in calls.log"
        assert f"curl -fsS -H X-aws-ec2-metadata-token: *** {imds.url('i-0aaa')}/latest/meta-data/instance-id" in calls
    finally:
        imds.close()


# --------------------------------------------------------------------------------------
# one simulator run, many instances


@dataclass
class Fleet:
    sim: Sim
    ids: dict[str, str]
    late_parameters_put_at: float
    ec2: Any


@pytest.fixture(scope="module")
def fleet(seeded: dict[str, Any], moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    from awsenv import client

    ec2, ssm = client("ec2", moto_endpoint, REGION), client("ssm", moto_endpoint, REGION)
    ami = seeded["amiIds"]["newer"]
    cluster = "sim-" + uuid.uuid4().hex[:6]
    orders_digest = seeded["ecr"]["orders"]["digests"]["latest"]
    param = f"/featureenv/{cluster}/good/database"
    ssm.put_parameter(Name=param, Value=SECRET, Type="SecureString")
    late = {name: f"/featureenv/{cluster}/{name}/database" for name in ("late-a", "late-b")}
    never = f"/featureenv/{cluster}/never/database"  # never written
    services = [("payments", f"{REGISTRY}/payments:pr-123"), ("orders", f"{REGISTRY}/orders@{orders_digest}"),
                ("frontend", f"{REGISTRY}/frontend:latest")]

    def script(name: str, **kw: Any) -> str:
        return render_user_data(Spec(**{"environment": f"default/{name}", "region": REGION, "services": services,
                                        "addons": ["ingress", "dashboard", "logviewer"], **kw}))

    ids = {
        "good": launch(ec2, ami, cluster, "good", script("good", database_parameter=param)),
        "missing-image": launch(ec2, ami, cluster, "missing-image", script(
            "missing-image", services=[services[0], ("nope", f"{REGISTRY}/no-such-repo:pr-1"), services[2]])),
        "bad-addon": launch(ec2, ami, cluster, "bad-addon", script("bad-addon", addons=["ingress", "no-such-addon"])),
        "late-a": launch(ec2, ami, cluster, "late-a", script("late-a", database_parameter=late["late-a"],
                                                             database_wait_seconds=120)),
        "late-b": launch(ec2, ami, cluster, "late-b", script("late-b", database_parameter=late["late-b"],
                                                             database_wait_seconds=120)),
        "no-database": launch(ec2, ami, cluster, "no-database", script("no-database", database_parameter=never,
                                                                       database_wait_seconds=3)),
        "foreign": launch(ec2, ami, "someone-else", "foreign", script("foreign")),
        "done": launch(ec2, ami, cluster, "done", script("done"), {"featureenv.io/bootstrap": "complete"}),
        "stopped": launch(ec2, ami, cluster, "stopped", script("stopped")),
    }
    ec2.stop_instances(InstanceIds=[ids["stopped"]])
    expected = {ids[n] for n in ("good", "missing-image", "bad-addon", "late-a", "late-b", "no-database")}

    sim = start_sim(moto_endpoint, cluster, tmp_path_factory.mktemp("instances"))
    try:
        # The parameters appear once both late scripts have missed them at least once.
        for name in late:
            wait_until(f"{name} to miss its parameter",
                       lambda n=name: "not readable yet" in read(sim.dir(ids[n]) / "bootstrap.log"), 60)
        put_at = time.time()  # before either put: no script can have read its parameter earlier
        for name, parameter in late.items():
            ssm.put_parameter(Name=parameter, Value=SECRET, Type="SecureString")
        wait_until("every bootstrap line", lambda: expected <= set(sim.results()) or sim.proc.poll() is not None, 90)
        assert sim.proc.poll() is None, "\n".join(sim.stderr)
        time.sleep(0.5)  # no second line for anyone
    finally:
        code = sim.stop()
    assert code == 0, "\n".join(sim.stderr)
    yield Fleet(sim, ids, put_at, ec2)


def test_a_good_instance_tags_itself_complete(fleet: Fleet) -> None:
    iid = fleet.ids["good"]
    line = fleet.sim.results()[iid]
    assert line.group(3) == "complete" and line.group(6) == "0" and line.group(4) == "default/good"
    assert float(line.group(5)) >= BOOT_SECONDS
    assert bootstrap_tag(fleet.ec2, iid) == "complete"
    d = fleet.sim.dir(iid)
    calls = read(d / "calls.log")
    for name, image in [("payments", f"{REGISTRY}/payments:pr-123"), ("frontend", f"{REGISTRY}/frontend:latest")]:
        assert f"docker pull {image}\n" in calls
        assert f"kubectl set image deployment/{name} {name}={image}\n" in calls
        assert f"kubectl rollout status deployment/{name} --timeout=15m\n" in calls
    assert f"docker pull {REGISTRY}/orders@sha256:" in calls
    for addon in ("ingress", "dashboard", "logviewer"):
        assert f"minikube addons enable {addon}\n" in calls
    assert f"docker login --username AWS --password-stdin {REGISTRY}\n" in calls
    assert "aws ssm get-parameter --with-decryption --name /featureenv/" in calls
    # The script tagged itself, with the real CLI, as its last call; IMDSv2 gave its id.
    assert calls.splitlines()[-1] == f"aws ec2 create-tags --resources {iid} --tags Key=featureenv.io/bootstrap,Value=complete"
    assert "latest/api/token" in calls and "latest/meta-data/instance-id" in calls
    log = read(d / "bootstrap.log")
    assert "featureenv: bootstrap complete" in log
    console = read(d / "console.log")
    assert "featureenv: bootstrap complete" in console, "mirrored to the console"
    assert "featureenv: featureenv:" not in console, "logger's tag and the script's own prefix, both"
    for f in ("calls.log", "bootstrap.log", "console.log", "bash.out"):
        assert "S3cretPW" not in read(d / f), f"the database secret leaked into {f}"
    result = json.loads(read(d / "result.json"))
    assert result["exit"] == 0 and result["value"] == "complete" and result["cpu_user_seconds"] > 0


def test_an_image_missing_from_ecr_fails_the_bootstrap(fleet: Fleet) -> None:
    iid = fleet.ids["missing-image"]
    line = fleet.sim.results()[iid]
    assert line.group(3) == "failed" and line.group(6) != "0"
    assert line.group(7) == f"{REGISTRY}/no-such-repo:pr-1"
    assert bootstrap_tag(fleet.ec2, iid) == "failed"
    log = read(fleet.sim.dir(iid) / "bootstrap.log")
    assert (f"Error response from daemon: repository {REGISTRY}/no-such-repo not found: name unknown: "
            "The repository with name 'no-such-repo' does not exist in the registry with id '123456789012'") in log
    assert "featureenv: bootstrap failed (exit 1) at line" in log
    calls = read(fleet.sim.dir(iid) / "calls.log")
    assert "kubectl set image" not in calls, "nothing deployed after the failed pull"
    assert calls.splitlines()[-1].endswith("Key=featureenv.io/bootstrap,Value=failed")


def test_an_unknown_addon_fails_the_bootstrap(fleet: Fleet) -> None:
    iid = fleet.ids["bad-addon"]
    assert fleet.sim.results()[iid].group(3) == "failed"
    assert bootstrap_tag(fleet.ec2, iid) == "failed"
    log = read(fleet.sim.dir(iid) / "bootstrap.log")
    assert "Exiting due to MK_ADDON_ENABLE: enable failed: run callbacks: no-such-addon is not a valid addon" in log
    assert "featureenv: bootstrap failed (exit 10)" in log


def test_a_late_database_parameter_is_waited_for(fleet: Fleet) -> None:
    for name in ("late-a", "late-b"):
        iid = fleet.ids[name]
        assert fleet.sim.results()[iid].group(3) == "complete", name
        assert bootstrap_tag(fleet.ec2, iid) == "complete"
        d = fleet.sim.dir(iid)
        log = read(d / "bootstrap.log")
        assert "not readable yet (" in log and "; retrying in 2s" in log, log
        assert read(d / "calls.log").count("aws ssm get-parameter") >= 2
        assert "S3cretPW" not in read(d / "bootstrap.log") + read(d / "calls.log")
        # Real sleeps: the script finished only after the parameter appeared.
        assert epoch(json.loads(read(d / "result.json"))["exited_at"]) >= fleet.late_parameters_put_at


def test_a_database_parameter_still_missing_after_the_wait_fails_the_bootstrap(fleet: Fleet) -> None:
    iid = fleet.ids["no-database"]
    assert fleet.sim.results()[iid].group(3) == "failed"
    assert bootstrap_tag(fleet.ec2, iid) == "failed"
    log = read(fleet.sim.dir(iid) / "bootstrap.log")
    # (How many tries fit in 3 s depends on how long each CLI run takes.)
    assert "database parameter /featureenv/" in log and "still unreadable after 3s" in log
    assert "featureenv: bootstrap failed (exit 1) at line" in log
    calls = read(fleet.sim.dir(iid) / "calls.log")
    assert "kubectl create secret" not in calls and "minikube addons enable" not in calls


def test_instances_boot_concurrently(fleet: Fleet) -> None:
    spans = []
    for name in ("late-a", "late-b", "good"):
        r = json.loads(read(fleet.sim.dir(fleet.ids[name]) / "result.json"))
        end = epoch(r["exited_at"])
        spans.append((end - r["wall_seconds"], end))
    (a_start, a_end), (b_start, b_end), (g_start, _) = spans
    assert a_start < b_end and b_start < a_end, f"late-a and late-b ran one after the other: {spans}"
    assert g_start < a_end


def test_only_running_untagged_instances_of_the_cluster_boot(fleet: Fleet) -> None:
    for name in ("foreign", "done", "stopped"):
        assert not fleet.sim.dir(fleet.ids[name]).exists(), name
        assert fleet.ids[name] not in fleet.sim.results()
    assert bootstrap_tag(fleet.ec2, fleet.ids["foreign"]) is None
    assert bootstrap_tag(fleet.ec2, fleet.ids["stopped"]) is None
    assert bootstrap_tag(fleet.ec2, fleet.ids["done"]) == "complete"
    assert len(fleet.sim.results()) == 6
    assert sum(" bootstrap " in line for line in fleet.sim.lines) == 6, "exactly one line per instance"


# --------------------------------------------------------------------------------------
# scripts that do not end


HANGING = "#!/bin/bash\necho $$ > \"$PWD/bash.pid\"\nsleep 300\n"


def test_hanging_scripts_are_killed(seeded: dict[str, Any], aws: Any, moto_endpoint: str, tmp_path: Path) -> None:
    """A script past --script-timeout, or whose instance stops running, is killed with its process group."""
    ec2 = aws("ec2")
    cluster = "hang-" + uuid.uuid4().hex[:6]
    slow = launch(ec2, seeded["amiIds"]["newer"], cluster, "slow", HANGING)
    gone = launch(ec2, seeded["amiIds"]["newer"], cluster, "gone", HANGING)
    sim = start_sim(moto_endpoint, cluster, tmp_path, "--script-timeout", "4", boot_seconds=0.2)
    try:
        pids = {i: int(wait_until(f"{i} to start", lambda i=i: read(sim.dir(i) / "bash.pid").strip(), 20))
                for i in (slow, gone)}
        ec2.terminate_instances(InstanceIds=[gone])
        wait_until("both lines", lambda: {slow, gone} <= set(sim.results()), 20)
    finally:
        assert sim.stop() == 0, "\n".join(sim.stderr)
    results = sim.results()
    assert results[gone].group(3) == "none" and results[gone].group(6) == "143"
    assert results[slow].group(3) == "none" and results[slow].group(6) == "143"
    assert any(f"killed instance={gone} reason=instance-not-running" in line for line in sim.lines)
    assert any(f"killed instance={slow} reason=timeout-4s" in line for line in sim.lines)
    assert float(results[slow].group(5)) >= 4
    assert not any(pid_alive(p) for p in pids.values())
    assert bootstrap_tag(ec2, slow) is None, "the simulator never tags"


def test_sigterm_stops_running_scripts_and_exits_0(seeded: dict[str, Any], aws: Any, moto_endpoint: str,
                                                    tmp_path: Path) -> None:
    ec2 = aws("ec2")
    cluster = "term-" + uuid.uuid4().hex[:6]
    iid = launch(ec2, seeded["amiIds"]["newer"], cluster, "hang", HANGING)
    sim = start_sim(moto_endpoint, cluster, tmp_path, boot_seconds=0.2)
    pid = int(wait_until("the script to start", lambda: read(sim.dir(iid) / "bash.pid").strip(), 20))
    started = time.monotonic()
    assert sim.stop() == 0, "\n".join(sim.stderr)
    assert time.monotonic() - started < 8
    assert not pid_alive(pid)
    wait_until("the last line", lambda: sim.lines and sim.lines[-1].endswith(" stopped"), 5)
    assert not any(" bootstrap " in line for line in sim.lines), "no outcome is made up at shutdown"


def test_a_simulator_killed_with_sigkill_leaves_no_script_running(seeded: dict[str, Any], aws: Any,
                                                                   moto_endpoint: str, tmp_path: Path) -> None:
    """The e2e harness stops the simulator with SIGKILL; its watchdog ends the scripts."""
    ec2 = aws("ec2")
    cluster = "kill-" + uuid.uuid4().hex[:6]
    iid = launch(ec2, seeded["amiIds"]["newer"], cluster, "hang", HANGING)
    sim = start_sim(moto_endpoint, cluster, tmp_path, boot_seconds=0.2)
    pid = int(wait_until("the script to start", lambda: read(sim.dir(iid) / "bash.pid").strip(), 20))
    os.kill(sim.proc.pid, signal.SIGKILL)
    sim.proc.wait(timeout=5)
    wait_until("the script to end", lambda: not pid_alive(pid), 10)
    wait_until("the cache directory to go", lambda: not list(tmp_path.glob(".ecr-cache-*")), 10)


# --------------------------------------------------------------------------------------
# Run Command: the simulator as the instances' SSM Agent

COMMAND_RE = re.compile(
    r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) command instance=(i-[0-9a-f]+) "
    r"command=([0-9a-f-]{36}) exit=(\d+) services=(\S+) ran=\d+\.\d{3}$"
)
TOKEN = "0123456789abcdef"


def services_script(images: list[tuple[str, str]], token: str = TOKEN) -> str:
    """The operator's own services update (src/bootstrap.rs render_update_script)."""
    return render_update_script(UpdateSpec("default/x", REGION, images, token))


def services_tag(ec2: Any, iid: str) -> str | None:
    inst = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    return {t["Key"]: t["Value"] for t in inst.get("Tags", [])}.get("featureenv.io/services")


def send(ssm: Any, iid: str, script: str, document: str = "AWS-RunShellScript", **extra: Any) -> str:
    """SendCommand as the operator sends it."""
    return str(ssm.send_command(
        DocumentName=document, InstanceIds=[iid], Parameters={"commands": [script]},
        Comment="featureenv: update services of default/x", TimeoutSeconds=1200, **extra,
    )["Command"]["CommandId"])


def command_started(sim: Sim, iid: str, cid: str) -> float:
    """When the command's script started (its result.json: end minus wall time)."""
    result = json.loads(read(sim.dir(iid) / "commands" / cid / "result.json"))
    return epoch(result["exited_at"]) - float(result["wall_seconds"])


def ended(result_json: Path) -> float:
    return epoch(json.loads(read(result_json))["exited_at"])


# User data standing in for a finished bootstrap: Minikube is stopped at every boot
# (hack/instance/minikube) and a bootstrap starts it.
SLOW_BOOT = "#!/bin/bash\necho $$ > \"$PWD/bash.pid\"\nminikube start >/dev/null\nsleep 4\n"
QUICK_BOOT = "#!/bin/bash\nminikube start >/dev/null\nexit 0\n"


@dataclass
class Agent:
    sim: Sim
    ids: dict[str, str]
    commands: dict[str, str]
    ec2: Any

    def lines(self) -> dict[str, re.Match[str]]:
        return {m.group(3): m for m in (COMMAND_RE.match(line) for line in list(self.sim.lines)) if m}


@pytest.fixture(scope="module")
def agent(seeded: dict[str, Any], moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    """One simulator; commands sent through the strict layer as the operator sends them
    (moto alone would record a command as sent to every instance of the region)."""
    from awsenv import client
    from test_fault_proxy import clients, start_proxy, stop

    ec2 = client("ec2", moto_endpoint, REGION)
    ami = seeded["amiIds"]["newer"]
    cluster = "ssm-" + uuid.uuid4().hex[:6]
    ids = {
        "booted": launch(ec2, ami, cluster, "booted", QUICK_BOOT),
        "booting": launch(ec2, ami, cluster, "booting", SLOW_BOOT),
        "doomed": launch(ec2, ami, cluster, "doomed", QUICK_BOOT),
        "foreign": launch(ec2, ami, "someone-else", "foreign", QUICK_BOOT),
    }
    proxy, url = start_proxy(moto_endpoint, 0.0, tmp_path_factory.mktemp("ssm-proxy") / "proxy.jsonl",
                             extra=("--timing", "off"))
    sim = start_sim(moto_endpoint, cluster, tmp_path_factory.mktemp("ssm-instances"), boot_seconds=0.2)
    commands: dict[str, str] = {}
    try:
        ssm = clients(url)["ssm"]
        wait_until("two boots", lambda: {ids["booted"], ids["doomed"]} <= set(sim.results()), 30)
        wait_until("the slow boot to start", lambda: read(sim.dir(ids["booting"]) / "bash.pid"), 30)
        assert ids["booting"] not in sim.results(), "the slow boot ended too early for this test"
        good = [("payments", f"{REGISTRY}/payments:pr-123"), ("frontend", f"{REGISTRY}/frontend:latest")]
        commands["complete"] = send(ssm, ids["booted"], services_script(good))
        # The agent runs both at once; the update's flock on its log file makes the second
        # wait for the first, once the first holds it (sent together, either may win).
        wait_until("the first update to hold its lock", lambda: f"docker pull {REGISTRY}/payments:pr-123\n" in read(
            sim.dir(ids["booted"]) / "calls.log"), 30)
        commands["failed"] = send(ssm, ids["booted"], services_script([("nope", f"{REGISTRY}/no-such-repo:pr-1")],
                                                                       token="fedcba9876543210"))
        commands["after-boot"] = send(ssm, ids["booting"], services_script(good, token="00000000000000aa"))
        # Straight to moto (the layer refuses TimeoutSeconds < 30), with the Targets the
        # layer would add: it cannot be delivered before the slow boot is done.
        direct = unvalidated_ssm(moto_endpoint)
        commands["undelivered"] = str(direct.send_command(
            DocumentName="AWS-RunShellScript", InstanceIds=[ids["booting"]], TimeoutSeconds=1,
            Targets=[{"Key": "instance-id", "Values": [ids["booting"]]}],
            Parameters={"commands": ["#!/bin/bash\ntouch \"$PWD/ran\"\n"]})["Command"]["CommandId"])
        commands["foreign"] = send(ssm, ids["foreign"], "#!/bin/bash\ntouch /tmp/never\n")
        commands["powershell"] = send(ssm, ids["booted"], "Write-Output hi", document="AWS-RunPowerShellScript")
        commands["hanging"] = send(ssm, ids["doomed"], "#!/bin/bash\necho $$ > \"$PWD/pid\"\nsleep 300\n")
        pid = int(wait_until("the hanging command to start", lambda: read(
            sim.dir(ids["doomed"]) / "commands" / commands["hanging"] / "pid").strip(), 30))
        ec2.terminate_instances(InstanceIds=[ids["doomed"]])
        done = {commands[k] for k in ("complete", "failed", "after-boot", "hanging")}

        def finished() -> bool:
            lines = {m.group(3) for m in (COMMAND_RE.match(line) for line in list(sim.lines)) if m}
            undelivered = any(f"command={commands['undelivered']}" in line for line in list(sim.lines))
            return (done <= lines and undelivered) or sim.proc.poll() is not None

        wait_until("every command line", finished, 90)
        assert sim.proc.poll() is None, "\n".join(sim.stderr)
        assert not pid_alive(pid)
        time.sleep(1.0)  # a few more steps: nothing runs twice, nothing ignored runs late
    finally:
        stop(proxy)
        code = sim.stop()
    assert code == 0, "\n".join(sim.stderr)
    yield Agent(sim, ids, commands, ec2)


def unvalidated_ssm(endpoint: str) -> Any:
    """An SSM client that sends what boto3 would refuse before sending."""
    import boto3
    from botocore.config import Config

    return boto3.client("ssm", endpoint_url=endpoint, region_name=REGION, aws_access_key_id="testing",
                        aws_secret_access_key="testing", config=Config(parameter_validation=False))


def test_a_command_runs_as_the_agent_runs_it_and_tags_the_instance(agent: Agent) -> None:
    iid, cid = agent.ids["booted"], agent.commands["complete"]
    line = agent.lines()[cid]
    assert (line.group(2), line.group(4), line.group(5)) == (iid, "0", f"complete:{TOKEN}")
    assert " bootstrap " not in line.group(0)
    d = agent.sim.dir(iid)
    command_dir = d / "commands" / cid
    script = read(command_dir / "_script.sh")
    assert script.startswith("#!/bin/bash\n") and os.access(command_dir / "_script.sh", os.X_OK)
    assert f"readonly LOG_FILE='{d}/bootstrap.log'" in script and f"2>>{d}/console.log)" in script
    calls = read(d / "calls.log")
    assert f"docker pull {REGISTRY}/payments:pr-123\n" in calls
    assert f"kubectl set image deployment/frontend frontend={REGISTRY}/frontend:latest\n" in calls
    assert f"kubectl rollout status deployment/payments --timeout=15m\n" in calls
    assert f"aws ec2 create-tags --resources {iid} --tags Key=featureenv.io/services,Value=complete:{TOKEN}\n" in calls
    assert calls.count("minikube start") == 1, "the boot's; the update does not start Minikube"
    assert "ssm get-parameter" not in calls
    # Appended to the bootstrap's log and mirrored to the console.
    assert "featureenv: services update complete" in read(d / "bootstrap.log")
    assert "featureenv: services update complete" in read(d / "console.log")
    result = json.loads(read(command_dir / "result.json"))
    assert result["exit"] == 0 and result["services"] == f"complete:{TOKEN}" and result["command"] == cid


def test_a_failing_command_tags_failed_from_its_err_trap(agent: Agent) -> None:
    iid, cid = agent.ids["booted"], agent.commands["failed"]
    line = agent.lines()[cid]
    assert (line.group(2), line.group(4), line.group(5)) == (iid, "1", "failed:fedcba9876543210")
    assert services_tag(agent.ec2, iid) == "failed:fedcba9876543210", "the last command's tag"
    assert "featureenv: services update failed (exit 1) at line" in read(agent.sim.dir(iid) / "bootstrap.log")
    # Sent while the first ran, it may start at once (the agent runs up to five commands
    # at a time); its flock held its work back until the first had tagged.
    calls = read(agent.sim.dir(iid) / "calls.log")
    first_tag = f"aws ec2 create-tags --resources {iid} --tags Key=featureenv.io/services,Value=complete:{TOKEN}\n"
    assert calls.index(first_tag) < calls.index(f"docker pull {REGISTRY}/no-such-repo:pr-1\n")


def test_a_command_for_a_booting_instance_waits_for_the_boot(agent: Agent) -> None:
    iid, cid = agent.ids["booting"], agent.commands["after-boot"]
    line = agent.lines()[cid]
    assert (line.group(4), line.group(5)) == ("0", "complete:00000000000000aa")
    assert command_started(agent.sim, iid, cid) >= ended(agent.sim.dir(iid) / "result.json") - 0.05
    # Sent with a 1 s delivery timeout behind it: never delivered, never run.
    undelivered = agent.commands["undelivered"]
    assert any(f"undelivered instance={iid} command={undelivered} " in line for line in agent.sim.lines)
    assert not (agent.sim.dir(iid) / "commands" / undelivered).exists()


def test_a_command_is_killed_when_its_instance_stops_running(agent: Agent) -> None:
    iid, cid = agent.ids["doomed"], agent.commands["hanging"]
    assert any(f"killed instance={iid} command={cid} reason=instance-not-running" in line for line in agent.sim.lines)
    line = agent.lines()[cid]
    assert (line.group(4), line.group(5)) == ("143", "none")


def test_other_instances_and_documents_are_ignored_and_nothing_runs_twice(agent: Agent) -> None:
    assert not agent.sim.dir(agent.ids["foreign"]).exists()
    assert agent.commands["foreign"] not in agent.lines() and agent.commands["powershell"] not in agent.lines()
    assert not (agent.sim.dir(agent.ids["booted"]) / "commands" / agent.commands["powershell"]).exists()
    counted = [m.group(3) for m in (COMMAND_RE.match(line) for line in agent.sim.lines) if m]
    assert sorted(counted) == sorted(agent.commands[k] for k in ("complete", "failed", "after-boot", "hanging"))
    assert sum(" bootstrap " in line for line in agent.sim.lines) == 3, "one per boot, none per command"


def test_one_list_commands_call_per_step(seeded: dict[str, Any], aws: Any, moto_endpoint: str, tmp_path: Path) -> None:
    """The agent's cost does not grow with the instances: one ListCommands a step, and
    none while the simulator runs no instance."""
    from boot_simulator import Simulator

    ec2 = aws("ec2")
    cluster = "cost-" + uuid.uuid4().hex[:6]
    idle = Simulator(moto_endpoint, REGION, cluster, 0.0, tmp_path / "idle")
    busy = Simulator(moto_endpoint, REGION, cluster, 0.0, tmp_path / "busy")
    calls: dict[str, int] = {"idle": 0, "busy": 0}
    for name, sim in (("idle", idle), ("busy", busy)):
        real = sim.ssm.list_commands

        def counting(*args: Any, _name: str = name, _real: Any = real, **kwargs: Any) -> Any:
            calls[_name] += 1
            return _real(*args, **kwargs)

        sim.ssm.list_commands = counting  # type: ignore[method-assign]
    try:
        idle.step()
        assert calls["idle"] == 0
        for n in range(3):
            launch(ec2, seeded["amiIds"]["newer"], cluster, f"n{n}", QUICK_BOOT)
        for _ in range(4):
            busy.step()
        assert len(busy.booted) == 3
        assert calls["busy"] == 4
    finally:
        idle.shutdown()
        busy.shutdown()


# --------------------------------------------------------------------------------------
# Several commands at once: the agent's CommandWorkersLimit (default 5) per instance

# Records when it started and ended (epoch seconds, in its command directory).
TIMED_COMMAND = ("#!/bin/bash\ndate +%s.%N > \"$PWD/started\"\nsleep 1.5\n"
                 "date +%s.%N > \"$PWD/ended\"\n")
HANGING_COMMAND = "#!/bin/bash\necho $$ > \"$PWD/pid\"\nsleep 300\n"


def eventually(predicate: Callable[[], Any], timeout: float) -> bool:
    """wait_until that answers False instead of raising: the tests say what is missing."""
    try:
        wait_until("", predicate, timeout)
        return True
    except AssertionError:
        return False


@dataclass
class Workers:
    sim: Sim
    ids: dict[str, str]
    commands: dict[str, list[str]]
    pids: dict[str, list[int]]  # the hanging commands' (bash) pids, per instance
    alive_after: dict[str, list[int]]  # those still running after the stop, per instance

    def lines(self) -> dict[str, re.Match[str]]:
        return {m.group(3): m for m in (COMMAND_RE.match(line) for line in list(self.sim.lines)) if m}

    def stamp(self, key: str, n: int, name: str) -> float:
        iid = self.ids[key]
        return float(read(self.sim.dir(iid) / "commands" / self.commands[key][n] / name).strip() or "nan")


@pytest.fixture(scope="module")
def workers(seeded: dict[str, Any], moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    """One simulator, four booted instances: `pair` gets two timed commands 0.3 s apart,
    `six` six at once, `stopped` three hanging ones and is stopped, `shutdown` two
    hanging ones when the simulator gets SIGTERM. A wait for what a one-at-a-time agent
    never does gives up quietly: the tests say what is missing."""
    from awsenv import client
    from test_fault_proxy import clients, start_proxy, stop

    ec2 = client("ec2", moto_endpoint, REGION)
    ami = seeded["amiIds"]["newer"]
    cluster = "workers-" + uuid.uuid4().hex[:6]
    ids = {name: launch(ec2, ami, cluster, name, QUICK_BOOT) for name in ("pair", "six", "stopped", "shutdown")}
    proxy, url = start_proxy(moto_endpoint, 0.0, tmp_path_factory.mktemp("workers-proxy") / "proxy.jsonl",
                             extra=("--timing", "off"))
    sim = start_sim(moto_endpoint, cluster, tmp_path_factory.mktemp("workers-instances"), boot_seconds=0.2)
    commands: dict[str, list[str]] = {name: [] for name in ids}
    pids: dict[str, list[int]] = {}
    alive_after: dict[str, list[int]] = {}

    def pids_of(name: str) -> list[int]:
        iid = ids[name]
        found = [read(sim.dir(iid) / "commands" / cid / "pid").strip() for cid in commands[name]]
        return [int(p) for p in found if p]

    try:
        ssm = clients(url)["ssm"]
        wait_until("four boots", lambda: set(ids.values()) <= set(sim.results()), 30)
        commands["pair"].append(send(ssm, ids["pair"], TIMED_COMMAND))
        time.sleep(0.3)
        commands["pair"].append(send(ssm, ids["pair"], TIMED_COMMAND))
        for _ in range(6):
            commands["six"].append(send(ssm, ids["six"], TIMED_COMMAND))
        for name, n in (("stopped", 3), ("shutdown", 2)):
            for _ in range(n):
                commands[name].append(send(ssm, ids[name], HANGING_COMMAND))
        timed = set(commands["pair"] + commands["six"])
        eventually(lambda: timed <= {m.group(3) for m in (COMMAND_RE.match(line) for line in list(sim.lines)) if m}
                   or sim.proc.poll() is not None, 30)
        for name in ("stopped", "shutdown"):
            eventually(lambda name=name: len(pids_of(name)) == len(commands[name]), 10)
            pids[name] = pids_of(name)

        ec2.stop_instances(InstanceIds=[ids["stopped"]])
        eventually(lambda: any(f"halted instance={ids['stopped']}" in line for line in sim.lines), 30)
        eventually(lambda: not any(pid_alive(p) for p in pids["stopped"]), 15)
        alive_after["stopped"] = [p for p in pids["stopped"] if pid_alive(p)]
    finally:
        stop(proxy)
        code = sim.stop()
    eventually(lambda: not any(pid_alive(p) for p in pids.get("shutdown", [])), 10)
    alive_after["shutdown"] = [p for p in pids.get("shutdown", []) if pid_alive(p)]
    assert code == 0, "\n".join(sim.stderr)
    yield Workers(sim, ids, commands, pids, alive_after)


def test_an_instance_runs_a_command_sent_while_another_runs_at_once(workers: Workers) -> None:
    first, second = workers.commands["pair"]
    lines = workers.lines()
    assert first in lines and second in lines, "\n".join(workers.sim.lines)
    assert (lines[first].group(4), lines[second].group(4)) == ("0", "0"), "both end successfully"
    started = [workers.stamp("pair", n, "started") for n in (0, 1)]
    first_ended = workers.stamp("pair", 0, "ended")
    assert started[0] < started[1], "in the order sent"
    assert started[1] < first_ended, f"the second started {started[1] - first_ended:+.2f} s after the first ended"


def test_a_sixth_command_waits_for_a_free_worker(workers: Workers) -> None:
    six = workers.commands["six"]
    lines = workers.lines()
    assert set(six) <= set(lines), "\n".join(workers.sim.lines)
    assert all(lines[cid].group(4) == "0" for cid in six)
    started = [workers.stamp("six", n, "started") for n in range(6)]
    ended_at = [workers.stamp("six", n, "ended") for n in range(6)]
    # The five oldest at once; the sixth, sent last, only once one of them has ended.
    assert max(started[:5]) < min(ended_at[:5]), (started, ended_at)
    assert started[5] >= min(ended_at[:5]), (started, ended_at)


def test_a_stop_kills_every_command_running_on_the_instance(workers: Workers) -> None:
    iid, hanging = workers.ids["stopped"], workers.commands["stopped"]
    assert len(workers.pids["stopped"]) == 3, "three commands running at once"
    assert workers.alive_after["stopped"] == []
    lines = workers.lines()
    for cid in hanging:
        assert any(f"killed instance={iid} command={cid} reason=instance-not-running" in line
                   for line in workers.sim.lines)
        assert (lines[cid].group(4), lines[cid].group(5)) == ("143", "none")


def test_the_simulator_stopping_kills_every_running_command(workers: Workers) -> None:
    assert len(workers.pids["shutdown"]) == 2, "two commands running at once"
    assert workers.alive_after["shutdown"] == []


# --------------------------------------------------------------------------------------
# Stopped and started again: a stopped instance runs nothing; a start is a boot, but not
# the user data's


RUNS_ONCE = "#!/bin/bash\necho ran >> \"$PWD/user-data-runs\"\nminikube start >/dev/null\n"
# What a command finds on the instance right after a start, before anything starts Minikube.
PROBE = ("#!/bin/bash\nminikube status >/dev/null; echo $? > \"$PWD/minikube-status\"\n"
         "kubectl rollout status deployment/payments 2> \"$PWD/kubectl.err\"; echo $? > \"$PWD/kubectl-exit\"\n")
WAKE_TOKEN = "feedfacecafebeef"
# The operator's wake, as the brief has it: start Minikube, wait for the deployments, tag
# the outcome on its own instance (the instance id from IMDSv2, the real AWS CLI).
WAKE = f"""#!/bin/bash
set -euo pipefail
minikube start
kubectl rollout status deployment/payments --timeout=15m
token="$(curl -fsS -X PUT http://169.254.169.254/latest/api/token -H 'X-aws-ec2-metadata-token-ttl-seconds: 300')"
id="$(curl -fsS -H "X-aws-ec2-metadata-token: $token" http://169.254.169.254/latest/meta-data/instance-id)"
aws ec2 create-tags --region {REGION} --resources "$id" --tags Key=featureenv.io/services,Value=complete:{WAKE_TOKEN}
"""


def imds_port(sim: Sim) -> int:
    started = next(line for line in sim.lines if " started cluster=" in line)
    return int(re.search(r" imds=127\.0\.0\.1:(\d+) ", started).group(1))  # type: ignore[union-attr]


def imds_answers(port: int, iid: str) -> bool:
    """Whether the simulator's metadata service answers for the instance (a token PUT)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("PUT", f"/{iid}/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
        return conn.getresponse().status == 200
    finally:
        conn.close()


def line_at(sim: Sim, prefix: str) -> float:
    """When the simulator printed its first line starting (after the timestamp) with `prefix`."""
    line = next(line for line in list(sim.lines) if line.split(" ", 1)[1].startswith(prefix))
    return epoch(line.split(" ", 1)[0])


def test_a_stopped_instance_runs_nothing_and_a_start_is_a_boot_without_the_user_data(
    seeded: dict[str, Any], moto_endpoint: str, tmp_path: Path
) -> None:
    from awsenv import client
    from test_fault_proxy import clients, start_proxy, stop

    cluster = "sleep-" + uuid.uuid4().hex[:6]
    direct = client("ec2", moto_endpoint, REGION)
    iid = launch(direct, seeded["amiIds"]["newer"], cluster, "sleeper", RUNS_ONCE)
    proxy, url = start_proxy(moto_endpoint, 0.0, tmp_path / "proxy.jsonl", extra=("--timing", "fast"))
    sim = start_sim(moto_endpoint, cluster, tmp_path / "instances")
    try:
        operator = clients(url)  # the operator's calls go through the strict layer
        ec2, ssm = operator["ec2"], operator["ssm"]

        def state() -> str:
            return str(ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["State"]["Name"])

        wait_until("the boot", lambda: iid in sim.results(), 30)
        port = imds_port(sim)
        assert imds_answers(port, iid)
        hanging = send(ssm, iid, "#!/bin/bash\necho $$ > \"$PWD/pid\"\nsleep 300\n")
        pid = int(wait_until("the command to start",
                             lambda: read(sim.dir(iid) / "commands" / hanging / "pid").strip(), 30))
        wait_until("running, as the layer has it", lambda: state() == "running", 30)

        # Stopped: the command is killed, metadata and Minikube are gone.
        ec2.stop_instances(InstanceIds=[iid])
        wait_until("the halt", lambda: any(f"halted instance={iid}" in line for line in sim.lines), 30)
        assert any(f"killed instance={iid} command={hanging} reason=instance-not-running" in line for line in sim.lines)
        wait_until("the command's process group to end", lambda: not pid_alive(pid), 15)
        assert read(sim.dir(iid) / "minikube.state") == "Stopped\n"
        assert not imds_answers(port, iid)

        # Commands sent while it is stopped: AWS accepts them (a stopped node is in a valid
        # state) and tries to deliver them until their delivery timeout.
        late = str(unvalidated_ssm(moto_endpoint).send_command(  # straight to moto: 1 s delivery timeout
            DocumentName="AWS-RunShellScript", InstanceIds=[iid], TimeoutSeconds=1,
            Targets=[{"Key": "instance-id", "Values": [iid]}],
            Parameters={"commands": ["#!/bin/bash\ntouch \"$PWD/ran\"\n"]})["Command"]["CommandId"])
        probe = send(ssm, iid, PROBE)
        wait_until("the late command to time out", lambda: any(
            f"undelivered instance={iid} command={late} " in line for line in sim.lines), 30)
        assert probe not in {m.group(3) for m in (COMMAND_RE.match(line) for line in list(sim.lines)) if m}
        wait_until("stopped, as the layer has it", lambda: state() == "stopped", 30)

        # Started: metadata and agent come back after the boot delay; the user data does not run again.
        started_at = time.time()
        ec2.start_instances(InstanceIds=[iid])
        wait_until("the restart", lambda: any(f"restarted instance={iid}" in line for line in sim.lines), 30)
        assert line_at(sim, f"restarted instance={iid}") >= started_at + BOOT_SECONDS - 0.05
        assert imds_answers(port, iid)
        # The agent would run a wake sent now alongside the probe: wait for the probe's end.
        wait_until("the probe", lambda: probe in {m.group(3) for m in (COMMAND_RE.match(line) for line in
                                                                       list(sim.lines)) if m}, 30)
        wake = send(ssm, iid, WAKE)
        wait_until("the wake", lambda: wake in {m.group(3) for m in (COMMAND_RE.match(line) for line in list(sim.lines))
                                               if m}, 60)
        lines = {m.group(3): m for m in (COMMAND_RE.match(line) for line in list(sim.lines)) if m}
        # The command held while it was stopped ran first, after the restart, and found
        # Minikube stopped (the node container does not come back with the host).
        assert command_started(sim, iid, probe) >= line_at(sim, f"restarted instance={iid}") - 0.05
        probe_dir = sim.dir(iid) / "commands" / probe
        assert read(probe_dir / "minikube-status").strip() == "7"
        assert read(probe_dir / "kubectl-exit").strip() == "1"
        assert "connection to the server 192.168.49.2:8443 was refused" in read(probe_dir / "kubectl.err")
        assert (lines[wake].group(4), lines[wake].group(5)) == ("0", f"complete:{WAKE_TOKEN}")
        assert services_tag(direct, iid) == f"complete:{WAKE_TOKEN}"
        assert read(sim.dir(iid) / "minikube.state") == "Running\n"
        assert read(sim.dir(iid) / "user-data-runs") == "ran\n", "cloud-init runs user scripts once per instance"
        assert not (sim.dir(iid) / "commands" / late).exists()
        assert sum(" bootstrap " in line and iid in line for line in sim.lines) == 1
    finally:
        stop(proxy)
        code = sim.stop()
    assert code == 0, "\n".join(sim.stderr)


# --------------------------------------------------------------------------------------
# Instance timing: --timing realistic --time-scale F plays the OS boot and the stand-ins'
# durations, scaled; fast (the default) plays none

TIMED_SCALE = 0.05
# The steps a bootstrap spends its time on, each once; then a tag so the line says complete.
TIMED_BOOT = f"""#!/bin/bash
set -e
minikube start >/dev/null
minikube addons enable ingress >/dev/null
docker pull docker.io/library/nginx:1.27 >/dev/null
docker pull docker.io/library/nginx:1.27 >/dev/null
kubectl set image deployment/web web=docker.io/library/nginx:1.27 >/dev/null
kubectl rollout status deployment/web >/dev/null
token="$(curl -fsS -X PUT http://169.254.169.254/latest/api/token -H 'X-aws-ec2-metadata-token-ttl-seconds: 300')"
id="$(curl -fsS -H "X-aws-ec2-metadata-token: $token" http://169.254.169.254/latest/meta-data/instance-id)"
aws ec2 create-tags --region {REGION} --resources "$id" --tags Key=featureenv.io/bootstrap,Value=complete
"""


def test_realistic_timing_plays_the_boot_and_the_stand_ins_durations_scaled(
    seeded: dict[str, Any], aws: Any, moto_endpoint: str, tmp_path: Path
) -> None:
    from boot_simulator import INSTANCE_REALISTIC

    ec2 = aws("ec2")
    figures = INSTANCE_REALISTIC.scaled(TIMED_SCALE)
    script_figure = (figures.minikube_start + figures.minikube_addon + figures.docker_pull
                     + figures.docker_pull_present + figures.rollout)
    runs = {}
    for mode in ("realistic", "fast"):
        cluster = f"timed-{mode}-" + uuid.uuid4().hex[:6]
        iid = launch(ec2, seeded["amiIds"]["newer"], cluster, mode, TIMED_BOOT)
        sim = start_sim(moto_endpoint, cluster, tmp_path / mode, "--timing", mode, "--time-scale", str(TIMED_SCALE))
        try:
            wait_until(f"the {mode} bootstrap line", lambda: iid in sim.results() or sim.proc.poll() is not None, 60)
        finally:
            assert sim.stop() == 0, "\n".join(sim.stderr)
        line = sim.results()[iid]
        assert line.group(3) == "complete", read(sim.dir(iid) / "bash.out")
        started = next(s for s in sim.lines if " started cluster=" in s)
        runs[mode] = (float(line.group(5)), json.loads(read(sim.dir(iid) / "result.json"))["wall_seconds"], started)
    waited, wall, started = runs["realistic"]
    assert f" boot_seconds={BOOT_SECONDS + figures.boot:g} timing=realistic time_scale={TIMED_SCALE:g} " in started
    # The OS boot (20 s × 0.05) on top of --boot-seconds, then the script's steps.
    assert waited >= BOOT_SECONDS + figures.boot + script_figure, runs
    assert script_figure <= wall < script_figure + 3.0, runs
    fast_waited, fast_wall, fast_started = runs["fast"]
    assert f" boot_seconds={BOOT_SECONDS:g} timing=fast " in fast_started
    assert fast_wall < script_figure, runs
    assert fast_waited < BOOT_SECONDS + figures.boot + script_figure, runs
