"""The HTTP server end to end: a real uvicorn server on 127.0.0.1, real tokens, real models."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aifab.core.errors import ConfigError
from aifab.registry.versions import LoadedModel
from aifab.serve.app import check_no_auth_host, create_app
from aifab.serve.limits import ServeLimits
from tests.serve.conftest import (
    HAM,
    IMAGE_MODEL,
    ROLES,
    SPAM,
    TEXT_MODEL,
    Bundles,
    Store,
    auth,
    loaded,
    make_store,
    png_bytes,
    register,
    running,
)


def b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode("ascii")}


def assert_same_answers(served: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """Served answers equal the model's own (scores up to float noise from batching)."""
    assert len(served) == len(expected)
    for got, want in zip(served, expected):
        assert got["label"] == want["label"]
        assert got["scores"].keys() == want["scores"].keys()
        for k, v in want["scores"].items():
            assert got["scores"][k] == pytest.approx(v, abs=1e-6)


def metric_samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def batches_over_one(server: str, store: Store, model: str) -> float:
    """How many batches of ``model`` held more than one instance, from /metrics."""
    text = httpx.get(f"{server}/metrics", headers=auth(store, "client")).text
    count = metric_samples(text, "aifab_batch_size_count")[(("model", model),)]
    singles = metric_samples(text, "aifab_batch_size_bucket")[(("le", "1.0"), ("model", model))]
    return count - singles


# -- predictions ----------------------------------------------------------------------------


def test_text_predictions_equal_the_models_own_and_are_logged(server: str, store: Store) -> None:
    texts = [SPAM[12], HAM[12], SPAM[13], HAM[13]]
    body = {"instances": [texts[0], {"text": texts[1]}, texts[2], {"text": texts[3]}]}
    r = httpx.post(
        f"{server}/v1/models/{TEXT_MODEL}:predict", json=body, headers=auth(store, "client")
    )
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert_same_answers(predictions, loaded(store, TEXT_MODEL).predict(texts))
    assert [p["label"] for p in predictions] == ["spam", "ham", "spam", "ham"]
    assert {p["model_version"] for p in predictions} == {1}
    assert len({p["prediction_id"] for p in predictions}) == 4
    logged = store.meta.get_prediction(predictions[1]["prediction_id"])
    assert (logged.model_name, logged.model_version, logged.label, logged.input_text) == (
        TEXT_MODEL,
        1,
        "ham",
        texts[1],
    )


