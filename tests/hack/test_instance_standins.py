"""Tests for the instance stand-ins in hack/instance/: they behave like the real tools for
what the bootstrap script uses, fail where those would, and never record stdin."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import time
import subprocess
from pathlib import Path
from typing import Any

import pytest

from boot_simulator import real_aws_cli

REPO = Path(__file__).resolve().parents[2]
STAND_INS = REPO / "hack" / "instance"
REGISTRY = "123456789012.dkr.ecr.us-east-1.amazonaws.com"


@pytest.fixture()
def run(tmp_path: Path) -> Any:
    """run(argv, stdin=..., **env) -> CompletedProcess, with hack/instance/ first on PATH."""

    def go(argv: list[str], stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=60,
            env={"PATH": f"{STAND_INS}:{os.environ['PATH']}", "HOME": str(tmp_path), "FEATUREENV_SIM_DIR": str(tmp_path),
                 **env},
        )

    return go


def calls(tmp_path: Path) -> str:
    return (tmp_path / "calls.log").read_text()


@pytest.fixture()
def started(run: Any) -> Any:
    """`run` on an instance whose Minikube the bootstrap has started."""
    assert run(["minikube", "start"]).returncode == 0
    return run


def test_kubectl_builds_the_secret_from_stdin_without_recording_it(started: Any, tmp_path: Path) -> None:
    run = started
    argv = ["kubectl", "create", "secret", "generic", "featureenv-database",
            "--from-file=connection=/dev/stdin", "--dry-run=client", "-o", "yaml"]
    out = run(argv, stdin="postgres://app:S3cretPW@db/app")
    assert out.returncode == 0, out.stderr
    assert out.stdout == ("apiVersion: v1\ndata:\n  connection: "
                          + base64.b64encode(b"postgres://app:S3cretPW@db/app").decode()
                          + "\nkind: Secret\nmetadata:\n  name: featureenv-database\n")
    applied = run(["kubectl", "apply", "-f", "-"], stdin=out.stdout)
    assert (applied.returncode, applied.stdout) == (0, "secret/featureenv-database created\n")
    nothing = run(["kubectl", "apply", "-f", "-"], stdin="")
    assert nothing.returncode == 1 and "error: no objects passed to apply" in nothing.stderr
    assert "S3cretPW" not in calls(tmp_path) and "cG9zdGdyZXM" not in calls(tmp_path)
    assert calls(tmp_path).splitlines()[1] == " ".join(argv)


def test_kubectl_set_image_and_rollout(started: Any) -> None:
    run = started
    ok = run(["kubectl", "set", "image", "deployment/payments", "payments=r/payments:1"])
    assert (ok.returncode, ok.stdout) == (0, "deployment.apps/payments image updated\n")
    wrong = run(["kubectl", "set", "image", "deployment/payments", "orders=r/orders:1"])
    assert wrong.returncode == 1 and 'unable to find container named "orders"' in wrong.stderr
    rollout = run(["kubectl", "rollout", "status", "deployment/payments", "--timeout=15m"])
    assert (rollout.returncode, rollout.stdout) == (0, 'deployment "payments" successfully rolled out\n')


def test_minikube_addons_and_docker_env(started: Any) -> None:
    run = started
    for addon in ("ingress", "dashboard", "logviewer", "metrics-server"):
        assert run(["minikube", "addons", "enable", addon]).returncode == 0, addon
    bad = run(["minikube", "addons", "enable", "logs"])
    assert bad.returncode == 10
    assert "Exiting due to MK_ADDON_ENABLE: enable failed: run callbacks: logs is not a valid addon" in bad.stderr
    assert run(["minikube", "status"]).returncode == 0
    env = run(["bash", "-c", 'eval "$(minikube docker-env --shell bash)" && echo "$DOCKER_HOST"'])
    assert env.stdout.strip() == "tcp://192.168.49.2:2376"


STOPPED_STATUS = ("minikube\ntype: Control Plane\nhost: Stopped\nkubelet: Stopped\napiserver: Stopped\n"
                  "kubeconfig: Stopped\n\n")
RUNNING_STATUS = ("minikube\ntype: Control Plane\nhost: Running\nkubelet: Running\napiserver: Running\n"
                  "kubeconfig: Configured\n\n")
REFUSED = "The connection to the server 192.168.49.2:8443 was refused - did you specify the right host or port?\n"


def test_minikube_is_stopped_at_every_boot_until_started(run: Any, tmp_path: Path) -> None:
    """A fresh boot from the image (which stops Minikube before its snapshot), and an
    instance stopped and started again (the simulator writes `Stopped`): the cluster is
    down until `minikube start`, and everything needing it fails."""
    for boot in ("fresh", "restarted"):
        if boot == "restarted":
            (tmp_path / "minikube.state").write_text("Stopped\n")
        status = run(["minikube", "status"])
        assert (status.returncode, status.stdout) == (7, STOPPED_STATUS), boot
        docker_env = run(["minikube", "docker-env", "--shell", "bash"])
        assert docker_env.returncode == 89 and docker_env.stdout == "", boot
        assert "host is not running: state=Stopped" in docker_env.stderr
        assert run(["minikube", "addons", "enable", "ingress"]).returncode == 89, boot
        for argv in (["kubectl", "rollout", "status", "deployment/payments"], ["kubectl", "apply", "-f", "-"],
                     ["kubectl", "wait", "--for=condition=Available", "deployment", "--all"]):
            refused = run(argv, stdin="kind: Secret\n")
            assert (refused.returncode, refused.stderr) == (1, REFUSED), (boot, argv)
        # A client-side dry run needs no API server.
        dry = run(["kubectl", "create", "secret", "generic", "s", "--from-file=k=/dev/stdin", "--dry-run=client",
                   "-o", "yaml"], stdin="v")
        assert dry.returncode == 0 and "kind: Secret" in dry.stdout, boot
        start = run(["minikube", "start"])
        assert start.returncode == 0 and "Restarting existing docker container" in start.stdout, boot
        status = run(["minikube", "status"])
        assert (status.returncode, status.stdout) == (0, RUNNING_STATUS), boot
        assert run(["kubectl", "rollout", "status", "deployment/payments"]).returncode == 0, boot
        wait = run(["kubectl", "wait", "--for=condition=Available", "deployment", "--all", "--timeout=10m"])
        assert wait.returncode == 0, boot
    # `minikube start` on a bootstrapped (running) instance: accepted, nothing to restart.
    again = run(["minikube", "start"])
    assert again.returncode == 0 and "Restarting" not in again.stdout and "Done!" in again.stdout
    assert run(["minikube", "status"]).returncode == 0
    stop = run(["minikube", "stop"])
    assert stop.returncode == 0 and run(["minikube", "status"]).returncode == 7


def test_logger_mirrors_stdin_to_stderr(run: Any, tmp_path: Path) -> None:
    out = run(["logger", "-t", "featureenv", "-s"], stdin="one\ntwo")
    lines = out.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("<13>") and lines[1].endswith(" featureenv: two")
    assert "one" not in calls(tmp_path)


def test_docker_login_needs_a_password(run: Any, tmp_path: Path) -> None:
    empty = run(["docker", "login", "--username", "AWS", "--password-stdin", REGISTRY], stdin="")
    assert empty.returncode == 1
    assert empty.stderr == "Error: Cannot perform an interactive login from a non TTY device\n"
    ok = run(["docker", "login", "--username", "AWS", "--password-stdin", REGISTRY], stdin="ecr-token\n")
    assert ok.returncode == 0 and "Login Succeeded" in ok.stdout
    assert "ecr-token" not in calls(tmp_path)


def test_docker_pull_checks_the_stacks_ecr(seeded: dict[str, Any], moto_endpoint: str, run: Any, tmp_path: Path) -> None:
    aws = real_aws_cli()
    assert aws, "the AWS CLI is not installed (pip install awscli)"
    # Counts the CLI runs behind docker pull.
    counter = tmp_path / "aws-counter"
    counter.write_text(f'#!/bin/bash\necho x >> "{tmp_path}/aws-runs"\nexec {aws} "$@"\n')
    counter.chmod(0o755)
    env = {"AWS_ENDPOINT_URL": moto_endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "FEATUREENV_SIM_AWS": str(counter), "FEATUREENV_SIM_CACHE": str(tmp_path / "cache")}
    image = f"{REGISTRY}/payments:pr-123"

    no_login = run(["docker", "pull", image], **env)
    assert no_login.returncode == 1
    assert no_login.stderr == (f'Error response from daemon: Head "https://{REGISTRY}/v2/payments/manifests/pr-123": '
                               "no basic auth credentials\n")
    run(["docker", "login", "--username", "AWS", "--password-stdin", REGISTRY], stdin="token")

    first = run(["docker", "pull", image], **env)
    assert first.returncode == 0, first.stderr
    digest = seeded["ecr"]["payments"]["digests"]["pr-123"]
    assert first.stdout == (f"pr-123: Pulling from payments\nDigest: {digest}\n"
                            f"Status: Downloaded newer image for {image}\n{image}\n")
    again = run(["docker", "pull", image], **env)
    # The instance has it now: docker says so (and the digest is still checked).
    assert again.returncode == 0 and again.stdout == first.stdout.replace(
        "Status: Downloaded newer image for", "Status: Image is up to date for")
    assert (tmp_path / "aws-runs").read_text().count("x") == 1, "the second pull was answered from the cache"

    by_digest = run(["docker", "pull", f"{REGISTRY}/orders@{seeded['ecr']['orders']['digests']['latest']}"], **env)
    assert by_digest.returncode == 0, by_digest.stderr

    no_tag = run(["docker", "pull", f"{REGISTRY}/payments:pr-999"], **env)
    assert no_tag.returncode == 1
    assert no_tag.stderr == (f"Error response from daemon: manifest for {REGISTRY}/payments:pr-999 not found: "
                             "manifest unknown: Requested image not found\n")
    no_digest = run(["docker", "pull", f"{REGISTRY}/payments@sha256:{'0' * 64}"], **env)
    assert no_digest.returncode == 1 and "manifest unknown: Requested image not found" in no_digest.stderr
    assert (tmp_path / "pull-failures").read_text().splitlines() == [
        image, f"{REGISTRY}/payments:pr-999", f"{REGISTRY}/payments@sha256:{'0' * 64}"]

    hub = run(["docker", "pull", "docker.io/library/nginx:1.27"], **env)
    assert hub.returncode == 0, "other registries are not checked"



def test_a_pull_downloads_only_the_layers_the_instance_lacks(seeded: dict[str, Any], moto_endpoint: str, run: Any,
                                                             tmp_path: Path) -> None:
    """Docker downloads only missing layers. A warm spare has its service's baseline; the
    image under test shares all but its application layer (10 % of the seeded image's
    bytes) with it, so its pull is the manifest check and a tenth of the download, not a
    whole pull, as the stand-in charged before. Another service's image shares only the
    distribution base. The layers are the manifest's in the stack's ECR."""
    aws = real_aws_cli()
    assert aws, "the AWS CLI is not installed (pip install awscli)"
    env = {"AWS_ENDPOINT_URL": moto_endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "FEATUREENV_SIM_AWS": aws, "FEATUREENV_SIM_CACHE": str(tmp_path / "cache"),
           "FEATUREENV_SIM_DOCKER_PULL_SECONDS": "3", "FEATUREENV_SIM_DOCKER_PULL_PRESENT_SECONDS": "0.2"}
    run(["docker", "login", "--username", "AWS", "--password-stdin", REGISTRY], stdin="token")
    digests = seeded["ecr"]["payments"]["digests"]
    baseline = f"{REGISTRY}/payments@{digests['latest']}"
    under_test, other = f"{REGISTRY}/payments:pr-123", f"{REGISTRY}/orders:latest"
    # Another instance sharing the look-up cache fetches the digests and manifests first,
    # so the clock below counts the pulls, not the CLI.
    warm_up = tmp_path / "other-instance"
    warm_up.mkdir()
    (warm_up / "docker-logins").write_text(f"{REGISTRY}\n")
    for image in (baseline, under_test, other):
        assert run(["docker", "pull", image], **{**env, "FEATUREENV_SIM_DIR": str(warm_up), "HOME": str(warm_up),
                                                 "FEATUREENV_SIM_DOCKER_PULL_SECONDS": "0.01"}).returncode == 0
    slack = 0.6
    assert 3.0 <= timed(run, ["docker", "pull", baseline], env) < 3.0 + slack
    took = timed(run, ["docker", "pull", under_test], env)
    want = 0.2 + 2.8 * 0.1
    assert want <= took < want + slack, f"pr-123 took {took:.2f}s: pulled in full"
    want = 0.2 + 2.8 * 0.9
    assert want <= timed(run, ["docker", "pull", other], env) < want + slack
    layers = (tmp_path / "docker-layers").read_text().splitlines()
    assert len(layers) == len(set(layers)) == 4 + 1 + 3, layers

def test_curl_without_imds_config_refuses_to_run(run: Any) -> None:
    out = run(["curl", "-fsS", "http://169.254.169.254/latest/meta-data/instance-id"],
              FEATUREENV_SIM_CURL=shutil.which("curl") or "curl")
    assert out.returncode != 0 and "FEATUREENV_SIM_IMDS" in out.stderr


# --- instance timing (hack/boot_simulator.py --timing) ---------------------------------

TIMING_SCALE = 0.05  # realistic figures × 0.05: 1.25 s for a Minikube start, 0.05 s for a re-pull


def timed(run: Any, argv: list[str], env: dict[str, str]) -> float:
    started = time.monotonic()
    out = run(argv, **env)
    elapsed = time.monotonic() - started
    assert out.returncode == 0, out.stderr
    return elapsed


@pytest.mark.parametrize("mode", ["realistic", "fast"])
def test_stand_ins_take_the_timing_profiles_durations(run: Any, tmp_path: Path, mode: str) -> None:
    """Realistic: each modelled step takes its figure × the scale (plus the stand-in's
    own few milliseconds); what has nothing to do (a pull of an image the instance has,
    a rollout of an unchanged image, a start of a running Minikube) takes its own,
    smaller figure or none. Fast: nothing sleeps."""
    from boot_simulator import INSTANCE_REALISTIC, instance_timing_for

    env = instance_timing_for(mode, TIMING_SCALE).environment()
    want = INSTANCE_REALISTIC.scaled(TIMING_SCALE) if mode == "realistic" else instance_timing_for("fast", 1.0)
    slack = 0.6  # bash, grep and a loaded machine
    image = "docker.io/library/nginx:1.27"  # another registry: no ECR look-up
    steps = [
        ("minikube start (stopped)", ["minikube", "start"], want.minikube_start),
        ("minikube start (running)", ["minikube", "start"], 0.0),
        ("addons enable", ["minikube", "addons", "enable", "ingress"], want.minikube_addon),
        ("pull (absent)", ["docker", "pull", image], want.docker_pull),
        ("pull (present)", ["docker", "pull", image], want.docker_pull_present),
        ("set image (changed)", ["kubectl", "set", "image", "deployment/web", f"web={image}"], 0.0),
        ("rollout (changed)", ["kubectl", "rollout", "status", "deployment/web"], want.rollout),
        ("rollout (again)", ["kubectl", "rollout", "status", "deployment/web"], 0.0),
        ("set image (same)", ["kubectl", "set", "image", "deployment/web", f"web={image}"], 0.0),
        ("rollout (unchanged)", ["kubectl", "rollout", "status", "deployment/web"], 0.0),
        # A restart (the personalisation's, to read the database Secret) rolls new pods.
        ("rollout restart", ["kubectl", "rollout", "restart", "deployment/web"], 0.0),
        ("rollout (restarted)", ["kubectl", "rollout", "status", "deployment/web"], want.rollout),
    ]
    # A rollout is counted from the change that started it, as in a cluster: its
    # `rollout status` alone takes the figure less the moments since the change.
    started_by = {"rollout (changed)": "set image (changed)", "rollout (restarted)": "rollout restart"}
    began, took = {}, {}
    for name, argv, _ in steps:
        began[name] = time.monotonic()
        took[name] = timed(run, argv, env)
    for name, _, figure in steps:
        since = began[name] + took[name] - began[started_by.get(name, name)]
        assert figure <= since and took[name] < figure + slack, (name, figure, took)
    if mode == "realistic":
        assert want.minikube_start == 25.0 * TIMING_SCALE and want.rollout == 10.0 * TIMING_SCALE
        assert took["pull (present)"] < want.docker_pull and took["rollout (unchanged)"] < want.rollout
    else:
        assert all(v == "0.000" for v in env.values()), env
    assert (tmp_path / "docker-images").read_text() == f"{image}\n"
    assert (tmp_path / "deployments" / "web").read_text() == f"web={image}\n"


ROLLOUT = {"FEATUREENV_SIM_ROLLOUT_SECONDS": "1"}


def test_rollouts_of_several_deployments_run_at_the_same_time(started: Any, tmp_path: Path) -> None:
    """The bootstrap's `roll_out`: `set image` on every deployment, then `rollout status`
    on each one after the other. In a cluster the rollouts run side by side from the
    change, so waiting on three costs about one rollout, not three."""
    run = started
    names = ["web", "payments", "orders"]
    changed = time.monotonic()
    for name in names:
        out = run(["kubectl", "set", "image", f"deployment/{name}", f"{name}=r/{name}:2"], **ROLLOUT)
        assert out.returncode == 0, out.stderr
    waits = [timed(run, ["kubectl", "rollout", "status", f"deployment/{name}", "--timeout=15m"], ROLLOUT)
             for name in names]
    elapsed = time.monotonic() - changed
    assert 1.0 <= elapsed < 1.6, f"three rollouts of 1 s waited {elapsed:.2f}s {waits}: one after the other"
    assert max(waits[1:]) < 0.3, waits
    again = timed(run, ["kubectl", "rollout", "status", "deployment/web"], ROLLOUT)
    assert again < 0.3, f"nothing left to roll out, yet waited {again:.2f}s"
    assert not list((tmp_path / "deployments").glob("*.rolling"))
    assert calls(tmp_path).count("kubectl rollout status deployment/") == 4


def test_a_rollout_already_over_is_not_waited_for(started: Any) -> None:
    """`rollout status` of a deployment changed longer ago than a rollout takes: done."""
    run = started
    assert run(["kubectl", "set", "image", "deployment/web", "web=r/web:2"], **ROLLOUT).returncode == 0
    time.sleep(1.2)
    took = timed(run, ["kubectl", "rollout", "status", "deployment/web"], ROLLOUT)
    assert took < 0.3, f"the rollout ended 0.2 s ago, yet rollout status waited {took:.2f}s"


def test_a_change_while_rolling_starts_the_rollout_again(started: Any, tmp_path: Path) -> None:
    """A restart (or another image) while a rollout is in progress makes a new ReplicaSet:
    done a full rollout after that change, also for a `rollout status` already waiting."""
    run = started
    assert run(["kubectl", "set", "image", "deployment/web", "web=r/web:2"], **ROLLOUT).returncode == 0
    time.sleep(0.5)
    restarted = time.monotonic()
    assert run(["kubectl", "rollout", "restart", "deployment/web"], **ROLLOUT).returncode == 0
    took = timed(run, ["kubectl", "rollout", "status", "deployment/web"], ROLLOUT)
    assert 1.0 <= time.monotonic() - restarted < 1.5, took
    # Already waiting when the new image comes: waits for the new rollout too.
    assert run(["kubectl", "set", "image", "deployment/web", "web=r/web:3"], **ROLLOUT).returncode == 0
    began = time.monotonic()
    waiting = subprocess.Popen(
        ["kubectl", "rollout", "status", "deployment/web"], stdout=subprocess.PIPE, text=True,
        env={"PATH": f"{STAND_INS}:{os.environ['PATH']}", "FEATUREENV_SIM_DIR": str(tmp_path), **ROLLOUT})
    time.sleep(0.5)
    changed = time.monotonic()
    assert run(["kubectl", "set", "image", "deployment/web", "web=r/web:4"], **ROLLOUT).returncode == 0
    out = waiting.communicate(timeout=30)[0]
    ended = time.monotonic()
    assert (waiting.returncode, out) == (0, 'deployment "web" successfully rolled out\n')
    assert 1.0 <= ended - changed < 1.5, f"waited {ended - began:.2f}s, {ended - changed:.2f}s after the new image"


def test_a_pull_of_an_image_already_there_is_up_to_date(run: Any) -> None:
    image = "docker.io/library/nginx:1.27"
    first, second = run(["docker", "pull", image]), run(["docker", "pull", image])
    assert "Status: Downloaded newer image for " + image in first.stdout
    assert "Status: Image is up to date for " + image in second.stdout


def pull_on_new_instances(tmp_path: Path, fake_aws: Path, count: int, seconds: str) -> list[str]:
    """`docker pull` of payments:latest at once on `count` new instances (i-0, i-1, ...
    under tmp_path) logged in to REGISTRY and sharing one look-up cache; their outputs."""
    procs = []
    for n in range(count):
        instance = tmp_path / f"i-{n}"
        instance.mkdir()
        (instance / "docker-logins").write_text(f"{REGISTRY}\n")
        env = {"PATH": f"{STAND_INS}:{os.environ['PATH']}", "HOME": str(instance), "FEATUREENV_SIM_DIR": str(instance),
               "FEATUREENV_SIM_AWS": str(fake_aws), "FEATUREENV_SIM_CACHE": str(tmp_path / "cache"),
               "FEATUREENV_SIM_DOCKER_PULL_SECONDS": seconds}
        procs.append(subprocess.Popen(["docker", "pull", f"{REGISTRY}/payments:latest"], env=env,
                                      stdout=subprocess.PIPE, text=True))
    return [p.communicate(timeout=30)[0] for p in procs]

def test_instances_pull_the_same_ecr_image_side_by_side(tmp_path: Path) -> None:
    """The shared digest cache serialises the ECR look-up only, not the pull: ten spares
    of a warm pool pulling the same baseline image took ten pull times one after the
    other while the look-up's lock was held through the pull."""
    fake_aws = tmp_path / "aws"
    fake_aws.write_text(f"#!/bin/bash\necho sha256:{'c' * 64}\n")
    fake_aws.chmod(0o755)
    started = time.monotonic()
    outputs = pull_on_new_instances(tmp_path, fake_aws, 2, "1.0")
    elapsed = time.monotonic() - started
    assert all("Downloaded newer image" in o for o in outputs), outputs
    assert 1.0 <= elapsed < 1.8, f"two pulls of 1 s took {elapsed:.2f}s: one after the other"



