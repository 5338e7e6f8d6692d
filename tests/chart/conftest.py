"""Fixtures for the Helm chart tests: the loaded chart, a render() helper, and a fresh
API server per test (`cluster`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from chartlib import BASE_VALUES, CHART, NAMESPACE, RELEASE, Render, control_plane, helm, parse_manifests  # noqa: E402


@pytest.fixture(scope="session")
def chart() -> Iterator[Any]:
    with helm.Chart.load(str(CHART)) as c:
        yield c


@pytest.fixture(scope="session")
def render(chart: Any) -> Render:
    def _render(values: dict[str, Any] | None = None, *, base: bool = True, notes: bool = False) -> Any:
        merged = {**BASE_VALUES, **(values or {})} if base else (values or {})
        rendered = chart.render(merged, name=RELEASE, namespace=NAMESPACE, is_install=True)
        if notes:
            return next(v for k, v in rendered.items() if k.endswith("NOTES.txt"))
        return parse_manifests(rendered)

    return _render


@pytest.fixture()
def cluster() -> Iterator[dict[str, str]]:
    with control_plane() as env:
        yield env
