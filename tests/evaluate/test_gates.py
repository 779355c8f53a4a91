"""The quality gate as pure functions: each check passes and fails on hand-made metrics."""

from __future__ import annotations

import json

import pytest

from aifab.core.config import GateConfig
from aifab.evaluate.gates import (
    PARITY_MIN_AGREEMENT,
    Comparison,
    GateCheck,
    GateResult,
    evaluate_gate,
)
from aifab.evaluate.metrics import classification_metrics


def metrics(macro_f1: float = 0.9, *, log_loss: float = 0.3, **class_f1: float) -> dict:
    """A metrics dict shaped like classification_metrics' output, with chosen numbers."""
    per_class = class_f1 or {"ham": macro_f1, "spam": macro_f1}
    return {
        "num_examples": 100,
        "accuracy": macro_f1,
        "macro_f1": macro_f1,
        "log_loss": log_loss,
        "ece": 0.05,
        "labels": list(per_class),
        "multi_label": False,
        "per_class": {
            k: {"precision": v, "recall": v, "f1": v, "support": 50} for k, v in per_class.items()
        },
        "confusion_matrix": [[45, 5], [5, 45]],
    }


def check(result: GateResult, name: str) -> GateCheck:
    found = [c for c in result.checks if c.name == name]
    assert len(found) == 1, [c.name for c in result.checks]
    return found[0]


# -- floors -----------------------------------------------------------------------------------


def test_floors_pass_at_and_above_and_fail_below_with_the_numbers() -> None:
    policy = GateConfig(floors={"test.macro_f1": 0.85, "test.class.spam.f1": 0.8})
    ok = evaluate_gate(policy, candidate=metrics(0.85, ham=0.9, spam=0.8))
    assert ok.passed and check(ok, "floor.test.macro_f1").observed == 0.85
    low = evaluate_gate(policy, candidate=metrics(0.84, ham=0.9, spam=0.79))
    assert not low.passed
    assert [c.name for c in low.failed] == ["floor.test.macro_f1", "floor.test.class.spam.f1"]
    assert (
        "0.8400" in check(low, "floor.test.macro_f1").message
        and "0.85" in check(low, "floor.test.macro_f1").message
    )


def test_a_floor_on_a_lower_is_better_metric_is_a_ceiling() -> None:
    policy = GateConfig(floors={"test.log_loss": 0.5})
    assert evaluate_gate(policy, candidate=metrics(log_loss=0.4)).passed
    result = evaluate_gate(policy, candidate=metrics(log_loss=0.6))
    assert not result.passed and "<= 0.5" in result.reasons[0]


def test_a_misspelled_floor_fails_and_names_the_nearest_key() -> None:
    """A typo in a floor must never pass silently, even when every number is perfect."""
    policy = GateConfig(
        floors={"test.macro_f": 0.1, "test.class.spma.f1": 0.1, "val.macro_f1": 0.1}
    )
    result = evaluate_gate(policy, candidate=metrics(1.0))
    assert not result.passed
    assert result.reasons == [
        "floor.test.macro_f: unknown metric 'test.macro_f' (did you mean 'test.macro_f1'?)",
        "floor.test.class.spma.f1: unknown metric 'test.class.spma.f1' (did you mean 'test.class.spam.f1'?)",
        "floor.val.macro_f1: unknown metric 'val.macro_f1' (did you mean 'test.macro_f1'?)",
    ]


def test_floor_keys_match_labels_that_contain_dots() -> None:
    policy = GateConfig(floors={"test.class.v1.2.f1": 0.5})
    assert evaluate_gate(policy, candidate=metrics(0.9, **{"v1.2": 0.6, "other": 0.9})).passed
    assert not evaluate_gate(policy, candidate=metrics(0.9, **{"v1.2": 0.4, "other": 0.9})).passed


def test_floors_read_real_classification_metrics() -> None:
    real = classification_metrics(
        [0, 0, 1, 1], [[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.6, 0.4]], labels=["ham", "spam"]
    )
    # spam: one of two found -> recall 0.5, precision 1.0, F1 2/3; accuracy 0.75.
    policy = GateConfig(floors={"test.accuracy": 0.75, "test.class.spam.recall": 0.6})
    result = evaluate_gate(policy, candidate=real)
    assert [c.name for c in result.failed] == ["floor.test.class.spam.recall"]
    assert check(result, "floor.test.class.spam.recall").observed == pytest.approx(0.5)


# -- regression ---------------------------------------------------------------------------------


def test_no_production_means_floors_only_and_the_result_says_so() -> None:
    result = evaluate_gate(GateConfig(), candidate=metrics(0.2))
    assert result.passed
    assert "no production version" in check(result, "regression").message


