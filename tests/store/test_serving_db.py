"""MetadataStore backend suite, part three: API tokens, the prediction log and feedback.

Same fixtures as ``test_db.py`` (imported from it): every test runs on a real SQLite file, and
on ``AIFAB_TEST_DB_URL`` when that is set.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from aifab.core.errors import Conflict, InputError, NotFound
from aifab.core.types import Feedback, Prediction, Token
from aifab.store import MetadataStore
from aifab.store.db import MIGRATIONS
from tests.store import test_db
from tests.store.test_db import T0, version
from tests.store.test_models_db import model

db_url = test_db.db_url
meta = test_db.meta
sqlite_url = test_db.sqlite_url


def token(token_id: str = "0123456789ab", name: str = "ci", *, role: str = "client",
          at: datetime = T0) -> Token:
    return Token(id=token_id, name=name, role=role, salt="5a17" * 8,  # type: ignore[arg-type]
                 secret_hash="scrypt$14$8$1$" + "ab" * 32, created_at=at)


def prediction(pid: str, *, model_name: str = "sms", at: datetime = T0, **kw: Any) -> Prediction:
    values: dict[str, Any] = {
        "model_version": 1,
        "input_hash": hashlib.sha256(pid.encode()).hexdigest(),
        "label": "spam",
        "scores": {"spam": 0.75, "ham": 0.25},
        "latency_ms": 12.5,
        "input_text": f"text of {pid}",
    }
    values.update(kw)
    return Prediction(id=pid, model_name=model_name, created_at=at, **values)


def feedback(fid: str, pid: str, *, model_name: str = "sms", at: datetime = T0,
             **kw: Any) -> Feedback:
    if not {"label", "labels", "correct"} & kw.keys():
        kw["label"] = "ham"
    return Feedback(id=fid, prediction_id=pid, model_name=model_name, created_at=at, **kw)


@contextmanager
def counted(store: MetadataStore) -> Iterator[dict[str, int]]:
    """Counts commits and INSERT executions on ``store``'s engine while the block runs."""
    counts = {"commit": 0, "rollback": 0, "insert": 0}

    def on_commit(_conn: Any) -> None:
        counts["commit"] += 1

    def on_rollback(_conn: Any) -> None:
        counts["rollback"] += 1

    def on_execute(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT"):
            counts["insert"] += 1

    events = [("commit", on_commit), ("rollback", on_rollback),
              ("before_cursor_execute", on_execute)]
    for name, fn in events:
        sa.event.listen(store.engine, name, fn)
    try:
        yield counts
    finally:
        for name, fn in events:
            sa.event.remove(store.engine, name, fn)


# -- schema ---------------------------------------------------------------------------------


def test_migrate_upgrades_a_0002_database_in_place(db_url: str) -> None:
    store = MetadataStore(db_url)
    try:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with store.engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "0002")
        assert "predictions" not in set(sa.inspect(store.engine).get_table_names())
        kept_data = store.add_dataset_version(version("sms", 1))
        kept_model = store.add_model_version(model("sms", dataset_version=kept_data.id))

        store.migrate()

        tables = set(sa.inspect(store.engine).get_table_names())
        assert {"tokens", "predictions", "feedback"} <= tables
        with store.engine.connect() as conn:
            revision = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        assert revision == "0004"
        assert store.list_dataset_versions() == [kept_data]
        assert store.get_model_version("sms") == kept_model
        store.add_predictions([prediction("p1")])
        assert store.add_feedback(feedback("f1", "p1")).prediction_id == "p1"
    finally:
        store.dispose()


