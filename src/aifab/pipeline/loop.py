"""The loop that runs by itself: `aifab loop NAME` and `aifab serve --loop`.

Every ``interval_s`` seconds each model is checked: its :class:`~aifab.feedback.schedule.LoopState`
is read from the store, :func:`~aifab.feedback.schedule.decide` says what to do, and a retrain
(:func:`aifab.pipeline.retraining.retrain`: a candidate trained with the production spec on
production's data plus the corrections, gated, promoted only on a pass) runs when it says so.

The state lives in the store, not in this process, so a restarted loop keeps its cooldown:

- the last retrain attempt is the newest training run of the model on a dataset version built
  from feedback (``source`` ``feedback:...``); it ended at the latest of the run's last update
  and the gate results of the version it registered. A run that crashed counts too;
- new corrections are the feedback on the model's predictions that carries a label (``label``
  or ``labels``) and that neither production's dataset nor the last attempt's took (their
  retrain lineage, :func:`aifab.pipeline.retraining.used_feedback`).

Every check logs one ``key=value`` line on the ``aifab.loop`` logger; the promotion, or the
refusal, is in the audit (``aifab audit --refused``) with actor ``aifab loop``.

>>> # check(ws, "sms")["message"] -> '3 new corrections < 50: waiting'
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from aifab.core.config import LoopConfig, parse
from aifab.core.errors import AifabError, ConfigError, InputError
from aifab.feedback.schedule import LoopState, decide

if TYPE_CHECKING:
    from aifab.core.progress import Progress
    from aifab.core.types import DatasetVersion, ModelVersion, Run
    from aifab.pipeline.project import Workspace

__all__ = ["LOOP_ACTOR", "check", "loop_policy", "loop_state", "run_loop"]

log = logging.getLogger("aifab.loop")

LOOP_ACTOR = "aifab loop"
PRODUCTION = "production"
FEEDBACK_SOURCE = "feedback:"  # the source of every dataset version a retrain builds


def loop_policy(
    ws: Workspace,
    name: str,
    *,
    min_corrections: int | None = None,
    cooldown_s: float | None = None,
    on_drift: bool | None = None,
) -> LoopConfig:
    """The ``loop`` section of model ``name``'s production spec (its defaults without one),
    with each argument that is not None over it. ConfigError names a bad value.

    >>> # loop_policy(ws, "sms", cooldown_s=60).cooldown_s -> 60.0
    """
    saved: dict[str, Any] = {}
    production = ws.meta.aliases(name).get(PRODUCTION)
    if production is not None:
        version = ws.meta.get_model_version(name, production)
        if "spec.json" in version.files:
            saved = dict(json.loads(ws.blob(version.files["spec.json"])).get("loop") or {})
    given = {"min_corrections": min_corrections, "cooldown_s": cooldown_s, "on_drift": on_drift}
    merged = saved | {k: v for k, v in given.items() if v is not None}
    return parse(LoopConfig, merged, source=f"loop policy of model {name!r}")


def loop_state(ws: Workspace, name: str) -> LoopState:
    """What the loop knows about model ``name``, read from the store (see the module docstring).
    NotFound for an unknown model.

    >>> # loop_state(ws, "sms").new_corrections -> 3
    """
    from aifab.pipeline.retraining import MAX_FEEDBACK, used_feedback

    production = ws.meta.aliases(name).get(PRODUCTION)  # NotFound for an unknown model
    attempt = _last_attempt(ws, name)
    last = None if attempt is None else attempt[1]
    if production is None:
        return LoopState(model=name, production=None, new_corrections=0, last_attempt=last)
    used = used_feedback(ws, _dataset_of(ws, ws.meta.get_model_version(name, production)))
    if attempt is not None:
        used |= used_feedback(ws, attempt[0])
    new = sum(
        1
        for fb in ws.meta.list_feedback(name, limit=MAX_FEEDBACK)
        if (fb.label is not None or fb.labels is not None) and fb.id not in used
    )
    return LoopState(model=name, production=production, new_corrections=new, last_attempt=last)


def check(
    ws: Workspace,
    name: str,
    *,
    policy: LoopConfig | None = None,
    now: datetime | None = None,
    actor: str = LOOP_ACTOR,
    references: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Check model ``name`` once: read its state, decide, measure drift if the decision needs
    it, retrain if it says so. Returns what was decided and why, as JSON-ready values:
    ``decision`` (``action``: ``retrain`` or ``wait``, ``reason``), ``state``, ``policy``,
    ``drift`` (when measured), ``outcome`` (after a retrain: ``status`` ``promoted``,
    ``refused``, ``skipped``; the candidate; the gate's reasons) and ``message``, one line.

    ``policy``: None reads :func:`loop_policy`. ``references``: a cache of drift references by
    model version, kept by a caller that checks again and again. The retrain promotes with
    the operator role: the loop never forces a candidate past the gate.

    >>> # check(ws, "sms")["message"] -> 'retrained: sms@4 promoted (60 new corrections >= 50)'
    """
    policy = policy if policy is not None else loop_policy(ws, name)
    now = now or datetime.now(timezone.utc)
    state = loop_state(ws, name)
    decision = decide(state, policy, now)
    measured: dict[str, Any] | None = None
    if decision.action == "check_drift":
        state, measured = _with_drift(ws, state, references)
        decision = decide(state, policy, now)
    outcome = None
    if decision.action == "retrain":
        outcome = _retrain(ws, name, actor=actor, progress=progress)
    result = {
        "model": name,
        "checked_at": now.isoformat(),
        "decision": decision.to_dict(),
        "state": state.to_dict(),
        "policy": policy.model_dump(mode="json"),
        "drift": measured,
        "outcome": outcome,
        "message": _message(decision.reason, outcome),
    }
    log.info("%s", log_line(result))
    return result


