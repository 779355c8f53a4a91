"""Promotion, rollback and the audit trail over a real SQLite store, with measurements given as
plain numbers (the pipeline tests train real models)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from aifab.core.config import GateConfig
from aifab.core.errors import ConfigError, Conflict, GateFailed, NotFound
from aifab.core.types import ModelVersion
from aifab.evaluate.gates import Comparison
from aifab.registry.promote import Measurements, audit, promote, rollback, rollback_target
from aifab.store import MetadataStore

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
POLICY = GateConfig(floors={"test.macro_f1": 0.8}, max_regression=0.02)


@pytest.fixture
def meta(tmp_path: Path) -> Iterator[MetadataStore]:
    store = MetadataStore(f"sqlite:///{tmp_path / 'aifab.db'}")
    store.migrate()
    for _ in range(4):
        store.add_model_version(
            ModelVersion(name="sms", version=0, files={}, task="text-classification", created_at=T0)
        )
    yield store
    store.dispose()


def scores(**by_version: float):
    """A measure function: each version's macro F1 on the shared test split; records its calls."""
    calls: list[tuple[int, int | None]] = []

    def measure(candidate: ModelVersion, production: ModelVersion | None) -> Measurements:
        calls.append((candidate.version, None if production is None else production.version))
        mine = {"macro_f1": by_version[f"v{candidate.version}"], "per_class": {}}
        comparisons = ()
        if production is not None:
            theirs = {"macro_f1": by_version[f"v{production.version}"], "per_class": {}}
            comparisons = (Comparison("sms@abc test", mine, theirs),)
        return Measurements(candidate=mine, comparisons=comparisons, latency_p95_ms=4.2)

    measure.calls = calls  # type: ignore[attr-defined]
    return measure


def test_a_passing_candidate_moves_production_and_its_gate_result_is_stored(
    meta: MetadataStore,
) -> None:
    measure = scores(v1=0.90, v2=0.91)
    promote(meta, name="sms", version=1, gate_policy=POLICY, measure=measure, actor="ana")
    result = promote(meta, name="sms", version=2, gate_policy=POLICY, measure=measure, actor="ana")
    assert measure.calls == [(1, None), (2, 1)]  # compared against the production of the time
    assert meta.aliases("sms")["production"] == 2
    assert (result.previous, result.forced, result.gate.passed) == (1, False, True)
    (stored,) = meta.list_gate_results("sms", 2)
    assert stored.id == result.gate_result_id and stored.passed
    assert stored.result["production"] == 1 and stored.result["policy"]["max_regression"] == 0.02
    assert stored.result["compared_on"] == ["sms@abc test"] and stored.result["actor"] == "ana"
    latency = [c for c in stored.result["checks"] if c["name"] == "latency_p95_ms"]
    assert latency[0]["observed"] == 4.2
    assert result.to_dict()["reason"] == "quality gate passed"


def test_a_refused_candidate_leaves_production_and_gives_every_reason(meta: MetadataStore) -> None:
    measure = scores(v1=0.90, v2=0.75)
    promote(meta, name="sms", version=1, gate_policy=POLICY, measure=measure, actor="ana")
    moves_before = meta.alias_history("sms")
    with pytest.raises(GateFailed) as refused:
        promote(meta, name="sms", version=2, gate_policy=POLICY, measure=measure, actor="ana")
    err = refused.value
    assert err.exit_code == 6 and err.http_status == 422
    assert [r.split(":")[0] for r in err.details["reasons"]] == [
        "floor.test.macro_f1",
        "regression.macro_f1",
    ]
    assert "sms@2" in err.message and "2 reasons" in err.message
    assert meta.aliases("sms")["production"] == 1 and meta.alias_history("sms") == moves_before
    (stored,) = meta.list_gate_results("sms", 2)
    assert not stored.passed and stored.id == err.details["gate_result_id"]


def test_force_needs_a_reason_and_records_the_failed_gate_with_the_move(
    meta: MetadataStore,
) -> None:
    measure = scores(v1=0.90, v2=0.5)
    promote(meta, name="sms", version=1, gate_policy=POLICY, measure=measure, actor="ana")
    with pytest.raises(ConfigError, match="needs a reason"):
        promote(
            meta,
            name="sms",
            version=2,
            gate_policy=POLICY,
            measure=measure,
            actor="root",
            force=True,
            reason="  ",
        )
    assert measure.calls == [(1, None)]  # refused before measuring anything
    result = promote(
        meta,
        name="sms",
        version=2,
        gate_policy=POLICY,
        measure=measure,
        actor="root",
        force=True,
        reason="hotfix for #12",
    )
    assert result.forced and not result.gate.passed and meta.aliases("sms")["production"] == 2
    entry = audit(meta, "sms")[0]
    assert entry["forced"] and entry["reason"] == "forced past a failed gate: hotfix for #12"
    assert entry["gate"]["id"] == result.gate_result_id and entry["gate"]["passed"] is False


