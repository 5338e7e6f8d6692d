"""Reading the operator image's OCI archive (dist/, written by `make image`) without the
tools that built it: the tar and JSON of the OCI image layout, read with the standard
library, and skopeo. Also the repository's own statements about the image (Cargo.toml,
the chart, the Dockerfile), parsed simply. No I/O beyond reading files.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import tarfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "featureenv-operator"
DOCKERFILE = REPO / "Dockerfile"
NONROOT = 65532


def cargo_package() -> dict[str, Any]:
    return tomllib.loads((REPO / "Cargo.toml").read_text())["package"]


def cargo_version() -> str:
    return cargo_package()["version"]


def cargo_license() -> str:
    return tomllib.loads((REPO / "Cargo.toml").read_text())["workspace"]["package"]["license"]


def chart_metadata() -> dict[str, Any]:
    return yaml.safe_load((CHART / "Chart.yaml").read_text())


def chart_values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def archive_path() -> Path:
    return REPO / "dist" / f"featureenv-operator-{cargo_version()}.oci.tar"


@dataclass
class Layout:
    """An OCI image layout read from an archive: index, one manifest, its config."""

    archive: Path
    index: dict[str, Any]
    manifest: dict[str, Any]
    config: dict[str, Any]
    blobs: dict[str, bytes] = field(repr=False)  # digest -> content, every blob in the archive

    @property
    def descriptor(self) -> dict[str, Any]:
        (descriptor,) = self.index["manifests"]
        return descriptor

    def blob(self, digest: str) -> bytes:
        return self.blobs[digest]


def read_layout(archive: Path) -> Layout:
    with tarfile.open(archive) as tar:
        members = {m.name.removeprefix("./"): m for m in tar.getmembers() if m.isfile()}

        def read(name: str) -> bytes:
            f = tar.extractfile(members[name])
            assert f is not None
            return f.read()

        assert json.loads(read("oci-layout")) == {"imageLayoutVersion": "1.0.0"}
        index = json.loads(read("index.json"))
        blobs = {
            "sha256:" + name.removeprefix("blobs/sha256/"): read(name)
            for name in members
            if name.startswith("blobs/sha256/")
        }
    assert len(index["manifests"]) == 1, f"expected one image in the archive, got {index['manifests']}"
    manifest = json.loads(blobs[index["manifests"][0]["digest"]])
    config = json.loads(blobs[manifest["config"]["digest"]])
    return Layout(archive, index, manifest, config, blobs)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Stage:
    """One build stage of a Dockerfile: its base and its instructions, in order."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"no {keyword} in the stage FROM {self.base}"
        return found[-1]


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def runtime(self) -> Stage:
        return self.stages[-1]

    def arg_defaults(self, stage: Stage) -> dict[str, str]:
        defaults = dict(self.global_args)
        for args in stage.all("ARG"):
            name, _, default = args.partition("=")
            defaults[name.strip()] = default.strip().strip('"')
        return defaults

    def labels(self, stage: Stage, build_args: dict[str, str] | None = None) -> dict[str, str]:
        """The stage's labels with `${ARG}` replaced by `build_args` or the ARG default."""
        values = {**self.arg_defaults(stage), **(build_args or {})}
        labels: dict[str, str] = {}
        for args in stage.all("LABEL"):
            for token in shlex.split(args):
                key, sep, value = token.partition("=")
                assert sep, f"LABEL {token!r} is not key=value"
                labels[key] = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values[m.group(1) or m.group(2)], value)
        return labels


def parse_dockerfile(text: str) -> Dockerfile:
    """The instructions of a Dockerfile: comments dropped, continuation lines joined."""
    logical: list[str] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append((current + stripped).strip())
        current = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in filter(None, logical):
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif not stages:
            assert keyword == "ARG", f"only ARG may precede the first FROM, not {keyword}"
            name, _, default = args.partition("=")
            global_args[name] = default
        else:
            stages[-1].instructions.append((keyword, args))
    return Dockerfile(global_args, stages)


def exec_form(args: str) -> list[str]:
    """ENTRYPOINT/CMD in exec (JSON) form; the shell form would need a shell the image lacks."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value
