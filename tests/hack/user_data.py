"""The operator's real bootstrap script, rendered in Python for the boot simulator tests.

Mirrors src/bootstrap.rs `render_user_data` (cargo may not run here): the quoted
`readonly` declarations are built the same way, and the fixed body (`BODY`), the log
file and the tag names are read from the Rust sources, so a change to the script is
what these tests run. If render_user_data's declarations change, change them here too;
`test_rendering_mirrors_the_rust_unit_test_expectations` checks the shape.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BOOTSTRAP_RS = REPO / "src" / "bootstrap.rs"
CLOUD_RS = REPO / "src" / "cloud" / "mod.rs"


def _rust_str_const(source: str, name: str) -> str:
    m = re.search(rf'pub const {name}: &str = "([^"]*)";', source)
    if not m:
        raise AssertionError(f"const {name} not found")
    return m.group(1)


def body() -> str:
    m = re.search(r'const BODY: &str = r#"(.*?)"#;', BOOTSTRAP_RS.read_text(), re.S)
    if not m:
        raise AssertionError("BODY not found in src/bootstrap.rs")
    return m.group(1)


def log_file() -> str:
    return _rust_str_const(BOOTSTRAP_RS.read_text(), "LOG_FILE")


def shell_quote(value: str) -> str:
    """src/bootstrap.rs shell_quote: one bash word in single quotes."""
    return "'" + value.replace("'", "'\\''") + "'"


def minikube_addon(addon: str) -> str:
    """src/bootstrap.rs minikube_addon."""
    return {"logs": "logviewer", "log-viewer": "logviewer"}.get(addon, addon)


def ecr_registry(image: str) -> tuple[str, str] | None:
    """(host, region) for a private ECR image (src/api/image_ref.rs ecr_repository)."""
    host, sep, name = image.partition("/")
    if not sep or not name:
        return None
    labels = host.split(".")
    if len(labels) < 6 or labels[1] != "dkr" or labels[2] not in ("ecr", "ecr-fips"):
        return None
    account, region, rest = labels[0], labels[3], labels[6:]
    if labels[4:6] != ["amazonaws", "com"] or rest not in ([], ["cn"]):
        return None
    if len(account) != 12 or not account.isdigit() or not region:
        return None
    return host, region


@dataclass
class Spec:
    environment: str
    region: str
    services: list[tuple[str, str]]  # (name, image)
    addons: list[str] = field(default_factory=list)
    database_parameter: str | None = None
    database_wait_seconds: int = 1200


def render_user_data(spec: Spec) -> str:
    """As src/bootstrap.rs render_user_data."""
    cloud = CLOUD_RS.read_text()
    registries = sorted({r for _, image in spec.services if (r := ecr_registry(image))})

    def array(name: str, values: list[str]) -> str:
        return f"readonly -a {name}=({' '.join(shell_quote(v) for v in values)})\n"

    script = "#!/bin/bash\n"
    script += "# featureenv-operator bootstrap. Generated; carries no secrets.\n"
    script += "set -Eeuo pipefail\n\n"
    script += f"readonly ENVIRONMENT={shell_quote(spec.environment)}\n"
    script += f"readonly REGION={shell_quote(spec.region)}\n"
    script += f"readonly DATABASE_PARAMETER={shell_quote(spec.database_parameter or '')}\n"
    script += f"readonly DATABASE_WAIT_SECONDS={spec.database_wait_seconds}\n"
    script += f"readonly DATABASE_SECRET={shell_quote(_rust_str_const(BOOTSTRAP_RS.read_text(), 'DATABASE_SECRET'))}\n"
    script += f"readonly DATABASE_SECRET_KEY={shell_quote(_rust_str_const(BOOTSTRAP_RS.read_text(), 'DATABASE_SECRET_KEY'))}\n"
    script += f"readonly LOG_FILE={shell_quote(log_file())}\n"
    script += f"readonly BOOTSTRAP_TAG={shell_quote(_rust_str_const(cloud, 'BOOTSTRAP'))}\n"
    script += f"readonly BOOTSTRAP_COMPLETE={shell_quote(_rust_str_const(cloud, 'BOOTSTRAP_COMPLETE'))}\n"
    script += f"readonly BOOTSTRAP_FAILED={shell_quote(_rust_str_const(cloud, 'BOOTSTRAP_FAILED'))}\n"
    script += array("SERVICE_NAMES", [n for n, _ in spec.services])
    script += array("SERVICE_IMAGES", [i for _, i in spec.services])
    script += array("ADDONS", [minikube_addon(a) for a in spec.addons])
    script += array("ECR_HOSTS", [h for h, _ in registries])
    script += array("ECR_REGIONS", [r for _, r in registries])
    script += body()
    return script
