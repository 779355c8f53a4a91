"""Promote, roll back and audit from a workspace: what ``aifab promote``, ``aifab rollback``,
``aifab audit`` and their HTTP routes call.

:func:`promote` measures what the gate judges and hands it to
:func:`aifab.registry.promote.promote`:

- the candidate and the production version are evaluated on the same frozen records: the test
  split of the candidate's dataset version and, when production was trained on another dataset
  version, production's own test split too. A record's id covers its label, so a relabeled
  dataset version's test split is not its parent's; comparing on production's split as well keeps
  a candidate trained (and tested) on corrupted labels from passing against a yardstick it
  corrupted itself;
- the p95 latency of one instance (:data:`LATENCY_RUNS` single-input predictions after
  :data:`LATENCY_WARMUP` warm-up ones) on this machine;
- ONNX parity when the version holds an export (its recorded ``parity.json``);
- the data gate's report of the candidate's dataset version.

The gate policy is the ``gate`` section of the candidate's saved spec, made stricter by production's
(:func:`gate_policy`): a candidate can raise the bar, never lower it.

>>> # ws = Workspace.open(); promote(ws, "digits@2", actor="ana")["gate"]["passed"]
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from aifab.core.config import GateConfig, parse
from aifab.core.errors import ConfigError, Forbidden, InputError
from aifab.core.types import DatasetVersion, ModelVersion
from aifab.evaluate.gates import Comparison, GateResult, stricter
from aifab.registry import promote as registry
from aifab.registry.promote import Measurements
from aifab.security.roles import parse_role, require

if TYPE_CHECKING:
    from aifab.pipeline.project import Workspace

__all__ = [
    "LATENCY_RUNS",
    "LATENCY_WARMUP",
    "audit",
    "gate_policy",
    "gate_results",
    "latency_p95_ms",
    "measure",
    "promote",
    "rollback",
]

LATENCY_WARMUP = 3
LATENCY_RUNS = 30


def promote(
    ws: Workspace,
    ref: str,
    *,
    actor: str,
    force: bool = False,
    reason: str = "",
    role: str = "admin",
) -> dict[str, Any]:
    """Run the quality gate on model ``NAME@VERSION`` (or ``NAME@ALIAS``; ``NAME`` alone is the
    newest version) and move ``production`` to it when the gate passes.

    Needs the operator role (Forbidden otherwise); ``force`` moves it even when the gate fails
    and needs the admin role and a non-empty ``reason`` (ConfigError). GateFailed (exit 6,
    HTTP 422) lists every reason in ``details["reasons"]``; the failed result is stored with
    the candidate either way. Returns the move and the gate result as JSON-ready values.
    """
    role = parse_role(role)
    require(role, "models")
    if force and role != "admin":
        raise Forbidden(
            f"role {role!r} may not force a promotion past the gate; needs admin",
            details={"role": role, "needs": "admin"},
        )
    if force and not reason.strip():
        raise ConfigError(
            f"promote {ref}: --force needs a --reason saying why the gate is overruled"
        )
    candidate = ws.model(ref)
    result = registry.promote(
        ws.meta,
        name=candidate.name,
        version=candidate.version,
        gate_policy=gate_policy(ws, candidate),
        measure=lambda cand, prod: measure(ws, cand, prod),
        actor=actor,
        force=force,
        reason=reason,
    )
    return result.to_dict()


def rollback(
    ws: Workspace, name: str, *, actor: str, reason: str = "", role: str = "admin"
) -> dict[str, Any]:
    """Move ``production`` of model ``name`` back to the version it held before (operator role).

    Conflict when there is no production version or nothing earlier to return to.
    """
    require(parse_role(role), "models")
    move = registry.rollback(ws.meta, name=name, actor=actor, reason=reason)
    return {
        "model": move.name,
        "alias": move.alias,
        "version": move.version,
        "previous": move.previous,
        "moved_at": move.moved_at.isoformat(),
        "actor": move.actor,
        "reason": move.reason,
    }


def audit(
    ws: Workspace, name: str | None = None, *, alias: str | None = None, refused: bool = False
) -> list[dict[str, Any]]:
    """Every alias move (of model ``name``, of one ``alias``), newest first, with who, what,
    when, why and the gate result that allowed it; ``event`` is ``moved``.

    With ``refused``, the promotions the gate refused are listed too (``event: refused``): the
    stored gate results that failed and allowed no move. ``version`` is the refused candidate,
    ``previous`` the production version that stayed, ``moved_at`` when the gate refused,
    ``actor`` who asked and ``reason`` every failed check.

    >>> # [e["event"] for e in audit(ws, "sms", refused=True)] -> ['refused', 'moved', 'moved']
    """
    entries = [{"event": "moved", **e} for e in registry.audit(ws.meta, name, alias)]
    if not refused or alias not in (None, registry.PRODUCTION):
        return entries
    linked = {e["gate"]["id"] for e in entries if e.get("gate")}
    for model in [name] if name is not None else ws.meta.list_models():
        gates = ws.meta.list_gate_results(model)
        entries += [_refusal(g) for g in gates if not g.passed and g.id not in linked]
    # Stable: moves of one instant keep their store order.
    return sorted(entries, key=lambda e: datetime.fromisoformat(e["moved_at"]), reverse=True)


def _refusal(gate: Any) -> dict[str, Any]:
    reasons = GateResult.from_dict(gate.result).reasons
    return {
        "event": "refused",
        "model": gate.name,
        "alias": registry.PRODUCTION,
        "version": gate.version,
        "previous": gate.result.get("production"),
        "moved_at": gate.created_at.isoformat(),
        "actor": str(gate.result.get("actor", "")),
        "reason": "refused by the quality gate: " + "; ".join(reasons),
        "forced": False,
        "gate": {"id": gate.id, "passed": False, "created_at": gate.created_at.isoformat()}
        | {k: v for k, v in gate.result.items() if k != "passed"},
    }


def gate_results(ws: Workspace, ref: str) -> list[dict[str, Any]]:
    """Every gate result stored with model version ``ref`` (``NAME`` alone: every version),
    newest first."""
    name, _, version = ref.partition("@")
    number = ws.model(ref).version if version else None
    return [
        {"id": g.id, "model": g.name, "version": g.version, "created_at": g.created_at.isoformat()}
        | g.result
        for g in ws.meta.list_gate_results(name, number)
    ]


def gate_policy(ws: Workspace, version: ModelVersion) -> GateConfig:
    """The gate ``version`` must pass: the ``gate`` section of its saved spec, made stricter by
    production's (:func:`aifab.evaluate.gates.stricter`), so that a candidate trained with a
    lenient gate cannot lower the bar production was promoted under."""
    policy = _spec_gate(ws, version)
    production = ws.meta.aliases(version.name).get(registry.PRODUCTION)
    if production is not None and production != version.version:
        policy = stricter(_spec_gate(ws, ws.meta.get_model_version(version.name, production)), policy)
    return policy


def _spec_gate(ws: Workspace, version: ModelVersion) -> GateConfig:
    spec = json.loads(ws.blob(version.files["spec.json"]))
    return parse(GateConfig, spec.get("gate") or {}, source=f"{version.ref} spec.json, gate")


def measure(
    ws: Workspace, candidate: ModelVersion, production: ModelVersion | None
) -> Measurements:
    """Everything the gate judges about ``candidate`` (see the module docstring)."""
    dataset = _dataset_of(ws, candidate)
    on = f"{dataset.name}@{dataset.short_id} test"
    metrics = ws.evaluate(candidate.ref, dataset=f"{dataset.name}@{dataset.id}")
    comparisons: list[Comparison] = []
    if production is not None:
        comparisons.append(Comparison(on, metrics, *_evaluate(ws, production, dataset)))
        theirs = _dataset_of(ws, production)
        if theirs.id != dataset.id:
            cand, cand_error = _evaluate(ws, candidate, theirs)
            prod, prod_error = _evaluate(ws, production, theirs)
            comparisons.append(
                Comparison(
                    f"{theirs.name}@{theirs.short_id} test (production's)",
                    cand,
                    prod,
                    cand_error or prod_error,
                )
            )
    return Measurements(
        candidate=metrics,
        comparisons=tuple(comparisons),
        latency_p95_ms=latency_p95_ms(ws, candidate, dataset),
        parity=_parity(ws, candidate),
        data_report=ws.report(dataset),
    )


def latency_p95_ms(ws: Workspace, version: ModelVersion, dataset: DatasetVersion) -> float:
    """The 95th percentile of the wall time of one single-input prediction, in milliseconds,
    on one test record of ``dataset``, after a warm-up (first calls pay for lazy allocations)."""
    import numpy as np

    loaded = ws.load_model(version.ref)
    record = ws.records(dataset, split="test")[0]
    example: Any = ws.blob(record.image) if loaded.kind == "image" else record.text
    for _ in range(LATENCY_WARMUP):
        loaded.predict([example])
    times = []
    for _ in range(LATENCY_RUNS):
        start = time.perf_counter()
        loaded.predict([example])
        times.append((time.perf_counter() - start) * 1000.0)
    return float(np.percentile(times, 95))


# ---------------------------------------------------------------------------------------------


def _dataset_of(ws: Workspace, version: ModelVersion) -> DatasetVersion:
    lineage = json.loads(ws.blob(version.files["lineage.json"]))
    return ws.meta.get_dataset_version(lineage["dataset_name"], lineage["dataset_version"])


def _evaluate(
    ws: Workspace, version: ModelVersion, dataset: DatasetVersion
) -> tuple[dict[str, Any] | None, str]:
    """Metrics of ``version`` on the test split of ``dataset``, or None and why not (labels the
    model does not know, a field it does not read)."""
    try:
        return ws.evaluate(version.ref, dataset=f"{dataset.name}@{dataset.id}"), ""
    except InputError as exc:
        return None, f"{version.ref}: {exc.message}"


def _parity(ws: Workspace, version: ModelVersion) -> dict[str, Any] | None:
    """The ``parity.json`` recorded with the version's export (``aifab optimize`` writes it);
    None without an export. The gate reads ``export``, ``agreement`` and ``examples``."""
    exports = sorted(f for f in version.files if f.endswith(".onnx"))
    if not exports:
        return None
    if "parity.json" in version.files:
        return dict(json.loads(ws.blob(version.files["parity.json"])))
    # Refuse rather than skip: an export that was never compared must not reach production.
    return {
        "export": exports[0],
        "agreement": None,
        "error": "no parity.json was recorded with this export; re-create the version with "
        "`aifab optimize PARENT --export onnx`, or promote with force and a reason",
    }