def test_image_predictions_by_base64_and_upload_equal_the_models_own(
    server: str, store: Store
) -> None:
    images = [png_bytes(seed=500), png_bytes(seed=501, bright=True), png_bytes(seed=502)]
    expected = loaded(store, IMAGE_MODEL).predict(images)
    headers = auth(store, "client")
    r = httpx.post(
        f"{server}/v1/models/{IMAGE_MODEL}:predict",
        json={"instances": [b64(x) for x in images]},
        headers=headers,
    )
    assert r.status_code == 200, r.text
    assert_same_answers(r.json()["predictions"], expected)
    files = [("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    r = httpx.post(f"{server}/v1/models/{IMAGE_MODEL}:predict", files=files, headers=headers)
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert_same_answers(predictions, expected)
    assert [p["label"] for p in predictions] == ["dark", "bright", "dark"]
    logged = store.meta.get_prediction(predictions[1]["prediction_id"])
    assert store.artifacts.get_bytes(logged.input_blob) == images[1]


def test_model_listing_and_info(server: str, store: Store) -> None:
    headers = auth(store, "client")
    listing = httpx.get(f"{server}/v1/models", headers=headers).json()["models"]
    assert [(m["name"], m["kind"], m["version"]) for m in listing] == [
        (IMAGE_MODEL, "image", 1),
        (TEXT_MODEL, "text", 1),
    ]
    info = httpx.get(f"{server}/v1/models/{TEXT_MODEL}", headers=headers).json()
    assert info["labels"] == ["ham", "spam"] and info["multi_label"] is False
    assert info["task"] == "text-classification" and "production" in info["aliases"]


def test_concurrent_requests_are_batched_and_each_answer_is_its_own(
    server: str, store: Store
) -> None:
    texts = [f"WINNER!! claim your prize number {i} now" for i in range(32)]
    texts += [f"are we still meeting at {i} near the station" for i in range(32)]
    expected = loaded(store, TEXT_MODEL).predict(texts)
    before = batches_over_one(server, store, TEXT_MODEL)

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=server, headers=auth(store, "client"), timeout=30
        ) as client:
            return await asyncio.gather(
                *(
                    client.post(f"/v1/models/{TEXT_MODEL}:predict", json={"instances": [t]})
                    for t in texts
                )
            )

    responses = asyncio.run(fire())
    assert [r.status_code for r in responses] == [200] * 64
    assert_same_answers([r.json()["predictions"][0] for r in responses], expected)
    assert {e["label"] for e in expected} == {"ham", "spam"}  # the inputs tell apart
    assert batches_over_one(server, store, TEXT_MODEL) > before


# -- auth -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prediction_id(server: str, store: Store) -> str:
    r = httpx.post(
        f"{server}/v1/models/{TEXT_MODEL}:predict",
        json={"instances": [HAM[0]]},
        headers=auth(store, "client"),
    )
    return str(r.json()["predictions"][0]["prediction_id"])


def endpoints(prediction_id: str) -> list[tuple[str, str, str, dict[str, Any] | None, int]]:
    """(method, path, permission, JSON body, status when allowed)."""
    return [
        ("POST", f"/v1/models/{TEXT_MODEL}:predict", "predict", {"instances": ["hi"]}, 200),
        ("GET", "/v1/models", "read", None, 200),
        ("GET", f"/v1/models/{TEXT_MODEL}", "read", None, 200),
        ("GET", "/metrics", "read", None, 200),
        ("GET", "/openapi.json", "read", None, 200),
        (
            "POST",
            f"/v1/models/{TEXT_MODEL}/feedback",
            "feedback",
            {"prediction_id": prediction_id, "correct": True},
            201,
        ),
        ("GET", f"/v1/models/{TEXT_MODEL}/feedback", "review", None, 200),
        ("GET", f"/v1/models/{TEXT_MODEL}/review", "review", None, 200),
        ("POST", f"/v1/models/{TEXT_MODEL}:reload", "reload", None, 200),
    ]


ALLOWED = {
    "client": {"predict", "read"},
    "annotator": {"predict", "read", "feedback", "review"},
    "operator": {"predict", "read", "feedback", "review", "reload"},
    "admin": {"predict", "read", "feedback", "review", "reload"},
}


def test_auth_matrix_over_every_endpoint_and_role(
    server: str, store: Store, prediction_id: str
) -> None:
    with httpx.Client(base_url=server, timeout=30) as client:
        for method, path, permission, body, ok in endpoints(prediction_id):
            r = client.request(method, path, json=body)
            assert r.status_code == 401, (path, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer")
            for role in ROLES:
                r = client.request(method, path, json=body, headers=auth(store, role))
                want = ok if permission in ALLOWED[role] else 403
                assert r.status_code == want, (role, method, path, r.text)
        for path in ("/healthz", "/readyz"):
            assert client.get(path).status_code == 200


def test_bad_tokens_are_401(server: str, store: Store) -> None:
    from aifab.security.tokens import issue_token

    revoked, token = issue_token("test-revoked", "admin")
    store.meta.add_token(token)
    store.meta.revoke_token(token.id)
    _, unknown_token = issue_token("never-stored", "admin")
    good = store.tokens["admin"]
    wrong_secret = good[:-1] + ("A" if good[-1] != "A" else "B")
    unknown = f"afb_{unknown_token.id}_" + "x" * 43
    cases = {
        "malformed": ("Bearer afb_nope", "malformed API token"),
        "unknown": (f"Bearer {unknown}", "unknown"),
        "wrong secret": (f"Bearer {wrong_secret}", "wrong secret"),
        "revoked": (f"Bearer {revoked}", "revoked"),
        "not bearer": (f"Basic {good}", "expected 'Bearer <token>'"),
    }
    for case, (header, message) in cases.items():
        r = httpx.get(f"{server}/v1/models", headers={"Authorization": header})
        assert r.status_code == 401, case
        assert message in r.json()["error"]["message"], case
        assert r.headers["www-authenticate"].startswith("Bearer"), case
        assert "afb_" not in r.text.replace("afb_<", ""), case  # never echoes a token


def test_a_verified_token_is_cached(
    server: str, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aifab.security.tokens import issue_token

    plaintext, token = issue_token("test-cached", "client")
    store.meta.add_token(token)
    lookups: list[str] = []
    original = store.meta.get_token

    def counted(token_id: str) -> Any:
        lookups.append(token_id)
        return original(token_id)

    monkeypatch.setattr(store.meta, "get_token", counted)
    with httpx.Client(base_url=server, headers={"Authorization": f"Bearer {plaintext}"}) as client:
        assert [client.get("/v1/models").status_code for _ in range(5)] == [200] * 5
    assert lookups == [token.id]


def test_a_burst_of_requests_with_a_new_token_checks_it_once(
    server: str, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aifab.security.tokens import issue_token

    plaintext, token = issue_token("test-burst", "client")
    store.meta.add_token(token)
    lookups: list[str] = []
    original = store.meta.get_token

    def counted(token_id: str) -> Any:
        lookups.append(token_id)
        return original(token_id)

    monkeypatch.setattr(store.meta, "get_token", counted)

    async def burst() -> list[int]:
        headers = {"Authorization": f"Bearer {plaintext}"}
        async with httpx.AsyncClient(base_url=server, headers=headers) as client:
            answers = await asyncio.gather(*(client.get("/v1/models") for _ in range(16)))
        return [a.status_code for a in answers]

    assert asyncio.run(burst()) == [200] * 16
    assert lookups == [token.id]  # one scrypt check shared, not one per request


def test_tokens_never_reach_the_logs(
    server: str, store: Store, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: LoadedModel, inputs: Any, **kw: Any) -> Any:
        raise RuntimeError("model exploded")

    caplog.set_level(logging.DEBUG)
    token = store.tokens["client"]
    monkeypatch.setattr(LoadedModel, "predict", broken)
    r = httpx.post(
        f"{server}/v1/models/{TEXT_MODEL}:predict",
        json={"instances": ["x"]},
        headers=auth(store, "client"),
    )
    assert r.status_code == 500
    httpx.get(f"{server}/v1/models", headers={"Authorization": f"Bearer {token[:-3]}"})
    assert "model exploded" in caplog.text  # the log was captured ...
    assert (
        token not in caplog.text and token.split("_")[2] not in caplog.text
    )  # ... without the token


# -- errors and limits ----------------------------------------------------------------------


def test_error_shape_golden(server: str, store: Store) -> None:
    client = auth(store, "client")
    golden = {
        401: (
            httpx.get(f"{server}/v1/models"),
            {
                "error": {
                    "code": "unauthorized",
                    "message": "no API token; send the header 'Authorization: Bearer <token>'",
                }
            },
        ),
        403: (
            httpx.post(f"{server}/v1/models/{TEXT_MODEL}:reload", headers=client),
            {
                "error": {
                    "code": "forbidden",
                    "message": "role 'client' may not reload; needs operator or above",
                    "details": {"role": "client", "permission": "reload", "needs": "operator"},
                }
            },
        ),
        404: (
            httpx.get(f"{server}/v1/models/nope", headers=client),
            {
                "error": {
                    "code": "not_found",
                    "message": "model 'nope' is not served here; served models: shapes, sms",
                    "details": {"model": "nope", "served": ["shapes", "sms"]},
                }
            },
        ),
        413: (
            httpx.post(
                f"{server}/v1/models/{TEXT_MODEL}:predict", content=b"x" * 200_001, headers=client
            ),
            {
                "error": {
                    "code": "limit_exceeded",
                    "message": "request body: more than max_body_bytes=200000 bytes",
                    "details": {"limit": "max_body_bytes", "value": 200000},
                }
            },
        ),
        422: (
            httpx.post(
                f"{server}/v1/models/{TEXT_MODEL}:predict", json={"instances": [5]}, headers=client
            ),
            {
                "error": {
                    "code": "invalid_input",
                    "message": 'instances[0]: expected a string, {"text": "..."} or {"b64": "..."}',
                }
            },
        ),
    }
    for status, (response, body) in golden.items():
        assert (response.status_code, response.json()) == (status, body)
        assert response.headers["content-type"] == "application/json"
    unknown_route = httpx.get(f"{server}/nowhere", headers=client)
    assert unknown_route.json() == {
        "error": {"code": "not_found", "message": "no such endpoint: GET /nowhere"}
    }
    query = httpx.get(
        f"{server}/v1/models/{TEXT_MODEL}/feedback?limit=0", headers=auth(store, "annotator")
    )
    assert query.status_code == 422 and query.json()["error"]["message"].startswith("query.limit: ")


def test_every_limit_is_enforced_and_named(server: str, store: Store) -> None:
    headers = auth(store, "client")
    predict = f"{server}/v1/models/{TEXT_MODEL}:predict"
    images = f"{server}/v1/models/{IMAGE_MODEL}:predict"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        yield b'{"instances": ["'
        for _ in range(30):
            yield b"y" * 10_000

    cases: list[tuple[str, httpx.Response, int, str]] = [
        (
            "chunked body",
            httpx.post(predict, content=chunks(), headers=headers),
            413,
            "max_body_bytes=200000",
        ),
        (
            "instances",
            httpx.post(predict, json={"instances": ["a"] * 65}, headers=headers),
            413,
            "max_instances=64",
        ),
        (
            "text length",
            httpx.post(predict, json={"instances": ["a" * 501]}, headers=headers),
            422,
            "max_text_chars=500",
        ),
        (
            "image pixels",
            httpx.post(
                images, json={"instances": [b64(png_bytes(seed=1, size=80))]}, headers=headers
            ),
            422,
            "max_image_pixels=4096",
        ),
        (
            "base64",
            httpx.post(images, json={"instances": [{"b64": "not base64!"}]}, headers=headers),
            422,
            "not valid base64",
        ),
        (
            "not an image",
            httpx.post(images, json={"instances": [b64(b"hello")]}, headers=headers),
            422,
            "not an image",
        ),
        (
            "text to image model",
            httpx.post(images, json={"instances": ["hi"]}, headers=headers),
            422,
            "takes images",
        ),
        (
            "image to text model",
            httpx.post(predict, json={"instances": [b64(b"x")]}, headers=headers),
            422,
            "takes text",
        ),
        (
            "no instances",
            httpx.post(predict, json={"instances": []}, headers=headers),
            422,
            "empty",
        ),
        (
            "uploaded files",
            httpx.post(
                images,
                files=[("file", (f"{i}.png", b"x", "image/png")) for i in range(65)],
                headers=headers,
            ),
            413,
            "max_instances=64",
        ),
    ]
    for case, response, status, named in cases:
        assert response.status_code == status, (case, response.text)
        assert named in response.json()["error"]["message"], (case, response.text)
    # After all that, the server still answers.
    assert httpx.post(predict, json={"instances": ["ok"]}, headers=headers).status_code == 200


def test_a_bad_batch_member_fails_alone_and_500s_say_nothing_internal(
    server: str, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = LoadedModel.predict

    def fragile(self: LoadedModel, inputs: Any, **kw: Any) -> Any:
        if any("boom" in x for x in inputs):
            raise RuntimeError("secret internals at /srv/model.py line 3")
        return original(self, inputs, **kw)

    monkeypatch.setattr(LoadedModel, "predict", fragile)

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=server, headers=auth(store, "client"), timeout=30
        ) as client:
            bodies = [{"instances": [HAM[i]]} for i in range(6)] + [{"instances": ["boom"]}]
            return await asyncio.gather(
                *(client.post(f"/v1/models/{TEXT_MODEL}:predict", json=b) for b in bodies)
            )

    *good, bad = asyncio.run(fire())
    assert [r.status_code for r in good] == [200] * 6
    assert bad.status_code == 500
    assert bad.json() == {
        "error": {
            "code": "internal_error",
            "message": "internal server error; the server log has the details",
        }
    }


# -- feedback and review --------------------------------------------------------------------


def test_feedback_round_trip_and_review_queue(server: str, store: Store) -> None:
    client, annotator = auth(store, "client"), auth(store, "annotator")
    base = f"{server}/v1/models/{TEXT_MODEL}"
    predictions = httpx.post(
        f"{base}:predict", json={"instances": [SPAM[1], HAM[1], SPAM[2]]}, headers=client
    ).json()["predictions"]
    corrected, untouched, newclass = (p["prediction_id"] for p in predictions)

    r = httpx.post(
        f"{base}/feedback",
        json={"prediction_id": corrected, "label": "ham", "comment": "not spam"},
        headers=annotator,
    )
    assert r.status_code == 201, r.text
    stored = r.json()
    assert (stored["prediction_id"], stored["label"], stored["comment"], stored["actor"]) == (
        corrected,
        "ham",
        "not spam",
        "test-annotator",
    )

    listed = httpx.get(f"{base}/feedback?limit=50", headers=annotator).json()["feedback"]
    assert stored["id"] in [f["id"] for f in listed]

    unknown = httpx.post(
        f"{base}/feedback", json={"prediction_id": "f" * 32, "label": "ham"}, headers=annotator
    )
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    bad = httpx.post(
        f"{base}/feedback",
        json={"prediction_id": untouched, "label": "phishing"},
        headers=annotator,
    )
    assert bad.status_code == 422 and "phishing" in bad.json()["error"]["message"]
    new = httpx.post(
        f"{base}/feedback",
        json={"prediction_id": newclass, "label": "phishing", "new_class": True},
        headers=annotator,
    )
    assert new.status_code == 201 and new.json()["new_class"] is True
    typo = httpx.post(
        f"{base}/feedback", json={"prediction_id": untouched, "lable": "ham"}, headers=annotator
    )
    assert typo.status_code == 422 and "lable" in typo.json()["error"]["message"]

    queue = httpx.get(f"{base}/review?limit=1000", headers=annotator).json()["predictions"]
    ids = [p["id"] for p in queue]
    assert untouched in ids and corrected not in ids and newclass not in ids
    margins = [p["margin"] for p in queue]
    assert margins == sorted(margins)
    for p in queue:
        top = sorted(p["scores"].values(), reverse=True)
        assert p["margin"] == pytest.approx(top[0] - top[1])
    assert httpx.get(f"{base}/review?limit=2", headers=annotator).json()["predictions"] == queue[:2]


# -- hot swap, overload, startup ------------------------------------------------------------


def test_hot_swap_under_load_fails_no_request(tmp_path: Path, bundles: Bundles) -> None:
    store = make_store(tmp_path, bundles)
    app = create_app(
        meta=store.meta,
        artifacts=store.artifacts,
        models=[TEXT_MODEL],
        poll_seconds=0.1,
        max_wait_ms=50,
    )
    with running(app) as url:
        headers = auth(store, "client")
        statuses: list[int] = []
        versions: list[int] = []
        stop = asyncio.Event()

        async def client_loop(client: httpx.AsyncClient, i: int) -> None:
            while not stop.is_set():
                r = await client.post(
                    f"/v1/models/{TEXT_MODEL}:predict", json={"instances": [SPAM[i], HAM[i]]}
                )
                statuses.append(r.status_code)
                if r.status_code == 200:
                    versions.extend(p["model_version"] for p in r.json()["predictions"])

        async def scenario() -> None:
            async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
                tasks = [asyncio.create_task(client_loop(client, i)) for i in range(4)]
                await asyncio.sleep(0.3)
                v2 = await asyncio.to_thread(
                    register,
                    store.meta,
                    store.artifacts,
                    TEXT_MODEL,
                    "text-classification",
                    bundles.text,
                )
                assert v2.version == 2
                for _ in range(200):  # the poller swaps within a few polls
                    await asyncio.sleep(0.05)
                    if versions and versions[-1] == 2:
                        break
                await asyncio.sleep(0.3)  # keep the load on after the swap
                stop.set()
                await asyncio.gather(*tasks)

        asyncio.run(scenario())
        assert statuses and set(statuses) == {200}, sorted(set(statuses))
        assert versions[0] == 1 and versions[-1] == 2
        assert versions.index(2) > 0 and 1 not in versions[versions.index(2) + 8 :]  # no going back

        assert httpx.get(f"{url}/readyz").json() == {"status": "ready", "models": {TEXT_MODEL: 2}}
    store.meta.dispose()


def test_overload_gives_503_with_retry_after_then_recovers_and_reload_swaps(
    tmp_path: Path, bundles: Bundles, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    original = LoadedModel.predict

    def slow(self: LoadedModel, inputs: Any, **kw: Any) -> Any:
        time.sleep(0.2)
        return original(self, inputs, **kw)

    store = make_store(tmp_path, bundles)
    app = create_app(
        meta=store.meta,
        artifacts=store.artifacts,
        models=[TEXT_MODEL],
        auth=False,
        max_batch_size=1,
        max_wait_ms=0,
        queue_size=2,
        poll_seconds=0,
    )
    with running(app) as url:
        monkeypatch.setattr(LoadedModel, "predict", slow)

        async def fire() -> list[httpx.Response]:
            async with httpx.AsyncClient(
                base_url=url, timeout=30
            ) as client:  # no token: auth is off
                return await asyncio.gather(
                    *(
                        client.post(
                            f"/v1/models/{TEXT_MODEL}:predict", json={"instances": [HAM[i]]}
                        )
                        for i in range(8)
                    )
                )

        responses = asyncio.run(fire())
        refused = [r for r in responses if r.status_code == 503]
        # At least queue_size requests get in (more when the batch loop takes one between them).
        assert refused and len(refused) <= 8 - 2
        assert {r.status_code for r in responses} == {200, 503}
        assert all(
            r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "overloaded"
            for r in refused
        )
        monkeypatch.setattr(LoadedModel, "predict", original)
        r = httpx.post(f"{url}/v1/models/{TEXT_MODEL}:predict", json={"instances": [HAM[0]]})
        assert r.status_code == 200
        text = httpx.get(f"{url}/metrics").text
        assert metric_samples(text, "aifab_http_errors_total")[(("code", "overloaded"),)] == len(
            refused
        )
        # With the poller off, POST :reload is what swaps in a new production version.
        register(store.meta, store.artifacts, TEXT_MODEL, "text-classification", bundles.text)
        r = httpx.post(f"{url}/v1/models/{TEXT_MODEL}:predict", json={"instances": ["hi"]})
        assert r.json()["predictions"][0]["model_version"] == 1
        r = httpx.post(f"{url}/v1/models/{TEXT_MODEL}:reload")
        assert r.json() == {"name": TEXT_MODEL, "version": 2, "previous": 1, "changed": True}
        r = httpx.post(f"{url}/v1/models/{TEXT_MODEL}:predict", json={"instances": ["hi"]})
        assert r.json()["predictions"][0]["model_version"] == 2
        again = httpx.post(f"{url}/v1/models/{TEXT_MODEL}:reload").json()
        assert again == {"name": TEXT_MODEL, "version": 2, "previous": 2, "changed": False}
    store.meta.dispose()


def test_startup_serves_production_versions_and_refuses_a_named_model_without_one(
    tmp_path: Path, bundles: Bundles
) -> None:
    store = make_store(tmp_path, bundles)
    register(
        store.meta, store.artifacts, "draft", "text-classification", bundles.text, production=False
    )

    async def served(app: Any, wait_for: str | None = None) -> list[str]:
        async with app.router.lifespan_context(app):
            names = [m.name for m in app.state.registry.served()]
            if wait_for is not None:
                store.meta.set_alias(wait_for, "production", 1)
                for _ in range(100):
                    await asyncio.sleep(0.05)
                    if wait_for in [m.name for m in app.state.registry.served()]:
                        return names + [f"later:{wait_for}"]
            return names

    everything = create_app(meta=store.meta, artifacts=store.artifacts, poll_seconds=0.05)
    assert asyncio.run(served(everything, wait_for="draft")) == [
        IMAGE_MODEL,
        TEXT_MODEL,
        "later:draft",
    ]
    store.meta.delete_alias("draft", "production")
    named = create_app(meta=store.meta, artifacts=store.artifacts, models=["draft"])
    with pytest.raises(ConfigError, match="'draft' has no 'production' alias"):
        asyncio.run(served(named))
    store.meta.dispose()


def test_a_version_that_fails_to_load_leaves_the_old_one_serving(
    tmp_path: Path, bundles: Bundles
) -> None:
    from aifab.core.errors import IntegrityError

    store = make_store(tmp_path, bundles)
    broken = {**bundles.text, "weights.safetensors": b"not safetensors at all"}

    async def scenario() -> tuple[int, Any, list[Any]]:
        app = create_app(
            meta=store.meta, artifacts=store.artifacts, models=[TEXT_MODEL], poll_seconds=0.05
        )
        registry = app.state.registry
        async with app.router.lifespan_context(app):
            await asyncio.to_thread(
                register, store.meta, store.artifacts, TEXT_MODEL, "text-classification", broken
            )
            await asyncio.sleep(0.4)  # several polls: each sees the move, none may swap
            with pytest.raises(IntegrityError, match="weights do not load"):
                await registry.reload(TEXT_MODEL)
            return (
                registry.get(TEXT_MODEL).number,
                registry.ready,
                await registry.predict(TEXT_MODEL, [HAM[0]]),
            )

    number, ready, answers = asyncio.run(scenario())
    assert (number, ready) == (1, True)
    assert answers[0]["model_version"] == 1 and answers[0]["label"] == "ham"
    store.meta.dispose()


# -- metrics, docs, helpers -----------------------------------------------------------------


def test_metrics_label_routes_by_template_and_track_queues(server: str, store: Store) -> None:
    headers = auth(store, "client")
    httpx.get(f"{server}/v1/models/{TEXT_MODEL}", headers=headers)
    httpx.get(f"{server}/no/such/path", headers=headers)
    text = httpx.get(f"{server}/metrics", headers=headers).text
    requests = metric_samples(text, "aifab_http_requests_total")
    routes = {dict(k)["route"] for k in requests}
    assert "/v1/models/{name}" in routes and "unmatched" in routes
    assert not any(TEXT_MODEL in r for r in routes)
    assert (("model", TEXT_MODEL),) in metric_samples(text, "aifab_queue_depth")
    assert metric_samples(text, "aifab_model_version")[(("model", TEXT_MODEL),)] == 1


def test_openapi_document_and_no_cdn_docs_pages(server: str, store: Store) -> None:
    headers = auth(store, "client")
    doc = httpx.get(f"{server}/openapi.json", headers=headers).json()
    predict = doc["paths"]["/v1/models/{name}:predict"]["post"]
    ref = predict["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/PredictRequest"
    assert "instances" in doc["components"]["schemas"]["PredictRequest"]["properties"]
    assert "TextInstance" in doc["components"]["schemas"]
    assert "multipart/form-data" in predict["requestBody"]["content"]
    for page in ("/docs", "/redoc"):
        assert httpx.get(f"{server}{page}", headers=headers).status_code == 404


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_no_auth_is_allowed_on_loopback(host: str) -> None:
    check_no_auth_host(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "example.com", ""])
def test_no_auth_is_refused_elsewhere(host: str) -> None:
    with pytest.raises(ConfigError, match="not a loopback address"):
        check_no_auth_host(host)


def test_limits_are_strict_config() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        ServeLimits(max_body_byte=10)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        ServeLimits(max_instances=0)
