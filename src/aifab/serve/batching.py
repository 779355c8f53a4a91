"""An asyncio micro-batcher: requests' instances go in one by one, come out batched.

One :class:`Batcher` serves one model. Its contract:

- **one output per input, in order**: ``await submit(items)`` returns ``fn``'s outputs for
  exactly those items, whatever batches they were computed in;
- **batches**: items are collected until ``max_batch_size`` of them are waiting or
  ``max_wait_ms`` have passed since the oldest arrived; a request with more items than
  ``max_batch_size`` is split across batches; ``max_batch_size=1`` turns batching off;
  with ``wait_when_idle=False`` a lone item on an idle batcher (the previous batch held
  one item and nothing else is waiting) runs at once instead of waiting for company that
  is not coming: one client alone pays no ``max_wait_ms``, many clients still share batches;
- **the event loop never blocks**: ``fn`` runs on a single worker thread of the batcher's own;
- **errors stay in their batch**: an exception raised by ``fn`` fails that batch's items
  only; ``fn`` may also return an exception *instance* as one item's output to fail that
  item alone; the loop keeps running;
- **a bounded queue**: when ``queue_size`` items are waiting, ``submit`` raises
  :class:`~aifab.core.errors.Overloaded` at once (the server answers 503 + Retry-After);
- **cancellation**: a caller that goes away (its task cancelled) drops its waiting items;
  results for items already in a batch are discarded; nothing else is disturbed;
- **shutdown**: :meth:`close` stops intake, then either finishes every waiting item
  (``drain=True``, used on hot swap) or fails them with a clear error (``drain=False``).

>>> import asyncio
>>> async def demo():
...     batcher = Batcher(lambda xs: [x * 2 for x in xs], max_batch_size=4, max_wait_ms=1)
...     out = await asyncio.gather(batcher.submit([1, 2]), batcher.submit([3]))
...     await batcher.close()
...     return out
>>> asyncio.run(demo())
[[2, 4], [6]]
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aifab.core.errors import AifabError, LimitExceeded, Overloaded

log = logging.getLogger(__name__)


class BatcherClosed(Overloaded):
    """The batcher stopped taking items (hot swap or shutdown). A caller holding an old
    reference retries on the current model; an HTTP client sees 503 and retries."""


@dataclass(slots=True)
class _Entry:
    value: Any
    future: asyncio.Future[Any]
    enqueued: float = field(default_factory=time.monotonic)


class Batcher:
    """Batch ``fn`` calls over concurrent :meth:`submit` calls. See the module docstring.

    ``fn(items) -> outputs`` must return one output per item. ``name`` appears in errors,
    logs and the worker thread's name. ``wait_when_idle=False``: see the module docstring
    (the server uses it).

    >>> import asyncio
    >>> async def one():
    ...     b = Batcher(len, max_batch_size=2, max_wait_ms=0)  # returns an int, not a list
    ...     try:
    ...         await b.submit(["a"])
    ...     finally:
    ...         await b.close()
    >>> asyncio.run(one())
    Traceback (most recent call last):
    ...
    TypeError: batch function of 'batcher' returned int, expected a list of 1 outputs
    """

    def __init__(
        self,
        fn: Callable[[list[Any]], list[Any]],
        *,
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        queue_size: int = 1024,
        name: str = "batcher",
        wait_when_idle: bool = True,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1; got {max_batch_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0; got {max_wait_ms}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1; got {queue_size}")
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.max_wait_ms = max_wait_ms
        self.queue_size = queue_size
        self.name = name
        self.wait_when_idle = wait_when_idle
        self._last_batch = 0  # items in the previous batch: >1 means clients are sharing
        self._waiting: collections.deque[_Entry] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False

    @property
    def depth(self) -> int:
        """Items waiting for a batch (not counting the batch running now)."""
        return len(self._waiting)

    @property
    def closed(self) -> bool:
        return self._closed

    async def submit(self, items: list[Any]) -> list[Any]:
        """``fn``'s outputs for ``items``, in order; raises what ``fn`` raised for their batch.

        Overloaded when the queue cannot take all of ``items`` now; BatcherClosed after
        :meth:`close`; LimitExceeded when ``items`` alone is larger than the whole queue.
        """
        if self._closed:
            raise BatcherClosed(
                f"model {self.name!r} is not taking requests (reloading or shutting down); retry"
            )
        if not items:
            return []
        if len(items) > self.queue_size:
            raise LimitExceeded(
                f"{len(items)} instances: more than the queue of model {self.name!r} holds "
                f"(queue_size={self.queue_size}); send at most {self.queue_size} per request"
            )
        if len(self._waiting) + len(items) > self.queue_size:
            raise Overloaded(
                f"model {self.name!r} is overloaded: {len(self._waiting)} instances waiting "
                f"(queue_size={self.queue_size}); retry shortly"
            )
        self._ensure_started()
        loop = asyncio.get_running_loop()
        entries = [_Entry(item, loop.create_future()) for item in items]
        self._waiting.extend(entries)
        assert self._wakeup is not None
        self._wakeup.set()
        try:
            return list(await asyncio.gather(*(e.future for e in entries)))
        except BaseException:
            # Cancelled, or one item failed: the others need no answer any more. Cancelling
            # their futures lets the loop skip items that have not started yet.
            for e in entries:
                e.future.cancel()
            raise

    async def close(self, *, drain: bool = True, timeout: float | None = None) -> None:
        """Stop taking items; with ``drain`` finish the waiting ones, else fail them.

        Waits for the batch in flight (a thread cannot be interrupted) up to ``timeout``
        seconds, then shuts the worker thread down. Safe to call twice.
        """
        if not drain:
            self._fail_waiting(
                BatcherClosed(f"model {self.name!r} shut down before this request ran")
            )
        self._closed = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                log.warning("batcher %s: still busy after %.1fs; cancelling", self.name, timeout)
                self._task.cancel()
            except asyncio.CancelledError:
                self._task.cancel()
                raise
            self._task = None
        self._fail_waiting(BatcherClosed(f"model {self.name!r} shut down before this request ran"))
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    # -- the loop -------------------------------------------------------------------------

    def _ensure_started(self) -> None:
        if self._task is None:
            self._wakeup = asyncio.Event()
            self._executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"aifab-batch-{self.name}"
            )
            self._task = asyncio.get_running_loop().create_task(
                self._loop(), name=f"batcher-{self.name}"
            )

    async def _loop(self) -> None:
        assert self._wakeup is not None
        while True:
            batch = await self._next_batch()
            if batch is None:
                return
            if batch:
                await self._run(batch)

    async def _next_batch(self) -> list[_Entry] | None:
        """The next batch; ``[]`` when every candidate was cancelled; None when closed and empty."""
        assert self._wakeup is not None
        while not self._waiting:
            if self._closed:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()
        # Wait for more only until max_wait after the oldest item arrived: items that queued
        # behind a slow batch have waited long enough.
        deadline = self._waiting[0].enqueued + self.max_wait_ms / 1000
        alone = len(self._waiting) == 1 and self._last_batch <= 1
        linger = self.wait_when_idle or not alone
        while linger and len(self._waiting) < self.max_batch_size and not self._closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break
        batch: list[_Entry] = []
        while self._waiting and len(batch) < self.max_batch_size:
            entry = self._waiting.popleft()
            if not entry.future.done():  # done here means its caller went away
                batch.append(entry)
        self._last_batch = len(batch)
        return batch

    async def _run(self, batch: list[_Entry]) -> None:
        assert self._executor is not None
        loop = asyncio.get_running_loop()
        values = [e.value for e in batch]
        try:
            outputs = await loop.run_in_executor(self._executor, self._call, values)
        except asyncio.CancelledError:
            for e in batch:
                if not e.future.done():
                    e.future.set_exception(
                        BatcherClosed(f"model {self.name!r} shut down while this request ran")
                    )
            raise
        except BaseException as exc:  # noqa: BLE001 - the batch fails, the loop goes on
            if not isinstance(exc, AifabError):
                log.error("batcher %s: batch of %d failed: %r", self.name, len(batch), exc)
            for e in batch:
                if not e.future.done():
                    e.future.set_exception(exc)
            return
        for e, out in zip(batch, outputs):
            if e.future.done():
                continue
            if isinstance(out, BaseException):
                e.future.set_exception(out)
            else:
                e.future.set_result(out)

    def _call(self, values: list[Any]) -> list[Any]:
        outputs = self.fn(values)
        if not isinstance(outputs, list) or len(outputs) != len(values):
            got = f"{len(outputs)} outputs" if isinstance(outputs, list) else type(outputs).__name__
            raise TypeError(
                f"batch function of {self.name!r} returned {got}, expected a list of {len(values)} outputs"
            )
        return outputs

    def _fail_waiting(self, exc: BaseException) -> None:
        while self._waiting:
            entry = self._waiting.popleft()
            if not entry.future.done():
                entry.future.set_exception(exc)
