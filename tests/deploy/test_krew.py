"""deploy/krew: the kubectl plugin's krew manifest and archive, checked by krew itself.

hack/plugin-dist.sh packs a binary (FEATUREENV_PLUGIN_BIN, default the debug build that
`make build` leaves in the Cargo target directory: `make test` builds it first; a missing
one fails here, never skips) into the release archive and renders the manifest. Proven
here: krew's own validate-krew-manifest (sigs.k8s.io/krew v0.4.3, hack/krew-tools.sh)
accepts the manifest and, served from a local 127.0.0.1 server, installs the plugin from
its uri with `kubectl krew install` and finds the license in it (and refuses a wrong
sha256, so the install does check); the release manifest points at the project's GitHub
release; `kubectl krew install --manifest --archive`, as README.md tells users, installs a
plugin kubectl runs; the version is Cargo.toml's, the sha256 the archive's, and the
archive holds the executable, LICENSE and the README, the same bytes on every run.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import threading
import tomllib
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR") or Path.home() / ".cache/featureenv-operator/target")
PLUGIN_BIN = Path(os.environ.get("FEATUREENV_PLUGIN_BIN") or TARGET / "debug" / "kubectl-featureenv")
VERSION = tomllib.loads((REPO / "Cargo.toml").read_text())["package"]["version"]
ARCHIVE_NAME = f"kubectl-featureenv-v{VERSION}-linux-amd64.tar.gz"
CHART_HOME = yaml.safe_load((REPO / "charts/featureenv-operator/Chart.yaml").read_text())["home"]


def tool_dir(script: str) -> Path:
    """The directory a hack/ finder script prints (it builds what is missing)."""
    out = subprocess.run([str(REPO / "hack" / script)], capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0, f"hack/{script} failed:\n{out.stderr}"
    return Path(out.stdout.strip().splitlines()[-1])


@dataclass
class Dist:
    archive: Path
    manifest: Path

    def spec(self) -> dict[str, Any]:
        return yaml.safe_load(self.manifest.read_text())["spec"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the binary to pack, taken once: a build running meanwhile (make build
    in another checkout sharing the target directory) cannot change it under the tests."""
    assert PLUGIN_BIN.is_file() and os.access(PLUGIN_BIN, os.X_OK), (
        f"{PLUGIN_BIN} is missing: build the plugin first (cargo build --bin kubectl-featureenv, which make build "
        "does), or point FEATUREENV_PLUGIN_BIN at a kubectl-featureenv binary"
    )
    copy = tmp_path_factory.mktemp("bin") / "kubectl-featureenv"
    shutil.copy2(PLUGIN_BIN, copy)
    return copy


