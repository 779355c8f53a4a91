"""The HTTP server: an app factory with its dependencies injected; models load in ``lifespan``.

Endpoints (KServe / TF-Serving v1 shape) and the permission each needs
(see :mod:`aifab.security.roles`):

=====================================  ==========  ===========================================
endpoint                               permission  answer
=====================================  ==========  ===========================================
``GET  /healthz``                      none        liveness: the process answers
``GET  /readyz``                       none        200 when every model is loaded, else 503
``GET  /metrics``                      read        Prometheus text
``GET  /openapi.json``                 read        the OpenAPI document
``GET  /v1/models``                    read        every served model
``GET  /v1/models/{name}``             read        version, labels, input kind, multi-label
``POST /v1/models/{name}:predict``     predict     ``{"instances": [...]}`` or a multipart upload
                                                   -> ``{"predictions": [...]}``
``POST /v1/models/{name}:reload``      reload      serve the ``production`` version now
``POST /v1/models/{name}/feedback``    feedback    201 and the stored feedback
``GET  /v1/models/{name}/feedback``    review      feedback, newest first
``GET  /v1/models/{name}/review``      review      predictions without feedback, least sure first
``GET  /v1/models/{name}/versions``    read        every version: aliases, test metrics, gate
``GET  /v1/models/{name}/drift``       read        ``aifab drift NAME``: served inputs vs training
``POST /v1/models/{name}/versions/     models      run the quality gate; move ``production`` on a
{version}:promote``                                pass (``force``: admin) and serve it at once
``POST /v1/models/{name}:rollback``    models      ``production`` back one move; served at once
``GET  /v1/audit``                     models      every alias move (``?refused=true``: refusals)
=====================================  ==========  ===========================================

The last four need ``create_app(operations=...)`` (the promotion gate evaluates models, which
this layer cannot); without it they are not routes. Gate runs and drift run on a worker
thread, so predictions keep being answered meanwhile.

Every error has one JSON shape, ``{"error": {"code", "message"}}`` (plus ``details`` when
known), with the status of its :mod:`aifab.core.errors` class; 401 answers carry
``WWW-Authenticate: Bearer``, 503 answers ``Retry-After`` and so do 429 answers (a token over
its rate limit, :mod:`aifab.serve.ratelimit`). A failure the server did not expect is a 500
whose body says only that; the traceback goes to the log. Every answer carries the security
headers of :mod:`aifab.serve.security`; CORS is off unless ``config`` lists origins.

Authentication: ``Authorization: Bearer afb_<id>_<secret>``. A verified token is cached (by
the sha256 of the plaintext) for 60 s, so a request costs one dictionary lookup, not a
scrypt, and requests that bring the same unverified token at once share one check; a
revocation takes effect within that time. ``auth=False`` serves everyone as admin:
the CLI allows it only on a loopback host (:func:`check_no_auth_host`).

The Swagger UI and ReDoc pages load their JavaScript from a CDN, which a factory network may
not reach, so they are off; the OpenAPI document is served at ``/openapi.json``.

>>> check_no_auth_host("127.0.0.1")
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any, Protocol

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BeforeValidator, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from aifab.core.config import ServeConfig
from aifab.core.errors import (
    AifabError,
    AuthError,
    ConfigError,
    Forbidden,
    InputError,
    LimitExceeded,
    Overloaded,
)
from aifab.core.types import Prediction, Token, to_jsonable
from aifab.serve.limits import (
    BodyLimitMiddleware,
    ServeLimits,
    check_no_auth_host,
    decode_instances,
)
from aifab.serve.metrics import CONTENT_TYPE, MetricsMiddleware, ServeMetrics
from aifab.serve.models import ModelRegistry
from aifab.serve.ratelimit import rate_limited_counter, rate_limiter
from aifab.serve.schemas import (
    AuditList,
    DriftOut,
    ErrorBody,
    FeedbackList,
    FeedbackOut,
    FeedbackRequest,
    ModelInfo,
    ModelList,
    PredictRequest,
    PredictResponse,
    PromoteRequest,
    PromoteResponse,
    ReloadResponse,
    ReviewList,
    RollbackRequest,
    RollbackResponse,
    VersionList,
    describe_errors,
)
from aifab.serve.security import (
    SECURITY_HEADERS,
    SecurityHeadersMiddleware,
    cors_options,
    mark_permission,
)


def _iso_datetime(value: Any) -> Any:
    """Only ISO 8601 text is a time here: pydantic would read ``since=-124`` as seconds since
    1970, which the OpenAPI document (``format: date-time``) does not allow."""
    if isinstance(value, str) and value.strip().lstrip("+-").replace(".", "", 1).isdigit():
        raise ValueError("expected an ISO 8601 date-time such as 2026-11-28T09:00:00Z, not a number")
    return value


Since = Annotated[datetime | None, BeforeValidator(_iso_datetime)]


__all__ = ["check_no_auth_host", "create_app", "review_margin"]

log = logging.getLogger(__name__)

TOKEN_CACHE_TTL_S = 60.0
RETRY_AFTER_S = 1
REVIEW_WINDOW = 5000  # newest unreviewed predictions ranked by margin per review request
_ANONYMOUS = Token(
    id="anonymous", name="anonymous", role="admin", salt="", secret_hash="", created_at=datetime.min
)
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in (
        (401, "no or bad token"),
        (403, "role lacks the permission"),
        (404, "unknown model or id"),
        (422, "invalid input"),
    )
}


def create_app(
    *,
    meta: Any,
    artifacts: Any,
    models: list[str] | None = None,
    auth: bool = True,
    limits: ServeLimits | None = None,
    max_batch_size: int = 32,
    max_wait_ms: float = 5.0,
    queue_size: int = 1024,
    poll_seconds: float = 2.0,
    keep_inputs: bool = True,
    config: ServeConfig | None = None,
    operations: Operations | None = None,
) -> FastAPI:
    """The server as an ASGI app; its models load when it starts (``lifespan``).

    ``models``: names to serve (each needs a ``production`` alias); None serves every model
    that has one. ``limits``: per-request limits (None: the defaults of :class:`ServeLimits`).
    ``auth=False`` lets every request in as admin. ``max_batch_size`` (1: no batching),
    ``max_wait_ms`` (paid only when other requests are there to share the batch: a lone
    request on an idle server runs at once) and ``queue_size`` configure each model's
    micro-batcher;
    ``poll_seconds`` how often the ``production`` alias is checked for a hot swap;
    ``keep_inputs=False`` logs predictions without their inputs (hashes only);
    ``config``: rate limit per token and CORS origins (None: neither; see
    :mod:`aifab.serve.ratelimit` and :mod:`aifab.serve.security`);
    ``operations``: promotion, rollback, audit and drift over a workspace (:class:`Operations`;
    None: those endpoints are not served).

    >>> from aifab.store import ArtifactStore, MetadataStore
    >>> import tempfile
    >>> app = create_app(meta=MetadataStore("sqlite://"), artifacts=ArtifactStore(tempfile.mkdtemp()))
    >>> sorted(r.path for r in app.routes if "predict" in r.path or "reload" in r.path)
    ['/v1/models/{name}:predict', '/v1/models/{name}:reload']
    >>> create_app(meta=None, artifacts=None, max_batch_size=0)
    Traceback (most recent call last):
    ...
    aifab.core.errors.ConfigError: The 'max_batch_size' parameter of create_app must be at least 1. Got 0 instead.
    """
    from aifab.security.tokens import TokenCache, authenticate

    for param, value, least in (
        ("max_batch_size", max_batch_size, 1),
        ("max_wait_ms", max_wait_ms, 0),
        ("queue_size", queue_size, 1),
    ):
        if value < least:
            raise ConfigError(
                f"The {param!r} parameter of create_app must be at least {least}. Got {value!r} instead."
            )
    limits = limits if limits is not None else ServeLimits()
    metrics = ServeMetrics()
    registry = ModelRegistry(
        meta=meta,
        artifacts=artifacts,
        metrics=metrics,
        names=models,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        queue_size=queue_size,
        poll_seconds=poll_seconds,
        keep_inputs=keep_inputs,
    )
    cache = TokenCache(ttl_s=TOKEN_CACHE_TTL_S)
    config = config if config is not None else ServeConfig()
    limited = rate_limited_counter(metrics.registry)
    limiter = rate_limiter(config, on_limited=lambda who: limited.labels(who).inc())

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await registry.start()
        try:
            yield
        finally:
            await registry.close()

    app = FastAPI(
        title="aifab",
        summary="Predictions, feedback and model management of the models an aifab workspace serves.",
        version=_package_version(),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # served below, behind the read permission
    )
    app.state.registry = registry
    app.state.metrics = metrics
    app.state.token_cache = cache
    bearer = HTTPBearer(auto_error=False, description="an aifab API token: afb_<id>_<secret>")

    def permit(permission: str) -> Callable[..., Any]:
        async def caller(
            request: Request,
            _credentials: HTTPAuthorizationCredentials | None = Depends(bearer),  # noqa: B008
        ) -> Token:
            if not auth:
                if limiter is not None:  # one bucket per client address: no token to key by
                    limiter.take(f"anonymous@{request.client.host if request.client else '?'}")
                return _ANONYMOUS
            from aifab.security.roles import require

            plaintext = _bearer_token(request.headers.get("authorization"))
            token = cache.get(plaintext)
            if token is None:
                token = await verify_once(plaintext)
            if limiter is not None:  # before the role check: refused requests count too
                limiter.take(token.id, who=token.name)
            require(token.role, permission)
            return token

        return mark_permission(caller, permission)

    verifying: dict[str, asyncio.Future[Token]] = {}

    async def verify_once(plaintext: str) -> Token:
        """Check a token not in the cache, once however many requests bring it at the same
        time: a burst of clients on a fresh server would otherwise run one scrypt (tens of
        milliseconds, 16 MiB) each, all for the same answer."""
        key = hashlib.sha256(plaintext.encode("utf-8")).hexdigest()  # no plaintext as a key
        future = verifying.get(key)
        if future is None:
            # scrypt takes tens of milliseconds: off the event loop.
            future = asyncio.ensure_future(
                run_in_threadpool(authenticate, plaintext, meta.get_token, cache=cache)
            )
            verifying[key] = future

            def done(finished: asyncio.Future[Token]) -> None:
                verifying.pop(key, None)
                if not finished.cancelled():
                    finished.exception()  # retrieved: no warning if every waiter left

            future.add_done_callback(done)
        # Shielded: a client that hangs up must not cancel the check the others wait on.
        return await asyncio.shield(future)

    # -- errors ---------------------------------------------------------------------------

    def error_response(exc: AifabError, headers: dict[str, str] | None = None) -> JSONResponse:
        metrics.errors.labels(exc.code).inc()
        headers = dict(headers or {})
        if isinstance(exc, AuthError) and not isinstance(exc, Forbidden):
            headers["WWW-Authenticate"] = 'Bearer realm="aifab"'
        if isinstance(exc, Overloaded):
            headers["Retry-After"] = str(getattr(exc, "retry_after_s", RETRY_AFTER_S))
        return JSONResponse(exc.to_dict(), status_code=exc.http_status, headers=headers)

    @app.exception_handler(AifabError)
    async def on_aifab_error(_request: Request, exc: AifabError) -> JSONResponse:
        if exc.http_status >= 500 and not isinstance(exc, Overloaded):
            log.error("%s: %s", type(exc).__name__, exc.message)
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(InputError(describe_errors(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI: a body it cannot decode; a 422 like any bad input
            return error_response(
                InputError(f"request body: cannot be read ({exc.detail}); send UTF-8 JSON")
            )
        codes = {404: "not_found", 405: "method_not_allowed"}
        if exc.status_code == 404 and exc.detail == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        code = codes.get(exc.status_code, f"http_{exc.status_code}")
        metrics.errors.labels(code).inc()
        body = {"error": {"code": code, "message": message}}
        return JSONResponse(body, status_code=exc.status_code, headers=dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The traceback goes to the log (no headers in it, so no token); the client learns only
        # that the server failed.
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        metrics.errors.labels("internal_error").inc()
        body = {
            "error": {
                "code": "internal_error",
                "message": "internal server error; the server log has the details",
            }
        }
        # Answered outside the middlewares (by Starlette's outermost one): add the headers here.
        return JSONResponse(body, status_code=500, headers=dict(SECURITY_HEADERS))

    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=limits.max_body_bytes,
        on_error=lambda e: metrics.errors.labels(e.code).inc(),
    )
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, **cors_options(config.cors_origins))
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: sees every answer

    # -- health, metrics, docs ------------------------------------------------------------

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers (no auth)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"model": ErrorBody}})
    async def readyz() -> JSONResponse:
        """Readiness: every model is loaded (no auth)."""
        if not registry.ready:
            return error_response(Overloaded("models are loading; not ready yet"))
        return JSONResponse(
            {"status": "ready", "models": {m.name: m.number for m in registry.served()}}
        )

    @app.get(
        "/metrics",
        tags=["health"],
        dependencies=[Depends(permit("read"))],
        response_class=PlainTextResponse,  # documented as text/plain, what it answers
        responses={
            200: {"description": "Prometheus text exposition format"},
            # Spelled out: with a text/plain route, FastAPI would file the JSON errors there too.
            **{
                status: {
                    "description": _ERRORS[status]["description"],
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}
                    },
                }
                for status in (401, 403)
            },
        },
    )
    async def prometheus_metrics() -> Response:
        """Prometheus metrics (text exposition format)."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(permit("read"))])
    async def openapi_document() -> JSONResponse:
        return JSONResponse(_openapi(app))

    # -- models ---------------------------------------------------------------------------

    @app.get(
        "/v1/models",
        tags=["models"],
        response_model=ModelList,
        dependencies=[Depends(permit("read"))],
        responses=_ERRORS,
    )
    async def list_models() -> dict[str, Any]:
        """The models served now."""
        return {"models": [m.info() for m in registry.served()]}

    @app.get(
        "/v1/models/{name}",
        tags=["models"],
        response_model=ModelInfo,
        dependencies=[Depends(permit("read"))],
        responses=_ERRORS,
    )
    async def model_info(name: str) -> dict[str, Any]:
        """The served version of one model: version, labels, input kind, multi-label."""
        return registry.get(name).info()

    @app.post(
        "/v1/models/{name}:predict",
        tags=["predict"],
        response_model=PredictResponse,
        responses={**_ERRORS, 413: {"model": ErrorBody}, 503: {"model": ErrorBody}},
        openapi_extra={"requestBody": _predict_body()},
    )
    async def predict(
        name: str,
        request: Request,
        _caller: Token = Depends(permit("predict")),  # noqa: B008
    ) -> JSONResponse:
        """One prediction per instance, in order, each with ``prediction_id`` and ``model_version``."""
        served = registry.get(name)
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            raw = await _form_instances(request, limits)
        else:
            try:
                raw = PredictRequest.model_validate_json(await request.body()).raw_instances()
            except ValidationError as exc:
                raise InputError(describe_errors(exc.errors())) from None
        if served.loaded.kind == "image":  # decoding images is CPU work: off the event loop
            inputs = await run_in_threadpool(decode_instances, raw, kind="image", limits=limits)
        else:
            inputs = decode_instances(raw, kind=served.loaded.kind, limits=limits)
        answers = await registry.predict(name, inputs)
        return JSONResponse({"predictions": answers})

    @app.post(
        "/v1/models/{name}:reload",
        tags=["models"],
        response_model=ReloadResponse,
        responses=_ERRORS,
    )
    async def reload(
        name: str,
        caller: Token = Depends(permit("reload")),  # noqa: B008
    ) -> dict[str, Any]:
        """Serve the version the ``production`` alias points at now; answers the version served."""
        if models is not None and name not in models:
            registry.get(name)  # NotFound naming the served models
        done = await registry.reload(name)
        log.info(
            "model %s: reload by %s: version %s -> %d",
            name,
            caller.name,
            done.previous,
            done.served.number,
        )
        previous = done.previous if done.previous is not None else done.served.number
        return {
            "name": name,
            "version": done.served.number,
            "previous": previous,
            "changed": done.changed,
        }

    # -- feedback and review --------------------------------------------------------------

    @app.post(
        "/v1/models/{name}/feedback",
        tags=["feedback"],
        status_code=201,
        response_model=FeedbackOut,
        responses=_ERRORS,
    )
    async def post_feedback(
        name: str,
        body: FeedbackRequest,
        caller: Token = Depends(permit("feedback")),  # noqa: B008
    ) -> JSONResponse:
        """Correct one prediction: ``label``, ``labels`` or ``correct``; ``new_class`` for a new class."""
        from aifab.feedback.intake import submit_feedback

        served = registry.get(name)
        feedback = await run_in_threadpool(
            lambda: submit_feedback(
                meta,
                model_name=name,
                prediction_id=body.prediction_id,
                known_labels=served.loaded.labels,
                multi_label=bool(served.loaded.preprocessing.get("multi_label")),
                label=body.label,
                labels=body.labels,
                correct=body.correct,
                comment=body.comment,
                new_class=body.new_class,
                actor=caller.name,
            )
        )
        return JSONResponse(to_jsonable(feedback), status_code=201)

    @app.get(
        "/v1/models/{name}/feedback",
        tags=["feedback"],
        response_model=FeedbackList,
        dependencies=[Depends(permit("review"))],
        responses=_ERRORS,
    )
    async def get_feedback(
        name: str, limit: int = Query(100, ge=1, le=1000), since: Since = None
    ) -> JSONResponse:
        """Feedback on this model's predictions, newest first."""
        await run_in_threadpool(meta.aliases, name)  # NotFound for an unknown model, not []
        found = await run_in_threadpool(lambda: meta.list_feedback(name, since=since, limit=limit))
        return JSONResponse({"feedback": to_jsonable(found)})

    @app.get(
        "/v1/models/{name}/review",
        tags=["feedback"],
        response_model=ReviewList,
        dependencies=[Depends(permit("review"))],
        responses=_ERRORS,
    )
    async def review_queue(
        name: str, limit: int = Query(50, ge=1, le=1000), since: Since = None
    ) -> JSONResponse:
        """Predictions nobody gave feedback on, least sure first (smallest ``margin``).

        The ranking covers the newest 5000 such predictions."""
        await run_in_threadpool(meta.aliases, name)  # NotFound for an unknown model, not []
        found = await run_in_threadpool(
            lambda: meta.list_predictions(
                name, since=since, limit=REVIEW_WINDOW, without_feedback=True
            )
        )
        ranked = sorted(found, key=lambda p: (review_margin(p), -p.created_at.timestamp()))[:limit]
        items = [{**to_jsonable(p), "margin": review_margin(p)} for p in ranked]
        for item in items:
            item.pop("input_hash", None)
            item.pop("latency_ms", None)
        return JSONResponse({"predictions": items})

    _add_operator_routes(
        app, permit=permit, registry=registry, meta=meta, operations=operations, served=models
    )
    return app


