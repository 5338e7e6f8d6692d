"""Helpers for the CloudFormation tests: load deploy/cloudformation/*.yaml and evaluate it.

Owns parsing with cfn-lint's own YAML loader (`cfnlint.decode`, which accepts the short
tags !Sub, !Ref, !GetAtt, ...) and a small evaluator of the intrinsic functions the
templates use, for given parameter values: Ref, Fn::Sub, Fn::Select, Fn::Split, Fn::Join,
Fn::If (with the template's Conditions), AWS::NoValue, and the Fn::ForEach of
AWS::LanguageExtensions. Anything else raises `Unresolvable`, so no test passes because
a function was skipped. No I/O beyond reading the templates.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from cfnlint.decode import decode  # a hard dependency: missing it must fail, not skip

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "deploy" / "cloudformation"

ACCOUNT_ID = "123456789012"
REGION = "eu-west-1"
PSEUDO = {
    "AWS::AccountId": ACCOUNT_ID,
    "AWS::Partition": "aws",
    "AWS::Region": REGION,
    "AWS::URLSuffix": "amazonaws.com",
}


class Unresolvable(Exception):
    """The evaluator met something it does not model."""


class _NoValue:
    def __repr__(self) -> str:
        return "AWS::NoValue"


NO_VALUE = _NoValue()


def load(name: str) -> dict[str, Any]:
    template, matches = decode(str(TEMPLATES / name))
    assert not matches, f"{name} does not parse: {[str(m) for m in matches]}"
    return template


def plain(node: Any) -> Any:
    """cfn-lint's dict_node/str_node/list_node as plain Python values."""
    if isinstance(node, dict):
        return {str(k): plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [plain(v) for v in node]
    if isinstance(node, str):
        return str(node)
    return node


class Stack:
    """One template with parameter values: what CloudFormation would evaluate."""

    def __init__(self, template: dict[str, Any], **parameters: Any) -> None:
        self.template = plain(template)
        declared = self.template.get("Parameters", {})
        unknown = set(parameters) - set(declared)
        assert not unknown, f"not parameters of the template: {sorted(unknown)}"
        self.parameters: dict[str, Any] = {}
        for name, spec in declared.items():
            if name in parameters:
                value = parameters[name]
            elif "Default" in spec:
                value = spec["Default"]
            else:
                continue
            if spec["Type"] == "CommaDelimitedList" or spec["Type"].startswith("List<"):
                value = value if isinstance(value, list) else [v.strip() for v in str(value).split(",")]
            else:
                value = str(value)
            self.parameters[name] = value
        self.resources: dict[str, Any] = self.template["Resources"]
        self.resources = self.expand_for_each(self.resources)

    # --- references and conditions -------------------------------------------------

    def ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in PSEUDO:
            return PSEUDO[name]
        if name in self.parameters:
            return self.parameters[name]
        if name in self.template.get("Parameters", {}):
            raise Unresolvable(f"parameter {name} has no value and no default")
        if name in self.resources:
            return f"{{Ref:{name}}}"
        raise Unresolvable(f"Ref {name}")

    def condition(self, name: str) -> bool:
        return self._condition(self.template["Conditions"][name])

    def _condition(self, node: Any) -> bool:
        (fn, args), = node.items()
        if fn == "Fn::Equals":
            left, right = (self.resolve(a) for a in args)
            return str(left) == str(right)
        if fn == "Fn::Not":
            return not self._condition(args[0])
        if fn == "Fn::And":
            return all(self._condition(a) for a in args)
        if fn == "Fn::Or":
            return any(self._condition(a) for a in args)
        if fn == "Condition":
            return self.condition(args)
        raise Unresolvable(fn)

    # --- intrinsic functions -------------------------------------------------------

    def sub(self, text: str, variables: dict[str, Any]) -> str:
        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            value = self.resolve(variables[name]) if name in variables else self.ref(name)
            if not isinstance(value, str):
                raise Unresolvable(f"${{{name}}} is not a string: {value!r}")
            return value

        return re.sub(r"\$\{([^}]*)\}", one, text)

    def resolve(self, node: Any) -> Any:
        if isinstance(node, dict):
            if len(node) == 1:
                (key, arg), = node.items()
                if key == "Ref":
                    return self.ref(arg)
                if key == "Fn::Sub":
                    if isinstance(arg, str):
                        return self.sub(arg, {})
                    return self.sub(arg[0], arg[1])
                if key == "Fn::Select":
                    return self.resolve(arg[1])[int(self.resolve(arg[0]))]
                if key == "Fn::Split":
                    return self.resolve(arg[1]).split(arg[0])
                if key == "Fn::Join":
                    return arg[0].join(self.resolve(arg[1]))
                if key == "Fn::GetAtt":
                    target = arg if isinstance(arg, str) else ".".join(arg)
                    if target.split(".")[0] not in self.resources:
                        raise Unresolvable(f"GetAtt {target}")
                    return f"{{GetAtt:{target}}}"
                if key == "Fn::If":
                    return self.resolve(arg[1] if self.condition(arg[0]) else arg[2])
                if key.startswith("Fn::") or key == "Condition":
                    raise Unresolvable(key)
            out = {k: self.resolve(v) for k, v in node.items()}
            return {k: v for k, v in out.items() if v is not NO_VALUE}
        if isinstance(node, list):
            return [v for v in (self.resolve(x) for x in node) if v is not NO_VALUE]
        return node

    # --- AWS::LanguageExtensions -----------------------------------------------------

    def expand_for_each(self, section: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in section.items():
            if not key.startswith("Fn::ForEach::"):
                out[key] = value
                continue
            identifier, collection, fragment = value
            for item in self.resolve(collection):
                out.update(self.expand_for_each(_bind(fragment, identifier, item)))
        return out

    def resource(self, logical_id: str) -> dict[str, Any]:
        return self.resources[logical_id]

    def properties(self, logical_id: str) -> dict[str, Any]:
        return self.resolve(self.resources[logical_id].get("Properties", {}))

    def of_type(self, resource_type: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.resources.items() if v["Type"] == resource_type}


def _bind(node: Any, identifier: str, item: str) -> Any:
    """A Fn::ForEach fragment with `identifier` bound to `item`, as the transform does."""
    if isinstance(node, dict):
        if node == {"Ref": identifier}:
            return item
        out = {}
        for key, value in node.items():
            key = key.replace("${" + identifier + "}", item)
            key = key.replace("&{" + identifier + "}", re.sub(r"[^A-Za-z0-9]", "", item))
            if key == "Fn::Sub" and isinstance(value, str):
                value = value.replace("${" + identifier + "}", item)
            out[key] = _bind(value, identifier, item)
        return out
    if isinstance(node, list):
        return [_bind(v, identifier, item) for v in node]
    return copy.deepcopy(node)


def policy_documents(stack: Stack) -> dict[str, dict[str, Any]]:
    """Every IAM policy document of the stack (inline, managed, trust), by a readable name."""
    docs: dict[str, dict[str, Any]] = {}
    for logical_id, res in stack.resources.items():
        if res["Type"] == "AWS::IAM::Role":
            props = stack.properties(logical_id)
            for policy in props.get("Policies", []):
                docs[f"{logical_id}/{policy['PolicyName']}"] = policy["PolicyDocument"]
        elif res["Type"] == "AWS::IAM::ManagedPolicy":
            docs[logical_id] = stack.properties(logical_id)["PolicyDocument"]
    return docs


def statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    found = document["Statement"]
    return found if isinstance(found, list) else [found]


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]