def test_instances_read_an_images_manifest_once(tmp_path: Path) -> None:
    """The manifest look-up is the stand-in's own cost (a CLI run of about half a second
    of CPU), not the instances': instances pulling the same image at once share one
    look-up, as they share the digest's. Each ran its own before, ten warm starts at
    once ten CLI runs on this machine's two cores."""
    runs = tmp_path / "manifest-runs"
    manifest = ('{"layers": [{"digest": "sha256:' + "1" * 64 + '", "size": 9}, '
                '{"digest": "sha256:' + "2" * 64 + '", "size": 1}]}')
    fake_aws = tmp_path / "aws"
    fake_aws.write_text("#!/bin/bash\n"
                        'if [[ "$*" == *batch-get-image* ]]; then\n'
                        f'  echo x >> "{runs}"; sleep 0.3; echo \'{manifest}\'\n'
                        "else\n"
                        f"  echo sha256:{'c' * 64}\n"
                        "fi\n")
    fake_aws.chmod(0o755)
    outputs = pull_on_new_instances(tmp_path, fake_aws, 3, "0.2")
    assert all("Downloaded newer image" in o for o in outputs), outputs
    assert runs.read_text().count("x") == 1, "each instance read the manifest itself"
    for n in range(3):
        assert (tmp_path / f"i-{n}" / "docker-layers").read_text().split() == [
            "sha256:" + "1" * 64, "sha256:" + "2" * 64]