def review_margin(prediction: Prediction) -> float:
    """How sure the model was, from 0 (a coin flip) to 1: the top score minus the second for a
    single-label answer; for a multi-label one (``label`` a list), twice the distance to 0.5 of
    the score nearest the 0.5 threshold.

    >>> from datetime import datetime, timezone
    >>> p = Prediction(id="p", model_name="m", model_version=1, created_at=datetime.now(timezone.utc),
    ...                input_hash="", label="a", scores={"a": 0.55, "b": 0.3, "c": 0.15}, latency_ms=1.0)
    >>> round(review_margin(p), 2)
    0.25
    """
    scores = sorted((float(s) for s in prediction.scores.values()), reverse=True)
    if not scores:
        return 0.0
    if isinstance(prediction.label, list):
        return min(abs(s - 0.5) for s in scores) * 2
    return scores[0] - (scores[1] if len(scores) > 1 else 0.0)


def _bearer_token(header: str | None) -> str:
    if not header:
        raise AuthError("no API token; send the header 'Authorization: Bearer <token>'")
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise AuthError("Authorization header: expected 'Bearer <token>'")
    return value.strip()


async def _form_instances(request: Request, limits: ServeLimits) -> list[Any]:
    """A multipart upload's ``file`` parts as instances: files as bytes, plain fields as text."""
    try:
        form = await request.form(
            max_files=limits.max_instances,
            max_fields=limits.max_instances,
            max_part_size=limits.max_body_bytes,
        )
    except StarletteHTTPException as exc:
        detail = str(exc.detail)
        if "Too many" in detail:
            raise LimitExceeded(
                f"instances: more than max_instances={limits.max_instances} parts in the upload",
                details={"limit": "max_instances", "value": limits.max_instances},
            ) from None
        raise InputError(f"multipart body: {detail}") from None
    try:
        raw: list[Any] = []
        for key, value in form.multi_items():
            if key != "file":  # strict like the JSON body: a misspelt part is an error, not an instance
                raise InputError(
                    f"multipart part {key!r}: unknown field; send each instance as a part named "
                    "'file' (curl -F file=@x.png)",
                    details={"field": key},
                )
            raw.append(await value.read() if isinstance(value, UploadFile) else value)
        return raw
    finally:
        await form.close()


