"""Gate results in the metadata store: stored with the version they judged, linked from the
alias move they allowed, read back with the audit trail. Runs on the backend suite's URLs."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from aifab.core.errors import InputError, NotFound
from aifab.core.types import ModelVersion
from aifab.store import MetadataStore
from aifab.store.db import MIGRATIONS
from tests.store import test_db

db_url = test_db.db_url
meta = test_db.meta

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
RESULT = {
    "passed": True,
    "checks": [
        {
            "name": "floor.test.macro_f1",
            "passed": True,
            "message": "ok",
            "observed": 0.9,
            "required": 0.85,
        }
    ],
}


def add_versions(meta: MetadataStore, name: str = "sms", n: int = 2) -> None:
    for _ in range(n):
        meta.add_model_version(
            ModelVersion(name=name, version=0, files={}, task="text-classification", created_at=T0)
        )


def test_gate_results_are_kept_per_version_newest_first(meta: MetadataStore) -> None:
    add_versions(meta)
    first = meta.add_gate_result(
        "sms", 2, {"passed": False, "checks": []}, passed=False, created_at=T0
    )
    second = meta.add_gate_result("sms", 2, RESULT, passed=True, created_at=T0 + timedelta(hours=1))
    other = meta.add_gate_result("sms", 1, RESULT, passed=True)
    assert [g.id for g in meta.list_gate_results("sms", 2)] == [second, first]
    assert [g.id for g in meta.list_gate_results("sms")] == [other, second, first]
    stored = meta.get_gate_result(first)
    assert (stored.name, stored.version, stored.passed, stored.created_at) == ("sms", 2, False, T0)
    assert meta.get_gate_result(second).result == RESULT


def test_a_gate_result_needs_a_known_version_and_plain_json(meta: MetadataStore) -> None:
    add_versions(meta, n=1)
    with pytest.raises(NotFound, match="version 7 not found"):
        meta.add_gate_result("sms", 7, RESULT, passed=True)
    with pytest.raises(NotFound, match="model 'sm' not found"):
        meta.add_gate_result("sm", 1, RESULT, passed=True)
    with pytest.raises(InputError, match="NaN"):
        meta.add_gate_result("sms", 1, {"checks": [{"observed": float("nan")}]}, passed=True)
    with pytest.raises(NotFound, match="gate result 123"):
        meta.get_gate_result(123)
    assert meta.list_gate_results("sms") == []


def test_a_move_cites_only_a_gate_result_of_the_version_it_moves_to(meta: MetadataStore) -> None:
    add_versions(meta)
    on_one = meta.add_gate_result("sms", 1, RESULT, passed=True)
    with pytest.raises(InputError, match="judged sms@1, not sms@2"):
        meta.set_alias("sms", "production", 2, actor="ana", gate_result_id=on_one)
    with pytest.raises(NotFound, match="gate result 999"):
        meta.set_alias("sms", "production", 1, actor="ana", gate_result_id=999)
    assert meta.aliases("sms") == {}  # refused moves change nothing


def test_the_audit_trail_pairs_each_move_with_its_gate_result(meta: MetadataStore) -> None:
    add_versions(meta)
    gate = meta.add_gate_result("sms", 2, RESULT, passed=True)
    meta.set_alias("sms", "production", 1, actor="ana", reason="first")
    meta.set_alias("sms", "production", 2, actor="bob", reason="gate passed", gate_result_id=gate)
    meta.set_alias("sms", "candidate", 2, actor="train", reason="trained")
    trail = meta.audit_trail("sms")
    assert [(m.alias, m.version, m.actor, None if g is None else g.id) for m, g in trail] == [
        ("candidate", 2, "train", None),
        ("production", 2, "bob", gate),
        ("production", 1, "ana", None),
    ]
    assert [m for m, _ in trail] == meta.alias_history("sms")
    assert [m.version for m, _ in meta.audit_trail("sms", "production")] == [2, 1]
    with pytest.raises(NotFound):
        meta.audit_trail("nope")


def test_migrate_upgrades_a_0003_database_and_keeps_its_alias_moves(db_url: str) -> None:
    store = MetadataStore(db_url)
    try:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with store.engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "0003")
        assert "gate_results" not in set(sa.inspect(store.engine).get_table_names())
        with store.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO models (name, created_at, task) VALUES ('sms', '2024-05-01 12:00:00', 't')"
                )
            )
            conn.execute(
                sa.text(
                    "INSERT INTO model_versions (name, version, files, task, created_at, metrics, description)"
                    " VALUES ('sms', 1, '{}', 't', '2024-05-01 12:00:00', '{}', '')"
                )
            )
            conn.execute(
                sa.text(
                    "INSERT INTO alias_moves (name, alias, version, previous, moved_at, actor, reason)"
                    " VALUES ('sms', 'production', 1, NULL, '2024-05-01 12:00:00', 'ana', 'before the gate existed')"
                )
            )
        store.migrate()
        ((move, gate),) = store.audit_trail("sms")
        assert (move.version, move.actor, move.reason, gate) == (
            1,
            "ana",
            "before the gate existed",
            None,
        )
        gid = store.add_gate_result("sms", 1, RESULT, passed=True)
        store.set_alias("sms", "production", 1, actor="bob", gate_result_id=gid)
        assert store.audit_trail("sms")[0][1].id == gid
    finally:
        store.dispose()
