"""What the repository says about the image agrees with the image `make image` built:
the Dockerfile (user, entrypoint, command, port, labels; linted by hadolint), the chart's
default image reference and security context, Cargo's version.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from imagelib import (
    CHART,
    DOCKERFILE,
    NONROOT,
    REPO,
    Layout,
    cargo_version,
    chart_metadata,
    chart_values,
    exec_form,
    parse_dockerfile,
)

sys.path.insert(0, str(REPO / "tests" / "chart"))

from chartlib import BASE_VALUES, NAMESPACE, RELEASE, find, helm, parse_manifests  # noqa: E402


@pytest.fixture(scope="module")
def deployment() -> dict[str, Any]:
    """The chart rendered with its defaults (and the one required value) by real Helm."""
    with helm.Chart.load(str(CHART)) as chart:
        docs = parse_manifests(chart.render(BASE_VALUES, name=RELEASE, namespace=NAMESPACE, is_install=True))
    return find(docs, "Deployment")


def operator_container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


# ---------------------------------------------------------------- the chart


def test_chart_default_image_is_the_name_make_image_gives(layout: Layout, deployment: dict[str, Any]) -> None:
    assert chart_metadata()["appVersion"] == cargo_version()
    image = operator_container(deployment)["image"]
    assert image == layout.descriptor["annotations"]["io.containerd.image.name"]
    assert image == f"{chart_values()['image']['repository']}:{layout.descriptor['annotations']['org.opencontainers.image.ref.name']}"


def test_chart_runs_the_image_as_its_user_with_its_command(layout: Layout, deployment: dict[str, Any]) -> None:
    config = layout.config["config"]
    pod = deployment["spec"]["template"]["spec"]
    container = operator_container(deployment)
    uid, gid = config["User"].split(":")
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (int(uid), int(gid))
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # The chart sets args, not command: the image's entrypoint runs them.
    assert "command" not in container
    assert container["args"] == config["Cmd"]
    (port,) = container["ports"]
    assert config["ExposedPorts"] == {f"{port['containerPort']}/{port['protocol'].lower()}": {}}


# ---------------------------------------------------------------- the Dockerfile


def test_dockerfile_runtime_matches_the_archive(layout: Layout) -> None:
    dockerfile = parse_dockerfile(DOCKERFILE.read_text())
    runtime = dockerfile.runtime
    config = layout.config["config"]
    # The builder's glibc and the runtime's are one Debian release, hack/image.sh's host's.
    assert [s.base for s in dockerfile.stages] == ["rust:1.95-bookworm", "gcr.io/distroless/cc-debian12:nonroot"]
    assert runtime.last("USER") == config["User"] == f"{NONROOT}:{NONROOT}"
    assert exec_form(runtime.last("ENTRYPOINT")) == config["Entrypoint"]
    assert exec_form(runtime.last("CMD")) == config["Cmd"]
    assert {f"{p}/tcp" if "/" not in p else p: {} for p in runtime.last("EXPOSE").split()} == config["ExposedPorts"]
    assert runtime.last("COPY").split()[-1] == config["Entrypoint"][0]


def test_dockerfile_labels_match_the_archive(layout: Layout) -> None:
    dockerfile = parse_dockerfile(DOCKERFILE.read_text())
    labels = layout.config["config"]["Labels"]
    # REVISION is passed at build time (`--build-arg REVISION=$(git rev-parse HEAD)`);
    # VERSION's default must be Cargo's.
    assert dockerfile.arg_defaults(dockerfile.runtime)["VERSION"] == cargo_version()
    built = dockerfile.labels(dockerfile.runtime, {"REVISION": labels["org.opencontainers.image.revision"]})
    assert built == labels


def test_dockerfile_builds_the_binary_locked_in_release() -> None:
    builder = parse_dockerfile(DOCKERFILE.read_text()).stages[0]
    (build,) = [r for r in builder.all("RUN") if "cargo build" in r]
    assert "--release" in build and "--locked" in build and "--bin featureenv-operator" in build


def test_dockerignore_admits_what_the_builder_copies() -> None:
    dockerfile = parse_dockerfile(DOCKERFILE.read_text())
    copied = [a.split()[:-1] for a in dockerfile.stages[0].all("COPY")]
    admitted = {line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    assert {p.rstrip("/") for sources in copied for p in sources} == admitted


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["hadolint", "--no-color", "--config", str(REPO / ".hadolint.yaml"), str(path)],
                          capture_output=True, text=True, timeout=60)


def test_hadolint_passes() -> None:
    linted = hadolint(DOCKERFILE)
    assert linted.returncode == 0, linted.stdout + linted.stderr
    assert "2.15.1" in subprocess.run(["hadolint", "--version"], capture_output=True, text=True).stdout


@pytest.mark.parametrize(
    "change, rule",
    [
        (lambda t: t.replace('org.opencontainers.image.licenses="Apache-2.0"', 'org.opencontainers.image.licenses="Apache 2"'), "DL3054"),
        (lambda t: t.replace("FROM gcr.io/distroless/cc-debian12:nonroot", "FROM gcr.io/distroless/cc-debian12"), "DL3006"),
        (lambda t: t.replace('org.opencontainers.image.source="https://github.com/featureenv/featureenv-operator" \\\n', ""), "DL3049"),
    ],
    ids=["license-not-spdx", "untagged-base", "source-label-missing"],
)
def test_hadolint_fails_a_worse_dockerfile(tmp_path: Path, change, rule: str) -> None:
    # The lint and its label schema (.hadolint.yaml) are live: each change is caught.
    worse = change(DOCKERFILE.read_text())
    assert worse != DOCKERFILE.read_text()
    (tmp_path / "Dockerfile").write_text(worse)
    linted = hadolint(tmp_path / "Dockerfile")
    assert linted.returncode != 0 and rule in linted.stdout, linted.stdout
