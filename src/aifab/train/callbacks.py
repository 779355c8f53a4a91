"""The training loop's narrow callback protocol, the state it shares, and the stock callbacks.

The loop (:func:`aifab.train.loop.fit`) calls, in this order::

    on_train_start(state)
    for each epoch:  on_epoch_start(state)  [on_batch_end(state) per batch]  on_epoch_end(state)
    on_train_end(state)

Callbacks run in the order given. A callback stops training by setting ``state.stop = True``
(the loop finishes the current epoch first). :class:`CheckpointCallback` saves what the state
holds when its turn comes, so callbacks that change the state (:class:`EarlyStopping`) go before
it, and callbacks that may fail after a checkpoint go after it.

>>> from aifab.core.progress import RecordingProgress
>>> stopper = EarlyStopping("val.macro_f1", mode="max", patience=2)
>>> stopper.epochs_without_improvement([{"val.macro_f1": v} for v in (0.5, 0.4, 0.5)])
2
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from aifab.core.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from aifab.core.progress import Progress

__all__ = [
    "Callback",
    "CheckpointCallback",
    "EarlyStopping",
    "ProgressCallback",
    "TrainState",
    "improved",
]


@dataclass
class TrainState:
    """Everything the loop knows, shared with callbacks and saved in checkpoints.

    ``epoch`` is 1-based: the epoch running (inside it) or just finished (at ``on_epoch_end``);
    0 before the first. ``step`` counts optimizer steps. ``history`` holds one dict per finished
    epoch with ``epoch``, ``train.loss``, ``val.loss``, ``val.accuracy``, ``val.macro_f1`` (and the
    other ``val.*`` averages of :func:`aifab.evaluate.metrics.classification_metrics`), ``lr`` (the
    rate of the epoch's last step) and ``seconds``; ``val.*`` values are ``None`` when there is
    no validation data. ``best_*`` follow ``monitor`` (``mode`` says which way is better).
    ``meta`` is saved verbatim in checkpoints (the caller's run fingerprint, preprocessing, ...).
    """

    model: nn.Module
    optimizer: Any
    scheduler: Any | None = None
    scaler: Any | None = None
    epochs: int = 1
    steps_per_epoch: int = 0
    epoch: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    monitor: str = "val.macro_f1"
    mode: Literal["max", "min"] = "max"
    best_metric: float | None = None
    best_epoch: int = 0
    best_weights: dict[str, torch.Tensor] | None = None
    stop: bool = False
    stop_reason: str | None = None
    elapsed_seconds: float = 0.0
    batch_loss: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class Callback:
    """The protocol, as a base class with no-op methods: override only what you need.

    >>> class Count(Callback):
    ...     def __init__(self): self.batches = 0
    ...     def on_batch_end(self, state): self.batches += 1
    """

    def on_train_start(self, state: TrainState) -> None:
        """Before the first epoch (also when resuming)."""

    def on_epoch_start(self, state: TrainState) -> None:
        """Before the first batch of ``state.epoch``."""

    def on_batch_end(self, state: TrainState) -> None:
        """After each optimizer step; ``state.batch_loss`` holds the batch's loss."""

    def on_epoch_end(self, state: TrainState) -> None:
        """After validation; ``state.history[-1]`` holds the epoch's record."""

    def on_train_end(self, state: TrainState) -> None:
        """After the last epoch, once the best weights are back in ``state.model``."""


class CallbackProtocol(Protocol):
    """What the loop calls; any object with these methods works, subclassing is optional."""

    def on_train_start(self, state: TrainState) -> None: ...
    def on_epoch_start(self, state: TrainState) -> None: ...
    def on_batch_end(self, state: TrainState) -> None: ...
    def on_epoch_end(self, state: TrainState) -> None: ...
    def on_train_end(self, state: TrainState) -> None: ...


def improved(value: float, best: float | None, *, mode: str, min_delta: float = 0.0) -> bool:
    """Whether ``value`` beats ``best`` by more than ``min_delta`` in direction ``mode``.

    >>> improved(0.8, 0.7, mode="max"), improved(0.8, 0.7, mode="min")
    (True, False)
    >>> improved(0.1, None, mode="min")
    True
    >>> improved(0.75, 0.7, mode="max", min_delta=0.1)
    False
    """
    if best is None:
        return True
    if mode == "max":
        return value > best + min_delta
    return value < best - min_delta


class EarlyStopping(Callback):
    """Stop when ``metric`` has not improved by more than ``min_delta`` for ``patience`` epochs.

    It keeps no counters of its own: the count is recomputed from ``state.history`` each epoch,
    so a run resumed from a checkpoint stops exactly where the uninterrupted run would. Epochs
    whose value is ``None`` (no validation data) neither improve nor count.

    >>> EarlyStopping("val.loss", mode="min", patience=1).epochs_without_improvement(
    ...     [{"val.loss": 0.5}, {"val.loss": 0.6}])
    1
    """

    def __init__(
        self, metric: str, mode: Literal["max", "min"], patience: int, min_delta: float = 0.0
    ) -> None:
        if mode not in ("max", "min"):
            raise ConfigError(f"train.early_stopping.mode: must be 'max' or 'min'; got {mode!r}")
        if patience < 1:
            raise ConfigError(f"train.early_stopping.patience: must be >= 1; got {patience}")
        if min_delta < 0:
            raise ConfigError(f"train.early_stopping.min_delta: must be >= 0; got {min_delta}")
        self.metric, self.mode, self.patience, self.min_delta = metric, mode, patience, min_delta

    def epochs_without_improvement(self, history: list[dict[str, Any]]) -> int:
        best: float | None = None
        wait = 0
        for record in history:
            value = record.get(self.metric)
            if value is None or not math.isfinite(value):
                continue
            if improved(value, best, mode=self.mode, min_delta=self.min_delta):
                best, wait = value, 0
            else:
                wait += 1
        return wait

    def on_epoch_end(self, state: TrainState) -> None:
        if state.history and self.metric not in state.history[-1]:
            known = ", ".join(k for k in state.history[-1] if k not in ("epoch", "seconds"))
            raise ConfigError(
                f"train.early_stopping.metric: {self.metric!r} is not recorded; "
                f"choose one of {known}"
            )
        wait = self.epochs_without_improvement(state.history)
        if wait >= self.patience:
            state.stop = True
            state.stop_reason = (
                f"early stopping: {self.metric} did not improve by more than {self.min_delta} "
                f"for {wait} epoch(s) (best {state.best_metric} at epoch {state.best_epoch})"
            )


class ProgressCallback(Callback):
    """One progress task per epoch (``epoch 2/10``), advanced per batch, described with the last
    batch's loss and, at the epoch's end, the monitored validation metric.

    >>> from aifab.core.progress import RecordingProgress
    >>> progress = RecordingProgress()
    >>> cb = ProgressCallback(progress)
    >>> state = TrainState(model=None, optimizer=None, epochs=2, steps_per_epoch=3, epoch=1)
    >>> cb.on_epoch_start(state); cb.on_batch_end(state); cb.on_epoch_end(state)
    >>> progress.state()["epoch 1/2"]
    {'completed': 1, 'total': 3, 'done': True}
    """

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self._stack: contextlib.ExitStack | None = None
        self._task: Any = None
        self._title = ""

    def on_epoch_start(self, state: TrainState) -> None:
        self._close()
        self._title = f"epoch {state.epoch}/{state.epochs}"
        self._stack = contextlib.ExitStack()
        self._task = self._stack.enter_context(
            self.progress.task(self._title, total=state.steps_per_epoch or None)
        )

    def on_batch_end(self, state: TrainState) -> None:
        if self._task is None:
            return
        self._task.advance(1)
        if state.batch_loss is not None:
            self._task.update(description=f"{self._title} loss {state.batch_loss:.4f}")

    def on_epoch_end(self, state: TrainState) -> None:
        if self._task is not None and state.history:
            record = state.history[-1]
            parts = [self._title, f"loss {record.get('train.loss', float('nan')):.4f}"]
            value = record.get(state.monitor)
            if value is not None:
                parts.append(f"{state.monitor} {value:.4f}")
            self._task.update(description=" ".join(parts))
        self._close()

    def on_train_end(self, state: TrainState) -> None:
        self._close()

    def _close(self) -> None:
        if self._stack is not None:
            self._stack.close()
        self._stack, self._task = None, None


class CheckpointCallback(Callback):
    """Write a checkpoint to ``path`` after every epoch (atomically; see
    :func:`aifab.train.checkpoint.save_checkpoint`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_epoch_end(self, state: TrainState) -> None:
        from aifab.train.checkpoint import save_checkpoint

        save_checkpoint(self.path, state)
