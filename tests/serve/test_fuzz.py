"""Fuzzing the HTTP API from its own OpenAPI document with schemathesis.

Requests generated from the document (valid ones, and invalid ones that must be refused with
a 4xx), sent with an admin token to a real uvicorn server on a real workspace, so they reach
every handler; each answer must not be a 5xx and must match the document: its status code, its
content type, its headers and its body's schema. Deterministic (``derandomize``), so a failure
reproduces.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.serve.conftest import TEXT_MODEL, Bundles
from tests.serve.test_roles_matrix import Served, served_workspace

MIN_REQUESTS = 1000


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, bundles: Bundles) -> Iterator[Served]:
    with served_workspace(tmp_path_factory.mktemp("fuzz"), bundles) as s:
        yield s


def test_generated_requests_get_no_5xx_and_answers_match_the_document(served: Served) -> None:
    import requests
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    admin = {"Authorization": f"Bearer {served.tokens['admin']}"}
    schema = schemathesis.openapi.from_url(f"{served.url}/openapi.json", headers=admin)
    # Configured, not added per call: generation then knows the header is the caller's and does
    # not count a request it sent without one as "invalid data the server accepted".
    schema.config.update(headers=admin)
    # Schema-valid yet refused is right here: the document cannot say which instance kind
    # (text or image) a model takes, which labels it knows, nor which version passes the gate.
    excluded = [positive_data_acceptance]
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    # Operations without inputs give one request (or none when nothing can be made invalid);
    # the 9 with inputs, 2 x 70 each.
    per_operation = 70
    sent: list[int] = []
    failures: list[str] = []
    session = requests.Session()

    for operation in operations:
        # The served model, so that requests get past the model lookup into the handlers.
        fixed = {"name": TEXT_MODEL} if "{name}" in operation.path else {}
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=per_operation,
                derandomize=True,
                database=None,
                deadline=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode, path_parameters=fixed))
            def fuzz(case: Any) -> None:
                try:
                    response = case.call_and_validate(session=session, excluded_checks=excluded)
                except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - reported below
                    failures.append(f"{operation.label} ({mode.value}): {exc}")
                    raise
                sent.append(response.status_code)

            try:
                fuzz()
            except (Exception, BaseExceptionGroup):  # noqa: BLE001 - kept in `failures`
                pass

    assert not failures, "\n\n".join(failures[:10])
    assert len(sent) >= MIN_REQUESTS
    assert all(status < 500 for status in sent)
    assert any(status < 300 for status in sent) and any(400 <= s < 500 for s in sent)