_PART = {"type": "string", "format": "binary"}
_PARTS = {"anyOf": [_PART, {"type": "array", "items": _PART}]}


def _predict_body() -> dict[str, Any]:
    return {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    # As the route reads it: every `file` part is an instance (one or several).
                    "properties": {"file": _PARTS},
                    "additionalProperties": False,
                    "description": "one part named 'file' per instance, in order: a file (an "
                    "image; a UTF-8 text file for a text model) or, for a text model, a text field",
                }
            },
        },
    }


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document plus the predict request schema (declared by hand: the route reads
    either JSON or multipart itself)."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=app.routes
        )
        request = PredictRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for key, value in request.pop("$defs", {}).items():
            components.setdefault(key, value)
        components["PredictRequest"] = request
        app.openapi_schema = schema
    return app.openapi_schema


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("aifab")
    except PackageNotFoundError:
        return "0"


# -- operator endpoints ---------------------------------------------------------------------


class Operations(Protocol):
    """The work behind the operator endpoints, done on a workspace:
    :class:`aifab.pipeline.serving.WorkspaceOperations` (the gate evaluates models and drift
    embeds inputs, which this layer cannot do itself). Every method may take seconds: the
    endpoints call them on a worker thread."""

    def promote(
        self, ref: str, *, actor: str, role: str, force: bool = False, reason: str = ""
    ) -> dict[str, Any]: ...

    def rollback(self, name: str, *, actor: str, role: str, reason: str = "") -> dict[str, Any]: ...

    def audit(
        self, name: str | None = None, *, alias: str | None = None, refused: bool = False
    ) -> list[dict[str, Any]]: ...

    def drift(self, name: str, *, window: int | None = None) -> dict[str, Any]: ...


