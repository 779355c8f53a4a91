"""One progress interface for every long job.

Library code reports progress through a :class:`Progress` it is handed (never a global);
the CLI hands it a rich progress bar, the server a recorder whose state is served as a
``progress`` field, and tests :class:`NullProgress` or :class:`RecordingProgress`.

>>> p = RecordingProgress()
>>> with p.task("ingest", total=3) as t:
...     t.advance(2)
...     t.advance(1)
>>> p.state()["ingest"]
{'completed': 3, 'total': 3, 'done': True}
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Iterator, Protocol


class ProgressTask(Protocol):
    def advance(self, n: int = 1) -> None: ...

    def update(self, *, total: int | None = None, description: str | None = None) -> None: ...


class Progress(Protocol):
    def task(self, description: str, total: int | None = None) -> Any:
        """A context manager yielding a :class:`ProgressTask`."""
        ...


class _NullTask:
    def advance(self, n: int = 1) -> None:
        pass

    def update(self, *, total: int | None = None, description: str | None = None) -> None:
        pass


class NullProgress:
    """Reports nothing (the default for library calls)."""

    @contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[_NullTask]:
        yield _NullTask()


class _RecordedTask:
    def __init__(self, owner: RecordingProgress, key: str) -> None:
        self._owner, self._key = owner, key

    def advance(self, n: int = 1) -> None:
        with self._owner._lock:
            self._owner._tasks[self._key]["completed"] += n

    def update(self, *, total: int | None = None, description: str | None = None) -> None:
        with self._owner._lock:
            if total is not None:
                self._owner._tasks[self._key]["total"] = total


class RecordingProgress:
    """Keeps the state of every task in memory; thread-safe; what the HTTP ``progress`` field shows."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tasks: dict[str, dict[str, Any]] = {}

    @contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[_RecordedTask]:
        with self._lock:
            self._tasks[description] = {"completed": 0, "total": total, "done": False}
        try:
            yield _RecordedTask(self, description)
        finally:
            with self._lock:
                self._tasks[description]["done"] = True

    def state(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {k: dict(v) for k, v in self._tasks.items()}