def test_docker_image_inspect_knows_what_this_instance_pulled(run: Any) -> None:
    image = "docker.io/library/nginx@sha256:" + "d" * 64
    absent = run(["docker", "image", "inspect", image])
    assert absent.returncode == 1 and "No such image" in absent.stderr
    assert run(["docker", "pull", image]).returncode == 0
    present = run(["docker", "image", "inspect", image])
    assert present.returncode == 0 and image in present.stdout


# --- pulls of the same image at the same time on one instance --------------------------

PULLS = {"FEATUREENV_SIM_DOCKER_PULL_SECONDS": "1", "FEATUREENV_SIM_DOCKER_PULL_PRESENT_SECONDS": "0.2"}
FAKE_DIGEST = f"sha256:{'c' * 64}"


def logged_in_to_ecr(tmp_path: Path) -> dict[str, str]:
    """An instance logged in to REGISTRY, whose ECR (a fake `aws`) has every tag but `missing`."""
    fake_aws = tmp_path / "fake-aws"
    fake_aws.write_text("#!/bin/bash\n"
                        'if [[ "$*" == *imageTag=missing* ]]; then\n'
                        "  echo 'An error occurred (ImageNotFoundException) when calling the DescribeImages operation: "
                        "The image with imageId {imageTag:missing} does not exist' >&2\n"
                        "  exit 254\n"
                        "fi\n"
                        f"echo {FAKE_DIGEST}\n")
    fake_aws.chmod(0o755)
    (tmp_path / "docker-logins").write_text(f"{REGISTRY}\n")
    return {"FEATUREENV_SIM_AWS": str(fake_aws), "FEATUREENV_SIM_CACHE": str(tmp_path / "cache")}


