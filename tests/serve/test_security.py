"""Server hardening end to end: security headers, CORS, rate limits per token, tokens kept out
of every log line. Real uvicorn servers on 127.0.0.1, real tokens, the tiny real models."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aifab.core.config import ServeConfig, WorkspaceConfig, parse
from aifab.core.errors import ConfigError
from aifab.registry.versions import LoadedModel
from aifab.serve.app import create_app
from aifab.serve.limits import ServeLimits
from aifab.core.errors import RateLimited
from aifab.serve.ratelimit import RateLimiter
from aifab.serve.security import SECURITY_HEADERS, uvicorn_log_config
from tests.serve.conftest import HAM, TEXT_MODEL, Store, auth, running

ORIGIN = "https://shop.example.com"


def metric_value(text: str, name: str, labels: dict[str, str]) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


@pytest.fixture(scope="module")
def guarded(store: Store) -> Iterator[str]:
    """A server with a tight rate limit (3 requests, then one per 20 s) and one CORS origin."""
    app = create_app(
        meta=store.meta,
        artifacts=store.artifacts,
        models=[TEXT_MODEL],
        limits=ServeLimits(max_body_bytes=1000),
        poll_seconds=0,
        config=ServeConfig(rate_limit="3/min", cors_origins=[ORIGIN]),
    )
    with running(app) as url:
        yield url


# -- headers ----------------------------------------------------------------------------------


def test_every_answer_carries_the_security_headers(
    server: str, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = auth(store, "client")
    predict = f"{server}/v1/models/{TEXT_MODEL}:predict"
    answers = {
        "healthz": httpx.get(f"{server}/healthz"),
        "metrics": httpx.get(f"{server}/metrics", headers=client),
        "predict": httpx.post(predict, json={"instances": [HAM[0]]}, headers=client),
        "no token": httpx.get(f"{server}/v1/models"),
        "forbidden": httpx.post(f"{server}/v1/models/{TEXT_MODEL}:reload", headers=client),
        "unknown path": httpx.get(f"{server}/nowhere", headers=client),
        "wrong method": httpx.delete(f"{server}/v1/models", headers=client),
        "invalid": httpx.post(predict, json={"instances": [{"txt": 1}]}, headers=client),
        "too large": httpx.post(predict, content=b"x" * 300_000, headers=client),
    }

    def exploded(self: LoadedModel, inputs: Any, **kw: Any) -> Any:
        raise RuntimeError("model exploded")

    monkeypatch.setattr(LoadedModel, "predict", exploded)
    answers["internal error"] = httpx.post(predict, json={"instances": ["x"]}, headers=client)
    expected = {
        "healthz": 200,
        "metrics": 200,
        "predict": 200,
        "no token": 401,
        "forbidden": 403,
        "unknown path": 404,
        "wrong method": 405,
        "invalid": 422,
        "too large": 413,
        "internal error": 500,
    }
    assert {case: r.status_code for case, r in answers.items()} == expected
    for case, response in answers.items():
        for header, value in SECURITY_HEADERS:
            assert response.headers.get(header) == value, (case, header, response.headers)
    csp = answers["predict"].headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp


def test_cors_is_off_by_default(server: str, store: Store) -> None:
    preflight = httpx.options(
        f"{server}/v1/models",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status_code == 405
    assert "access-control-allow-origin" not in preflight.headers
    simple = httpx.get(f"{server}/v1/models", headers={**auth(store, "client"), "Origin": ORIGIN})
    assert simple.status_code == 200
    assert "access-control-allow-origin" not in simple.headers


def test_cors_allows_exactly_the_listed_origins(guarded: str, store: Store) -> None:
    def preflight(origin: str) -> httpx.Response:
        return httpx.options(
            f"{guarded}/v1/models/{TEXT_MODEL}:predict",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )

    allowed = preflight(ORIGIN)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert {"authorization", "content-type"} <= {
        h.strip().lower() for h in allowed.headers["access-control-allow-headers"].split(",")
    }
    assert "access-control-allow-credentials" not in allowed.headers  # tokens, not cookies
    assert allowed.headers["x-content-type-options"] == "nosniff"

    other = preflight("https://evil.example.net")
    assert other.status_code == 400
    assert "access-control-allow-origin" not in other.headers
    # An origin differing only in scheme or port is another origin.
    assert "access-control-allow-origin" not in preflight("http://shop.example.com").headers
    assert "access-control-allow-origin" not in preflight(f"{ORIGIN}:8443").headers
    # Preflights carry no token and are not rate limited: many in a row all pass.
    assert {preflight(ORIGIN).status_code for _ in range(5)} == {200}


# -- rate limits ------------------------------------------------------------------------------


def test_a_token_over_its_rate_limit_gets_429_with_retry_after(guarded: str, store: Store) -> None:
    base = f"{guarded}/v1/models"
    annotator = auth(store, "annotator")
    with httpx.Client(headers=annotator) as client:
        first = [client.get(base, headers={"Origin": ORIGIN}) for _ in range(3)]
        refused = client.get(base, headers={"Origin": ORIGIN})
    assert [r.status_code for r in first] == [200, 200, 200]
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 20  # one request back every 20 s
    error = refused.json()["error"]
    assert error["code"] == "rate_limited"
    assert "'test-annotator'" in error["message"] and "rate limit" in error["message"]
    assert error["details"]["burst"] == 3
    # A browser page may read the answer and its Retry-After.
    assert refused.headers["access-control-allow-origin"] == ORIGIN
    assert "retry-after" in refused.headers["access-control-expose-headers"].lower()
    # Another token has a bucket of its own; probes carry no token and are never limited.
    operator = auth(store, "operator")
    assert httpx.get(base, headers=operator).status_code == 200
    assert [httpx.get(f"{guarded}/healthz").status_code for _ in range(5)] == [200] * 5
    # Every request of the limited token counts, whatever the endpoint; none gets through.
    assert httpx.post(f"{base}/{TEXT_MODEL}:reload", headers=annotator).status_code == 429
    metrics = httpx.get(f"{guarded}/metrics", headers=operator).text
    assert metric_value(metrics, "aifab_rate_limited_total", {"token": "test-annotator"}) == 2
    assert metric_value(metrics, "aifab_http_errors_total", {"code": "rate_limited"}) == 2


def test_the_bucket_refills_at_the_rate_and_a_refusal_costs_nothing() -> None:
    now = [0.0]
    limited: list[str] = []
    limiter = RateLimiter(
        per_second=4, burst=2, clock=lambda: now[0], on_limited=limited.append
    )
    limiter.take("a", who="ci")
    limiter.take("a", who="ci")
    with pytest.raises(RateLimited) as refused:
        limiter.take("a", who="ci")
    assert refused.value.http_status == 429 and refused.value.retry_after_s == 1
    assert limited == ["ci"]
    limiter.take("b")  # another key: a full bucket of its own
    now[0] = 0.24  # 0.96 of a request back: still refused, and the refusal spends nothing
    with pytest.raises(RateLimited):
        limiter.take("a")
    now[0] = 0.25
    limiter.take("a")
    now[0] = 100.0  # a long pause fills the bucket to the burst, no further
    limiter.take("a")
    limiter.take("a")
    with pytest.raises(RateLimited):
        limiter.take("a")


def test_retry_after_is_the_whole_seconds_until_a_request_is_back() -> None:
    limiter = RateLimiter(per_second=0.1, burst=1, clock=lambda: 0.0)
    limiter.take("a")
    with pytest.raises(RateLimited) as refused:
        limiter.take("a")
    assert refused.value.retry_after_s == 10
    assert refused.value.details["retry_after_s"] == 10


def test_rate_limit_and_cors_config_is_strict_and_named() -> None:
    config = parse(
        WorkspaceConfig,
        {"serve": {"rate_limit": "100/s", "rate_burst": 20, "cors_origins": [ORIGIN]}},
    )
    assert (config.serve.rate_limit, config.serve.rate_burst) == ("100/s", 20)
    assert WorkspaceConfig().serve.rate_limit is None  # off by default
    assert WorkspaceConfig().serve.cors_origins == []
    bad = {
        "rate_limit": ("fast", "serve.rate_limit"),
        "rate_burst": (0, "serve.rate_burst"),
        "cors_origins": (["shop.example.com"], "serve.cors_origins"),
        "cors_origin": ([ORIGIN], "did you mean 'cors_origins'"),
    }
    for key, (value, named) in bad.items():
        with pytest.raises(ConfigError, match="aifab.yaml") as info:
            parse(WorkspaceConfig, {"serve": {key: value}}, source="aifab.yaml")
        assert named in str(info.value), key
    with pytest.raises(ConfigError, match="origin is scheme://host"):
        parse(WorkspaceConfig, {"serve": {"cors_origins": [f"{ORIGIN}/path"]}})


def test_serve_options_override_the_workspace_config(tmp_path: Path) -> None:
    from aifab.pipeline.project import Workspace
    from aifab.pipeline.serving import serve_config

    (tmp_path / "aifab.yaml").write_text(
        f"version: 1\nserve:\n  rate_limit: 10/s\n  cors_origins: [{ORIGIN}]\n", encoding="utf-8"
    )
    ws = Workspace.init(tmp_path, exist_ok=True)
    try:
        assert ws.config.serve.rate_limit == "10/s"
        assert serve_config(ws) == ws.config.serve
        merged = serve_config(ws, rate_limit="5/min", rate_burst=2)
        assert (merged.rate_limit, merged.rate_burst, merged.cors_origins) == ("5/min", 2, [ORIGIN])
        assert serve_config(ws, rate_limit="off").rate_limit is None
        assert serve_config(ws, cors_origins=[]).cors_origins == []
        with pytest.raises(ConfigError, match="rate_limit"):
            serve_config(ws, rate_limit="10 per second")
    finally:
        ws.close()


# -- logs -------------------------------------------------------------------------------------


def test_tokens_never_reach_the_access_log_nor_ours(
    store: Store, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uvicorn configured as ``aifab serve --access-log`` configures it, its handlers writing to
    a buffer; our loggers captured at DEBUG; requests with good, bad and misplaced tokens."""
    import uvicorn

    from aifab.security.tokens import issue_token

    buffer = io.StringIO()
    config = uvicorn_log_config()
    for handler in config["handlers"].values():
        handler["stream"] = buffer
    revoked, token = issue_token("test-revoked-log", "client")
    store.meta.add_token(token)
    store.meta.revoke_token(token.id)
    good = store.tokens["admin"]
    wrong_secret = good[:-1] + ("A" if good[-1] != "A" else "B")
    secrets = [t.split("_", 2)[2] for t in (good, wrong_secret, revoked)]

    caplog.set_level(logging.DEBUG)
    app = create_app(
        meta=store.meta, artifacts=store.artifacts, models=[TEXT_MODEL], poll_seconds=0
    )
    # What `aifab serve --access-log` gives uvicorn (building it applies the logging setup).
    served = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_level="debug",
        access_log=True,
        log_config=config,
        lifespan="on",
    )
    monkeypatch.setattr(uvicorn, "Config", lambda *a, **kw: served)  # running() would build its own
    with running(app) as url:
        for header in (good, wrong_secret, revoked, "afb_short", good[:-5]):
            httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {header}"})
        httpx.post(
            f"{url}/v1/models/{TEXT_MODEL}:reload", headers={"Authorization": f"Bearer {good}"}
        )
        # A client that puts its token in the URL: the access log shows the line, masked.
        httpx.get(f"{url}/v1/models", params={"api_key": good})
        logging.getLogger("uvicorn.error").warning("a message that quotes %s", wrong_secret)
    # The server's lines: uvicorn's handlers and our loggers (not the test's own HTTP client).
    ours = [r for r in caplog.records if r.name.split(".")[0] in ("aifab", "uvicorn")]
    logged = buffer.getvalue() + "\n".join(logging.Formatter().format(r) for r in ours)
    assert '"GET /v1/models?api_key=afb_*** HTTP/1.1" 401' in logged  # the access log was on
    assert "GET /v1/models HTTP/1.1\" 200" in logged and "HTTP/1.1\" 401" in logged
    assert "a message that quotes afb_***" in logged
    assert "reload by test-admin" in logged  # our own log line for the reload was captured
    for secret in secrets:
        assert secret not in logged


