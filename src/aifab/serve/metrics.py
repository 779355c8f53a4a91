"""Prometheus metrics of one server, on a registry of its own (no global state).

Metric names (all prefixed ``aifab_``):

================================  =========  ==============================================
name                              type       labels
================================  =========  ==============================================
``http_requests_total``           counter    ``route`` (the path template), ``method``, ``status``
``http_request_seconds``          histogram  ``route``, ``method``
``http_errors_total``             counter    ``code`` (the error body's code)
``batch_size``                    histogram  ``model``: instances per model call
``inference_seconds``             histogram  ``model``: time of one model call (one batch)
``queue_depth``                   gauge      ``model``: instances waiting for a batch
``model_version``                 gauge      ``model``: the version being served
``predictions_total``             counter    ``model``, ``version``: answered instances
================================  =========  ==============================================

Routes are labelled by their template (``/v1/models/{name}:predict``), never the raw path,
so a client cannot blow up the number of series; unknown paths count as ``unmatched``.

>>> m = ServeMetrics()
>>> m.batch_size.labels("sms").observe(4)
>>> b'aifab_batch_size_count{model="sms"} 1.0' in m.render()
True
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from aifab.serve.limits import ASGIApp, Message, Receive, Scope, Send

CONTENT_TYPE = CONTENT_TYPE_LATEST
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServeMetrics:
    """Every metric of one app, registered on ``self.registry`` only."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "aifab_http_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "aifab_http_request_seconds",
            "HTTP request latency",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "aifab_http_errors", "Error answers by error code", ["code"], registry=r
        )
        self.batch_size = Histogram(
            "aifab_batch_size",
            "Instances per model call",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "aifab_inference_seconds",
            "Duration of one model call (one batch)",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "aifab_queue_depth", "Instances waiting for a batch", ["model"], registry=r
        )
        self.model_version = Gauge(
            "aifab_model_version", "Version of the model being served", ["model"], registry=r
        )
        self.predictions = Counter(
            "aifab_predictions", "Answered instances", ["model", "version"], registry=r
        )

    def watch_queue(self, model: str, depth: Callable[[], float]) -> None:
        """Read the queue depth of ``model`` from ``depth()`` at every scrape."""
        self.queue_depth.labels(model).set_function(depth)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts and times every HTTP request by its route template (pure ASGI, so it sees the
    status of every answer, also those of middlewares inside it)."""

    def __init__(self, app: ASGIApp, *, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client gets when the app raises before answering

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            route = _route_template(scope)
            method = str(scope.get("method", ""))
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.request_seconds.labels(route, method).observe(time.perf_counter() - start)


def _route_template(scope: Scope) -> str:
    # The router writes the matched route into this same scope dict.
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"