def run_loop(
    ws: Workspace,
    names: Sequence[str] | None = None,
    *,
    interval_s: float = 300.0,
    stop: threading.Event | None = None,
    once: bool = False,
    min_corrections: int | None = None,
    cooldown_s: float | None = None,
    on_drift: bool | None = None,
    actor: str = LOOP_ACTOR,
    on_check: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Check ``names`` (None: every model with a production version, looked up each round)
    every ``interval_s`` seconds until ``stop`` is set; with ``once``, one round. Returns the
    last round's results; ``on_check`` gets each result as it comes.

    With ``once`` an error stops the round and is raised (a cron job sees its exit code);
    otherwise it is logged, handed to ``on_check`` as ``{"model", "error"}``, and the loop
    goes on with the next model.

    >>> # run_loop(ws, ["sms"], once=True, min_corrections=20)[0]["decision"]["action"] -> 'wait'
    """
    if isinstance(interval_s, bool) or not isinstance(interval_s, (int, float)) or interval_s <= 0:
        raise ConfigError(
            "The 'interval_s' parameter of run_loop must be a number > 0. "
            f"Got {interval_s!r} instead."
        )
    stop = stop or threading.Event()
    references: dict[str, Any] = {}  # drift references by model version, for this loop's life
    overrides = {"min_corrections": min_corrections, "cooldown_s": cooldown_s, "on_drift": on_drift}
    while True:
        results = []
        for name in names if names is not None else _with_production(ws):
            try:
                policy = loop_policy(ws, name, **overrides)
                result = check(ws, name, policy=policy, actor=actor, references=references)
            except Exception as exc:
                if once:
                    raise
                result = _failed(name, exc)
            results.append(result)
            if on_check is not None:
                on_check(result)
            if stop.is_set():
                return results
        if once or stop.wait(interval_s):
            return results


def log_line(result: dict[str, Any]) -> str:
    """One check as one ``key=value`` log line (strings JSON-quoted when they hold spaces).

    >>> log_line({"model": "sms", "decision": {"action": "wait", "trigger": None},
    ...           "state": {"new_corrections": 3}, "message": "3 new corrections < 50: waiting"})
    'loop model=sms action=wait new_corrections=3 message="3 new corrections < 50: waiting"'
    """
    decision = result.get("decision") or {}
    outcome = result.get("outcome") or {}
    fields = {
        "model": result.get("model"),
        "action": decision.get("action"),
        "trigger": decision.get("trigger"),
        "new_corrections": (result.get("state") or {}).get("new_corrections"),
        "status": outcome.get("status"),
        "candidate": outcome.get("candidate"),
        "message": result.get("message"),
    }
    parts = [
        f"{k}={json.dumps(v) if isinstance(v, str) and (' ' in v or not v) else v}"
        for k, v in fields.items()
        if v is not None
    ]
    return "loop " + " ".join(parts)


# ---------------------------------------------------------------------------------------------


def _last_attempt(ws: Workspace, name: str) -> tuple[DatasetVersion, datetime] | None:
    """The dataset version the newest retrain attempt trained on, and when the attempt ended."""
    versions: dict[str, dict[str, DatasetVersion]] = {}
    runs: list[Run] = ws.meta.list_runs(name)  # newest first
    for run in runs:
        dataset = str(run.spec.get("dataset", "")).partition("@")[0]
        if dataset not in versions:
            versions[dataset] = {v.id: v for v in ws.meta.list_dataset_versions(dataset)}
        child = versions[dataset].get(run.dataset_version)
        if child is None or not child.source.startswith(FEEDBACK_SOURCE):
            continue
        ended = max(run.created_at, run.updated_at)
        if run.model_version is not None:
            gates = ws.meta.list_gate_results(name, run.model_version)
            ended = max([ended, *(g.created_at for g in gates)])
        return child, ended
    return None


def _dataset_of(ws: Workspace, version: ModelVersion) -> DatasetVersion:
    digest = version.files.get("lineage.json")
    lineage = json.loads(ws.blob(digest)) if digest else {}
    if not {"dataset_name", "dataset_version"} <= set(lineage):
        raise InputError(
            f"model version {version.ref}: its lineage.json names no dataset version; the loop "
            "retrains only versions trained in this workspace (aifab train)",
            details={"model": version.name, "version": version.version},
        )
    return ws.meta.get_dataset_version(lineage["dataset_name"], lineage["dataset_version"])


def _with_drift(
    ws: Workspace, state: LoopState, references: dict[str, Any] | None
) -> tuple[LoopState, dict[str, Any]]:
    """The state with the drift alarm of production's recent predictions filled in."""
    from aifab.pipeline.retraining import drift, drift_reference

    ref = f"{state.model}@{state.production}"
    try:
        if references is not None and ref not in references:
            references[ref] = drift_reference(ws, ref)  # once per version: it only changes with it
        reference = None if references is None else references[ref]
        report = drift(ws, state.model, ref=ref, reference=reference)
    except AifabError as exc:
        # No alarm can be raised on what could not be measured; the result says why.
        return replace(state, drift_alarm=False), {"alarm": False, "error": exc.message}
    reasons = tuple(str(r) for r in report.get("reasons") or ())
    alarm = bool(report["alarm"])
    measured = {"alarm": alarm, "reasons": list(reasons), "count": report.get("count")}
    count = int(report.get("count") or 0)
    return replace(state, drift_alarm=alarm, drift_reasons=reasons, drift_count=count), measured


def _retrain(ws: Workspace, name: str, *, actor: str, progress: Progress | None) -> dict[str, Any]:
    from aifab.pipeline.retraining import retrain

    # The loop decided on the corrections already; any one the vote keeps is enough to train on.
    summary = retrain(ws, name, actor=actor, min_corrections=1, role="operator", progress=progress)
    status, candidate = summary["status"], summary.get("candidate")
    gate = summary.get("gate") or {}
    reasons = list(gate.get("reasons") or [])
    if status == "promoted":
        message = f"retrained: {candidate} promoted"
    elif status == "refused":
        message = f"refused: {candidate}: " + "; ".join(reasons)
    else:
        message = f"{status}: {summary.get('reason', '')}".rstrip(": ")
    details = gate.get("details") or {}
    result = (gate.get("result") or {}) if status == "promoted" else {}
    return {
        "status": status,
        "message": message,
        "candidate": candidate,
        "child_version": summary.get("child_version"),
        "corrections": summary.get("corrections"),
        "added": len(summary.get("added") or []),
        "replaced": len(summary.get("replaced") or []),
        "reasons": reasons,
        "gate_result_id": details.get("gate_result_id", result.get("gate_result_id")),
    }


def _message(reason: str, outcome: dict[str, Any] | None) -> str:
    """The decision's reason, or what the retrain it started came to and why it started."""
    if outcome is None:
        return reason
    return f"{outcome['message']} ({reason.removesuffix(': retraining')})"


def _with_production(ws: Workspace) -> list[str]:
    return [n for n in ws.meta.list_models() if PRODUCTION in ws.meta.aliases(n)]


def _failed(name: str, exc: Exception) -> dict[str, Any]:
    if isinstance(exc, AifabError):
        log.error("loop model=%s error=%s message=%s", name, exc.code, json.dumps(exc.message))
        return {"model": name, "error": exc.to_dict()["error"], "message": exc.message}
    log.error("loop model=%s: unexpected error", name, exc_info=exc)
    text = f"{type(exc).__name__}: {exc}"
    return {"model": name, "error": {"code": "internal_error", "message": text}, "message": text}