def _add_operator_routes(
    app: FastAPI,
    *,
    permit: Callable[[str], Callable[..., Any]],
    registry: ModelRegistry,
    meta: Any,
    operations: Operations | None,
    served: list[str] | None,
) -> None:
    """Model versions (always), and promotion, rollback, audit and drift (with ``operations``)."""

    @app.get(
        "/v1/models/{name}/versions",
        tags=["models"],
        response_model=VersionList,
        dependencies=[Depends(permit("read"))],
        responses=_ERRORS,
    )
    async def model_versions(name: str) -> dict[str, Any]:
        """Every version of the model, newest first: aliases, scalar test metrics, the latest
        gate verdict, and whether this server answers with it now."""
        versions, gates = await run_in_threadpool(
            lambda: (meta.list_model_versions(name), meta.list_gate_results(name))
        )
        latest: dict[int, Any] = {}
        for gate in gates:  # newest first
            latest.setdefault(gate.version, gate)
        serving = {m.name: m.number for m in registry.served()}.get(name)
        return {
            "model": name,
            "versions": [_version_out(v, latest.get(v.version), serving) for v in versions],
        }

    if operations is None:
        return
    ops = operations

    async def serve_now(name: str) -> dict[str, Any] | None:
        """Serve the version ``production`` points at now, as ``:reload`` does, so that the
        answer to the move is also the moment the server switched."""
        if served is not None and name not in served:
            return None  # this server does not serve the model
        try:
            done = await registry.reload(name)
        except Exception as exc:  # noqa: BLE001 - the move stands; :reload retries the load
            message = exc.message if isinstance(exc, AifabError) else f"{type(exc).__name__}: {exc}"
            log.error("model %s: the new production version did not load: %s", name, message)
            return {"error": message}
        return {"version": done.served.number, "previous": done.previous, "changed": done.changed}

    @app.post(
        "/v1/models/{name}/versions/{version}:promote",
        tags=["models"],
        response_model=PromoteResponse,
        responses={**_ERRORS, 400: {"model": ErrorBody}, 409: {"model": ErrorBody}},
    )
    async def promote(
        name: str,
        version: str,
        body: PromoteRequest | None = None,
        caller: Token = Depends(permit("models")),  # noqa: B008
    ) -> dict[str, Any]:
        """Run the quality gate on ``version`` (a number or an alias such as ``candidate``) and
        move ``production`` to it only when the gate passes; 422 with every reason when it
        refuses. ``force`` overrules a failed gate: admin only, with a ``reason``. The server
        answers with the new version before this request returns."""
        body = body or PromoteRequest()
        result = await run_in_threadpool(
            lambda: ops.promote(
                f"{name}@{version}",
                actor=caller.name,
                role=caller.role,
                force=body.force,
                reason=body.reason,
            )
        )
        log.info(
            "model %s: production %s -> %s by %s (gate %s)",
            name,
            result["previous"],
            result["version"],
            caller.name,
            "forced" if result.get("forced") else "passed",
        )
        return {**result, "served": await serve_now(name)}

    @app.post(
        "/v1/models/{name}:rollback",
        tags=["models"],
        response_model=RollbackResponse,
        responses={**_ERRORS, 409: {"model": ErrorBody}},
    )
    async def rollback(
        name: str,
        body: RollbackRequest | None = None,
        caller: Token = Depends(permit("models")),  # noqa: B008
    ) -> dict[str, Any]:
        """Move ``production`` back to the version it held before; served before this returns."""
        reason = (body or RollbackRequest()).reason
        result = await run_in_threadpool(
            lambda: ops.rollback(name, actor=caller.name, role=caller.role, reason=reason)
        )
        log.info(
            "model %s: production rolled back %s -> %s by %s",
            name,
            result["previous"],
            result["version"],
            caller.name,
        )
        return {**result, "served": await serve_now(name)}

    @app.get(
        "/v1/audit",
        tags=["models"],
        response_model=AuditList,
        dependencies=[Depends(permit("models"))],
        responses=_ERRORS,
    )
    async def audit(
        model: str | None = None,
        alias: str | None = None,
        refused: bool = False,
        limit: int = Query(100, ge=1, le=10_000),
    ) -> dict[str, Any]:
        """Every alias move, newest first: who, what, when, why and the gate result that
        allowed it; ``refused=true`` adds the promotions the gate refused."""
        entries = await run_in_threadpool(
            lambda: ops.audit(model, alias=alias, refused=refused)
        )
        return {"audit": entries[:limit]}

    @app.get(
        "/v1/models/{name}/drift",
        tags=["models"],
        response_model=DriftOut,
        dependencies=[Depends(permit("read"))],
        responses=_ERRORS,
    )
    async def drift(name: str, window: int | None = Query(None, ge=1, le=100_000)) -> Any:
        """Drift of the latest served predictions of the production version against its
        training data, as ``aifab drift NAME`` reports it."""
        report = await run_in_threadpool(lambda: ops.drift(name, window=window))
        return to_jsonable(report)


def _version_out(version: Any, gate: Any, serving: int | None) -> dict[str, Any]:
    test = version.metrics.get("test", {}) if isinstance(version.metrics, dict) else {}
    return {
        "version": version.version,
        "aliases": list(version.aliases),
        "task": version.task,
        "created_at": version.created_at,
        "dataset_version": version.dataset_version,
        "run_id": version.run_id,
        "test": {
            k: v for k, v in test.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
        },
        "gate": None
        if gate is None
        else {"id": gate.id, "passed": gate.passed, "created_at": gate.created_at.isoformat()},
        "served": serving == version.version,
    }
