"""Real traffic against a real server: what the demo and ``benchmarks/loop.py`` do as users would.

A user of the loop serves a model, sends it requests, and corrects the answers that were wrong.
These helpers do exactly that over HTTP on 127.0.0.1 — no shortcut through the store — so the
demo and the loop benchmark exercise the same path a real client does: tokens, batching, the
prediction log, feedback intake and hot swap.

>>> # with background_server(ws, models=["sms"]) as url:
>>> #     answers = send_requests(url, client_token, "sms", ["WIN a prize!", "see you at 6"])
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aifab.core.errors import ConfigError, InputError
from aifab.core.progress import NullProgress, Progress

if TYPE_CHECKING:
    from aifab.pipeline.project import Workspace

__all__ = ["Answer", "background_server", "send_corrections", "send_requests", "served_version"]

STARTUP_SECONDS = 120.0


@dataclass(frozen=True)
class Answer:
    """One served prediction as the client saw it, beside the label the client knows is true."""

    prediction_id: str
    model_version: int
    label: str
    truth: str
    latency_ms: float
    """Wall time of the HTTP request that carried it (shared by every instance of the batch)."""

    @property
    def wrong(self) -> bool:
        return self.label != self.truth


@contextmanager
def background_server(
    ws: Workspace,
    *,
    models: Sequence[str] | None = None,
    poll_seconds: float = 1.0,
    max_batch_size: int = 32,
) -> Iterator[str]:
    """Serve ``models`` (their ``production`` versions) on 127.0.0.1 on a free port, in a thread of
    this process; yield the base URL; stop the server gracefully on exit.

    The server is the one ``aifab serve`` runs (the same app factory, auth on).
    """
    import uvicorn

    from aifab.serve.app import create_app

    app = create_app(
        meta=ws.meta,
        artifacts=ws.artifacts,
        models=list(models) if models else None,
        auth=True,
        max_batch_size=max_batch_size,
        poll_seconds=poll_seconds,
    )
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False, lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="aifab-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_SECONDS
    while not server.started:
        if not thread.is_alive():
            raise ConfigError("the server stopped while starting; see the log above")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise ConfigError(f"the server did not start within {STARTUP_SECONDS:.0f} s")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)


def send_requests(
    url: str,
    token: str,
    name: str,
    examples: Sequence[tuple[Any, str]],
    *,
    kind: str,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> list[Answer]:
    """Send ``(input, true_label)`` pairs to ``POST /v1/models/{name}:predict``, ``batch_size``
    instances per request; return one :class:`Answer` per example, in order.

    Text inputs are strings; image inputs are the image file's bytes (sent base64-encoded).
    A non-200 answer raises InputError naming the request and the server's message.
    """
    import httpx

    if kind not in ("text", "image"):
        raise InputError(f"kind {kind!r}: expected 'text' or 'image'")
    answers: list[Answer] = []
    progress = progress or NullProgress()
    with progress.task(f"requests to {name}", total=len(examples)) as task, httpx.Client(
        base_url=url, headers=_auth(token), timeout=120.0
    ) as client:
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            instances = [x if kind == "text" else {"b64": base64.b64encode(x).decode("ascii")} for x, _ in chunk]
            began = time.perf_counter()
            response = client.post(f"/v1/models/{name}:predict", json={"instances": instances})
            latency = (time.perf_counter() - began) * 1000.0
            if response.status_code != 200:
                raise InputError(
                    f"POST /v1/models/{name}:predict (examples {start}..{start + len(chunk) - 1}): "
                    f"HTTP {response.status_code}: {response.text[:300]}"
                )
            for (_, truth), p in zip(chunk, response.json()["predictions"]):
                answers.append(Answer(p["prediction_id"], int(p["model_version"]), str(p["label"]), str(truth), latency))
            task.advance(len(chunk))
    return answers


def send_corrections(url: str, token: str, name: str, answers: Sequence[Answer]) -> list[str]:
    """Correct the wrong answers only, as a user would: one ``POST /v1/models/{name}/feedback``
    with the true label for each; return the feedback ids the server acknowledged."""
    import httpx

    ids: list[str] = []
    with httpx.Client(base_url=url, headers=_auth(token), timeout=60.0) as client:
        for answer in answers:
            if not answer.wrong:
                continue
            response = client.post(
                f"/v1/models/{name}/feedback",
                json={"prediction_id": answer.prediction_id, "label": answer.truth, "comment": "corrected by a reviewer"},
            )
            if response.status_code != 201:
                raise InputError(
                    f"POST /v1/models/{name}/feedback for prediction {answer.prediction_id}: "
                    f"HTTP {response.status_code}: {response.text[:300]}"
                )
            ids.append(response.json()["id"])
    return ids


def served_version(url: str, token: str, name: str) -> int:
    """The version the server answers with now (``GET /v1/models/{name}``)."""
    import httpx

    response = httpx.get(f"{url}/v1/models/{name}", headers=_auth(token), timeout=30.0)
    if response.status_code != 200:
        raise InputError(f"GET /v1/models/{name}: HTTP {response.status_code}: {response.text[:300]}")
    return int(response.json()["version"])


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