def test_sqlite_constraints_hold_even_bypassing_the_store(sqlite_url: str, tmp_path: Path) -> None:
    store = MetadataStore(sqlite_url)
    try:
        store.migrate()
        store.add_predictions([prediction("p1")])
    finally:
        store.dispose()
    with sqlite3.connect(tmp_path / "aifab.db") as raw:
        raw.execute("PRAGMA foreign_keys=ON")
        insert_fb = (
            "INSERT INTO feedback (id, prediction_id, model_name, created_at, comment, new_class,"
            " actor) VALUES (?, ?, 'sms', '2024-01-01', '', 0, '')"
        )
        raw.execute(insert_fb, ("f1", "p1"))
        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
            raw.execute(insert_fb, ("f2", "missing"))
        insert_token = (
            "INSERT INTO tokens (id, name, role, salt, secret_hash, created_at, revoked_at)"
            " VALUES (?, 'ci', 'client', 's', 'h', '2024-01-01', ?)"
        )
        raw.execute(insert_token, ("aaaaaaaaaaaa", "2024-01-02"))  # revoked
        raw.execute(insert_token, ("bbbbbbbbbbbb", None))  # live: same name is fine
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
            raw.execute(insert_token, ("cccccccccccc", None))  # a second live 'ci'


# -- tokens ---------------------------------------------------------------------------------


def test_token_round_trip_returns_the_domain_object(meta: MetadataStore) -> None:
    t = token(role="operator")
    assert meta.add_token(t) == t
    got = meta.get_token(t.id)
    assert got == t and isinstance(got, Token)
    assert got.created_at.tzinfo == timezone.utc and got.revoked_at is None


def test_tokens_are_listed_newest_first_revoked_ones_included(meta: MetadataStore) -> None:
    old = meta.add_token(token("aaaaaaaaaaaa", "old", at=T0))
    new = meta.add_token(token("bbbbbbbbbbbb", "new", at=T0 + timedelta(hours=1)))
    revoked = meta.revoke_token("old")
    assert meta.list_tokens() == [new, revoked]
    assert revoked.id == old.id and revoked.revoked_at is not None


def test_revoke_by_id_or_by_name_and_the_name_becomes_free(meta: MetadataStore) -> None:
    first = meta.add_token(token("aaaaaaaaaaaa", "ci"))
    before = datetime.now(timezone.utc)
    revoked = meta.revoke_token("ci")
    assert revoked == dataclasses.replace(first, revoked_at=revoked.revoked_at)
    assert revoked.revoked_at is not None and revoked.revoked_at >= before - timedelta(seconds=1)
    assert meta.get_token(first.id) == revoked
    assert meta.revoke_token(first.id) == revoked  # again, by id: unchanged
    second = meta.add_token(token("bbbbbbbbbbbb", "ci"))
    assert meta.revoke_token("bbbbbbbbbbbb").id == second.id
    assert {t.id for t in meta.list_tokens() if t.revoked_at is not None} == {first.id, second.id}


def test_a_live_name_or_a_taken_id_is_a_conflict(meta: MetadataStore) -> None:
    meta.add_token(token("aaaaaaaaaaaa", "ci"))
    with pytest.raises(Conflict, match="'ci' is taken by live token aaaaaaaaaaaa"):
        meta.add_token(token("bbbbbbbbbbbb", "ci"))
    with pytest.raises(Conflict, match="aaaaaaaaaaaa exists already"):
        meta.add_token(token("aaaaaaaaaaaa", "other"))
    assert [t.id for t in meta.list_tokens()] == ["aaaaaaaaaaaa"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"id": "XYZ"}, "12 lowercase hex"),
        ({"name": ""}, "1 to 100 printable"),
        ({"name": "a\nb"}, "1 to 100 printable"),
        ({"name": "afb_lookslikeatoken"}, "must not start with 'afb_'"),
        ({"role": "admn"}, "did you mean 'admin'"),
        ({"secret_hash": ""}, "must not be empty"),
    ],
)
def test_malformed_tokens_are_refused(meta: MetadataStore, change: dict[str, Any],
                                      message: str) -> None:
    with pytest.raises(InputError, match=message):
        meta.add_token(dataclasses.replace(token(), **change))
    assert meta.list_tokens() == []


