"""The micro-batcher's contract: one output per input in order, bounded queue, isolated errors."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from aifab.core.errors import LimitExceeded, Overloaded
from aifab.serve.batching import Batcher, BatcherClosed


class Recorder:
    """A batch function that squares its inputs and remembers every batch it saw."""

    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[list[Any]] = []
        self.delay = delay
        self.threads: set[str] = set()

    def __call__(self, items: list[Any]) -> list[Any]:
        self.threads.add(threading.current_thread().name)
        self.batches.append(list(items))
        if self.delay:
            time.sleep(self.delay)
        return [x * x for x in items]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_each_request_gets_its_own_outputs_in_order_and_requests_share_batches() -> None:
    fn = Recorder()

    async def main() -> list[list[int]]:
        batcher = Batcher(fn, max_batch_size=8, max_wait_ms=20)
        requests = [
            list(range(start, start + n))
            for start, n in ((0, 3), (100, 1), (200, 5), (300, 2), (400, 4))
        ]
        try:
            return await asyncio.gather(*(batcher.submit(r) for r in requests))
        finally:
            await batcher.close()

    out = run(main())
    assert out == [
        [x * x for x in r]
        for r in ([0, 1, 2], [100], [200, 201, 202, 203, 204], [300, 301], [400, 401, 402, 403])
    ]
    assert all(len(b) <= 8 for b in fn.batches)
    assert any(len(b) > 5 for b in fn.batches), fn.batches  # concurrent requests were merged
    assert sorted(x for b in fn.batches for x in b) == [
        0,
        1,
        2,
        100,
        200,
        201,
        202,
        203,
        204,
        300,
        301,
        400,
        401,
        402,
        403,
    ]


def test_a_request_larger_than_the_batch_is_split_across_batches() -> None:
    fn = Recorder()

    async def main() -> list[int]:
        batcher = Batcher(fn, max_batch_size=4, max_wait_ms=1)
        try:
            return await batcher.submit(list(range(10)))
        finally:
            await batcher.close()

    assert run(main()) == [x * x for x in range(10)]
    assert [len(b) for b in fn.batches] == [4, 4, 2]


def test_batch_size_one_turns_batching_off_and_fn_runs_off_the_event_loop() -> None:
    fn = Recorder()

    async def main() -> None:
        batcher = Batcher(fn, max_batch_size=1, max_wait_ms=50)
        try:
            await asyncio.gather(*(batcher.submit([i]) for i in range(6)))
        finally:
            await batcher.close()

    run(main())
    assert [len(b) for b in fn.batches] == [1] * 6
    assert fn.threads and all(name.startswith("aifab-batch-") for name in fn.threads)


def test_an_error_fails_only_its_batch_and_the_loop_goes_on() -> None:
    def fn(items: list[Any]) -> list[Any]:
        if "poison" in items:
            raise RuntimeError("model crashed on poison")
        return [f"ok:{x}" for x in items]

    async def main() -> tuple[Any, Any, Any]:
        batcher = Batcher(fn, max_batch_size=1, max_wait_ms=0)
        try:
            results = await asyncio.gather(
                batcher.submit(["a"]),
                batcher.submit(["poison"]),
                batcher.submit(["b"]),
                return_exceptions=True,
            )
            after = await batcher.submit(["c"])
            return results, after, batcher.closed
        finally:
            await batcher.close()

    results, after, closed = run(main())
    assert results[0] == ["ok:a"] and results[2] == ["ok:b"]
    assert isinstance(results[1], RuntimeError) and "poison" in str(results[1])
    assert after == ["ok:c"] and closed is False


def test_an_exception_returned_as_one_output_fails_only_that_request() -> None:
    def fn(items: list[Any]) -> list[Any]:
        return [ValueError(f"bad {x}") if x < 0 else x for x in items]

    async def main() -> list[Any]:
        batcher = Batcher(fn, max_batch_size=8, max_wait_ms=20)
        try:
            return await asyncio.gather(
                batcher.submit([1, 2]),
                batcher.submit([-1]),
                batcher.submit([3]),
                return_exceptions=True,
            )
        finally:
            await batcher.close()

    good, bad, other = run(main())
    assert good == [1, 2] and other == [3]
    assert isinstance(bad, ValueError) and str(bad) == "bad -1"


def test_a_wrong_number_of_outputs_is_an_error_not_a_misalignment() -> None:
    async def main() -> Any:
        batcher = Batcher(lambda items: items[:-1], max_batch_size=4, max_wait_ms=1)
        try:
            with pytest.raises(TypeError, match="expected a list of 3 outputs"):
                await batcher.submit([1, 2, 3])
            return "survived"
        finally:
            await batcher.close()

    assert run(main()) == "survived"


def test_a_full_queue_refuses_at_once_and_recovers() -> None:
    release = threading.Event()

    def fn(items: list[Any]) -> list[Any]:
        release.wait(5)
        return items

    async def main() -> tuple[list[Any], float, list[Any]]:
        batcher = Batcher(fn, max_batch_size=1, max_wait_ms=0, queue_size=3)
        try:
            first = asyncio.ensure_future(batcher.submit([0]))  # taken into the (blocked) batch
            await asyncio.sleep(0.05)
            queued = [asyncio.ensure_future(batcher.submit([i])) for i in (1, 2, 3)]
            await asyncio.sleep(0.01)
            assert batcher.depth == 3
            started = time.monotonic()
            with pytest.raises(Overloaded, match="queue_size=3"):
                await batcher.submit([4])
            refused_in = time.monotonic() - started
            with pytest.raises(LimitExceeded, match="queue_size=3"):
                await batcher.submit([1, 2, 3, 4])  # could never fit
            release.set()
            done = await asyncio.gather(first, *queued)
            return done, refused_in, await batcher.submit([5])
        finally:
            release.set()
            await batcher.close()

    done, refused_in, after = run(main())
    assert done == [[0], [1], [2], [3]]
    assert refused_in < 1.0  # at once: not after the blocked batch (up to 5 s)
    assert after == [5]


def test_max_wait_is_respected() -> None:
    seen: list[float] = []

    def fn(items: list[Any]) -> list[Any]:
        seen.append(time.monotonic())
        return items

    async def main() -> tuple[float, float]:
        waiting = Batcher(fn, max_batch_size=100, max_wait_ms=150)
        full = Batcher(fn, max_batch_size=4, max_wait_ms=10_000)
        try:
            t0 = time.monotonic()
            await waiting.submit([1])  # alone: runs when max_wait has passed
            waited = seen[-1] - t0
            t1 = time.monotonic()
            await full.submit([1, 2, 3, 4])  # a full batch runs at once, not after 10 s
            return waited, time.monotonic() - t1
        finally:
            await waiting.close()
            await full.close()

    waited, full_took = run(main())
    assert 0.13 <= waited < 1.0
    assert full_took < 1.0


def test_without_wait_when_idle_a_lone_request_runs_at_once_and_company_still_waits() -> None:
    fn = Recorder()

    async def main() -> tuple[float, float, float]:
        batcher = Batcher(fn, max_batch_size=8, max_wait_ms=600, wait_when_idle=False)
        try:
            t0 = time.monotonic()
            await batcher.submit([1])  # alone on an idle batcher: no waiting for company
            alone = time.monotonic() - t0
            t1 = time.monotonic()
            await asyncio.gather(batcher.submit([2]), batcher.submit([3]))  # two at once: wait
            together = time.monotonic() - t1
            t2 = time.monotonic()
            await batcher.submit([4])  # after a shared batch, more clients are likely: wait
            after_shared = time.monotonic() - t2
            return alone, together, after_shared
        finally:
            await batcher.close()

    alone, together, after_shared = run(main())
    assert alone < 0.4
    assert together >= 0.55 and after_shared >= 0.55
    assert fn.batches == [[1], [2, 3], [4]]


def test_a_cancelled_request_does_not_break_the_loop_and_is_not_computed() -> None:
    release = threading.Event()
    fn_calls: list[list[Any]] = []

    def fn(items: list[Any]) -> list[Any]:
        fn_calls.append(list(items))
        release.wait(5)
        return items

    async def main() -> list[Any]:
        batcher = Batcher(fn, max_batch_size=1, max_wait_ms=0)
        try:
            busy = asyncio.ensure_future(batcher.submit(["busy"]))
            await asyncio.sleep(0.05)
            doomed = asyncio.ensure_future(batcher.submit(["doomed"]))
            await asyncio.sleep(0.01)
            doomed.cancel()
            release.set()
            assert await busy == ["busy"]
            with pytest.raises(asyncio.CancelledError):
                await doomed
            return await batcher.submit(["after"])
        finally:
            release.set()
            await batcher.close()

    assert run(main()) == ["after"]
    assert ["doomed"] not in fn_calls


def test_close_drains_or_fails_waiting_requests_and_refuses_new_ones() -> None:
    release = threading.Event()

    def fn(items: list[Any]) -> list[Any]:
        release.wait(5)
        return items

    async def scenario(drain: bool) -> list[Any]:
        release.clear()
        batcher = Batcher(fn, max_batch_size=1, max_wait_ms=0)
        running = asyncio.ensure_future(batcher.submit(["running"]))
        await asyncio.sleep(0.05)
        waiting = asyncio.ensure_future(batcher.submit(["waiting"]))
        await asyncio.sleep(0.01)
        closing = asyncio.ensure_future(batcher.close(drain=drain))
        await asyncio.sleep(0.01)
        with pytest.raises(BatcherClosed):
            await batcher.submit(["late"])
        release.set()
        await closing
        return await asyncio.gather(running, waiting, return_exceptions=True)

    drained = run(scenario(drain=True))
    assert drained == [["running"], ["waiting"]]
    failed = run(scenario(drain=False))
    assert failed[0] == ["running"]  # the batch in flight finishes
    assert isinstance(failed[1], BatcherClosed) and "shut down before this request ran" in str(
        failed[1]
    )


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        Batcher(len, max_batch_size=0)
    with pytest.raises(ValueError, match="queue_size"):
        Batcher(len, queue_size=0)
