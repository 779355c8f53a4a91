"""API tokens: format, hashing, verification, redaction, authentication and its cache."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from aifab.core.errors import AuthError, InputError, NotFound
from aifab.core.types import Token
from aifab.security.tokens import (
    TokenCache,
    authenticate,
    hash_secret,
    issue_token,
    new_token,
    parse_token,
    redact,
    verify,
)
from aifab.store import MetadataStore

WELL_FORMED = "afb_0123456789ab_" + "Ab-_" * 10 + "xyz"  # 12 hex, 43 URL-safe characters


def other_char(c: str) -> str:
    return "A" if c != "A" else "B"


def test_new_tokens_have_the_documented_shape_and_are_distinct() -> None:
    plaintext, token_id, secret = new_token()
    assert plaintext == f"afb_{token_id}_{secret}"
    assert len(token_id) == 12 and all(c in "0123456789abcdef" for c in token_id)
    assert len(secret) == 43
    assert parse_token(plaintext) == (token_id, secret)
    assert len({new_token()[0] for _ in range(20)}) == 20


def test_round_trip_and_a_wrong_secret_or_salt_fails() -> None:
    plaintext, stored = issue_token("ci", "annotator")
    token_id, secret = parse_token(plaintext)
    assert token_id == stored.id and stored.role == "annotator" and stored.name == "ci"
    assert verify(secret, stored.salt, stored.secret_hash)
    assert not verify(secret[:-1] + other_char(secret[-1]), stored.salt, stored.secret_hash)
    assert not verify(secret, stored.salt + "0", stored.secret_hash)
    # Only a salted scrypt hash is kept, never the secret.
    assert secret not in stored.secret_hash and secret not in repr(stored)
    assert stored.secret_hash.startswith("scrypt$14$8$1$")
    assert hash_secret(secret, stored.salt) == stored.secret_hash  # deterministic for a salt
    assert hash_secret(secret, "another-salt") != stored.secret_hash


def test_the_hash_is_scrypt_with_the_documented_parameters() -> None:
    expected = hashlib.scrypt(b"pw", salt=b"salt", n=2**14, r=8, p=1, dklen=32).hex()
    assert hash_secret("pw", "salt") == f"scrypt$14$8$1${expected}"


@pytest.mark.parametrize(
    "stored",
    ["", "plain", "scrypt$14$8$1", "md5$14$8$1$00", "scrypt$x$8$1$00", "scrypt$30$8$1$00"],
)
def test_a_stored_hash_in_an_unknown_format_verifies_nothing(stored: str) -> None:
    assert verify("pw", "salt", stored) is False


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "afb_",
        "afb_0123456789ab",
        "afb_0123456789AB_" + "x" * 43,  # upper-case id
        "afb_0123456789a_" + "x" * 44,  # 11-character id
        "afb_0123456789ab_" + "x" * 42,  # secret too short
        "afb_0123456789ab_" + "x" * 44,  # secret too long
        "afb_0123456789ab_" + "x" * 42 + "!",  # not URL-safe
        "xfb_0123456789ab_" + "x" * 43,
        " " + WELL_FORMED,
        WELL_FORMED + "\n",
        "Bearer " + WELL_FORMED,
    ],
)
def test_malformed_tokens_raise_auth_error_without_echoing_them(bad: str) -> None:
    with pytest.raises(AuthError) as info:
        parse_token(bad)
    text = str(info.value) + repr(info.value.details)
    assert info.value.http_status == 401
    assert "expected afb_<12 hex characters>" in text
    if len(bad.strip()) > len("afb_"):  # the message itself says what a token starts with
        assert bad.strip() not in text
    assert "x" * 8 not in text and "Ab-_Ab" not in text


def test_non_string_tokens_are_malformed() -> None:
    with pytest.raises(AuthError, match="malformed"):
        parse_token(None)  # type: ignore[arg-type]


def test_redact_masks_every_token_and_keeps_the_rest() -> None:
    plaintext, _, secret = new_token()
    line = f"GET /v1/models token={plaintext} and Authorization: Bearer {WELL_FORMED}; done"
    out = redact(line)
    assert out == "GET /v1/models token=afb_*** and Authorization: Bearer afb_***; done"
    assert secret not in out
    assert redact("afb_half-typed") == "afb_***"  # malformed tokens are masked too
    assert redact("nothing here") == "nothing here"


def test_issue_token_refuses_an_unknown_role() -> None:
    with pytest.raises(InputError, match="did you mean 'admin'"):
        issue_token("ci", "admni")


# -- authentication ---------------------------------------------------------------------------


class Lookup:
    """A stand-in for MetadataStore.get_token that counts its calls."""

    def __init__(self, *tokens: Token) -> None:
        self.tokens = {t.id: t for t in tokens}
        self.calls = 0

    def __call__(self, token_id: str) -> Token:
        self.calls += 1
        if token_id not in self.tokens:
            raise NotFound(f"token {token_id!r} not found")
        return self.tokens[token_id]


@pytest.fixture(scope="module")
def issued() -> tuple[str, Token]:
    return issue_token("ci", "operator")  # one scrypt hash for the whole module


def test_authenticate_returns_the_stored_token(issued: tuple[str, Token]) -> None:
    plaintext, stored = issued
    assert authenticate(plaintext, Lookup(stored)) == stored


def test_authenticate_refuses_unknown_revoked_and_wrong_tokens(issued: tuple[str, Token]) -> None:
    plaintext, stored = issued
    _, secret = parse_token(plaintext)
    wrong = plaintext[:-1] + other_char(plaintext[-1])
    revoked = dataclasses.replace(stored, revoked_at=datetime(2024, 1, 1, tzinfo=timezone.utc))
    cases = [
        (plaintext, Lookup(), "unknown"),
        (plaintext, Lookup(revoked), "revoked"),
        (wrong, Lookup(stored), "wrong secret"),
        ("afb_nope", Lookup(stored), "malformed"),
    ]
    for given, lookup, reason in cases:
        with pytest.raises(AuthError, match=reason) as info:
            authenticate(given, lookup)
        text = str(info.value) + repr(info.value.details)
        assert secret[:8] not in text and given not in text


def test_the_cache_skips_the_lookup_and_expires(issued: tuple[str, Token]) -> None:
    plaintext, stored = issued
    now = [100.0]
    cache = TokenCache(ttl_s=60, clock=lambda: now[0])
    lookup = Lookup(stored)
    for _ in range(3):
        assert authenticate(plaintext, lookup, cache=cache) == stored
    assert lookup.calls == 1
    now[0] += 59.0
    authenticate(plaintext, lookup, cache=cache)
    assert lookup.calls == 1
    now[0] += 1.0  # 60 s after it was verified: checked again
    authenticate(plaintext, lookup, cache=cache)
    assert lookup.calls == 2


def test_failures_are_never_cached_and_forget_drops_a_revoked_token(
    issued: tuple[str, Token],
) -> None:
    plaintext, stored = issued
    cache = TokenCache()
    wrong = plaintext[:-1] + other_char(plaintext[-1])
    for _ in range(2):
        with pytest.raises(AuthError):
            authenticate(wrong, Lookup(stored), cache=cache)
    assert cache.get(wrong) is None
    authenticate(plaintext, Lookup(stored), cache=cache)
    revoked = Lookup(dataclasses.replace(stored, revoked_at=datetime.now(timezone.utc)))
    assert authenticate(plaintext, revoked, cache=cache) == stored  # still cached
    cache.forget(stored.id)
    with pytest.raises(AuthError, match="revoked"):
        authenticate(plaintext, revoked, cache=cache)


def test_the_cache_drops_the_least_recently_used() -> None:
    cache = TokenCache(maxsize=2)
    tokens = {k: Token(id=k * 12, name=k, role="client", salt="s", secret_hash="h",
                       created_at=datetime(2024, 1, 1, tzinfo=timezone.utc)) for k in "abc"}
    cache.put("afb_a", tokens["a"])
    cache.put("afb_b", tokens["b"])
    assert cache.get("afb_a") == tokens["a"]  # a is now the most recently used
    cache.put("afb_c", tokens["c"])
    assert cache.get("afb_b") is None
    assert cache.get("afb_a") == tokens["a"] and cache.get("afb_c") == tokens["c"]


@pytest.fixture
def meta(tmp_path: Path) -> Iterator[MetadataStore]:
    store = MetadataStore(f"sqlite:///{tmp_path / 'aifab.db'}")
    store.migrate()
    yield store
    store.dispose()


def test_end_to_end_with_the_metadata_store(meta: MetadataStore, issued: tuple[str, Token]) -> None:
    plaintext, stored = issued
    meta.add_token(stored)
    assert authenticate(plaintext, meta.get_token).role == "operator"
    meta.revoke_token("ci")
    with pytest.raises(AuthError, match="revoked"):
        authenticate(plaintext, meta.get_token)
    with pytest.raises(AuthError, match="unknown"):
        authenticate(new_token()[0], meta.get_token)