def test_unknown_tokens_are_not_found_and_a_pasted_token_is_not_echoed(
    meta: MetadataStore,
) -> None:
    meta.add_token(token("aaaaaaaaaaaa", "deploy-bot"))
    with pytest.raises(NotFound, match="'bbbbbbbbbbbb' not found"):
        meta.get_token("bbbbbbbbbbbb")
    with pytest.raises(NotFound, match="did you mean 'deploy-bot'"):
        meta.revoke_token("deploy-bto")
    pasted = "afb_aaaaaaaaaaaa_" + "S" * 43
    for call in (meta.get_token, meta.revoke_token):
        with pytest.raises(NotFound) as info:
            call(pasted)
        assert "S" * 10 not in str(info.value) and "S" * 10 not in repr(info.value.details)
    assert meta.get_token("aaaaaaaaaaaa").revoked_at is None


# -- predictions ----------------------------------------------------------------------------


def test_prediction_round_trip_with_every_field(meta: MetadataStore) -> None:
    text = prediction("p-text")
    image = prediction("p-image", input_text=None, input_blob="cd" * 32,
                       label=["cat", "outdoor"], scores={"cat": 0.9, "outdoor": 0.6, "dog": 0.1})
    bare = prediction("p-bare", input_text=None, label=None, scores={})
    meta.add_predictions([text, image, bare])
    for p in (text, image, bare):
        got = meta.get_prediction(p.id)
        assert got == p and isinstance(got, Prediction)
        assert got.created_at.tzinfo == timezone.utc
    with pytest.raises(NotFound, match="prediction 'nope' not found"):
        meta.get_prediction("nope")


def test_a_batch_of_64_is_one_transaction(meta: MetadataStore) -> None:
    batch = [prediction(f"p{i:02d}") for i in range(64)]
    with counted(meta) as counts:
        meta.add_predictions(batch)
    assert counts["commit"] == 1
    assert counts["insert"] <= 2  # one executemany (SQLAlchemy may split very large ones)
    assert meta.count_predictions("sms") == 64


def test_a_failure_mid_batch_writes_none_of_it(meta: MetadataStore) -> None:
    meta.add_predictions([prediction("p40")])
    batch = [prediction(f"p{i:02d}") for i in range(64)]  # p40 is recorded already
    with pytest.raises(Conflict, match="recorded already: p40"):
        meta.add_predictions(batch)
    assert meta.count_predictions("sms") == 1
    bad = [*batch[:30], prediction("bad", scores={"spam": float("nan")}), *batch[41:]]
    with pytest.raises(InputError, match="prediction 'bad', field 'scores'.*NaN"):
        meta.add_predictions(bad)
    with pytest.raises(InputError, match="more than once in one batch: p01"):
        meta.add_predictions([prediction("p01"), prediction("p01")])
    assert [p.id for p in meta.list_predictions("sms")] == ["p40"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"input_hash": "abc"}, "input_hash"),
        ({"input_blob": "../etc/passwd"}, "input_blob"),
        ({"latency_ms": -1.0}, "latency_ms"),
        ({"latency_ms": float("inf")}, "latency_ms"),
        ({"model_version": "1"}, "model_version"),
        ({"scores": [0.1, 0.9]}, "scores"),
        ({"label": {"a", "b"}}, "label"),
    ],
)
def test_malformed_predictions_are_refused_naming_the_field(
    meta: MetadataStore, change: dict[str, Any], field: str
) -> None:
    with pytest.raises(InputError, match=f"prediction 'p1', field '{field}'"):
        meta.add_predictions([prediction("p1", **change)])
    assert meta.count_predictions("sms") == 0


def test_list_predictions_newest_first_since_limit_and_by_model(meta: MetadataStore) -> None:
    meta.add_predictions([prediction(f"p{i}", at=T0 + timedelta(minutes=i)) for i in range(5)])
    meta.add_predictions([prediction("other", model_name="cats", at=T0 + timedelta(hours=1))])
    assert [p.id for p in meta.list_predictions("sms")] == ["p4", "p3", "p2", "p1", "p0"]
    assert [p.id for p in meta.list_predictions("sms", limit=2)] == ["p4", "p3"]
    since = T0 + timedelta(minutes=3)
    assert [p.id for p in meta.list_predictions("sms", since=since)] == ["p4", "p3"]
    assert meta.count_predictions("sms") == 5 and meta.count_predictions("cats") == 1
    assert meta.list_predictions("nobody") == [] and meta.count_predictions("nobody") == 0
    with pytest.raises(InputError, match="limit 0"):
        meta.list_predictions("sms", limit=0)


