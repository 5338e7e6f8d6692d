#!/usr/bin/env python3
"""Render example manifests by substituting ${VAR} placeholders (an envsubst for examples/).

Owns the templating of examples/*.yaml for the local stack: moto generates subnet,
security group and AMI ids at seed time, so the examples carry placeholders such as
${SUBNET_ID}, ${SECURITY_GROUP_ID} and ${ECR_REGISTRY}, filled from the `vars` map that
hack/seed_aws.py writes (--seed FILE.json), then from --set NAME=VALUE, then (with
--env) from the environment. Only ${UPPER_CASE} placeholders are touched; `$` elsewhere
is left alone. Any placeholder left unresolved is an error (exit 2) naming it.

  python3 hack/render_example.py --seed .dev/seed.json examples/featureenvironmentclass.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

PLACEHOLDER_RE = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")


def render(text: str, variables: dict[str, str]) -> tuple[str, set[str]]:
    """Substitute placeholders; returns the text and the names left unresolved."""
    missing: set[str] = set()

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name in variables:
            return variables[name]
        missing.add(name)
        return m.group(0)

    return PLACEHOLDER_RE.sub(sub, text), missing


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", help="templates to render; output is concatenated as YAML documents")
    p.add_argument("--seed", help="JSON written by hack/seed_aws.py --out")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="extra or overriding variable")
    p.add_argument("--env", action="store_true", help="also resolve from the environment (lowest precedence)")
    p.add_argument("-o", "--output", help="write here instead of stdout")
    args = p.parse_args(argv)

    variables: dict[str, str] = dict(os.environ) if args.env else {}
    if args.seed:
        with open(args.seed, encoding="utf-8") as fh:
            variables.update({k: str(v) for k, v in json.load(fh).get("vars", {}).items()})
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            p.error(f"--set expects NAME=VALUE, got {item!r}")
        variables[name] = value

    docs: list[str] = []
    unresolved: dict[str, set[str]] = {}
    for path in args.files:
        with open(path, encoding="utf-8") as fh:
            text, missing = render(fh.read(), variables)
        if missing:
            unresolved[path] = missing
        docs.append(text if text.endswith("\n") else text + "\n")
    if unresolved:
        for path, names in unresolved.items():
            print(f"render_example: {path}: unresolved {', '.join(sorted(names))}", file=sys.stderr)
        return 2
    out = "---\n".join(d if not d.startswith("---\n") else d[4:] for d in docs)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(out)
    else:
        sys.stdout.write(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
