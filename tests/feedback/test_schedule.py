"""The loop's decision, rule by rule: a table of states, policies and clocks, and what follows."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from aifab.core.config import LoopConfig, Spec, parse
from aifab.core.errors import ConfigError
from aifab.feedback.schedule import LoopState, decide

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
POLICY = LoopConfig(min_corrections=50, cooldown_s=3600, on_drift=True)


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def state(
    new: int,
    last: datetime | None = None,
    *,
    drift: bool | None = None,
    on: int = 500,
    production: int | None = 3,
) -> LoopState:
    """``drift``: the alarm measured on ``on`` served predictions (None: not measured)."""
    reasons = ("length: PSI 1.2 > 0.2",) if drift else ()
    count = None if drift is None else on
    return LoopState("sms", production, new, last, drift, reasons, count)


CASES = [
    # (case, state, policy, action, trigger, words in the reason)
    ("too few corrections", state(3), POLICY, "check_drift", None, "3 new corrections < 50"),
    (
        "too few, drift off",
        state(3),
        LoopConfig(min_corrections=50, on_drift=False),
        "wait",
        None,
        "3 new corrections < 50: waiting",
    ),
    ("too few, no alarm", state(3, drift=False), POLICY, "wait", None, "no drift alarm: waiting"),
    ("nothing new", state(0), POLICY, "wait", None, "0 new corrections < 50: waiting"),
    ("enough", state(50), POLICY, "retrain", "corrections", "50 new corrections >= 50"),
    ("more than enough", state(51, ago(7200)), POLICY, "retrain", "corrections", "51 new"),
    ("drift alarm", state(3, drift=True), POLICY, "retrain", "drift", "drift alarm (length: PSI"),
    (
        "drift alarm on a handful of predictions",
        state(3, drift=True, on=99),
        POLICY,
        "wait",
        None,
        "rests on 99 served predictions < 100: waiting",
    ),
    (
        "drift alarm on enough predictions",
        state(3, drift=True, on=20),
        LoopConfig(min_drift_predictions=20),
        "retrain",
        "drift",
        "with 3 new corrections",
    ),
    (
        "drift alarm, nothing to learn from",
        state(0, drift=True),
        POLICY,
        "wait",
        None,
        "0 new corrections to learn from",
    ),
    ("in cooldown", state(500, ago(600)), POLICY, "wait", None, "cooldown until 2024-05-01T12:50"),
    ("in cooldown, drift", state(5, ago(600), drift=True), POLICY, "wait", None, "cooldown until"),
    ("cooldown just over", state(50, ago(3600)), POLICY, "retrain", "corrections", ">= 50"),
    (
        "cooldown off",
        state(50, ago(1)),
        LoopConfig(min_corrections=50, cooldown_s=0),
        "retrain",
        "corrections",
        ">= 50",
    ),
    ("no production", state(500, production=None), POLICY, "wait", None, "no production version"),
]


@pytest.mark.parametrize(
    ("case", "given", "policy", "action", "trigger", "words"), CASES, ids=[c[0] for c in CASES]
)
def test_decide(
    case: str,
    given: LoopState,
    policy: LoopConfig,
    action: str,
    trigger: str | None,
    words: str,
) -> None:
    decision = decide(given, policy, NOW)
    assert (decision.action, decision.trigger) == (action, trigger), decision.reason
    assert words in decision.reason


def test_a_cooldown_names_when_it_ends_and_the_other_decisions_do_not() -> None:
    held = decide(state(500, ago(600)), POLICY, NOW)
    assert held.cooldown_until == ago(600) + timedelta(seconds=3600)
    assert held.to_dict()["cooldown_until"] == "2024-05-01T12:50:00+00:00"
    assert decide(state(500, ago(7200)), POLICY, NOW).cooldown_until is None


def test_a_naive_clock_is_refused() -> None:
    with pytest.raises(ConfigError, match="timezone-aware"):
        decide(state(3), POLICY, NOW.replace(tzinfo=None))


def test_the_loop_policy_is_a_strict_section_of_the_spec() -> None:
    spec = parse(Spec, {"task": "text-classification", "dataset": "sms"})
    loop = spec.loop
    assert (loop.min_corrections, loop.cooldown_s, loop.on_drift, loop.min_drift_predictions) == (
        50,
        3600,
        True,
        100,
    )
    base = {"task": "text-classification", "dataset": "sms"}
    with pytest.raises(ConfigError, match="min_correction: unknown key.*'min_corrections'"):
        parse(Spec, base | {"loop": {"min_correction": 5}})
    with pytest.raises(ConfigError, match="loop.min_corrections"):
        parse(Spec, base | {"loop": {"min_corrections": 0}})