def pull_in_background(tmp_path: Path, image: str, env: dict[str, str], **popen: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["docker", "pull", image], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={"PATH": f"{STAND_INS}:{os.environ['PATH']}", "HOME": str(tmp_path), "FEATUREENV_SIM_DIR": str(tmp_path),
             **env}, **popen)


def markers(tmp_path: Path) -> list[str]:
    """The downloads in progress the docker stand-in keeps (its lock files aside)."""
    return sorted(p.name for p in (tmp_path / "pulling").glob("*") if not p.name.endswith(".lock"))


def test_a_pull_of_an_image_being_pulled_waits_for_that_pull(run: Any, tmp_path: Path) -> None:
    """The daemon deduplicates transfers (moby distribution/xfer/transfer.go): a second
    pull of an image another pull is downloading watches that download and is done when
    it is, instead of downloading again for the full duration from its own start."""
    env = {**logged_in_to_ecr(tmp_path), **PULLS}
    image = f"{REGISTRY}/payments:pr-123"
    began = time.monotonic()
    first = pull_in_background(tmp_path, image, env)
    time.sleep(0.4)
    second_began = time.monotonic()
    second = run(["docker", "pull", image], **env)
    second_ended = time.monotonic()
    first_out, first_err = first.communicate(timeout=30)
    want = f"pr-123: Pulling from payments\nDigest: {FAKE_DIGEST}\nStatus: Downloaded newer image for {image}\n{image}\n"
    assert (first.returncode, first_out) == (0, want), first_err
    assert (second.returncode, second.stdout) == (0, want), second.stderr
    took = second_ended - second_began
    assert second_ended - began >= 1.0, f"the second pull was done {second_ended - began:.2f}s after the first began"
    assert took < 0.9, f"the second pull started 0.4 s into a 1 s download, yet took {took:.2f}s: it downloaded again"
    assert (tmp_path / "docker-images").read_text() == f"{image}\n"
    assert markers(tmp_path) == []
    assert run(["docker", "image", "inspect", image]).returncode == 0
    # Once that download is over, a pull only checks the manifest, as before.
    again_began = time.monotonic()
    again = run(["docker", "pull", image], **env)
    again_took = time.monotonic() - again_began
    assert again.returncode == 0 and again.stdout == want.replace("Downloaded newer image", "Image is up to date")
    assert 0.2 <= again_took < 0.6, again_took
    assert (tmp_path / "docker-images").read_text() == f"{image}\n"


