"""The operator's real instance scripts, rendered in Python for the boot simulator tests.

Mirrors src/bootstrap.rs `render_user_data` (the bootstrap) and `render_update_script`
(a services update, sent with SSM Run Command) (cargo may not run here): the quoted
`readonly` declarations are built the same way, and the fixed parts (`PRELUDE`,
`START_MINIKUBE`, `DATABASE`, `BOOTSTRAP`, `UPDATE`), the log file and the tag names are read from the Rust sources,
so a change to the scripts is what these tests run. If the declarations change, change
them here too; `test_rendering_mirrors_the_rust_unit_test_expectations` checks the shape.
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


def fixed_part(name: str) -> str:
    """One of src/bootstrap.rs's fixed script parts (`const NAME: &str = r#"..."#;`)."""
    m = re.search(rf'const {name}: &str = r#"(.*?)"#;', BOOTSTRAP_RS.read_text(), re.S)
    if not m:
        raise AssertionError(f"{name} not found in src/bootstrap.rs")
    return m.group(1)


def log_file() -> str:
    return _rust_str_const(BOOTSTRAP_RS.read_text(), "LOG_FILE")


def sequence_file() -> str:
    return _rust_str_const(BOOTSTRAP_RS.read_text(), "SEQUENCE_FILE")


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


def _array(name: str, values: list[str]) -> str:
    return f"readonly -a {name}=({' '.join(shell_quote(v) for v in values)})\n"


def _header(task: str, environment: str, region: str, services: list[tuple[str, str]], sequence: int = 0) -> str:
    """As src/bootstrap.rs header."""
    registries = sorted({r for _, image in services if (r := ecr_registry(image))})
    script = "#!/bin/bash\n"
    script += f"# featureenv-operator {task}. Generated; carries no secrets.\n"
    script += "set -Eeuo pipefail\nshopt -s inherit_errexit\n\n"
    script += f"readonly TASK={shell_quote(task)}\n"
    script += f"readonly ENVIRONMENT={shell_quote(environment)}\n"
    script += f"readonly REGION={shell_quote(region)}\n"
    script += f"readonly LOG_FILE={shell_quote(log_file())}\n"
    script += f"readonly SEQUENCE_FILE={shell_quote(sequence_file())}\n"
    script += f"readonly SEQUENCE={sequence}\n"
    script += _array("SERVICE_NAMES", [n for n, _ in services])
    script += _array("SERVICE_IMAGES", [i for _, i in services])
    script += _array("ECR_HOSTS", [h for h, _ in registries])
    script += _array("ECR_REGIONS", [r for _, r in registries])
    return script


def _tag(name: str) -> str:
    return _rust_str_const(CLOUD_RS.read_text(), name)


def render_user_data(spec: Spec) -> str:
    """As src/bootstrap.rs render_user_data."""
    rust = BOOTSTRAP_RS.read_text()
    script = _header("bootstrap", spec.environment, spec.region, spec.services)
    script += f"readonly OUTCOME_TAG={shell_quote(_tag('BOOTSTRAP'))}\n"
    script += f"readonly COMPLETE_VALUE={shell_quote(_tag('BOOTSTRAP_COMPLETE'))}\n"
    script += f"readonly FAILED_VALUE={shell_quote(_tag('BOOTSTRAP_FAILED'))}\n"
    script += f"readonly DATABASE_PARAMETER={shell_quote(spec.database_parameter or '')}\n"
    script += f"readonly DATABASE_WAIT_SECONDS={spec.database_wait_seconds}\n"
    script += f"readonly DATABASE_SECRET={shell_quote(_rust_str_const(rust, 'DATABASE_SECRET'))}\n"
    script += f"readonly DATABASE_SECRET_KEY={shell_quote(_rust_str_const(rust, 'DATABASE_SECRET_KEY'))}\n"
    script += _array("ADDONS", [minikube_addon(a) for a in spec.addons])
    script += fixed_part("PRELUDE")
    script += fixed_part("START_MINIKUBE")
    script += fixed_part("DATABASE")
    script += fixed_part("BOOTSTRAP")
    return script


@dataclass
class UpdateSpec:
    environment: str
    region: str
    services: list[tuple[str, str]]  # (name, image)
    token: str  # names the update in the outcome tag
    sequence: int = 0  # the environment's generation when sent: orders changes of the services


def render_update_script(spec: UpdateSpec) -> str:
    """As src/bootstrap.rs render_update_script: what the operator sends with SendCommand."""
    script = _header("services update", spec.environment, spec.region, spec.services, spec.sequence)
    script += f"readonly OUTCOME_TAG={shell_quote(_tag('SERVICES'))}\n"
    script += f"readonly COMPLETE_VALUE={shell_quote(_tag('BOOTSTRAP_COMPLETE') + ':' + spec.token)}\n"
    script += f"readonly FAILED_VALUE={shell_quote(_tag('BOOTSTRAP_FAILED') + ':' + spec.token)}\n"
    script += fixed_part("PRELUDE")
    script += fixed_part("UPDATE")
    return script
