"""The bad-input corpus over HTTP: a real server on 127.0.0.1 serving tiny real models.

Whatever a client sends, the answer is a 2xx with predictions for input that is merely
unusual (CMYK, 16-bit, alpha, animated images; NUL, right-to-left and emoji texts), or a
4xx in the one error shape naming what is wrong, never a 5xx.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.badinput.conftest import BAD_IMAGES, BAD_TEXTS, HUGE_TEXT, RTL_EMOJI
from tests.serve.conftest import IMAGE_MODEL, TEXT_MODEL, Bundles, Store, auth, make_store, running

IMAGE_URL = f"/v1/models/{IMAGE_MODEL}:predict"
TEXT_URL = f"/v1/models/{TEXT_MODEL}:predict"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, bundles: Bundles) -> Iterator[Store]:
    s = make_store(tmp_path_factory.mktemp("badinput-serve"), bundles)
    yield s
    s.meta.dispose()


@pytest.fixture(scope="module")
def client(store: Store) -> Iterator[httpx.Client]:
    from aifab.serve.app import create_app

    # Default limits: the corpus must be handled by the limits a real server runs with.
    app = create_app(meta=store.meta, artifacts=store.artifacts, max_wait_ms=5.0, poll_seconds=0)
    with running(app) as url, httpx.Client(base_url=url, headers=auth(store, "admin"), timeout=60) as c:
        yield c


def assert_error(response: httpx.Response, status: int, *says: str) -> dict[str, Any]:
    """A 4xx of ``status`` whose body is exactly the one error shape, its message naming ``says``."""
    assert response.status_code == status, response.text[:500]
    body = response.json()
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]) <= {"code", "message", "details"}
    for part in says:
        assert part in body["error"]["message"], body
    return body["error"]


def assert_predicted(response: httpx.Response, labels: set[str]) -> None:
    assert response.status_code == 200, response.text[:500]
    (answer,) = response.json()["predictions"]
    assert answer["label"] in labels and set(answer["scores"]) == labels
    assert answer["prediction_id"]


@pytest.mark.parametrize("name", list(BAD_IMAGES))
def test_bad_images_as_base64_and_as_upload(client: httpx.Client, name: str) -> None:
    data = BAD_IMAGES[name][0]()
    usable = BAD_IMAGES[name][1]
    as_json = client.post(IMAGE_URL, json={"instances": [{"b64": base64.b64encode(data).decode()}]})
    upload = client.post(IMAGE_URL, files=[("file", (name, data, "application/octet-stream"))])
    for response in (as_json, upload):
        if usable:
            assert_predicted(response, {"bright", "dark"})
        else:
            # The header is checked before decoding: the 2.5 gigapixel bomb allocates nothing.
            error = assert_error(response, 422, "instances[0]")
            assert error["code"] == "invalid_input"
    if name == "bomb.png":
        assert "2500000000 pixels" in as_json.json()["error"]["message"]
        assert "max_image_pixels" in as_json.json()["error"]["message"]


def test_a_bad_image_fails_alone_and_names_its_position(client: httpx.Client) -> None:
    from tests.badinput.conftest import encode, pattern

    good = base64.b64encode(encode(pattern(5), "PNG")).decode()
    bad = base64.b64encode(BAD_IMAGES["truncated.png"][0]()).decode()
    response = client.post(IMAGE_URL, json={"instances": [{"b64": good}, {"b64": bad}]})
    assert_error(response, 422, "instances[1].b64", "corrupt image")
    assert_predicted(client.post(IMAGE_URL, json={"instances": [{"b64": good}]}), {"bright", "dark"})


@pytest.mark.parametrize(
    ("text", "status", "says"),
    [
        (RTL_EMOJI, 200, ()),
        ("hello\x00 there, a NUL byte", 200, ()),
        (HUGE_TEXT, 422, ("instances[0]", "max_text_chars=100000")),
        ("", 200, ()),
    ],
    ids=["rtl-emoji", "nul", "huge", "empty"],
)
def test_texts(client: httpx.Client, text: str, status: int, says: tuple[str, ...]) -> None:
    response = client.post(TEXT_URL, json={"instances": [text]})
    if status == 200:
        assert_predicted(response, {"ham", "spam"})
    else:
        assert_error(response, status, *says)


def test_invalid_utf8_in_every_form_is_a_422(client: httpx.Client) -> None:
    raw = BAD_TEXTS["invalid_utf8"]
    body = b'{"instances": ["' + raw + b'"]}'
    assert_error(client.post(TEXT_URL, content=body, headers={"content-type": "application/json"}), 422)
    # JSON escapes of lone surrogates would reach the tokenizer as text it cannot encode.
    for escaped in ('{"instances": ["caf\\udce9"]}', '{"instances": [{"text": "\\ud800"}]}'):
        response = client.post(TEXT_URL, content=escaped, headers={"content-type": "application/json"})
        assert_error(response, 422, "Invalid JSON", "escape")
    upload = client.post(TEXT_URL, files=[("file", ("t.txt", raw, "text/plain"))])
    assert_error(upload, 422, "instances[0]", "UTF-8")


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b'{"instances": "just a string"}',
        b'{"instances": [1, 2.5, null]}',
        b'{"instances": [{"b64": "!!!"}]}',
        b'{"instances": [{"text": "ok", "extra": 1}]}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"instances": []}',
        json.dumps({"instances": [[["deep"]]]}).encode(),
    ],
    ids=["empty", "not-json", "not-a-list", "numbers", "bad-base64", "extra-key", "deep-nesting", "no-instances", "nested-lists"],
)
def test_malformed_bodies_are_4xx(client: httpx.Client, body: bytes) -> None:
    for url in (TEXT_URL, IMAGE_URL):
        response = client.post(url, content=body, headers={"content-type": "application/json"})
        assert 400 <= response.status_code < 500, (body[:60], response.status_code, response.text[:300])
        assert_error(response, response.status_code)


def test_too_many_instances_and_too_big_bodies_are_413(client: httpx.Client) -> None:
    many = client.post(TEXT_URL, json={"instances": ["hi"] * 257})
    assert_error(many, 413, "max_instances=256")
    huge = client.post(TEXT_URL, content=b'{"instances": ["' + b"a" * (17 << 20) + b'"]}', headers={"content-type": "application/json"})
    assert_error(huge, 413, "max_body_bytes")


def test_the_server_is_healthy_after_the_corpus(client: httpx.Client) -> None:
    assert_predicted(client.post(TEXT_URL, json={"instances": ["see you at the station at 5"]}), {"ham", "spam"})
    metrics = client.get("/metrics").text
    assert 'code="internal_error"' not in metrics  # no request of this module was a 500