def test_a_failed_pull_leaves_nothing_to_wait_for(run: Any, tmp_path: Path) -> None:
    """Pulls that fail (no login, no such image) download nothing: another pull of the
    same image at the same time fails as well, and the instance has no image."""
    env = {**logged_in_to_ecr(tmp_path), **PULLS}
    (tmp_path / "docker-logins").unlink()
    image = f"{REGISTRY}/payments:pr-123"
    for failing in (image, f"{REGISTRY}/payments:missing"):
        if failing != image:
            (tmp_path / "docker-logins").write_text(f"{REGISTRY}\n")
        first = pull_in_background(tmp_path, failing, env)
        second = run(["docker", "pull", failing], **env)
        first.communicate(timeout=30)
        assert (first.returncode, second.returncode) == (1, 1), failing
        assert markers(tmp_path) == [], failing
        assert run(["docker", "image", "inspect", failing]).returncode == 1
    assert not (tmp_path / "docker-images").exists()
    assert len((tmp_path / "pull-failures").read_text().splitlines()) == 4


def test_a_pull_killed_mid_download_is_not_waited_for(run: Any, tmp_path: Path) -> None:
    """A pull killed while downloading leaves its marker; once its download would have
    ended, the marker is ignored: the next pull downloads the whole image."""
    env = {"FEATUREENV_SIM_DOCKER_PULL_SECONDS": "0.5"}
    image = "docker.io/library/nginx:1.27"
    killed = pull_in_background(tmp_path, image, env, start_new_session=True)
    deadline = time.monotonic() + 5
    while not markers(tmp_path):
        assert time.monotonic() < deadline, "the pull never marked its download"
        time.sleep(0.02)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.communicate(timeout=30)
    time.sleep(0.6)
    assert markers(tmp_path) != [], "the killed pull's marker stays"
    took = timed(run, ["docker", "pull", image], env)
    assert 0.5 <= took < 0.9, took
    assert (tmp_path / "docker-images").read_text() == f"{image}\n"
    assert markers(tmp_path) == []


def test_pulls_of_different_images_do_not_wait_for_each_other(run: Any, tmp_path: Path) -> None:
    """Only the same reference is the same transfer, also for references whose file
    names would be alike if '/' were only replaced by '_'."""
    env = {"FEATUREENV_SIM_DOCKER_PULL_SECONDS": "0.5"}
    one, other = "registry.example/x/1:a", "registry.example/x_1:a"
    first = pull_in_background(tmp_path, one, env)
    time.sleep(0.2)
    took = timed(run, ["docker", "pull", other], env)
    assert first.wait(timeout=30) == 0
    assert 0.5 <= took < 0.9, took
    assert sorted((tmp_path / "docker-images").read_text().splitlines()) == sorted([one, other])