def test_overall_regression_within_tolerance_passes_beyond_it_fails() -> None:
    policy = GateConfig(max_regression=0.02, max_class_regression=1.0)
    at_edge = evaluate_gate(policy, candidate=metrics(0.88), production=metrics(0.90))
    assert at_edge.passed  # exactly the tolerance: 0.88 >= 0.90 - 0.02
    assert "largest drop 0.0200, class 'ham'" in check(at_edge, "regression.class_f1").message
    beyond = evaluate_gate(policy, candidate=metrics(0.87), production=metrics(0.90))
    assert [c.name for c in beyond.failed] == ["regression.macro_f1"]
    failed = check(beyond, "regression.macro_f1")
    assert failed.observed == 0.87 and failed.required == pytest.approx(0.88)
    assert "0.8700" in failed.message and "0.9000" in failed.message


def test_regression_on_a_lower_is_better_metric_fails_when_it_grows() -> None:
    policy = GateConfig(metric="log_loss", max_regression=0.05, max_class_regression=1.0)
    assert evaluate_gate(
        policy, candidate=metrics(log_loss=0.34), production=metrics(log_loss=0.30)
    ).passed
    worse = evaluate_gate(
        policy, candidate=metrics(log_loss=0.40), production=metrics(log_loss=0.30)
    )
    assert [c.name for c in worse.failed] == ["regression.log_loss"]
    # Lower loss than production is an improvement, not a regression.
    assert evaluate_gate(
        policy, candidate=metrics(log_loss=0.01), production=metrics(log_loss=0.30)
    ).passed


def test_a_class_that_drops_fails_by_name_even_when_the_average_holds() -> None:
    policy = GateConfig(max_regression=0.05, max_class_regression=0.05)
    production = metrics(0.85, ham=0.9, spam=0.8, eggs=0.85)
    candidate = metrics(0.85, ham=0.99, spam=0.70, eggs=0.86)
    result = evaluate_gate(policy, candidate=candidate, production=production)
    assert [c.name for c in result.failed] == ["regression.class.spam.f1"]
    assert "'spam'" in result.reasons[0] and "0.1000" in result.reasons[0]


def test_only_classes_both_models_know_are_compared() -> None:
    policy = GateConfig(max_class_regression=0.05)
    production = metrics(0.9, ham=0.9, spam=0.9, old=0.99)
    candidate = metrics(0.9, ham=0.9, spam=0.9, new=0.0)
    result = evaluate_gate(policy, candidate=candidate, production=production)
    assert result.passed
    assert "2 shared classes" in check(result, "regression.class_f1").message
    assert "(none dropped)" in check(result, "regression.class_f1").message


def test_a_misspelled_gate_metric_fails() -> None:
    result = evaluate_gate(GateConfig(metric="macro_f"), candidate=metrics(), production=metrics())
    assert result.reasons == [
        "regression.macro_f: unknown gate metric 'macro_f' (did you mean 'macro_f1'?)"
    ]


def test_the_candidate_must_not_regress_on_any_comparison() -> None:
    policy = GateConfig()
    own = Comparison("new@abc test", metrics(0.1), metrics(0.1))  # both bad on corrupted records
    frozen = Comparison("old@def test (production's)", metrics(0.1), metrics(0.9))
    result = evaluate_gate(policy, candidate=metrics(0.1), comparisons=[own, frozen])
    assert not result.passed
    assert all("(old@def test (production's))" in c.name for c in result.failed)
    assert check(result, "regression.macro_f1 (new@abc test)").passed


def test_a_comparison_production_cannot_make_is_tolerated_only_beside_one_that_was_made() -> None:
    new_class = Comparison(
        "new@abc test", metrics(0.9), None, error="labels the model does not know: ['eggs']"
    )
    alone = evaluate_gate(GateConfig(), candidate=metrics(0.9), comparisons=[new_class])
    assert not alone.passed and "labels the model does not know" in alone.reasons[0]
    frozen = Comparison("old@def test", metrics(0.9), metrics(0.9))
    assert evaluate_gate(
        GateConfig(), candidate=metrics(0.9), comparisons=[new_class, frozen]
    ).passed


def test_a_candidate_that_cannot_be_evaluated_where_production_can_fails() -> None:
    lost = Comparison(
        "old@def test", None, metrics(0.9), error="labels the model does not know: ['spam']"
    )
    made = Comparison("new@abc test", metrics(0.9), metrics(0.9))
    result = evaluate_gate(GateConfig(), candidate=metrics(0.9), comparisons=[made, lost])
    assert not result.passed and "the candidate could not be evaluated" in result.reasons[0]


# -- latency, parity, data ------------------------------------------------------------------


