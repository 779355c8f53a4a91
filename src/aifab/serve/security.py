"""What the server adds to every answer, which origins may call it, and what its logs may hold.

Security headers (:data:`SECURITY_HEADERS`) go on every answer, errors included; a header the
app set itself is kept. The server renders no HTML (its API answers JSON and Prometheus text;
the Swagger UI and ReDoc pages are off because they load JavaScript from a CDN), so the
Content-Security-Policy allows nothing at all, and ``Cache-Control: no-store`` keeps
predictions and feedback out of browser and proxy caches.

CORS is off unless origins are listed (:func:`cors_options`): bearer tokens, never cookies, so
no credentials mode; only the methods and headers the API uses.

Logs: :class:`RedactTokens` masks anything shaped like an API token in a log record, the
access log's request line included (a client may put a token in a query string);
:func:`uvicorn_log_config` is uvicorn's own logging setup with that filter on every handler.

Permissions: :func:`mark_permission` tags the dependency that checks a route's permission,
and :func:`route_permissions` reads the tags back, so tests and docs enumerate what each
route needs from the app itself.

>>> dict(SECURITY_HEADERS)["x-content-type-options"]
'nosniff'
>>> cors_options(["https://shop.example.com"])["allow_credentials"]
False
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from aifab.security.tokens import redact
from aifab.serve.limits import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "SECURITY_HEADERS",
    "RedactTokens",
    "SecurityHeadersMiddleware",
    "cors_options",
    "mark_permission",
    "route_permissions",
    "uvicorn_log_config",
]

SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("x-content-type-options", "nosniff"),  # a JSON answer is never sniffed into HTML or script
    ("x-frame-options", "DENY"),  # no page of ours in anyone's frame (old browsers)
    ("referrer-policy", "no-referrer"),
    # No HTML is served: nothing may load, run or frame. (Swagger UI would need a CDN.)
    ("content-security-policy", "default-src 'none'; frame-ancestors 'none'"),
    ("cache-control", "no-store"),  # predictions and feedback are per caller: never cached
)
PERMISSION_ATTR = "aifab_permission"
F = TypeVar("F", bound=Callable[..., Any])


class SecurityHeadersMiddleware:
    """Adds :data:`SECURITY_HEADERS` to every HTTP answer that lacks them (pure ASGI, so it
    also covers answers of the middlewares inside it, such as a 413 for a large body)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in SECURITY_HEADERS]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def secured_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in self.headers if k not in present]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, secured_send)


def cors_options(origins: Sequence[str]) -> dict[str, Any]:
    """Keyword arguments of Starlette's ``CORSMiddleware`` for ``origins`` (exact
    ``scheme://host[:port]`` strings): the API's methods and headers, no cookies.

    >>> cors_options(["http://localhost:3000"])["allow_headers"]
    ['authorization', 'content-type']
    """
    return {
        "allow_origins": list(origins),
        "allow_methods": ["GET", "POST"],
        "allow_headers": ["authorization", "content-type"],
        "allow_credentials": False,  # tokens travel in a header the page sets, not in cookies
        "expose_headers": ["retry-after"],
        "max_age": 600,
    }


class RedactTokens(logging.Filter):
    """Masks API tokens (``afb_...``) in a record's message and arguments; drops no record.

    The arguments are masked one by one rather than merged into the message, because
    uvicorn's access-log formatter reads them by position.

    >>> record = logging.LogRecord("uvicorn.access", 20, "", 0, '%s "%s %s"', (
    ...     "127.0.0.1", "GET", "/v1/models?key=afb_0123456789ab_secret"), None)
    >>> RedactTokens().filter(record), record.getMessage()
    (True, '127.0.0.1 "GET /v1/models?key=afb_***"')
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_masked(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _masked(v) for k, v in record.args.items()}
        return True


def _masked(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bytes):
        return redact(value.decode("latin-1")).encode("latin-1")
    return value


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's default logging setup with :class:`RedactTokens` on every handler (pass it
    as ``uvicorn.Config(log_config=...)``; the access log itself is ``access_log=``).

    >>> config = uvicorn_log_config()
    >>> all(h["filters"] == ["redact_tokens"] for h in config["handlers"].values())
    True
    """
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_tokens"] = {"()": f"{__name__}.RedactTokens"}
    for handler in config["handlers"].values():
        handler["filters"] = [*handler.get("filters", []), "redact_tokens"]
    return config


def mark_permission(dependency: F, permission: str) -> F:
    """Tag ``dependency`` as the check of ``permission`` (read by :func:`route_permissions`)."""
    setattr(dependency, PERMISSION_ATTR, permission)
    return dependency


def route_permissions(routes: Iterable[Any]) -> dict[tuple[str, str], str | None]:
    """``(method, path) -> permission`` of every FastAPI route in ``routes`` (an app's
    ``app.routes``), None for a route no permission check guards.

    >>> from fastapi import Depends, FastAPI
    >>> app = FastAPI()
    >>> check = mark_permission(lambda: None, "read")
    >>> _ = app.get("/models", dependencies=[Depends(check)])(lambda: {})
    >>> _ = app.get("/healthz")(lambda: {})
    >>> route_permissions(app.routes)
    {('GET', '/models'): 'read', ('GET', '/healthz'): None}
    """
    from fastapi.routing import APIRoute

    found: dict[tuple[str, str], str | None] = {}
    for route in routes:
        if not isinstance(route, APIRoute):
            continue
        permission = _permission(route.dependant)
        for method in sorted(route.methods):
            found[method, route.path] = permission
    return found


def _permission(dependant: Any) -> str | None:
    for sub in dependant.dependencies:
        permission = getattr(sub.call, PERMISSION_ATTR, None) or _permission(sub)
        if permission:
            return str(permission)
    return None