def pack(binary: Path, out: Path, *extra: str) -> Dist:
    result = subprocess.run([str(REPO / "hack/plugin-dist.sh"), "--bin", str(binary), "--out", str(out), *extra],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"hack/plugin-dist.sh failed:\n{result.stderr}"
    archive, manifest = (Path(line) for line in result.stdout.split())
    assert (archive, manifest) == (out / ARCHIVE_NAME, out / "featureenv.yaml")
    return Dist(archive, manifest)


@pytest.fixture(scope="module")
def release(binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Dist:
    """What `make plugin-dist` writes to dist/ (uri: the GitHub release)."""
    return pack(binary, tmp_path_factory.mktemp("dist"))


@dataclass
class Served:
    dist: Dist
    requests: list[str]


@pytest.fixture(scope="module")
def served(binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The same, with the archive on a 127.0.0.1 server and the manifest's uri pointing
    there, so krew's validator can run its install step (it downloads the uri)."""
    root = tmp_path_factory.mktemp("served")
    requests: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - record, do not print
            requests.append(self.path)

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield Served(pack(binary, root, "--release-url", f"http://127.0.0.1:{server.server_address[1]}"), requests)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def path_with_krew() -> str:
    """PATH with krew's tools and kubectl (the validator runs `kubectl krew install`)."""
    return os.pathsep.join([str(tool_dir("krew-tools.sh")), str(tool_dir("k8s-binaries.sh")), os.environ["PATH"]])


def validate(manifest: Path, path: str, *flags: str) -> subprocess.CompletedProcess[str]:
    validator = shutil.which("validate-krew-manifest", path=path)
    assert validator, f"validate-krew-manifest not on {path}"
    return subprocess.run([validator, "-manifest", str(manifest), *flags], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PATH": path})


def verdict(result: subprocess.CompletedProcess[str]) -> str:
    """The validator's output without the goroutine dump klog adds to a fatal error."""
    return (result.stdout + result.stderr).split("\ngoroutine ", 1)[0]


# --- krew's validator ------------------------------------------------------------------


def test_krews_validator_installs_the_plugin_from_its_uri(served: Served, path_with_krew: str) -> None:
    result = validate(served.dist.manifest, path_with_krew)
    assert result.returncode == 0, verdict(result)
    output = result.stdout + result.stderr
    assert "structural validation OK" in output
    assert "all 1 spec.platforms installed fine" in output
    assert f"/{ARCHIVE_NAME}" in served.requests, "the install downloaded the archive from the manifest's uri"


def test_krews_validator_refuses_a_wrong_sha256(served: Served, path_with_krew: str, tmp_path: Path) -> None:
    # Proves the install step checks the archive against the manifest (and so that the
    # test above would fail on a stale sha256).
    text = served.dist.manifest.read_text()
    sha = served.dist.spec()["platforms"][0]["sha256"]
    wrong = tmp_path / "featureenv.yaml"
    wrong.write_text(text.replace(sha, hashlib.sha256(b"another archive").hexdigest()))
    result = validate(wrong, path_with_krew)
    assert result.returncode != 0
    assert "checksum does not match" in verdict(result), verdict(result)


def test_the_release_manifest_is_valid_and_points_at_the_github_release(release: Dist, path_with_krew: str) -> None:
    # Its install step would download from GitHub, which this machine cannot reach.
    result = validate(release.manifest, path_with_krew, "-skip-install")
    assert result.returncode == 0, verdict(result)
    spec = release.spec()
    assert spec["homepage"] == CHART_HOME == "https://github.com/featureenv/featureenv-operator"
    assert spec["platforms"][0]["uri"] == f"{CHART_HOME}/releases/download/v{VERSION}/{ARCHIVE_NAME}"
    assert spec["platforms"][0]["selector"] == {"matchLabels": {"os": "linux", "arch": "amd64"}}
    assert spec["platforms"][0]["bin"] == "kubectl-featureenv"
    assert not re.search(r"@[A-Z_]+@", release.manifest.read_text()), "a placeholder left unrendered"


def test_krew_installs_from_the_archive_as_the_readme_says(
    binary: Path, release: Dist, path_with_krew: str, tmp_path: Path
) -> None:
    env = {**os.environ, "PATH": path_with_krew, "KREW_ROOT": str(tmp_path / "krew"), "KREW_NO_UPGRADE_CHECK": "1"}
    result = subprocess.run(["kubectl", "krew", "install", f"--manifest={release.manifest}",
                             f"--archive={release.archive}"], capture_output=True, text=True, timeout=120, env=env,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    installed = tmp_path / "krew" / "bin" / "kubectl-featureenv"
    assert installed.resolve().read_bytes() == binary.read_bytes()
    assert os.access(installed, os.X_OK)
    # kubectl finds it on PATH and runs it as `kubectl featureenv`.
    env["PATH"] = f"{installed.parent}{os.pathsep}{path_with_krew}"
    run = subprocess.run(["kubectl", "featureenv", "--help"], capture_output=True, text=True, timeout=60, env=env)
    assert run.returncode == 0, run.stderr


# --- the manifest and the archive ------------------------------------------------------


def test_the_version_is_cargos(release: Dist) -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", VERSION), VERSION
    assert release.spec()["version"] == f"v{VERSION}"
    assert release.archive.name == ARCHIVE_NAME


def test_the_sha256_is_the_archives(release: Dist, served: Served) -> None:
    for dist in (release, served.dist):
        digest = hashlib.sha256(dist.archive.read_bytes()).hexdigest()
        assert dist.spec()["platforms"][0]["sha256"] == digest, dist.manifest


def test_the_archive_holds_the_executable_the_license_and_the_readme(binary: Path, release: Dist) -> None:
    with tarfile.open(release.archive, "r:gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert sorted(members) == ["LICENSE", "README.md", "kubectl-featureenv"]
        executable = members["kubectl-featureenv"]
        assert executable.isreg() and executable.mode & 0o111 == 0o111, oct(executable.mode)
        assert (executable.uid, executable.gid) == (0, 0)

        def content(name: str) -> bytes:
            f = tar.extractfile(members[name])
            assert f is not None
            return f.read()

        assert content("kubectl-featureenv") == binary.read_bytes()
        assert content("LICENSE") == (REPO / "LICENSE").read_bytes()
        assert content("README.md") == (REPO / "deploy/krew/README.md").read_bytes()
    files = release.spec()["platforms"][0]["files"]
    assert sorted(f["from"] for f in files) == sorted(members), "the manifest extracts every file packed"


def test_the_archive_is_reproducible(binary: Path, release: Dist, tmp_path: Path) -> None:
    # Every time in it is fixed: the members' mtimes are the last commit's (or
    # SOURCE_DATE_EPOCH), and the gzip header carries no name and no time (gzip -n).
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH") or subprocess.run(
        ["git", "-C", str(REPO), "log", "-1", "--format=%ct"], capture_output=True, text=True, check=True).stdout)
    with tarfile.open(release.archive, "r:gz") as tar:
        assert {m.name: m.mtime for m in tar.getmembers()} == dict.fromkeys(
            ["LICENSE", "README.md", "kubectl-featureenv"], epoch)
    header = release.archive.read_bytes()[:10]
    assert header[3] & 0x08 == 0 and header[4:8] == b"\0\0\0\0", "gzip header with a name or a time"
    again = pack(binary, tmp_path)
    assert again.archive.read_bytes() == release.archive.read_bytes()
    assert again.manifest.read_text() == release.manifest.read_text()