# -- what fuzzing found -----------------------------------------------------------------------


def test_an_undecodable_body_and_an_unknown_upload_part_are_422_in_the_one_shape(
    server: str, store: Store
) -> None:
    annotator = auth(store, "annotator")
    feedback = f"{server}/v1/models/{TEXT_MODEL}/feedback"
    r = httpx.post(
        feedback, content=b"\xff\xfe{", headers={**annotator, "Content-Type": "application/json"}
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_input"
    assert r.json()["error"]["message"].startswith("request body: cannot be read")

    predict = f"{server}/v1/models/{TEXT_MODEL}:predict"
    r = httpx.post(predict, files=[("fiel", ("a.txt", b"hello", "text/plain"))], headers=annotator)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["message"].startswith("multipart part 'fiel': unknown field")
    upload = [("file", ("a.txt", HAM[0].encode(), "text/plain"))]
    r = httpx.post(predict, files=upload, headers=annotator)
    assert r.status_code == 200, r.text


def test_metrics_are_documented_as_the_text_they_are(server: str, store: Store) -> None:
    client = auth(store, "client")
    doc = httpx.get(f"{server}/openapi.json", headers=client).json()
    answers = doc["paths"]["/metrics"]["get"]["responses"]
    assert list(answers["200"]["content"]) == ["text/plain"]
    assert list(answers["401"]["content"]) == ["application/json"]
    r = httpx.get(f"{server}/metrics", headers=client)
    assert r.headers["content-type"].startswith("text/plain")
