"""Fixtures for the image tests: the OCI archive `make image` wrote, read and unpacked.

The archive must already exist: `make test-python` (and so `make test`) builds it first
with `make image`. A missing archive fails the tests rather than skipping them.
FEATUREENV_IMAGE_ARCHIVE points them at another archive (a broken one, to see them fail).
"""

from __future__ import annotations

import os
import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from imagelib import Layout, archive_path, read_layout  # noqa: E402


@pytest.fixture(scope="session")
def archive() -> Path:
    path = Path(os.environ.get("FEATUREENV_IMAGE_ARCHIVE") or archive_path())
    if not path.is_file():
        pytest.fail(f"no image archive at {path}: run `make image` (make test-python does)")
    return path


@pytest.fixture(scope="session")
def layout(archive: Path) -> Layout:
    return read_layout(archive)


@pytest.fixture(scope="session")
def layer_members(layout: Layout, tmp_path_factory: pytest.TempPathFactory) -> list[list[tarfile.TarInfo]]:
    """Each layer's entries, read with Python's tarfile (strict about truncated archives)."""
    members = []
    for descriptor in layout.manifest["layers"]:
        path = tmp_path_factory.mktemp("layer") / "layer.tar.gz"
        path.write_bytes(layout.blob(descriptor["digest"]))
        with tarfile.open(path, "r:gz") as tar:
            members.append(tar.getmembers())
    return members


@pytest.fixture(scope="session")
def rootfs(layout: Layout, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image's root filesystem: its layers unpacked in order."""
    root = tmp_path_factory.mktemp("rootfs")
    for descriptor in layout.manifest["layers"]:
        path = root.parent / "layer.tar.gz"
        path.write_bytes(layout.blob(descriptor["digest"]))
        with tarfile.open(path, "r:gz") as tar:
            whiteouts = [m.name for m in tar.getmembers() if Path(m.name).name.startswith(".wh.")]
            assert not whiteouts, f"this reader does not apply whiteouts, and the image should need none: {whiteouts}"
            tar.extractall(root, filter="tar")
        path.unlink()
    return root