def test_latency_budget() -> None:
    policy = GateConfig(latency_p95_ms=20)
    assert evaluate_gate(policy, candidate=metrics(), latency_p95_ms=19.5).passed
    slow = evaluate_gate(policy, candidate=metrics(), latency_p95_ms=20.5)
    assert slow.reasons == [
        "latency_p95_ms: p95 latency of one instance is 20.5 ms; the budget is 20.0 ms"
    ]
    missing = evaluate_gate(policy, candidate=metrics(), latency_p95_ms=None)
    assert not missing.passed and "not measured" in missing.reasons[0]
    unbudgeted = evaluate_gate(GateConfig(), candidate=metrics(), latency_p95_ms=500.0)
    assert unbudgeted.passed and check(unbudgeted, "latency_p95_ms").observed == 500.0


def test_onnx_parity() -> None:
    assert evaluate_gate(
        GateConfig(),
        candidate=metrics(),
        parity={"agreement": PARITY_MIN_AGREEMENT, "examples": 200},
    ).passed
    off = evaluate_gate(
        GateConfig(),
        candidate=metrics(),
        parity={"agreement": 0.99, "examples": 200, "export": "model.onnx"},
    )
    assert not off.passed and off.reasons[0].startswith(
        "parity: model.onnx picks the PyTorch model's class on 99.00%"
    )
    unmeasured = evaluate_gate(
        GateConfig(), candidate=metrics(), parity={"export": "model.onnx", "error": "no runtime"}
    )
    assert unmeasured.reasons == ["parity: model.onnx: no runtime"]
    assert "parity" not in [c.name for c in evaluate_gate(GateConfig(), candidate=metrics()).checks]


def finding(check: str, severity: str, action: str) -> dict:
    return {
        "check": check,
        "severity": severity,
        "message": "m",
        "record_ids": ["r1", "r2"],
        "sources": [],
        "action": action,
    }


def test_clean_data_refuses_errors_that_were_only_warned_about() -> None:
    policy = GateConfig(require_clean_data=True)
    clean = {
        "blocked": False,
        "findings": [
            finding("unreadable_image", "error", "quarantine"),
            finding("exact_duplicate", "warning", "warn"),
        ],
    }
    assert evaluate_gate(policy, candidate=metrics(), data_report=clean).passed
    dirty = {
        "blocked": False,
        "findings": [*clean["findings"], finding("empty_text", "error", "warn")],
    }
    result = evaluate_gate(policy, candidate=metrics(), data_report=dirty)
    assert (
        not result.passed
        and "empty_text" in result.reasons[0]
        and "2 record(s)" in result.reasons[0]
    )
    assert not evaluate_gate(policy, candidate=metrics(), data_report=None).passed
    # Not required: a dirty report is not judged at all.
    assert "clean_data" not in [
        c.name for c in evaluate_gate(GateConfig(), candidate=metrics(), data_report=dirty).checks
    ]


# -- the result -----------------------------------------------------------------------------


def test_the_result_lists_every_reason_and_round_trips_through_json() -> None:
    policy = GateConfig(floors={"test.macro_f1": 0.95}, latency_p95_ms=1.0, require_clean_data=True)
    result = evaluate_gate(
        policy,
        candidate=metrics(0.5),
        production=metrics(0.9),
        latency_p95_ms=3.0,
        parity={"agreement": 0.5},
        data_report=None,
    )
    names = [c.name for c in result.failed]
    assert names == [
        "floor.test.macro_f1",
        "regression.macro_f1",
        "regression.class.ham.f1",
        "regression.class.spam.f1",
        "latency_p95_ms",
        "parity",
        "clean_data",
    ]
    assert len(result.reasons) == len(names) and not result.passed
    assert GateResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result


def test_stricter_keeps_every_floor_at_its_tightest_and_the_smaller_tolerances() -> None:
    from aifab.evaluate.gates import stricter

    production = GateConfig(floors={"test.accuracy": 0.9, "test.ece": 0.2}, max_regression=0.01,
                            max_class_regression=0.05, latency_p95_ms=None)
    candidate = GateConfig(floors={"test.accuracy": 0.95, "test.ece": 0.1, "test.macro_f1": 0.8},
                           max_regression=0.5, max_class_regression=0.01, latency_p95_ms=30.0,
                           require_clean_data=True)
    both = stricter(production, candidate)
    # accuracy: higher is better -> the higher floor; ece: lower is better -> the lower ceiling.
    assert both.floors == {"test.accuracy": 0.95, "test.ece": 0.1, "test.macro_f1": 0.8}
    assert (both.max_regression, both.max_class_regression) == (0.01, 0.01)
    assert both.latency_p95_ms == 30.0 and both.require_clean_data is True
    assert stricter(candidate, production) == stricter(candidate, production)  # pure
    assert stricter(production, GateConfig()).floors == production.floors