def test_without_feedback_leaves_out_answered_predictions(meta: MetadataStore) -> None:
    meta.add_predictions([prediction(f"p{i}", at=T0 + timedelta(minutes=i)) for i in range(4)])
    meta.add_feedback(feedback("f1", "p1"))
    meta.add_feedback(feedback("f3a", "p3", correct=True))
    meta.add_feedback(feedback("f3b", "p3", correct=False))
    queue = meta.list_predictions("sms", without_feedback=True)
    assert [p.id for p in queue] == ["p2", "p0"]
    assert [p.id for p in meta.list_predictions("sms", without_feedback=True, limit=1)] == ["p2"]


# -- feedback -------------------------------------------------------------------------------


def test_feedback_round_trip_in_each_shape(meta: MetadataStore) -> None:
    meta.add_predictions([prediction("p1")])
    shapes = [
        feedback("f-label", "p1", label="ham", comment="clearly ham", actor="ana"),
        feedback("f-labels", "p1", labels=("cat", "new-thing"), new_class=True),
        feedback("f-empty", "p1", labels=()),
        feedback("f-correct", "p1", correct=False),
    ]
    for fb in shapes:
        assert meta.add_feedback(fb) == fb
        got = meta.get_feedback(fb.id)
        assert got == fb and got.created_at.tzinfo == timezone.utc
    assert meta.get_feedback("f-correct").correct is False
    with pytest.raises(NotFound, match="feedback 'nope' not found"):
        meta.get_feedback("nope")
    with pytest.raises(Conflict, match="exists already"):
        meta.add_feedback(feedback("f-label", "p1"))


def test_feedback_on_an_unknown_prediction_is_not_found_and_writes_nothing(
    meta: MetadataStore,
) -> None:
    meta.add_predictions([prediction("p1"), prediction("c1", model_name="cats")])
    with pytest.raises(NotFound, match="prediction 'p9' not found for model 'sms'"):
        meta.add_feedback(feedback("f1", "p9"))
    with pytest.raises(NotFound, match="prediction 'c1' not found for model 'sms'"):
        meta.add_feedback(feedback("f2", "c1"))  # exists, but for another model
    assert meta.list_feedback() == []


@pytest.mark.parametrize(
    "shape",
    [{"label": None}, {"label": "a", "correct": True}, {"label": "a", "labels": ("a",)}],
)
def test_feedback_needs_exactly_one_shape(meta: MetadataStore, shape: dict[str, Any]) -> None:
    meta.add_predictions([prediction("p1")])
    fb = Feedback(id="f1", prediction_id="p1", model_name="sms", created_at=T0, **shape)
    with pytest.raises(InputError, match="exactly one of label, labels, correct"):
        meta.add_feedback(fb)
    assert meta.list_feedback() == []


def test_list_feedback_newest_first_by_model_and_since(meta: MetadataStore) -> None:
    meta.add_predictions([prediction("p1"), prediction("c1", model_name="cats")])
    for i in range(3):
        meta.add_feedback(feedback(f"f{i}", "p1", at=T0 + timedelta(minutes=i)))
    meta.add_feedback(feedback("c", "c1", model_name="cats", at=T0 + timedelta(hours=1)))
    assert [f.id for f in meta.list_feedback("sms")] == ["f2", "f1", "f0"]
    assert [f.id for f in meta.list_feedback()] == ["c", "f2", "f1", "f0"]
    assert [f.id for f in meta.list_feedback(since=T0 + timedelta(minutes=1), limit=2)] == [
        "c", "f2"
    ]
    assert meta.list_feedback("dogs") == []
