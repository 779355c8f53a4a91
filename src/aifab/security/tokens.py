"""API tokens: ``afb_<id>_<secret>``, stored as a salted scrypt hash, never in plaintext.

``id`` is 12 hex characters, kept in the clear to find the stored token; ``secret`` is
``secrets.token_urlsafe(32)`` (43 URL-safe characters, 256 bits), of which the store keeps
only ``scrypt(secret, salt)``. A token is shown once, when it is issued.

scrypt (n=2**14, r=8, p=1) costs about 16 MiB and tens of milliseconds per check, on purpose:
a leaked database does not give the tokens away cheaply. That is too slow for every request,
so a server keeps a :class:`TokenCache` (sha256 of the token -> the verified token, for about
60 s) and passes it to :func:`authenticate`. A revocation therefore takes effect in the serving
process after at most the cache's ``ttl_s``, or at once when the server calls
:meth:`TokenCache.forget`.

Tokens never go into logs or error messages: messages say what is wrong without echoing the
token, and :func:`redact` masks anything shaped like one in text that is about to be logged.

>>> plaintext, token = issue_token("ci", "client")
>>> token_id, secret = parse_token(plaintext)
>>> token_id == token.id, verify(secret, token.salt, token.secret_hash)
(True, True)
>>> redact(f"Authorization: Bearer {plaintext}")
'Authorization: Bearer afb_***'
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime, timezone

from aifab.core.errors import AuthError, NotFound
from aifab.core.types import Token
from aifab.security.roles import parse_role

PREFIX = "afb_"
ID_HEX = 12
_SECRET_BYTES = 32
_SECRET_CHARS = 43  # len(secrets.token_urlsafe(32)): base64url of 32 bytes, no padding
_TOKEN = re.compile(rf"afb_([0-9a-f]{{{ID_HEX}}})_([A-Za-z0-9_-]{{{_SECRET_CHARS}}})")
# Redaction over-matches on purpose: anything starting with afb_ is masked, well-formed or not.
_TOKEN_LIKE = re.compile(r"afb_[A-Za-z0-9_\-]*")
_SCHEME = "scrypt"
_LOG2_N, _R, _P, _DKLEN = 14, 8, 1, 32


def new_token() -> tuple[str, str, str]:
    """A fresh random token: ``(plaintext, id, secret)``.

    >>> plaintext, token_id, secret = new_token()
    >>> plaintext == f"afb_{token_id}_{secret}", len(token_id), len(secret)
    (True, 12, 43)
    """
    token_id = secrets.token_hex(ID_HEX // 2)
    secret = secrets.token_urlsafe(_SECRET_BYTES)
    return f"{PREFIX}{token_id}_{secret}", token_id, secret


def new_salt() -> str:
    """A random salt (32 hex characters).

    >>> len(new_salt())
    32
    """
    return secrets.token_hex(16)


def hash_secret(secret: str, salt: str) -> str:
    """``scrypt$<log2 n>$<r>$<p>$<hex digest>``: the parameters travel with the hash, so they
    can be raised later without breaking stored tokens.

    >>> hash_secret("s3cret", "00ff")[:14]
    'scrypt$14$8$1$'
    """
    digest = _scrypt(secret, salt, _LOG2_N, _R, _P)
    return f"{_SCHEME}${_LOG2_N}${_R}${_P}${digest.hex()}"


def verify(secret: str, salt: str, expected_hash: str) -> bool:
    """Whether ``secret`` hashes to ``expected_hash`` (compared in constant time). A stored hash
    in an unknown format verifies nothing.

    >>> stored = hash_secret("s3cret", "00ff")
    >>> verify("s3cret", "00ff", stored), verify("s3cre7", "00ff", stored)
    (True, False)
    """
    parts = expected_hash.split("$")
    if len(parts) != 5 or parts[0] != _SCHEME or not all(p.isdigit() for p in parts[1:4]):
        return False
    log2_n, r, p = (int(x) for x in parts[1:4])
    if not (1 <= log2_n <= 17 and 1 <= r <= 16 and 1 <= p <= 4):  # bounded: no memory bomb
        return False
    actual = _scrypt(secret, salt, log2_n, r, p).hex()
    return hmac.compare_digest(actual, parts[4])


def parse_token(plaintext: str) -> tuple[str, str]:
    """``(id, secret)`` of a token, or AuthError. The message never contains the token.

    >>> parse_token("afb_0123456789ab_" + "x" * 43)[0]
    '0123456789ab'
    >>> parse_token("afb_oops")
    Traceback (most recent call last):
    ...
    aifab.core.errors.AuthError: malformed API token; expected afb_<12 hex characters>_<43 URL-safe characters>
    """
    match = _TOKEN.fullmatch(plaintext) if isinstance(plaintext, str) else None
    if match is None:
        raise AuthError(
            f"malformed API token; expected {PREFIX}<{ID_HEX} hex characters>_"
            f"<{_SECRET_CHARS} URL-safe characters>"
        )
    return match.group(1), match.group(2)


def redact(text: str) -> str:
    """``text`` with every token-like ``afb_...`` replaced by ``afb_***``.

    >>> redact("token=afb_0123456789ab_abc-DEF_ghi; next")
    'token=afb_***; next'
    """
    return _TOKEN_LIKE.sub(f"{PREFIX}***", text)


def issue_token(name: str, role: str, *, now: datetime | None = None) -> tuple[str, Token]:
    """A new token for ``name`` with ``role``: the plaintext (show it once) and the
    :class:`~aifab.core.types.Token` to store. InputError for an unknown role.

    >>> plaintext, token = issue_token("labeler-1", "annotator")
    >>> token.role, plaintext.startswith(f"afb_{token.id}_"), token.secret_hash != plaintext
    ('annotator', True, True)
    """
    checked = parse_role(role)
    plaintext, token_id, secret = new_token()
    salt = new_salt()
    token = Token(
        id=token_id,
        name=name,
        role=checked,
        salt=salt,
        secret_hash=hash_secret(secret, salt),
        created_at=now or datetime.now(timezone.utc),
    )
    return plaintext, token


class TokenCache:
    """Recently verified tokens: sha256(plaintext) -> :class:`Token`, for ``ttl_s`` seconds, at
    most ``maxsize`` of them (least recently used dropped first). Thread-safe.

    Only successes are kept; a failed check is never cached, so a revoked or wrong token keeps
    failing. The key is a hash, so the cache holds no plaintext token.

    >>> cache = TokenCache(maxsize=2, ttl_s=60)
    >>> _, token = issue_token("ci", "client")
    >>> cache.put("afb_x", token)
    >>> cache.get("afb_x") == token, cache.get("afb_y")
    (True, None)
    """

    def __init__(
        self,
        *,
        maxsize: int = 1024,
        ttl_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.maxsize = maxsize
        self.ttl_s = ttl_s
        self.clock = clock
        self._entries: OrderedDict[str, tuple[Token, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, plaintext: str) -> Token | None:
        """The cached token for ``plaintext`` if verified less than ``ttl_s`` ago."""
        key = _cache_key(plaintext)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            token, expires = entry
            if self.clock() >= expires:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return token

    def put(self, plaintext: str, token: Token) -> None:
        """Remember that ``plaintext`` verified as ``token``."""
        key = _cache_key(plaintext)
        with self._lock:
            self._entries[key] = (token, self.clock() + self.ttl_s)
            self._entries.move_to_end(key)
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)

    def forget(self, token_id: str) -> None:
        """Drop every entry of one token (call it when the token is revoked)."""
        with self._lock:
            for key in [k for k, (t, _) in self._entries.items() if t.id == token_id]:
                del self._entries[key]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def authenticate(
    plaintext: str,
    lookup: Callable[[str], Token],
    *,
    cache: TokenCache | None = None,
) -> Token:
    """The stored token ``plaintext`` proves, or AuthError (malformed, unknown, revoked or a
    wrong secret). ``lookup`` finds a stored token by id and raises NotFound for an unknown one
    (``MetadataStore.get_token``). With a ``cache``, a token verified in the last ``ttl_s``
    seconds skips the lookup and the scrypt check.

    >>> plaintext, token = issue_token("ci", "operator")
    >>> authenticate(plaintext, {token.id: token}.__getitem__).role
    'operator'
    >>> wrong = plaintext[:-1] + ("A" if plaintext[-1] != "A" else "B")
    >>> authenticate(wrong, {token.id: token}.__getitem__)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    aifab.core.errors.AuthError: API token ...: wrong secret
    """
    if cache is not None and (hit := cache.get(plaintext)) is not None:
        return hit
    token_id, secret = parse_token(plaintext)
    try:
        token = lookup(token_id)
    except (NotFound, KeyError):
        raise AuthError(
            f"API token {token_id}: unknown; ask an admin for a token", details={"token": token_id}
        ) from None
    if token.revoked_at is not None:
        raise AuthError(
            f"API token {token_id} ({token.name!r}): revoked at {token.revoked_at.isoformat()}",
            details={"token": token_id},
        )
    if not verify(secret, token.salt, token.secret_hash):
        raise AuthError(f"API token {token_id}: wrong secret", details={"token": token_id})
    if cache is not None:
        cache.put(plaintext, token)
    return token


def _cache_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def _scrypt(secret: str, salt: str, log2_n: int, r: int, p: int) -> bytes:
    n = 1 << log2_n
    # scrypt needs about 128 * n * r bytes; allow that plus slack (OpenSSL's default cap is 32 MiB).
    return hashlib.scrypt(
        secret.encode("utf-8"),
        salt=salt.encode("utf-8"),
        n=n,
        r=r,
        p=p,
        dklen=_DKLEN,
        maxmem=128 * n * r + (1 << 20),
    )