def test_promote_refuses_what_it_cannot_do(meta: MetadataStore) -> None:
    measure = scores(v1=0.9)
    promote(meta, name="sms", version=1, gate_policy=POLICY, measure=measure, actor="ana")
    with pytest.raises(Conflict, match="sms@1 is production already"):
        promote(meta, name="sms", version=1, gate_policy=POLICY, measure=measure, actor="ana")
    with pytest.raises(NotFound, match="version 9 not found"):
        promote(meta, name="sms", version=9, gate_policy=POLICY, measure=measure, actor="ana")
    with pytest.raises(ConfigError, match="'actor'"):
        promote(meta, name="sms", version=2, gate_policy=POLICY, measure=measure, actor="")
    assert measure.calls == [(1, None)]


def test_rollback_walks_back_through_promotions_one_at_a_time(meta: MetadataStore) -> None:
    measure = scores(v1=0.90, v2=0.91, v3=0.92)
    for v in (1, 2, 3):
        promote(meta, name="sms", version=v, gate_policy=POLICY, measure=measure, actor="ana")
    move = rollback(meta, name="sms", actor="bob", reason="latency spike")
    assert (move.previous, move.version, move.actor) == (3, 2, "bob")
    assert move.reason == "rollback from version 3: latency spike"
    assert rollback(meta, name="sms", actor="bob").version == 1  # not forward to 3
    with pytest.raises(Conflict, match="no version before 1"):
        rollback(meta, name="sms", actor="bob")
    assert meta.aliases("sms")["production"] == 1


def test_rollback_without_production_is_a_conflict(meta: MetadataStore) -> None:
    with pytest.raises(Conflict, match="has no production version"):
        rollback(meta, name="sms", actor="bob")
    with pytest.raises(NotFound):
        rollback(meta, name="nope", actor="bob")


@pytest.mark.parametrize(
    ("versions", "target"),
    [
        ([1, 2], 1),
        ([1, 2, 3], 2),
        ([1, 2, 3, 2], 1),  # after one rollback, the next goes further back
        ([1, 2, 1], None),
        ([1, 2, 3, 2, 4], 2),  # 3 was rolled back from; 4 replaced it
        ([1, 1, 2, 2], 1),  # moves that left the alias in place do not count
        ([1, 2, None, 3], 2),  # a deleted alias set again
        ([4], None),
        ([], None),
    ],
)
def test_rollback_target(versions: list[int | None], target: int | None) -> None:
    assert rollback_target(versions) == target


def test_the_audit_trail_has_every_move_with_who_when_why_and_the_gate(meta: MetadataStore) -> None:
    measure = scores(v1=0.90, v2=0.95, v3=0.1)
    meta.set_alias("sms", "candidate", 1, actor="aifab train", reason="trained by run 1")
    promote(
        meta,
        name="sms",
        version=1,
        gate_policy=POLICY,
        measure=measure,
        actor="ana",
        reason="first release",
    )
    promote(meta, name="sms", version=2, gate_policy=POLICY, measure=measure, actor="ana")
    with pytest.raises(GateFailed):
        promote(meta, name="sms", version=3, gate_policy=POLICY, measure=measure, actor="eve")
    rollback(meta, name="sms", actor="bob", reason="bad reviews")
    entries = audit(meta, "sms")
    assert [(e["alias"], e["previous"], e["version"], e["actor"]) for e in entries] == [
        ("production", 2, 1, "bob"),
        ("production", 1, 2, "ana"),
        ("production", None, 1, "ana"),
        ("candidate", None, 1, "aifab train"),
    ]
    assert [e["reason"] for e in entries] == [
        "rollback from version 2: bad reviews",
        "quality gate passed",
        "first release",
        "trained by run 1",
    ]
    assert all(datetime.fromisoformat(e["moved_at"]) >= T0 for e in entries)
    gated = [e["gate"] for e in entries]
    assert gated[0] is None and gated[3] is None
    assert gated[1]["passed"] and gated[1]["production"] == 1 and gated[2]["production"] is None
    assert [c["name"] for c in gated[1]["checks"]] == [
        "floor.test.macro_f1",
        "regression.macro_f1",
        "regression.class_f1",
        "latency_p95_ms",
    ]
    # The refused promotion moved nothing, but its verdict is kept with the candidate.
    assert [g.passed for g in meta.list_gate_results("sms", 3)] == [False]
    assert audit(meta) == entries and [e["version"] for e in audit(meta, "sms", "candidate")] == [1]
