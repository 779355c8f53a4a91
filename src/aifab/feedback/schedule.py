"""When the loop retrains a model by itself: one pure decision, :func:`decide`.

The runner (:mod:`aifab.pipeline.loop`) reads a :class:`LoopState` from the store, asks
:func:`decide` what to do, and does it. Nothing here reads a clock, a file or the store, so
every rule is a line in a table of test cases. The rules, in order:

1. no ``production`` version: wait (there is nothing to retrain from);
2. within ``cooldown_s`` of the last retrain attempt (whatever its outcome): wait;
3. ``min_corrections`` or more new corrections since that attempt: retrain;
4. with ``on_drift``, and at least one new correction to learn from: measure drift (action
   ``check_drift``; the runner measures and asks again), then retrain on an alarm that rests
   on at least ``min_drift_predictions`` served predictions;
5. otherwise wait.

A drift alarm with no new correction does not retrain: the same data and the same spec would
train the candidate the last attempt trained (or production itself) again. The reason says to
work the review queue instead.

>>> from datetime import datetime, timezone
>>> from aifab.core.config import LoopConfig
>>> now = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
>>> state = LoopState(model="sms", production=3, new_corrections=3, last_attempt=None)
>>> decide(state, LoopConfig(min_corrections=50, on_drift=False), now).reason
'3 new corrections < 50: waiting'
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from aifab.core.config import LoopConfig
from aifab.core.errors import ConfigError

__all__ = ["Action", "Decision", "LoopState", "decide"]

Action = Literal["retrain", "wait", "check_drift"]


@dataclass(frozen=True)
class LoopState:
    """What the loop knows about one model, all of it derived from the store.

    ``new_corrections``: corrections (feedback carrying a label) the last retrain attempt did
    not take; ``last_attempt``: when that attempt ended (None: never); ``drift_alarm``: None
    until drift is measured; ``drift_count``: the served predictions it compared.
    """

    model: str
    production: int | None
    new_corrections: int
    last_attempt: datetime | None
    drift_alarm: bool | None = None
    drift_reasons: tuple[str, ...] = ()
    drift_count: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "production": self.production,
            "new_corrections": self.new_corrections,
            "last_attempt": None if self.last_attempt is None else self.last_attempt.isoformat(),
            "drift_alarm": self.drift_alarm,
            "drift_reasons": list(self.drift_reasons),
            "drift_count": self.drift_count,
        }


@dataclass(frozen=True)
class Decision:
    """What to do now and why; ``trigger`` (``corrections`` or ``drift``) says what started a
    retrain; ``cooldown_until`` is set while a cooldown holds the loop back."""

    action: Action
    reason: str
    trigger: Literal["corrections", "drift"] | None = None
    cooldown_until: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "reason": self.reason,
            "trigger": self.trigger,
            "cooldown_until": None
            if self.cooldown_until is None
            else self.cooldown_until.isoformat(),
        }


def decide(state: LoopState, policy: LoopConfig, now: datetime) -> Decision:
    """What the loop does for one model now (see the module docstring for the rules).

    >>> from datetime import datetime, timezone
    >>> from aifab.core.config import LoopConfig
    >>> now = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    >>> policy = LoopConfig(min_corrections=50, cooldown_s=3600)
    >>> decide(LoopState("sms", 3, 60, None), policy, now).action
    'retrain'
    >>> earlier = datetime(2024, 5, 1, 11, 30, tzinfo=timezone.utc)
    >>> decide(LoopState("sms", 3, 60, earlier), policy, now).reason
    'cooldown until 2024-05-01T12:30:00+00:00 (last retrain attempt at 2024-05-01T11:30:00+00:00)'
    >>> decide(LoopState("sms", 3, 7, None), policy, now).action
    'check_drift'
    """
    if now.tzinfo is None:
        raise ConfigError(
            f"The 'now' parameter of decide must be timezone-aware. Got {now!r} instead."
        )
    if state.production is None:
        return Decision(
            "wait", f"{state.model} has no production version to retrain from: waiting"
        )
    if state.last_attempt is not None:
        until = state.last_attempt + timedelta(seconds=policy.cooldown_s)
        if now < until:
            return Decision(
                "wait",
                f"cooldown until {until.isoformat()} "
                f"(last retrain attempt at {state.last_attempt.isoformat()})",
                cooldown_until=until,
            )
    n, least = state.new_corrections, policy.min_corrections
    if n >= least:
        return Decision(
            "retrain", f"{n} new corrections >= {least}: retraining", trigger="corrections"
        )
    if not policy.on_drift:
        return Decision("wait", f"{n} new corrections < {least}: waiting")
    if state.drift_alarm is None:
        if n == 0:
            return Decision(
                "wait", f"0 new corrections < {least}: waiting (nothing new to learn from)"
            )
        return Decision("check_drift", f"{n} new corrections < {least}: checking drift")
    if not state.drift_alarm:
        return Decision("wait", f"{n} new corrections < {least} and no drift alarm: waiting")
    alarm = "; ".join(state.drift_reasons) or "alarm"
    counted = state.drift_count or 0
    if counted < policy.min_drift_predictions:
        return Decision(
            "wait",
            f"{n} new corrections < {least}; the drift alarm rests on {counted} served "
            f"predictions < {policy.min_drift_predictions}: waiting",
        )
    if n == 0:
        return Decision(
            "wait",
            f"drift alarm ({alarm}) but 0 new corrections to learn from: waiting; "
            f"correct the review queue (aifab review {state.model})",
        )
    return Decision(
        "retrain", f"drift alarm ({alarm}) with {n} new corrections: retraining", trigger="drift"
    )
