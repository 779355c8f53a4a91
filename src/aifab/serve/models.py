"""The models a server serves: loaded at startup, swapped without downtime when an alias moves.

Each served model is one immutable :class:`ServedModel` entry ``(version, LoadedModel,
Batcher)``. A hot swap loads the new version on a background thread while the old one keeps
answering, then replaces the entry with one reference assignment: requests that took the old
entry finish on it (its batcher drains before it shuts down), later ones get the new one, and
none fails. A poller checks the alias every ``poll_seconds``; ``POST .../:reload`` does the
same check at once.

Each batch runs on the model's worker thread as: predict -> log every answer (one
transaction, :class:`aifab.feedback.log.PredictionLog`) -> resolve the callers' futures, so an
answer a client has seen is already durable and carries its ``prediction_id``.

A bad input must not fail the other requests that share its batch: when a whole batch fails,
its items are retried one by one and only those that fail again are failed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aifab.core.errors import AifabError, ConfigError, NotFound
from aifab.core.types import ModelVersion
from aifab.registry.versions import LoadedModel, load_files
from aifab.serve.batching import Batcher, BatcherClosed
from aifab.serve.metrics import ServeMetrics

log = logging.getLogger(__name__)

PRODUCTION = "production"


@dataclass(frozen=True, slots=True)
class ServedModel:
    """One served version of one model; replaced whole on a swap, never changed in place."""

    name: str
    version: ModelVersion
    loaded: LoadedModel
    batcher: Batcher

    @property
    def number(self) -> int:
        return self.version.version

    def info(self) -> dict[str, Any]:
        """What ``GET /v1/models/{name}`` answers."""
        return {
            "name": self.name,
            "version": self.number,
            "task": self.version.task,
            "kind": self.loaded.kind,
            "labels": self.loaded.labels,
            "multi_label": bool(self.loaded.preprocessing.get("multi_label")),
            "aliases": list(self.version.aliases),
            "created_at": self.version.created_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class Reloaded:
    """What a reload did: the entry now served and the version served before."""

    served: ServedModel
    previous: int | None

    @property
    def changed(self) -> bool:
        return self.previous != self.served.number


class ModelRegistry:
    """Loads, serves and hot-swaps the ``alias`` (``production``) version of each model.

    ``names``: the models to serve; each must have the alias (ConfigError otherwise). None:
    every model in the store that has it; the others are skipped with a log line and picked
    up by the poller once they get it. ``load(version)`` rebuilds a model (default: from the
    artifact store). ``poll_seconds <= 0`` turns the poller off.
    """

    def __init__(
        self,
        *,
        meta: Any,
        artifacts: Any,
        metrics: ServeMetrics,
        names: list[str] | None = None,
        alias: str = PRODUCTION,
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        queue_size: int = 1024,
        poll_seconds: float = 2.0,
        keep_inputs: bool = True,
        load: Callable[[ModelVersion], LoadedModel] | None = None,
    ) -> None:
        self.meta = meta
        self.artifacts = artifacts
        self.metrics = metrics
        self.names = list(names) if names is not None else None
        self.alias = alias
        self.max_batch_size = max_batch_size
        self.max_wait_ms = max_wait_ms
        self.queue_size = queue_size
        self.poll_seconds = poll_seconds
        self.keep_inputs = keep_inputs
        self._load = load or (lambda version: load_files(version, artifacts.get_bytes))
        self._entries: dict[str, ServedModel] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._failed: dict[
            str, int
        ] = {}  # name -> version that failed to load (not retried by the poller)
        self._poller: asyncio.Task[None] | None = None
        self._prediction_log: Any = None
        self.ready = False

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Load every model to serve, then start the poller."""
        from aifab.feedback.log import PredictionLog

        self._prediction_log = PredictionLog(
            self.meta, self.artifacts, keep_inputs=self.keep_inputs
        )
        explicit = self.names is not None
        names = (
            self.names if self.names is not None else await asyncio.to_thread(self.meta.list_models)
        )
        for name in names:
            target = await self._target(name)
            if target is None:
                if explicit:
                    raise ConfigError(
                        f"model {name!r} has no {self.alias!r} alias; promote a version first "
                        f"(aifab promote {name}@<version>) or set the alias"
                    )
                log.info("model %s: no %r alias; not served until it gets one", name, self.alias)
                continue
            await self._swap_to(name, target, force=True)
        if self.poll_seconds > 0:
            self._poller = asyncio.get_running_loop().create_task(
                self._poll(), name="aifab-model-poller"
            )
        self.ready = True

    async def close(self) -> None:
        """Stop the poller and every batcher; waiting requests fail with a clear error."""
        self.ready = False
        if self._poller is not None:
            self._poller.cancel()
            try:
                await self._poller
            except asyncio.CancelledError:
                pass
            self._poller = None
        entries, self._entries = list(self._entries.values()), {}
        for entry in entries:
            await entry.batcher.close(drain=False, timeout=30)

    # -- serving --------------------------------------------------------------------------

    def get(self, name: str) -> ServedModel:
        """The entry served now for ``name``; NotFound naming the served models."""
        entry = self._entries.get(name)
        if entry is None:
            served = ", ".join(sorted(self._entries)) or "none"
            raise NotFound(
                f"model {name!r} is not served here; served models: {served}",
                details={"model": name, "served": sorted(self._entries)},
            )
        return entry

    def served(self) -> list[ServedModel]:
        return [self._entries[n] for n in sorted(self._entries)]

    async def predict(self, name: str, inputs: list[Any]) -> list[dict[str, Any]]:
        """One answer per input from the version served now; each answer carries its
        ``prediction_id`` and ``model_version``."""
        for _ in range(3):
            entry = self.get(name)
            try:
                return await entry.batcher.submit(inputs)
            except BatcherClosed:
                if self._entries.get(name) is entry:
                    raise  # shutting down, not swapping
                # Swapped between get() and submit(): go again on the new entry.
        return await self.get(name).batcher.submit(inputs)

    async def reload(self, name: str) -> Reloaded:
        """Serve the version the alias points at now (loading it if it moved)."""
        previous = self._entries.get(name)
        target = await self._target(name)
        if target is None:
            raise NotFound(
                f"model {name!r} has no {self.alias!r} alias; nothing to serve",
                details={"model": name},
            )
        served = await self._swap_to(name, target, force=True)
        return Reloaded(served=served, previous=None if previous is None else previous.number)

    # -- swapping -------------------------------------------------------------------------

    async def _target(self, name: str) -> int | None:
        aliases: dict[str, int] = await asyncio.to_thread(self.meta.aliases, name)
        return aliases.get(self.alias)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                names = (
                    self.names
                    if self.names is not None
                    else await asyncio.to_thread(self.meta.list_models)
                )
                for name in names:
                    target = await self._target(name)
                    current = self._entries.get(name)
                    if target is None or (current is not None and current.number == target):
                        continue
                    if self._failed.get(name) == target:
                        continue  # failed before; POST :reload retries it
                    await self._swap_to(name, target, force=False)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the poller must outlive a bad poll
                log.warning("model poller: %s", _short(exc))

    async def _swap_to(self, name: str, target: int, *, force: bool) -> ServedModel:
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            current = self._entries.get(name)
            if current is not None and current.number == target:
                return current
            try:
                version = await asyncio.to_thread(self.meta.get_model_version, name, target)
                started = time.perf_counter()
                loaded = await asyncio.to_thread(self._load, version)
            except Exception as exc:
                self._failed[name] = target
                log.error("model %s: version %d failed to load: %s", name, target, _short(exc))
                if force or current is None:
                    raise
                return current
            self._failed.pop(name, None)
            entry = self._entry(version, loaded)
            self._entries[name] = entry  # the swap: one reference assignment
            self.metrics.model_version.labels(name).set(entry.number)
            self.metrics.watch_queue(name, lambda: self._depth(name))
            if current is None:
                log.info(
                    "model %s: serving version %d (loaded in %.2fs)",
                    name,
                    entry.number,
                    time.perf_counter() - started,
                )
            else:
                log.info("model %s: swapped version %d -> %d", name, current.number, entry.number)
                await current.batcher.close(drain=True)
            return entry

    def _depth(self, name: str) -> float:
        entry = self._entries.get(name)
        return float(entry.batcher.depth) if entry is not None else 0.0

    def _entry(self, version: ModelVersion, loaded: LoadedModel) -> ServedModel:
        batcher = Batcher(
            self._batch_fn(version, loaded),
            max_batch_size=self.max_batch_size,
            max_wait_ms=self.max_wait_ms,
            queue_size=self.queue_size,
            name=version.name,
            # A lone request on an idle server runs at once: max_wait_ms is paid only when
            # other clients are about to share the batch.
            wait_when_idle=False,
        )
        return ServedModel(name=version.name, version=version, loaded=loaded, batcher=batcher)

    def _batch_fn(
        self, version: ModelVersion, loaded: LoadedModel
    ) -> Callable[[list[Any]], list[Any]]:
        name, number = version.name, version.version
        batch_size = self.metrics.batch_size.labels(name)
        seconds = self.metrics.inference_seconds.labels(name)
        answered = self.metrics.predictions.labels(name, str(number))
        prediction_log = self._prediction_log

        def run(inputs: list[Any]) -> list[Any]:
            started = time.perf_counter()
            outputs = _predict_isolated(loaded, inputs)
            elapsed = time.perf_counter() - started
            batch_size.observe(len(inputs))
            seconds.observe(elapsed)
            good = [i for i, out in enumerate(outputs) if not isinstance(out, BaseException)]
            if good:
                ids = prediction_log.record(
                    name,
                    number,
                    [inputs[i] for i in good],
                    [outputs[i] for i in good],
                    elapsed * 1000.0,
                )
                for i, pid in zip(good, ids):
                    outputs[i] = {**outputs[i], "prediction_id": pid, "model_version": number}
                answered.inc(len(good))
            return outputs

        return run


def _predict_isolated(loaded: LoadedModel, inputs: list[Any]) -> list[Any]:
    """``loaded.predict(inputs)``; when the batch fails, each input alone, so a failure is kept
    to the inputs that cause it (their slot holds the exception)."""
    try:
        return list(loaded.predict(inputs))
    except Exception as exc:  # noqa: BLE001 - retried below, input by input
        if len(inputs) == 1:
            return [exc]
    outputs: list[Any] = []
    for value in inputs:
        try:
            outputs.extend(loaded.predict([value]))
        except Exception as exc:  # noqa: BLE001 - handed to this input's caller
            outputs.append(exc)
    return outputs


def _short(exc: BaseException) -> str:
    return exc.message if isinstance(exc, AifabError) else f"{type(exc).__name__}: {exc}"
