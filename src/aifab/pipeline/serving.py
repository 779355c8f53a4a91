"""Serving from a workspace: the HTTP server, its API tokens and feedback from the command line.

The functions the CLI (and Python users) call; each takes an opened
:class:`~aifab.pipeline.project.Workspace` and hands the work to :mod:`aifab.serve`,
:mod:`aifab.security` and :mod:`aifab.feedback`.

>>> import tempfile
>>> from aifab.pipeline.project import Workspace
>>> ws = Workspace.init(tempfile.mkdtemp())
>>> plaintext, token = create_token(ws, name="ci", role="client")
>>> [t["name"] for t in map(public_token, list_tokens(ws))], "secret_hash" in public_token(token)
(['ci'], False)
>>> revoke_token(ws, "ci").revoked_at is not None
True
>>> ws.close()
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from aifab.core.config import ServeConfig, parse
from aifab.core.errors import ConfigError, InputError, NotFound
from aifab.core.types import Feedback, Token

if TYPE_CHECKING:
    from aifab.pipeline.project import Workspace

__all__ = [
    "WorkspaceOperations",
    "add_feedback",
    "create_token",
    "default_torch_threads",
    "list_feedback",
    "list_tokens",
    "public_token",
    "revoke_token",
    "serve",
    "serve_config",
    "start_loop",
]

log = logging.getLogger("aifab.serve")

PRODUCTION = "production"


# -- tokens -------------------------------------------------------------------------------


def create_token(ws: Workspace, *, name: str, role: str) -> tuple[str, Token]:
    """Issue an API token for ``name`` with ``role`` and store its salted hash; return the
    plaintext (shown once: the store cannot give it back) and the stored token.

    InputError for an unknown role or a malformed name; Conflict when a live token has the name.

    >>> import tempfile
    >>> from aifab.pipeline.project import Workspace
    >>> ws = Workspace.init(tempfile.mkdtemp())
    >>> plaintext, token = create_token(ws, name="labeler", role="annotator")
    >>> plaintext.startswith(f"afb_{token.id}_"), plaintext in repr(ws.meta.get_token(token.id))
    (True, False)
    >>> ws.close()
    """
    from aifab.security.tokens import issue_token

    plaintext, token = issue_token(name, role)
    return plaintext, ws.meta.add_token(token)


def list_tokens(ws: Workspace) -> list[Token]:
    """Every token, revoked ones included, newest first (show them with :func:`public_token`)."""
    return ws.meta.list_tokens()


def revoke_token(ws: Workspace, name_or_id: str) -> Token:
    """Revoke a token by its 12-hex id or the name of a live token; NotFound when none matches.

    A server that verified the token in the last 60 s may accept it until its cache expires.
    """
    return ws.meta.revoke_token(name_or_id)


def public_token(token: Token) -> dict[str, Any]:
    """What may be shown of a stored token: never its salt nor its hash.

    >>> from aifab.security.tokens import issue_token
    >>> sorted(public_token(issue_token("ci", "client")[1]))
    ['created_at', 'id', 'name', 'revoked', 'revoked_at', 'role']
    """
    return {
        "id": token.id,
        "name": token.name,
        "role": token.role,
        "created_at": token.created_at,
        "revoked_at": token.revoked_at,
        "revoked": token.revoked_at is not None,
    }


# -- feedback -----------------------------------------------------------------------------


def add_feedback(
    ws: Workspace,
    *,
    ref_or_name: str | None = None,
    prediction_id: str,
    label: str | None = None,
    labels: Sequence[str] | None = None,
    correct: bool | None = None,
    comment: str = "",
    new_class: bool = False,
    actor: str = "",
) -> Feedback:
    """Store feedback on a logged prediction, checked against the model version that made it.

    The classes and the multi-label flag come from that version's ``preprocessing.json`` (its
    weights are not loaded). ``ref_or_name`` (``NAME`` or ``NAME@...``; only the name counts),
    when given, must be the prediction's model. NotFound for an unknown prediction or one of
    another model; InputError for a label the model does not know (unless ``new_class``) and
    the other refusals of :func:`aifab.feedback.intake.submit_feedback`.
    """
    from aifab.feedback.intake import submit_feedback

    prediction = ws.meta.get_prediction(prediction_id)
    name = prediction.model_name
    if ref_or_name is not None and ref_or_name.partition("@")[0] != name:
        wanted = ref_or_name.partition("@")[0]
        raise NotFound(
            f"prediction {prediction_id!r} not found for model {wanted!r}; it is a prediction "
            f"of model {name!r}",
            details={"prediction": prediction_id, "model": wanted},
        )
    preprocessing = _preprocessing(ws, f"{name}@{prediction.model_version}")
    return submit_feedback(
        ws.meta,
        model_name=name,
        prediction_id=prediction_id,
        known_labels=[str(x) for x in preprocessing.get("labels", [])],
        multi_label=bool(preprocessing.get("multi_label")),
        label=label,
        labels=list(labels) if labels is not None else None,
        correct=correct,
        comment=comment,
        new_class=new_class,
        actor=actor,
    )


def list_feedback(ws: Workspace, name: str, limit: int = 100) -> list[Feedback]:
    """Feedback on model ``name``'s predictions, newest first, at most ``limit``.

    NotFound for a model the workspace does not have.

    >>> import tempfile
    >>> from aifab.pipeline.project import Workspace
    >>> ws = Workspace.init(tempfile.mkdtemp())
    >>> list_feedback(ws, "sms")
    Traceback (most recent call last):
    ...
    aifab.core.errors.NotFound: model 'sms' not found
    >>> ws.close()
    """
    ws.model(name)  # NotFound for an unknown model, rather than an empty list
    return ws.meta.list_feedback(name, limit=limit)


def _preprocessing(ws: Workspace, ref: str) -> dict[str, Any]:
    version = ws.model(ref)
    digest = version.files.get("preprocessing.json")
    if digest is None:
        raise InputError(f"model {version.ref}: has no preprocessing.json; cannot check labels")
    loaded: dict[str, Any] = json.loads(ws.artifacts.get_bytes(digest))
    return loaded


# -- operator endpoints -------------------------------------------------------------------


class WorkspaceOperations:
    """What the server's operator endpoints do with a workspace: promote through the gate, roll
    back, read the audit, measure drift (:class:`aifab.serve.app.Operations`). The server layer
    cannot evaluate models itself, so ``create_app(operations=...)`` gets this object.

    Drift references (statistics of a version's training data) are computed once per model
    version and kept here for the server's life.

    >>> import tempfile
    >>> from aifab.pipeline.project import Workspace
    >>> ws = Workspace.init(tempfile.mkdtemp())
    >>> WorkspaceOperations(ws).audit()
    []
    >>> ws.close()
    """

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self._references: dict[str, dict[str, Any]] = {}

    def promote(
        self, ref: str, *, actor: str, role: str, force: bool = False, reason: str = ""
    ) -> dict[str, Any]:
        from aifab.pipeline.promotion import promote

        return promote(self.ws, ref, actor=actor, role=role, force=force, reason=reason)

    def rollback(self, name: str, *, actor: str, role: str, reason: str = "") -> dict[str, Any]:
        from aifab.pipeline.promotion import rollback

        return rollback(self.ws, name, actor=actor, role=role, reason=reason)

    def audit(
        self, name: str | None = None, *, alias: str | None = None, refused: bool = False
    ) -> list[dict[str, Any]]:
        from aifab.pipeline.promotion import audit

        return audit(self.ws, name, alias=alias, refused=refused)

    def drift(self, name: str, *, window: int | None = None) -> dict[str, Any]:
        from aifab.pipeline.retraining import drift, drift_reference

        version = self.ws.model(f"{name}@{PRODUCTION}")  # NotFound: unknown model, no production
        reference = self._references.get(version.ref)
        if reference is None:
            # Two requests at once may both compute it; the same result, so no lock.
            reference = self._references[version.ref] = drift_reference(self.ws, version.ref)
        return drift(self.ws, name, ref=version.ref, window=window, reference=reference)


# -- the server ---------------------------------------------------------------------------


def serve(
    ws: Workspace,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    models: Sequence[str] | None = None,
    auth: bool = True,
    max_batch_size: int = 32,
    max_wait_ms: float = 5.0,
    queue_size: int = 1024,
    poll_seconds: float = 2.0,
    keep_inputs: bool = True,
    torch_threads: int | None = None,
    log_level: str = "info",
    loop: bool = False,
    loop_interval_s: float = 300.0,
    config: ServeConfig | None = None,
    access_log: bool = False,
) -> None:
    """Serve the ``production`` version of ``models`` (None: every model that has one) over HTTP
    with uvicorn until SIGINT or SIGTERM (then uvicorn finishes the requests in flight).

    ``auth=False`` is refused (ConfigError) unless ``host`` is a loopback address, and warned
    about. A named model that does not exist or has no ``production`` alias is NotFound
    before anything listens; a port that cannot be bound is a ConfigError; any other startup
    failure is raised as the error that caused it. ``torch_threads``: the threads one model
    call may use (None: :func:`default_torch_threads`). ``loop``: run the retraining loop
    (:func:`aifab.pipeline.loop.run_loop` over the served models, every ``loop_interval_s``
    seconds) on a background thread of this process; a promotion it makes is served within
    ``poll_seconds``. The operator endpoints (promote, rollback, audit, drift) work on ``ws``
    (:class:`WorkspaceOperations`). ``config``: rate limit and CORS origins (None: the
    workspace's ``serve:`` section; :func:`serve_config` merges command-line overrides).
    ``access_log``: one uvicorn log line per request (tokens masked in it, as in every log line
    of the server). The other parameters are those of :func:`aifab.serve.app.create_app`.

    >>> import tempfile
    >>> from aifab.pipeline.project import Workspace
    >>> ws = Workspace.init(tempfile.mkdtemp())
    >>> serve(ws, host="0.0.0.0", auth=False)
    Traceback (most recent call last):
    ...
    aifab.core.errors.ConfigError: --no-auth: host '0.0.0.0' is not a loopback address; serve without auth only on 127.0.0.1, ::1 or localhost
    >>> ws.close()
    """
    import uvicorn

    from aifab.serve.app import check_no_auth_host, create_app
    from aifab.serve.security import uvicorn_log_config

    if not 0 <= port <= 65535:
        raise ConfigError(f"The 'port' parameter of serve must be 0 to 65535. Got {port!r} instead.")
    if torch_threads is not None and torch_threads < 1:
        raise ConfigError(
            f"The 'torch_threads' parameter of serve must be at least 1. Got {torch_threads!r} instead."
        )
    if not auth:
        check_no_auth_host(host)
        log.warning(
            "authentication is OFF: every request on %s:%d acts as admin "
            "(predict, feedback, reload, tokens); use it only for local development",
            host,
            port,
        )
    names = list(dict.fromkeys(models)) if models else None
    for name in names or []:
        ws.model(f"{name}@{PRODUCTION}")  # NotFound naming the model or its aliases
    if names is None and not any(PRODUCTION in ws.meta.aliases(n) for n in ws.meta.list_models()):
        log.warning(
            "no model has a %r alias yet; serving none until one gets it "
            "(aifab alias set NAME@VERSION %s)",
            PRODUCTION,
            PRODUCTION,
        )
    import torch

    # Process-wide, so set here, where the process is the server's, not inside the library.
    torch.set_num_threads(torch_threads or default_torch_threads())
    app = create_app(
        meta=ws.meta,
        artifacts=ws.artifacts,
        models=names,
        auth=auth,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        queue_size=queue_size,
        poll_seconds=poll_seconds,
        keep_inputs=keep_inputs,
        operations=WorkspaceOperations(ws),
        config=config if config is not None else ws.config.serve,
    )
    startup_errors = _record_startup_errors(app)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=log_level,
            access_log=access_log,
            log_config=uvicorn_log_config(),  # tokens masked in every uvicorn log line
            lifespan="on",
        )
    )
    stop_loop = start_loop(ws, names, interval_s=loop_interval_s) if loop else None
    try:
        server.run()
    except SystemExit:
        # uvicorn exits when startup fails: say why, with the exit code of the cause.
        if server.started:
            raise
        if startup_errors:
            raise startup_errors[0] from None  # e.g. IntegrityError: weights that do not load
        raise ConfigError(
            f"cannot listen on {host}:{port} (in use, or not an address of this machine); "
            "see the log above"
        ) from None
    finally:
        if stop_loop is not None:
            stop_loop()


def start_loop(
    ws: Workspace, names: Sequence[str] | None = None, *, interval_s: float = 300.0
) -> Callable[[], None]:
    """Run :func:`aifab.pipeline.loop.run_loop` on ``names`` (None: every model with a
    production version) on a daemon thread; return the function that stops it.

    Stopping waits up to 10 s for a check to finish; a retrain still running then is left to
    die with the process (its run stays ``running`` in the store and counts as an attempt,
    so a restarted loop keeps the cooldown).

    >>> import tempfile
    >>> from aifab.pipeline.project import Workspace
    >>> ws = Workspace.init(tempfile.mkdtemp())
    >>> stop = start_loop(ws, interval_s=60)
    >>> stop()
    >>> ws.close()
    """
    import threading

    from aifab.pipeline.loop import run_loop

    if isinstance(interval_s, bool) or not isinstance(interval_s, (int, float)) or interval_s <= 0:
        raise ConfigError(
            "The 'loop_interval_s' parameter of serve must be a number > 0. "
            f"Got {interval_s!r} instead."
        )
    stop = threading.Event()
    thread = threading.Thread(
        target=run_loop,
        args=(ws, names),
        kwargs={"interval_s": interval_s, "stop": stop},
        name="aifab-loop",
        daemon=True,
    )
    thread.start()
    which = ", ".join(names or ["every model with a production version"])
    log.info("retraining loop: checking %s every %g s", which, interval_s)

    def stop_loop() -> None:
        stop.set()
        thread.join(10)

    return stop_loop


def serve_config(
    ws: Workspace,
    *,
    rate_limit: str | None = None,
    rate_burst: int | None = None,
    cors_origins: Sequence[str] | None = None,
) -> ServeConfig:
    """The workspace's ``serve:`` section with the options given here in place of its own
    (None: keep the workspace's); ``rate_limit="off"`` turns a configured limit off.
    ConfigError naming the bad option.

    >>> import tempfile
    >>> from aifab.pipeline.project import Workspace
    >>> ws = Workspace.init(tempfile.mkdtemp())
    >>> serve_config(ws, rate_limit="20/s", cors_origins=["http://localhost:3000"]).rate_limit
    '20/s'
    >>> serve_config(ws, rate_limit="20 per second")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    aifab.core.errors.ConfigError: serve options: serve config is invalid:
      - rate_limit: Value error, rate '20 per second': expected COUNT/UNIT ...
    >>> ws.close()
    """
    merged = ws.config.serve.model_dump()
    if rate_limit is not None:
        merged["rate_limit"] = None if rate_limit.strip().lower() == "off" else rate_limit
    if rate_burst is not None:
        merged["rate_burst"] = rate_burst
    if cors_origins is not None:
        merged["cors_origins"] = list(cors_origins)
    return parse(ServeConfig, merged, source="serve options")


def default_torch_threads(cpus: int | None = None) -> int:
    """Threads for one model call in a server: half the CPUs, at least one.

    A server gets its parallelism from batching, not from splitting one small call across
    threads: the event loop (HTTP, JSON, auth) needs a core of its own, and torch's worker
    threads spin while they wait, so with every core given to torch a call slows down as soon
    as anything else runs: on a 2-core machine with other work on it, two threads made a
    TextCNN call on one message several times slower than one thread, and never faster.

    >>> default_torch_threads(2), default_torch_threads(16), default_torch_threads(1)
    (1, 8, 1)
    """
    import os

    return max(1, (cpus if cpus is not None else os.cpu_count() or 1) // 2)


def _record_startup_errors(app: Any) -> list[BaseException]:
    """Wrap the app's lifespan so that an error while it starts (a model that fails to load)
    is kept for :func:`serve` to raise; uvicorn itself only logs it and exits."""
    from contextlib import asynccontextmanager

    errors: list[BaseException] = []
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def recorded(app_: Any) -> Any:
        started = False
        try:
            async with inner(app_) as state:
                started = True
                yield state
        except Exception as exc:
            if not started:
                errors.append(exc)
            raise

    app.router.lifespan_context = recorded
    return errors
