"""Promotion and rollback: ``production`` moves only through the quality gate, and every move
leaves an audit entry (who, what, when, why, and the gate result that allowed it).

This module decides and records; it does not evaluate models. The caller hands
:func:`promote` a ``measure`` function that returns the candidate's metrics and the
same-records comparisons with production (the pipeline evaluates both models on the frozen
test split; tests pass plain numbers).

Rollback undoes promotions one at a time, like an undo stack: from ``1 -> 2 -> 3`` a rollback
goes to 2, a second one to 1; it never goes forward to a version production was rolled back from.

>>> from datetime import datetime, timezone
>>> from aifab.core.config import GateConfig
>>> from aifab.core.types import ModelVersion
>>> from aifab.store import MetadataStore
>>> meta = MetadataStore("sqlite://"); meta.migrate()
>>> at = datetime(2024, 1, 1, tzinfo=timezone.utc)
>>> for _ in range(2):
...     _ = meta.add_model_version(ModelVersion(name="sms", version=0, files={},
...                                             task="text-classification", created_at=at))
>>> scores = {1: 0.90, 2: 0.93}
>>> def measure(candidate, production):
...     return Measurements(candidate={"macro_f1": scores[candidate.version]})
>>> policy = GateConfig(floors={"test.macro_f1": 0.85})
>>> promote(meta, name="sms", version=1, gate_policy=policy, measure=measure, actor="ana").gate.passed
True
>>> _ = promote(meta, name="sms", version=2, gate_policy=policy, measure=measure, actor="ana")
>>> rollback(meta, name="sms", actor="bob", reason="complaints").version
1
>>> [(e["version"], e["actor"], e["gate"] is not None) for e in audit(meta, "sms")]
[(1, 'bob', False), (2, 'ana', True), (1, 'ana', True)]
>>> meta.dispose()
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aifab.core.config import GateConfig
from aifab.core.errors import ConfigError, Conflict, GateFailed
from aifab.core.types import AliasMove, ModelVersion, to_jsonable
from aifab.evaluate.gates import Comparison, GateResult, evaluate_gate
from aifab.store.db import GateRecord, MetadataStore

__all__ = [
    "PRODUCTION",
    "Measure",
    "Measurements",
    "PromotionResult",
    "audit",
    "promote",
    "rollback",
    "rollback_target",
]

log = logging.getLogger(__name__)

PRODUCTION = "production"


@dataclass(frozen=True)
class Measurements:
    """What the gate judges: the candidate's full metrics on its test split, comparisons with
    production on the same records (empty when there is no production version), the p95
    latency of one instance, ONNX parity (None: no export) and the data report."""

    candidate: Mapping[str, Any]
    comparisons: Sequence[Comparison] = ()
    latency_p95_ms: float | None = None
    parity: Mapping[str, Any] | None = None
    data_report: Mapping[str, Any] | None = None


Measure = Callable[[ModelVersion, ModelVersion | None], Measurements]
"""``measure(candidate, production_or_None) -> Measurements``."""


@dataclass(frozen=True)
class PromotionResult:
    """A promotion that happened: the move, and the gate result stored with the candidate."""

    name: str
    version: int
    previous: int | None
    forced: bool
    gate: GateResult
    gate_result_id: int
    move: AliasMove = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "version": self.version,
            "alias": self.move.alias,
            "previous": self.previous,
            "forced": self.forced,
            "moved_at": self.move.moved_at.isoformat(),
            "actor": self.move.actor,
            "reason": self.move.reason,
            "gate_result_id": self.gate_result_id,
            "gate": self.gate.to_dict(),
        }


def promote(
    meta: MetadataStore,
    *,
    name: str,
    version: int,
    gate_policy: GateConfig,
    measure: Measure,
    actor: str,
    force: bool = False,
    reason: str = "",
) -> PromotionResult:
    """Run the gate on ``name@version`` against the current production version, store the
    result with the candidate, and move ``production`` to it only when the gate passed.

    ``force`` moves it even when the gate failed; it needs a ``reason`` (ConfigError without
    one), and the failed gate result is recorded with the move. The caller checks that the
    actor may force (the pipeline requires the admin role). GateFailed (every reason in
    ``details["reasons"]``) when the gate refuses; Conflict when the version is production
    already; NotFound for an unknown model or version. See the module docstring for an example.
    """
    _check_actor(actor)
    if force and not reason.strip():
        raise ConfigError(
            f"promote {name}@{version}: forcing past the gate needs a reason; got none",
            details={"model": name, "version": version},
        )
    candidate = meta.get_model_version(name, version)
    current = meta.aliases(name).get(PRODUCTION)
    if current == candidate.version:
        raise Conflict(
            f"{candidate.ref} is production already; nothing to promote",
            details={"model": name, "version": candidate.version},
        )
    production = None if current is None else meta.get_model_version(name, current)
    measured = measure(candidate, production)
    gate = evaluate_gate(
        gate_policy,
        candidate=measured.candidate,
        comparisons=measured.comparisons,
        latency_p95_ms=measured.latency_p95_ms,
        parity=measured.parity,
        data_report=measured.data_report,
    )
    stored = gate.to_dict() | {
        "policy": gate_policy.model_dump(mode="json"),
        "production": current,
        "compared_on": [c.on for c in measured.comparisons],
        "actor": actor,
    }
    gate_id = meta.add_gate_result(name, candidate.version, to_jsonable(stored), passed=gate.passed)
    if not gate.passed and not force:
        reasons = gate.reasons
        raise GateFailed(
            f"{candidate.ref}: the quality gate refused promotion to {PRODUCTION} "
            f"({len(reasons)} reason{'s' if len(reasons) != 1 else ''}): " + "; ".join(reasons),
            details={
                "model": name,
                "version": candidate.version,
                "production": current,
                "gate_result_id": gate_id,
                "reasons": reasons,
                "gate": gate.to_dict(),
            },
        )
    forced = not gate.passed
    why = (
        f"forced past a failed gate: {reason.strip()}"
        if forced
        else (reason.strip() or "quality gate passed")
    )
    move = meta.set_alias(
        name, PRODUCTION, candidate.version, actor=actor, reason=why, gate_result_id=gate_id
    )
    if move.previous != current:
        # Another promotion landed between our read and our move; the gate compared against a
        # version that was no longer production. The trail shows both moves.
        log.warning(
            "%s: production moved from %s to %s while the gate ran; compared against %s",
            candidate.ref,
            current,
            move.previous,
            current,
        )
    return PromotionResult(
        name=name,
        version=candidate.version,
        previous=move.previous,
        forced=forced,
        gate=gate,
        gate_result_id=gate_id,
        move=move,
    )


def rollback(meta: MetadataStore, *, name: str, actor: str, reason: str = "") -> AliasMove:
    """Move ``production`` back to the version it held before the current one (see
    :func:`rollback_target`). Conflict when there is no production version or nothing earlier.
    No gate runs: a rollback returns to a version that was in production already.
    """
    _check_actor(actor)
    current = meta.aliases(name).get(PRODUCTION)
    if current is None:
        raise Conflict(
            f"model {name!r} has no {PRODUCTION} version; nothing to roll back",
            details={"model": name},
        )
    history = meta.alias_history(name, PRODUCTION)  # newest first
    target = rollback_target([m.version for m in reversed(history)])
    if target is None or target == current:
        raise Conflict(
            f"model {name!r}: {PRODUCTION} has held no version before {current}; "
            "there is nothing to roll back to",
            details={"model": name, "production": current},
        )
    why = f"rollback from version {current}" + (f": {reason.strip()}" if reason.strip() else "")
    return meta.set_alias(name, PRODUCTION, target, actor=actor, reason=why)


def rollback_target(versions: Sequence[int | None]) -> int | None:
    """The version a rollback returns to, given the versions an alias pointed at, oldest first
    (None: the alias was deleted). Moves back to the version just below the top of the stack
    count as rollbacks and pop it, so repeated rollbacks keep going back.

    >>> rollback_target([1, 2, 3]), rollback_target([1, 2, 3, 2]), rollback_target([1, 2, 1])
    (2, 1, None)
    >>> rollback_target([1, 2, 3, 2, 4]), rollback_target([1, 1, 2, 2]), rollback_target([5])
    (2, 1, None)
    """
    stack: list[int] = []
    for version in versions:
        if version is None or (stack and stack[-1] == version):
            continue
        if len(stack) >= 2 and stack[-2] == version:
            stack.pop()
        else:
            stack.append(version)
    return stack[-2] if len(stack) >= 2 else None


def audit(
    meta: MetadataStore, name: str | None = None, alias: str | None = None
) -> list[dict[str, Any]]:
    """Every alias move (of one model, of one alias), newest first, as JSON-ready entries: who
    (``actor``), what (``model``, ``alias``, ``previous`` -> ``version``), when (``moved_at``),
    why (``reason``) and the gate result that allowed it (``gate``, None for moves made without
    one). ``forced`` marks moves made past a failed gate."""
    return [_entry(move, gate) for move, gate in meta.audit_trail(name, alias)]


def _entry(move: AliasMove, gate: GateRecord | None) -> dict[str, Any]:
    return {
        "model": move.name,
        "alias": move.alias,
        "version": move.version,
        "previous": move.previous,
        "moved_at": move.moved_at.isoformat(),
        "actor": move.actor,
        "reason": move.reason,
        "forced": gate is not None and not gate.passed,
        "gate": None
        if gate is None
        else {
            "id": gate.id,
            "passed": gate.passed,
            "created_at": gate.created_at.isoformat(),
            **{k: v for k, v in gate.result.items() if k != "passed"},
        },
    }


def _check_actor(actor: str) -> None:
    # The audit trail answers "who": an anonymous move would leave a hole in it.
    if not isinstance(actor, str) or not actor.strip():
        raise ConfigError(f"The 'actor' parameter must name who moves the alias; got {actor!r}")
