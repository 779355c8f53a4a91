"""The role matrix over every route of the app, found from the app itself (not a hand list):
no token is a 401, each role gets a 403 exactly when :mod:`aifab.security.roles` says it lacks
the route's permission, health probes are open, and docs/security.md shows the same matrix.

A new endpoint without a permission check fails here until it is added to ``OPEN``; one whose
permission changes fails until docs/security.md says so."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from aifab.security.roles import ROLES, allows, minimum_role
from aifab.serve.security import route_permissions
from tests.serve.conftest import HAM, SPAM, TEXT_MODEL, Bundles, register, running

OPEN = {("GET", "/healthz"), ("GET", "/readyz")}  # liveness and readiness probes carry no token
SECURITY_MD = Path(__file__).resolve().parents[2] / "docs" / "security.md"


@dataclass
class Served:
    app: Any
    url: str
    tokens: dict[str, str]  # role -> plaintext


@contextmanager
def served_workspace(root: Path, bundles: Bundles, **app_options: Any) -> Iterator[Served]:
    """What ``aifab serve`` runs (operator endpoints included) on a real workspace: the SMS
    texts ingested as a dataset, the tiny text model registered as trained on it, a token
    per role."""
    from aifab.pipeline.project import Workspace
    from aifab.pipeline.serving import WorkspaceOperations, create_token
    from aifab.serve.app import create_app

    ws = Workspace.init(root)
    table = root / "sms.csv"
    with table.open("w", newline="", encoding="utf-8") as f:
        rows = [(t, "spam") for t in SPAM] + [(t, "ham") for t in HAM]
        csv.writer(f).writerows([("text", "label"), *rows])
    dataset = ws.ingest(table, name=TEXT_MODEL)
    lineage = {"dataset_name": dataset.name, "dataset_version": dataset.id}
    files = {**bundles.text, "lineage.json": json.dumps(lineage).encode("utf-8")}
    register(ws.meta, ws.artifacts, TEXT_MODEL, "text-classification", files)
    tokens = {role: create_token(ws, name=f"test-{role}", role=role)[0] for role in ROLES}
    app = create_app(
        meta=ws.meta,
        artifacts=ws.artifacts,
        poll_seconds=0,
        operations=WorkspaceOperations(ws),
        **app_options,
    )
    try:
        with running(app) as url:
            yield Served(app=app, url=url, tokens=tokens)
    finally:
        ws.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, bundles: Bundles) -> Iterator[Served]:
    with served_workspace(tmp_path_factory.mktemp("matrix"), bundles) as s:
        yield s


def concrete(path: str) -> str:
    """A path template with its parameters filled: the served model, version 1."""
    values = {"name": TEXT_MODEL, "version": "1"}
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), "x"), path)


def test_every_route_has_a_permission_or_is_a_health_probe(served: Served) -> None:
    routes = route_permissions(served.app.routes)
    assert {key for key, permission in routes.items() if permission is None} == OPEN
    # Everything the OpenAPI document offers is among the routes checked here.
    document = httpx.get(
        f"{served.url}/openapi.json", headers={"Authorization": f"Bearer {served.tokens['client']}"}
    ).json()
    offered = {(m.upper(), p) for p, ops in document["paths"].items() for m in ops}
    assert offered and offered <= set(routes)
    assert ("POST", "/v1/models/{name}/versions/{version}:promote") in routes  # operator routes too


def test_no_token_is_401_and_each_role_is_refused_exactly_as_roles_say(served: Served) -> None:
    routes = route_permissions(served.app.routes)
    checked = 0
    with httpx.Client(base_url=served.url, timeout=60) as client:
        for (method, template), permission in sorted(routes.items()):
            if permission is None:
                continue
            path = concrete(template)
            anonymous = client.request(method, path)
            assert anonymous.status_code == 401, (method, template, anonymous.text)
            assert anonymous.headers["www-authenticate"].startswith("Bearer")
            for role in ROLES:
                headers = {"Authorization": f"Bearer {served.tokens[role]}"}
                r = client.request(method, path, headers=headers)
                if allows(role, permission):
                    # Let through: whatever the handler answers (200, or 422 for a missing body),
                    # never an auth refusal nor a crash.
                    assert r.status_code not in (401, 403), (role, method, template, r.text)
                    assert r.status_code < 500, (role, method, template, r.text)
                else:
                    assert r.status_code == 403, (role, method, template, r.text)
                    error = r.json()["error"]
                    assert error["code"] == "forbidden"
                    assert error["details"]["needs"] == minimum_role(permission)
                checked += 1
        for method, path in OPEN:
            assert client.request(method, path).status_code == 200, path
    assert checked == len(ROLES) * (len(routes) - len(OPEN))


def test_docs_security_md_shows_the_matrix_of_the_app(served: Served) -> None:
    """Each route is a row ``| `METHOD /path` | permission | client | annotator | operator |
    admin |`` with ``yes``/``no`` per role."""
    rows: dict[tuple[str, str], list[str]] = {}
    for line in SECURITY_MD.read_text(encoding="utf-8").splitlines():
        match = re.match(r"\|\s*`(GET|POST|PUT|PATCH|DELETE) +(\S+)`\s*\|(.*)\|\s*$", line)
        if match:
            rows[match.group(1), match.group(2)] = [c.strip() for c in match.group(3).split("|")]
    routes = route_permissions(served.app.routes)
    missing, extra = sorted(set(routes) - set(rows)), sorted(set(rows) - set(routes))
    assert not missing and not extra, f"rows to add: {missing}; rows to drop: {extra}"
    for key, permission in routes.items():
        expected = [permission or "none"] + [
            "yes" if permission is None or allows(role, permission) else "no" for role in ROLES
        ]
        assert rows[key] == expected, (key, rows[key], expected)
