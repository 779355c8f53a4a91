"""The quality gate: pure functions from measurements to a pass/fail verdict with every reason.

A candidate model passes only when every check passes. The checks, by name:

=================================  ===========================================================
``floor.<key>``                    an absolute floor from ``gate.floors``, e.g. ``test.macro_f1``
                                   >= 0.85 (a ceiling for lower-is-better metrics such as
                                   ``test.log_loss``); an unknown key fails, naming the nearest one
``regression.<metric>``            the candidate's ``gate.metric`` is not worse than production's
                                   by more than ``max_regression``, on the same records
``regression.class.<label>.f1``    per class F1 (classes both models know) drops by at most
                                   ``max_class_regression``; ``regression.class_f1`` when none does
``regression``                     no production version to compare with (passes, says so), or a
                                   comparison that could not be made (fails, says why)
``latency_p95_ms``                 p95 latency of one instance within ``latency_p95_ms``
``parity``                         an ONNX export agrees with the PyTorch model (arg-max) on at
                                   least :data:`PARITY_MIN_AGREEMENT` of the examples
``clean_data``                     with ``require_clean_data``: the data report holds no
                                   error-severity finding whose records were only warned about
=================================  ===========================================================

A check that is asked for but whose measurement is missing fails: a typo or a missing number
must never let a candidate through silently.

>>> from aifab.core.config import GateConfig
>>> policy = GateConfig(floors={"test.macro_f1": 0.8})
>>> good = {"macro_f1": 0.9, "per_class": {"a": {"f1": 0.9}, "b": {"f1": 0.9}}}
>>> evaluate_gate(policy, candidate=good, production=None).passed
True
>>> bad = {"macro_f1": 0.5, "per_class": {"a": {"f1": 0.9}, "b": {"f1": 0.1}}}
>>> result = evaluate_gate(policy, candidate=bad, production=good)
>>> result.passed, [c.name for c in result.failed]
(False, ['floor.test.macro_f1', 'regression.macro_f1', 'regression.class.b.f1'])
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

from aifab.core.config import GateConfig
from aifab.core.errors import InputError, nearest
from aifab.evaluate.metrics import flatten_metrics, higher_is_better

__all__ = ["PARITY_MIN_AGREEMENT", "Comparison", "GateCheck", "GateResult", "evaluate_gate", "stricter"]

PARITY_MIN_AGREEMENT = 0.995
"""Share of examples on which an export must pick the same class as the PyTorch model."""

# Two models scoring the same must compare equal even when the numbers went through a float sum
# in a different order (a re-evaluation of the same weights on another machine).
_EPS = 1e-9


@dataclass(frozen=True)
class GateCheck:
    """One check: its name, verdict, a sentence saying why, what was measured and what was needed."""

    name: str
    passed: bool
    message: str
    observed: float | str | None = None
    required: float | str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "message": self.message,
            "observed": self.observed,
            "required": self.required,
        }


@dataclass(frozen=True)
class GateResult:
    """The gate's verdict: passed only when every check passed.

    >>> r = GateResult.from_checks([GateCheck("a", True, "fine"), GateCheck("b", False, "too slow")])
    >>> r.passed, r.reasons
    (False, ['b: too slow'])
    >>> GateResult.from_dict(r.to_dict()) == r
    True
    """

    passed: bool
    checks: tuple[GateCheck, ...]

    @classmethod
    def from_checks(cls, checks: Sequence[GateCheck]) -> GateResult:
        return cls(passed=all(c.passed for c in checks), checks=tuple(checks))

    @property
    def failed(self) -> tuple[GateCheck, ...]:
        return tuple(c for c in self.checks if not c.passed)

    @property
    def reasons(self) -> list[str]:
        """One line per failed check, ``<check>: <why>``."""
        return [f"{c.name}: {c.message}" for c in self.failed]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (stored with the candidate, returned over HTTP)."""
        return {"passed": self.passed, "checks": [c.to_dict() for c in self.checks]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GateResult:
        try:
            checks = tuple(
                GateCheck(
                    name=str(c["name"]),
                    passed=bool(c["passed"]),
                    message=str(c["message"]),
                    observed=c.get("observed"),
                    required=c.get("required"),
                )
                for c in data["checks"]
            )
            return cls(passed=bool(data["passed"]), checks=checks)
        except (KeyError, TypeError) as exc:
            raise InputError(
                f"gate result: malformed ({exc!r}); expected 'passed' and 'checks'"
            ) from None


@dataclass(frozen=True)
class Comparison:
    """Candidate and production metrics on the same records (``on`` says which, e.g.
    ``"digits@0a1b2c3d4e5f test"``). A side is None when that model could not be evaluated
    there (say, the records hold a label it does not know); ``error`` says why.

    A candidate that cannot be evaluated where production can has lost something: that fails.
    Production that cannot be evaluated on the candidate's records (a new class) is tolerated
    when another comparison did compare the two models."""

    on: str
    candidate: Mapping[str, Any] | None
    production: Mapping[str, Any] | None
    error: str = ""


def stricter(base: GateConfig, other: GateConfig) -> GateConfig:
    """The gate that passes only what both ``base`` and ``other`` pass: every floor of either (the
    higher one, or the lower for lower-is-better metrics), the smaller tolerances, the tighter
    latency budget, clean data if either asks. ``base``'s compared ``metric`` is kept.

    Promotion judges a candidate by its own spec's gate *and* production's, so a candidate can
    tighten the bar but never bring a lenient one (lowering it takes an admin's ``--force``).

    >>> a = GateConfig(floors={"test.accuracy": 0.9}, max_regression=0.01)
    >>> b = GateConfig(floors={"test.accuracy": 0.5, "test.ece": 0.1}, max_regression=0.5)
    >>> g = stricter(a, b)
    >>> g.floors, g.max_regression
    ({'test.accuracy': 0.9, 'test.ece': 0.1}, 0.01)
    """
    floors = dict(base.floors)
    for key, value in other.floors.items():
        if key in floors:
            pick = max if higher_is_better(key) else min
            floors[key] = pick(floors[key], value)
        else:
            floors[key] = value
    budgets = [b for b in (base.latency_p95_ms, other.latency_p95_ms) if b is not None]
    return base.model_copy(
        update={
            "floors": floors,
            "max_regression": min(base.max_regression, other.max_regression),
            "max_class_regression": min(base.max_class_regression, other.max_class_regression),
            "latency_p95_ms": min(budgets) if budgets else None,
            "require_clean_data": base.require_clean_data or other.require_clean_data,
        }
    )


def evaluate_gate(
    policy: GateConfig,
    *,
    candidate: Mapping[str, Any],
    production: Mapping[str, Any] | None = None,
    comparisons: Sequence[Comparison] = (),
    latency_p95_ms: float | None = None,
    parity: Mapping[str, Any] | None = None,
    data_report: Mapping[str, Any] | None = None,
) -> GateResult:
    """Run every check of ``policy`` and return the verdict with every reason.

    ``candidate`` is the candidate's full metrics dict on its test split (as
    :func:`aifab.evaluate.metrics.classification_metrics` returns it); ``production`` is the
    production version's on the *same* split (None: there is no production version).
    ``comparisons`` add more same-records comparisons (e.g. on production's own frozen test
    split); the candidate must not regress on any of them. ``parity`` is
    ``{"agreement": share, "examples": n, "export": file}`` when an ONNX export exists;
    ``data_report`` is the data gate's report of the candidate's dataset version.

    >>> from aifab.core.config import GateConfig
    >>> m = {"accuracy": 0.97, "macro_f1": 0.96, "per_class": {}}
    >>> r = evaluate_gate(GateConfig(floors={"test.macro_f": 0.9}, latency_p95_ms=20),
    ...                   candidate=m, latency_p95_ms=35.0)
    >>> r.reasons[0]
    "floor.test.macro_f: unknown metric 'test.macro_f' (did you mean 'test.macro_f1'?)"
    >>> r.reasons[1]
    'latency_p95_ms: p95 latency of one instance is 35.0 ms; the budget is 20.0 ms'
    """
    checks: list[GateCheck] = []
    checks += _floor_checks(policy, candidate)
    all_comparisons = list(comparisons)
    if production is not None:
        all_comparisons.insert(
            0,
            Comparison(on="the candidate's test split", candidate=candidate, production=production),
        )
    checks += _regression_checks(policy, all_comparisons, several=len(all_comparisons) > 1)
    checks += _latency_checks(policy, latency_p95_ms)
    if parity is not None:
        checks.append(_parity_check(parity))
    if policy.require_clean_data:
        checks.append(_clean_data_check(data_report))
    return GateResult.from_checks(checks)


# ------------------------------------------------------------------------------------ floors


def _floor_checks(policy: GateConfig, candidate: Mapping[str, Any]) -> list[GateCheck]:
    flat = flatten_metrics(dict(candidate), prefix="test")
    out = []
    for key, floor in policy.floors.items():
        name = f"floor.{key}"
        if key not in flat:
            out.append(GateCheck(name, False, _unknown("metric", key, list(flat)), None, floor))
            continue
        value = flat[key]
        if higher_is_better(key):
            ok, relation = value >= floor - _EPS, ">="
        else:
            ok, relation = value <= floor + _EPS, "<="
        verdict = "meets" if ok else "misses"
        out.append(
            GateCheck(
                name,
                ok,
                f"{key} is {value:.4f}; {verdict} the required {relation} {floor:g}",
                value,
                floor,
            )
        )
    return out


# -------------------------------------------------------------------------------- regression


def _regression_checks(
    policy: GateConfig, comparisons: Sequence[Comparison], *, several: bool
) -> list[GateCheck]:
    if not comparisons:
        return [GateCheck("regression", True, "no production version to compare with; floors only")]
    made = [c for c in comparisons if c.production is not None and c.candidate is not None]
    out: list[GateCheck] = []
    for comp in comparisons:
        suffix = f" ({comp.on})" if several else ""
        if comp.candidate is None:
            why = comp.error or "no metrics"
            out.append(
                GateCheck(
                    f"regression{suffix}",
                    False,
                    f"the candidate could not be evaluated on {comp.on}: {why}",
                )
            )
            continue
        if comp.production is None:
            # One failed comparison is tolerable only when another one did compare the two models.
            ok = bool(made)
            tail = (
                "compared on the other split instead"
                if ok
                else "nothing to compare against; promote with force and a reason if this is intended"
            )
            out.append(
                GateCheck(
                    f"regression{suffix}",
                    ok,
                    f"production not evaluated on {comp.on}: {comp.error or 'no metrics'}; {tail}",
                )
            )
            continue
        out.append(_metric_regression(policy, comp, suffix))
        out += _class_regressions(policy, comp, suffix)
    return out


def _metric_regression(policy: GateConfig, comp: Comparison, suffix: str) -> GateCheck:
    assert comp.candidate is not None and comp.production is not None
    metric = policy.metric
    name = f"regression.{metric}{suffix}"
    cand = flatten_metrics(dict(comp.candidate), prefix="")
    prod = flatten_metrics(dict(comp.production), prefix="")
    if metric not in cand or metric not in prod:
        known = [k for k in cand if not k.startswith("class.")]
        return GateCheck(name, False, _unknown("gate metric", metric, known))
    c, p = cand[metric], prod[metric]
    if higher_is_better(metric):
        required = p - policy.max_regression
        ok = c >= required - _EPS
        relation = ">="
    else:
        required = p + policy.max_regression
        ok = c <= required + _EPS
        relation = "<="
    message = (
        f"{metric} is {c:.4f} against production's {p:.4f} on {comp.on}; "
        f"{'within' if ok else 'beyond'} the tolerance of {policy.max_regression:g} (needs {relation} {required:.4f})"
    )
    return GateCheck(name, ok, message, c, required)


def _class_regressions(policy: GateConfig, comp: Comparison, suffix: str) -> list[GateCheck]:
    assert comp.candidate is not None and comp.production is not None
    cand = comp.candidate.get("per_class") or {}
    prod = comp.production.get("per_class") or {}
    shared = [label for label in prod if label in cand]
    failed = []
    worst: tuple[float, str] | None = None
    for label in shared:
        c, p = cand[label].get("f1"), prod[label].get("f1")
        if not _finite(c) or not _finite(p):
            continue
        drop = float(p) - float(c)
        if worst is None or drop > worst[0]:
            worst = (drop, label)
        required = float(p) - policy.max_class_regression
        if float(c) < required - _EPS:
            failed.append(
                GateCheck(
                    f"regression.class.{label}.f1{suffix}",
                    False,
                    f"class {label!r} F1 is {float(c):.4f} against production's {float(p):.4f} on {comp.on}; "
                    f"drops by {drop:.4f}, more than the tolerance of {policy.max_class_regression:g}",
                    float(c),
                    required,
                )
            )
    if failed:
        return failed
    if worst is None:
        return [
            GateCheck(
                f"regression.class_f1{suffix}", True, f"no class F1 both models report on {comp.on}"
            )
        ]
    drop, label = worst
    largest = f"largest drop {drop:.4f}, class {label!r}" if drop > 0 else "none dropped"
    message = (
        f"every one of {len(shared)} shared classes within {policy.max_class_regression:g} "
        f"of production on {comp.on} ({largest})"
    )
    return [
        GateCheck(
            f"regression.class_f1{suffix}",
            True,
            message,
            max(drop, 0.0),
            policy.max_class_regression,
        )
    ]


# ------------------------------------------------------------------- latency, parity, data


def _latency_checks(policy: GateConfig, latency: float | None) -> list[GateCheck]:
    budget = policy.latency_p95_ms
    if budget is None:
        if latency is None:
            return []
        return [
            GateCheck(
                "latency_p95_ms",
                True,
                f"p95 latency of one instance is {latency:.1f} ms; no budget set",
                latency,
                None,
            )
        ]
    if latency is None or not _finite(latency):
        return [
            GateCheck(
                "latency_p95_ms",
                False,
                f"latency was not measured; the budget is {budget:g} ms",
                None,
                budget,
            )
        ]
    ok = latency <= budget
    tail = f", within the budget of {budget:.1f} ms" if ok else f"; the budget is {budget:.1f} ms"
    message = f"p95 latency of one instance is {latency:.1f} ms{tail}"
    return [GateCheck("latency_p95_ms", ok, message, latency, budget)]


def _parity_check(parity: Mapping[str, Any]) -> GateCheck:
    export = parity.get("export", "the ONNX export")
    agreement = parity.get("agreement")
    if not _finite(agreement):
        why = parity.get("error") or "agreement was not measured"
        return GateCheck("parity", False, f"{export}: {why}", None, PARITY_MIN_AGREEMENT)
    value = float(agreement)
    ok = value >= PARITY_MIN_AGREEMENT
    n = parity.get("examples")
    on = f" on {n} examples" if n is not None else ""
    message = f"{export} picks the PyTorch model's class on {value:.2%}{on}; needs at least {PARITY_MIN_AGREEMENT:.1%}"
    return GateCheck("parity", ok, message, value, PARITY_MIN_AGREEMENT)


def _clean_data_check(report: Mapping[str, Any] | None) -> GateCheck:
    if report is None:
        return GateCheck(
            "clean_data",
            False,
            "no data report for the candidate's dataset version; clean data is required",
        )
    if report.get("blocked"):
        return GateCheck(
            "clean_data", False, "the data gate blocked this dataset version", "blocked", "clean"
        )
    # Errors that were quarantined or blocked are out of the data; only warned ones are in it.
    kept = [
        f
        for f in report.get("findings") or []
        if f.get("severity") == "error" and f.get("action", "warn") == "warn"
    ]
    if not kept:
        return GateCheck("clean_data", True, "no error-severity finding left in the data", 0, 0)
    records = sum(len(f.get("record_ids") or ()) for f in kept)
    checks = sorted({str(f.get("check")) for f in kept})
    return GateCheck(
        "clean_data",
        False,
        f"{len(kept)} error-severity finding(s) ({', '.join(checks)}) on {records} record(s) were only warned about, "
        "so those records are in the data; set those checks to quarantine and ingest again",
        len(kept),
        0,
    )


def _unknown(what: str, key: str, known: list[str]) -> str:
    """
    >>> _unknown("metric", "test.acuracy", ["test.accuracy", "test.macro_f1"])
    "unknown metric 'test.acuracy' (did you mean 'test.accuracy'?)"
    >>> _unknown("metric", "zzz", ["b", "a"])
    "unknown metric 'zzz'; known: a, b"
    """
    hint = nearest(key, known)
    if hint:
        return f"unknown {what} {key!r} (did you mean {hint!r}?)"
    return f"unknown {what} {key!r}; known: {', '.join(sorted(known)[:12])}"


def _finite(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
