"""The operator image `make image` writes (dist/featureenv-operator-<version>.oci.tar),
inspected with tools other than its builder: Python's tarfile and json on the OCI layout,
skopeo, GNU tar, and the binary itself run from the unpacked root filesystem.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import struct
import subprocess
import tarfile
from datetime import datetime
from pathlib import Path

import pytest

from imagelib import NONROOT, REPO, Layout, cargo_license, cargo_version, chart_metadata, sha256

# The compressed layers. Measured 2026-12-03: 17.7 MiB with the release binary (52.9 MiB),
# of which the libraries, CA bundle and package metadata are about 1.6 MiB. A quarter of
# headroom for dependencies to grow; an image of the debug binary (28.7 MiB) fails it.
SIZE_BUDGET_MIB = 22

LABELS = "org.opencontainers.image."


def run(*args: str | Path, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=60, **kwargs)


# ---------------------------------------------------------------- the archive itself


def test_every_blob_matches_its_digest_and_descriptor(layout: Layout) -> None:
    descriptors = [layout.descriptor, layout.manifest["config"], *layout.manifest["layers"]]
    for descriptor in descriptors:
        blob = layout.blob(descriptor["digest"])
        assert sha256(blob) == descriptor["digest"]
        assert len(blob) == descriptor["size"], descriptor
    assert layout.descriptor["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert layout.manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    assert [d["mediaType"] for d in layout.manifest["layers"]] == ["application/vnd.oci.image.layer.v1.tar+gzip"]
    # No stray blobs: the layout holds this image and nothing else.
    assert set(layout.blobs) == {d["digest"] for d in descriptors}


def test_every_layer_diff_id_is_its_uncompressed_digest(layout: Layout) -> None:
    diff_ids = [sha256(gzip.decompress(layout.blob(d["digest"]))) for d in layout.manifest["layers"]]
    assert layout.config["rootfs"] == {"type": "layers", "diff_ids": diff_ids}


def test_skopeo_reads_the_archive_as_the_same_image(archive: Path, layout: Layout) -> None:
    inspected = run("skopeo", "inspect", f"oci-archive:{archive}")
    assert inspected.returncode == 0, inspected.stderr
    assert json.loads(inspected.stdout)["Digest"] == layout.descriptor["digest"]
    config = run("skopeo", "inspect", "--config", f"oci-archive:{archive}")
    assert config.returncode == 0, config.stderr
    assert json.loads(config.stdout) == layout.config


def test_gnu_tar_reads_every_layer_to_its_end(layout: Layout, tmp_path: Path) -> None:
    # umoci 0.4.7's `insert` wrote layers without the end-of-archive blocks, which GNU
    # tar (and the scanners that use it) reject; hack/image.sh avoids it.
    for descriptor in layout.manifest["layers"]:
        path = tmp_path / "layer.tar.gz"
        path.write_bytes(layout.blob(descriptor["digest"]))
        listed = run("tar", "-tzf", path)
        assert listed.returncode == 0, listed.stderr


def test_compressed_size_within_budget(layout: Layout) -> None:
    size = sum(d["size"] for d in layout.manifest["layers"])
    assert size <= SIZE_BUDGET_MIB * 2**20, f"layers are {size / 2**20:.1f} MiB, budget {SIZE_BUDGET_MIB} MiB"


# ---------------------------------------------------------------- configuration


def test_runs_as_numeric_non_root_user_the_chart_runs_as(layout: Layout) -> None:
    # Numeric, so the kubelet can enforce runAsNonRoot without reading /etc/passwd.
    assert layout.config["config"]["User"] == f"{NONROOT}:{NONROOT}"


def test_entrypoint_is_the_binary_and_command_runs_the_operator(layout: Layout) -> None:
    config = layout.config["config"]
    assert config["Entrypoint"] == ["/featureenv-operator"]
    assert config["Cmd"] == ["run"]
    assert config["ExposedPorts"] == {"8080/tcp": {}}
    assert "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" in config["Env"]
    assert layout.config["os"] == "linux" and layout.config["architecture"] == "amd64"


def test_oci_labels(layout: Layout) -> None:
    labels = dict(layout.config["config"]["Labels"])
    revision = labels.pop(LABELS + "revision")
    assert labels == {
        LABELS + "title": "featureenv-operator",
        LABELS + "description": "Kubernetes operator that provisions private full-stack feature environments on EC2 and RDS",
        LABELS + "version": cargo_version(),
        LABELS + "source": chart_metadata()["home"],
        LABELS + "licenses": cargo_license(),
    }
    assert re.fullmatch(r"[0-9a-f]{40}", revision), revision
    known = run("git", "-C", REPO, "cat-file", "-e", f"{revision}^{{commit}}")
    assert known.returncode == 0, f"revision {revision} is not a commit of this repository"


def test_tagged_with_the_version_and_named_for_the_registry(layout: Layout) -> None:
    annotations = layout.descriptor["annotations"]
    assert annotations["org.opencontainers.image.ref.name"] == cargo_version()
    assert annotations["io.containerd.image.name"] == f"ghcr.io/featureenv/featureenv-operator:{cargo_version()}"


# ---------------------------------------------------------------- root filesystem


def test_files_are_root_owned_and_only_home_and_tmp_writable(layer_members) -> None:
    entries = {m.name.removeprefix("./").rstrip("/") or ".": m for layer in layer_members for m in layer}
    assert "featureenv-operator" in entries
    for name, m in entries.items():
        if name == "home/nonroot":
            assert (m.uid, m.gid, m.mode) == (NONROOT, NONROOT, 0o700)
            continue
        assert (m.uid, m.gid) == (0, 0), f"{name} is owned by {m.uid}:{m.gid}"
        assert not m.mode & 0o6000, f"{name} is setuid/setgid"
        if name == "tmp":
            assert m.mode == 0o1777
        else:
            assert not m.mode & 0o022, f"{name} is writable by others ({oct(m.mode)})"
    binary = entries["featureenv-operator"]
    assert binary.isfile() and binary.mode == 0o755


def test_passwd_and_group_know_nonroot(rootfs: Path) -> None:
    passwd = {line.split(":")[0]: line.split(":") for line in (rootfs / "etc/passwd").read_text().splitlines()}
    group = {line.split(":")[0]: line.split(":") for line in (rootfs / "etc/group").read_text().splitlines()}
    assert passwd["nonroot"][2:4] == [str(NONROOT), str(NONROOT)]
    assert passwd["nonroot"][5] == "/home/nonroot" and (rootfs / "home/nonroot").is_dir()
    assert passwd["root"][2:4] == ["0", "0"]
    assert group["nonroot"][2] == str(NONROOT)


def test_ca_bundle_present(rootfs: Path) -> None:
    bundle = (rootfs / "etc/ssl/certs/ca-certificates.crt").read_text()
    # Debian's bundle holds well over a hundred roots; a stub or an empty file fails.
    assert bundle.count("-----BEGIN CERTIFICATE-----") >= 100


def test_library_packages_are_recorded_for_scanners(rootfs: Path) -> None:
    status = {p.name: p.read_text() for p in (rootfs / "var/lib/dpkg/status.d").iterdir()}
    assert set(status) == {"libc6", "libgcc-s1", "ca-certificates"}
    for name, text in status.items():
        assert f"Package: {name}\n" in text and "\nVersion: " in text
        assert (rootfs / "usr/share/doc" / name / "copyright").is_file()


def elf_interpreter(binary: Path) -> str:
    """PT_INTERP of a 64-bit little-endian ELF executable."""
    data = binary.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "not a 64-bit little-endian ELF"
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
        if p_type == 3:  # PT_INTERP
            return data[p_offset : p_offset + p_filesz].rstrip(b"\0").decode()
    raise AssertionError("no PT_INTERP: the binary is static")


def test_binary_resolves_every_library_inside_the_image(rootfs: Path) -> None:
    interpreter = elf_interpreter(rootfs / "featureenv-operator")
    loader = rootfs / interpreter.lstrip("/")
    assert loader.is_file(), f"the binary's interpreter {interpreter} is not in the image"
    libdir = rootfs / "lib/x86_64-linux-gnu"
    # The image's own loader, told to look only in the image; --list shows where each
    # library was found, so one taken from the host (a default path) shows here.
    listed = run(loader, "--inhibit-cache", "--library-path", libdir, "--list", rootfs / "featureenv-operator")
    assert listed.returncode == 0, listed.stderr
    resolved = re.findall(r"=> (\S+) \(0x", listed.stdout)
    assert {Path(p).name for p in resolved} == {"libc.so.6", "libm.so.6", "libgcc_s.so.1", "ld-linux-x86-64.so.2"}, (
        listed.stdout
    )
    outside = [p for p in resolved if not Path(p).is_relative_to(rootfs)]
    assert not outside, f"libraries found outside the image: {outside}"
    assert "not found" not in listed.stdout


def test_binary_runs_with_the_image_loader_and_libraries(rootfs: Path) -> None:
    loader = rootfs / elf_interpreter(rootfs / "featureenv-operator").lstrip("/")
    # The loader still falls back to the host's default paths for a library missing from
    # --library-path; its debug output names every library it loaded, all must be ours.
    version = run(loader, "--inhibit-cache", "--library-path", rootfs / "lib/x86_64-linux-gnu",
                  rootfs / "featureenv-operator", "version", env={"LD_DEBUG": "libs"})
    assert version.returncode == 0, version.stderr
    assert version.stdout == f"featureenv-operator {cargo_version()}\n"
    loaded = re.findall(r"calling init: (\S+)", version.stderr)
    assert len(loaded) >= 3, version.stderr
    outside = [p for p in loaded if not Path(p).is_relative_to(rootfs)]
    assert not outside, f"libraries loaded from outside the image: {outside}"


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("chroot"), reason="chroot needs root")
def test_binary_runs_chrooted_in_the_image_as_its_user(rootfs: Path, layout: Layout) -> None:
    # Nothing from the host is visible in the chroot, so this is the image as a container
    # runtime starts it: its user, its entrypoint, its environment, no shell.
    config = layout.config["config"]
    user = config["User"]
    argv = [*config["Entrypoint"]]

    def in_image(*args: str) -> subprocess.CompletedProcess[str]:
        env = dict(e.split("=", 1) for e in config["Env"])
        return run("chroot", f"--userspec={user}", rootfs, *argv, *args, env=env)

    version = in_image("version")
    assert version.returncode == 0, version.stderr
    assert version.stdout == f"featureenv-operator {cargo_version()}\n"
    # The default command parses (`--help` stops before it needs a cluster).
    run_help = in_image(*config["Cmd"], "--help")
    assert run_help.returncode == 0, run_help.stderr
    assert "--cluster-id" in run_help.stdout


def test_rebuilding_from_the_same_binary_gives_the_same_layer(
    rootfs: Path, layout: Layout, tmp_path: Path
) -> None:
    # hack/image.sh is reproducible: same binary, same timestamp -> same layer digest.
    epoch = int(datetime.fromisoformat(layout.config["created"].replace("Z", "+00:00")).timestamp())
    binary = tmp_path / "featureenv-operator"
    shutil.copy(rootfs / "featureenv-operator", binary)
    env = {**os.environ, "OPERATOR_BIN": str(binary), "DIST": str(tmp_path / "dist"),
           "SOURCE_DATE_EPOCH": str(epoch)}
    built = run(REPO / "hack/image.sh", env=env)
    assert built.returncode == 0, built.stderr
    (again,) = (tmp_path / "dist").glob("*.oci.tar")
    with tarfile.open(again) as tar:
        index = json.load(tar.extractfile("./index.json"))  # type: ignore[arg-type]
        manifest = json.load(tar.extractfile("./blobs/sha256/" + index["manifests"][0]["digest"][7:]))  # type: ignore[arg-type]
    assert manifest["layers"] == layout.manifest["layers"]
