"""MetadataStore backend suite, part two: runs, model versions, aliases and their audit trail.

Same fixtures as ``test_db.py`` (imported from it): every test runs on a real SQLite file, and
on ``AIFAB_TEST_DB_URL`` when that is set.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from aifab.core.errors import Conflict, InputError, NotFound
from aifab.core.types import AliasMove, ModelVersion, Run
from aifab.store import MetadataStore
from aifab.store.db import MIGRATIONS
from tests.store import test_db
from tests.store.test_db import T0, version

# The backend suite's fixtures, shared rather than copied: same URLs, same clean-up.
db_url = test_db.db_url
meta = test_db.meta
sqlite_url = test_db.sqlite_url

TASK = "text-classification"


def dataset(meta: MetadataStore, n: int = 1) -> str:
    return meta.add_dataset_version(version("sms", n)).id


def run(run_id: str, dataset_version: str, *, model: str = "sms", at: datetime = T0) -> Run:
    return Run(
        id=run_id,
        model_name=model,
        dataset_version=dataset_version,
        spec={"model": {"arch": "gru", "hidden": 32}, "train": {"epochs": 3, "lr": 0.001}},
        status="running",
        created_at=at,
        updated_at=at,
        seed=2**40 + 7,  # past a 32-bit INTEGER on purpose
        code_version="3f2a9c1-dirty",
    )


def model(name: str = "sms", *, at: datetime = T0, task: str = TASK, **kw: Any) -> ModelVersion:
    return ModelVersion(
        name=name,
        version=kw.pop("version", 99),  # the store allocates; this is ignored
        files={"weights.safetensors": "a1" * 32, "spec.json": "b2" * 32},
        task=task,
        created_at=at,
        metrics={"accuracy": 0.91, "per_class": {"ham": {"f1": 0.95}}},
        description="gru baseline",
        **kw,
    )


def versions_of(meta: MetadataStore, name: str = "sms", n: int = 3) -> None:
    for i in range(n):
        meta.add_model_version(model(name, at=T0 + timedelta(minutes=i)))


# -- runs -----------------------------------------------------------------------------------


def test_run_round_trip_returns_the_domain_object(meta: MetadataStore) -> None:
    r = dataclasses.replace(
        run("run-000001", dataset(meta)),
        history=({"epoch": 1, "loss": 0.7},),
        checkpoint="c3" * 32,
    )
    assert meta.create_run(r) == r
    got = meta.get_run("run-000001")
    assert got == r
    assert isinstance(got.history, tuple) and got.seed == 2**40 + 7
    assert got.created_at.utcoffset() == timedelta(0)


def test_run_timestamps_are_stored_as_utc(meta: MetadataStore) -> None:
    local = T0.astimezone(timezone(timedelta(hours=-5)))
    meta.create_run(run("run-000001", dataset(meta), at=local))
    got = meta.get_run("run-000001")
    assert got.created_at == T0 and got.created_at.tzinfo == timezone.utc
    assert got.updated_at.tzinfo == timezone.utc


def test_spec_is_stored_as_plain_json_so_write_and_read_agree(meta: MetadataStore) -> None:
    spec: dict[Any, Any] = {"size": (64, 64), 3: "x"}  # a tuple and an int key: JSON has neither
    r = dataclasses.replace(run("run-000001", dataset(meta)), spec=spec)
    created = meta.create_run(r)
    assert created.spec == {"size": [64, 64], "3": "x"}
    assert meta.get_run("run-000001") == created


def test_update_run_changes_only_the_given_fields_and_stamps_updated_at(
    meta: MetadataStore,
) -> None:
    meta.create_run(run("run-000001", dataset(meta)))
    before = datetime.now(timezone.utc)
    first = meta.update_run("run-000001", history=[{"epoch": 1, "loss": 0.5}], checkpoint="c1" * 32)
    after = datetime.now(timezone.utc)
    assert before <= first.updated_at <= after and first.updated_at.tzinfo == timezone.utc
    assert first.status == "running" and first.history == ({"epoch": 1, "loss": 0.5},)
    history = [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25}]
    second = meta.update_run("run-000001", status="failed", history=history, error="OOM at epoch 3")
    assert second.checkpoint == "c1" * 32  # untouched
    assert second.history == tuple(history) and second.error == "OOM at epoch 3"
    assert second.updated_at >= first.updated_at
    assert meta.get_run("run-000001") == second
    assert second.created_at == T0  # only updated_at moves


def test_update_run_model_version_must_be_a_version_of_the_runs_model(
    meta: MetadataStore,
) -> None:
    meta.create_run(run("run-000001", dataset(meta)))
    with pytest.raises(NotFound, match="model 'sms' not found"):
        meta.update_run("run-000001", model_version=1)
    meta.add_model_version(model("sms", run_id="run-000001"))
    with pytest.raises(NotFound, match=r"model 'sms': version 2 not found; its versions are 1$"):
        meta.update_run("run-000001", model_version=2)
    assert meta.get_run("run-000001").model_version is None
    done = meta.update_run("run-000001", status="finished", model_version=1)
    assert (done.status, done.model_version) == ("finished", 1)


def test_update_of_an_unknown_run_or_to_an_unknown_status_is_refused(meta: MetadataStore) -> None:
    meta.create_run(run("run-000001", dataset(meta)))
    with pytest.raises(NotFound, match="run 'run-999999' not found"):
        meta.update_run("run-999999", status="finished")
    with pytest.raises(InputError, match="did you mean 'finished'"):
        meta.update_run("run-000001", status="finishd")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="field 'history'.*NaN"):
        meta.update_run("run-000001", history=[{"loss": float("nan")}])
    assert meta.get_run("run-000001").status == "running"
    assert meta.get_run("run-000001").history == ()


def test_run_lookup_by_unique_prefix(meta: MetadataStore) -> None:
    ds = dataset(meta)
    a = meta.create_run(run("abcdef01-aaaa", ds))
    b = meta.create_run(run("abcdef02-bbbb", ds))
    exact = meta.create_run(run("abcdef02", ds))  # also a prefix of b: the exact id wins
    assert meta.get_run("abcdef01") == a
    assert meta.get_run("ABCDEF01-A") == a
    assert meta.get_run("abcdef02") == exact
    assert meta.get_run("abcdef02-") == b
    with pytest.raises(InputError, match="ambiguous") as info:
        meta.get_run("abcdef")
    assert all(r.id[:12] in str(info.value) for r in (a, b, exact))
    with pytest.raises(InputError, match="at least 6"):
        meta.get_run("abcde")
    with pytest.raises(InputError, match="not a run id"):
        meta.get_run("abc%def")
    with pytest.raises(NotFound, match="run 'abcdef03' not found"):
        meta.get_run("abcdef03")


def test_list_runs_newest_first_and_by_model(meta: MetadataStore) -> None:
    ds = dataset(meta)
    r1 = meta.create_run(run("run-000001", ds, at=T0))
    r3 = meta.create_run(run("run-000003", ds, at=T0 + timedelta(hours=2)))
    r2 = meta.create_run(run("run-000002", ds, model="cats", at=T0 + timedelta(hours=1)))
    assert meta.list_runs() == [r3, r2, r1]
    assert meta.list_runs("sms") == [r3, r1]
    with pytest.raises(NotFound, match="did you mean 'cats'"):
        meta.list_runs("cat")
    meta.add_model_version(model("dogs"))
    assert meta.list_runs("dogs") == []  # a model without runs is not a typo


@pytest.mark.parametrize(
    ("change", "error", "pattern"),
    [
        ({"id": "Run 1"}, InputError, "run id 'Run 1'"),
        ({"id": "r1"}, InputError, "6 to 64"),
        ({"model_name": "sms/v2"}, InputError, "model name 'sms/v2'"),
        ({"status": "done"}, InputError, "run status 'done'"),
        ({"seed": 2**64}, InputError, "64-bit"),
        ({"spec": {"lr": float("inf")}}, InputError, "field 'spec'"),
        ({"spec": {"f": object()}}, InputError, "not JSON serializable"),
        ({"dataset_version": "ff" * 32}, NotFound, "dataset version 'f+' not found"),
        ({"model_version": 1}, NotFound, "model 'sms' not found"),
    ],
)
def test_create_run_refuses_bad_input_and_writes_nothing(
    meta: MetadataStore, change: dict[str, Any], error: type[Exception], pattern: str
) -> None:
    bad = dataclasses.replace(run("run-000001", dataset(meta)), **change)
    with pytest.raises(error, match=pattern):
        meta.create_run(bad)
    assert meta.list_runs() == []


def test_same_run_id_twice_is_a_conflict(meta: MetadataStore) -> None:
    first = meta.create_run(run("run-000001", dataset(meta)))
    with pytest.raises(Conflict, match="run 'run-000001' exists"):
        meta.create_run(dataclasses.replace(first, seed=1))
    assert meta.list_runs() == [first]


# -- model versions -------------------------------------------------------------------------


def test_model_version_round_trip_and_allocation_per_name(meta: MetadataStore) -> None:
    ds = dataset(meta)
    meta.create_run(run("run-000001", ds))
    given = model("sms", run_id="run-000001", dataset_version=ds, aliases=("ignored",))
    first = meta.add_model_version(given)
    assert first == dataclasses.replace(given, version=1, aliases=())
    assert meta.get_model_version("sms", 1) == first
    second = meta.add_model_version(model("sms", parent=1, version=1))
    other = meta.add_model_version(model("cats"))
    assert (second.version, second.parent, other.version) == (2, 1, 1)
    assert meta.list_models() == ["cats", "sms"]
    with sa.create_engine(meta.url).connect() as conn:
        rows = conn.execute(sa.text("SELECT name, task FROM models ORDER BY name")).all()
    assert [tuple(r) for r in rows] == [("cats", TASK), ("sms", TASK)]


def test_concurrent_adds_get_versions_1_to_n_with_no_gap_and_no_duplicate(db_url: str) -> None:
    MetadataStore(db_url).migrate()
    workers, each = 6, 3
    got: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(workers)

    def writer() -> None:
        store = MetadataStore(db_url)  # its own engine, as another process would have
        try:
            start.wait()
            for _ in range(each):  # the first round also races to create the model's row
                got.append(store.add_model_version(model("shared")).version)
        except BaseException as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)
        finally:
            store.dispose()

    threads = [threading.Thread(target=writer) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(got) == list(range(1, workers * each + 1))
    store = MetadataStore(db_url)
    try:
        stored = [v.version for v in store.list_model_versions("shared")]
        assert stored == list(range(workers * each, 0, -1))
    finally:
        store.dispose()


def test_model_version_references(meta: MetadataStore) -> None:
    versions_of(meta, "sms", 3)
    meta.set_alias("sms", "production", 2)
    meta.set_alias("sms", "stable", 2)
    meta.set_alias("sms", "candidate", 3)
    assert meta.get_model_version("sms").version == 3
    assert meta.get_model_version("sms", "latest").version == 3
    assert meta.get_model_version("sms", 1).version == 1
    assert meta.get_model_version("sms", "2").version == 2
    prod = meta.get_model_version("sms", "production")
    assert (prod.version, prod.aliases) == (2, ("production", "stable"))
    assert meta.get_model_version("sms", "candidate").aliases == ("candidate",)
    assert meta.get_model_version("sms", 1).aliases == ()


def test_unknown_model_version_and_alias_are_reported_with_what_exists(
    meta: MetadataStore,
) -> None:
    versions_of(meta, "sms-spam", 2)
    meta.set_alias("sms-spam", "production", 1)
    with pytest.raises(NotFound, match=r"model 'sms-spma' not found; did you mean 'sms-spam'\?"):
        meta.get_model_version("sms-spma")
    with pytest.raises(NotFound, match=r"version 7 not found; its versions are 1, 2$"):
        meta.get_model_version("sms-spam", 7)
    with pytest.raises(NotFound, match=r"version 0 not found"):
        meta.get_model_version("sms-spam", "0")
    with pytest.raises(
        NotFound,
        match=r"alias 'prodution' not found \(did you mean 'production'\?\); "
        r"its aliases are production -> 1$",
    ):
        meta.get_model_version("sms-spam", "prodution")
    with pytest.raises(InputError, match="not a version number"):
        meta.get_model_version("sms-spam", True)
    with pytest.raises(NotFound, match="did you mean 'sms-spam'"):
        meta.list_model_versions("sms")


@pytest.mark.parametrize(
    ("change", "error", "pattern"),
    [
        ({"name": "sms spam"}, InputError, "model name"),
        ({"task": ""}, InputError, "task ''"),
        ({"task": "ner"}, Conflict, "'text-classification' model; cannot add a 'ner' version"),
        ({"parent": 5}, NotFound, "version 5 not found; its versions are 1$"),
        ({"run_id": "run-404404"}, NotFound, "run 'run-404404' not found"),
        ({"dataset_version": "ee" * 32}, NotFound, "dataset version 'e+' not found"),
        ({"metrics": {"loss": float("nan")}}, InputError, "field 'metrics'"),
        ({"files": {"weights.safetensors": 3}}, InputError, "field 'files'"),
    ],
)
def test_add_model_version_refuses_bad_input_and_writes_nothing(
    meta: MetadataStore, change: dict[str, Any], error: type[Exception], pattern: str
) -> None:
    meta.add_model_version(model("sms"))
    with pytest.raises(error, match=pattern):
        meta.add_model_version(dataclasses.replace(model("sms"), **change))
    assert [v.version for v in meta.list_model_versions()] == [1]
    assert meta.list_models() == ["sms"]


def test_list_model_versions_newest_first_with_aliases(meta: MetadataStore) -> None:
    meta.add_model_version(model("sms", at=T0))
    meta.add_model_version(model("cats", at=T0 + timedelta(hours=1)))
    meta.add_model_version(model("sms", at=T0 + timedelta(hours=2)))
    meta.set_alias("sms", "production", 1)
    assert [v.ref for v in meta.list_model_versions()] == ["sms@2", "cats@1", "sms@1"]
    listed = meta.list_model_versions("sms")
    assert [(v.version, v.aliases) for v in listed] == [(2, ()), (1, ("production",))]
    assert listed[1] == meta.get_model_version("sms", "production")


# -- aliases and their audit trail ----------------------------------------------------------


def test_every_alias_move_is_recorded_with_the_version_before(meta: MetadataStore) -> None:
    versions_of(meta, "sms", 3)
    versions_of(meta, "cats", 1)
    returned = [
        meta.set_alias("sms", "production", 1, actor="ana", reason="first release"),
        meta.set_alias("sms", "candidate", 3, actor="ci"),
        meta.set_alias("sms", "production", 2, actor="ana", reason="gate passed"),
        meta.set_alias("cats", "production", 1),
        meta.set_alias("sms", "production", 2, actor="bob", reason="re-approved"),
        meta.delete_alias("sms", "candidate", actor="ci", reason="rejected"),
        meta.set_alias("sms", "production", 1, actor="ana", reason="rollback"),
    ]
    sms = meta.alias_history("sms")
    assert [(m.alias, m.version, m.previous, m.actor, m.reason) for m in sms] == [
        ("production", 1, 2, "ana", "rollback"),
        ("candidate", None, 3, "ci", "rejected"),
        ("production", 2, 2, "bob", "re-approved"),
        ("production", 2, 1, "ana", "gate passed"),
        ("candidate", 3, None, "ci", ""),
        ("production", 1, None, "ana", "first release"),
    ]
    everything = meta.alias_history()
    assert everything == returned[::-1]  # what each call returned is what was stored
    assert all(m.moved_at.tzinfo == timezone.utc for m in everything)
    assert [m.moved_at for m in everything] == sorted(
        (m.moved_at for m in everything), reverse=True
    )
    names = [m.name for m in meta.alias_history(alias="production")]
    assert names == ["sms", "sms", "cats", "sms", "sms"]
    assert meta.alias_history("sms", "candidate") == [sms[1], sms[4]]
    assert meta.aliases("sms") == {"production": 1}
    assert meta.aliases("cats") == {"production": 1}


@pytest.mark.parametrize(
    "alias", ["", "Production", "a" * 41, "42", "007", "latest", "pro duction", "prod/1", "ß"]
)
def test_malformed_aliases_are_refused_and_nothing_is_recorded(
    meta: MetadataStore, alias: str
) -> None:
    versions_of(meta, "sms", 1)
    with pytest.raises(InputError, match="alias"):
        meta.set_alias("sms", alias, 1)
    assert meta.aliases("sms") == {}
    assert meta.alias_history() == []


@pytest.mark.parametrize("alias", ["a" * 40, "v2", "prod-1_b", "x"])
def test_well_formed_aliases_are_accepted(meta: MetadataStore, alias: str) -> None:
    versions_of(meta, "sms", 1)
    meta.set_alias("sms", alias, 1)
    assert meta.get_model_version("sms", alias).aliases == (alias,)


def test_alias_to_an_unknown_version_or_model_is_refused(meta: MetadataStore) -> None:
    versions_of(meta, "sms", 2)
    meta.set_alias("sms", "production", 1)
    with pytest.raises(NotFound, match=r"model 'sms': version 3 not found; its versions are 1, 2"):
        meta.set_alias("sms", "production", 3)
    with pytest.raises(NotFound, match="model 'smss' not found; did you mean 'sms'"):
        meta.set_alias("smss", "production", 1)
    with pytest.raises(InputError, match="not a version number"):
        meta.set_alias("sms", "production", "2")  # type: ignore[arg-type]
    assert meta.aliases("sms") == {"production": 1}
    assert len(meta.alias_history()) == 1


def test_deleting_an_unknown_alias_lists_the_existing_ones(meta: MetadataStore) -> None:
    versions_of(meta, "sms", 2)
    meta.set_alias("sms", "production", 1)
    meta.set_alias("sms", "candidate", 2)
    with pytest.raises(
        NotFound,
        match=r"alias 'staging' not found; its aliases are candidate -> 2, production -> 1",
    ):
        meta.delete_alias("sms", "staging")
    meta.delete_alias("sms", "production")
    meta.delete_alias("sms", "candidate")
    assert meta.aliases("sms") == {}
    with pytest.raises(NotFound, match="its aliases are none$"):
        meta.delete_alias("sms", "candidate")
    assert [m.version for m in meta.alias_history("sms")] == [None, None, 2, 1]


def test_concurrent_alias_moves_form_one_unbroken_chain(db_url: str) -> None:
    setup = MetadataStore(db_url)
    setup.migrate()
    versions_of(setup, "sms", 4)
    setup.dispose()
    workers, each = 4, 5
    errors: list[BaseException] = []
    start = threading.Barrier(workers)

    def mover(worker: int) -> None:
        store = MetadataStore(db_url)
        try:
            start.wait()
            for n in range(each):
                store.set_alias("sms", "production", (worker + n) % 4 + 1, actor=f"w{worker}")
        except BaseException as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)
        finally:
            store.dispose()

    threads = [threading.Thread(target=mover, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    store = MetadataStore(db_url)
    try:
        moves = store.alias_history("sms", "production")[::-1]  # oldest first
        assert len(moves) == workers * each
        assert moves[0].previous is None
        # No move read a stale alias: each one's "previous" is the version the one before set.
        assert [m.previous for m in moves[1:]] == [m.version for m in moves[:-1]]
        assert store.aliases("sms") == {"production": moves[-1].version}
    finally:
        store.dispose()


def test_alias_move_is_the_domain_object(meta: MetadataStore) -> None:
    versions_of(meta, "sms", 1)
    before = datetime.now(timezone.utc)
    move = meta.set_alias("sms", "production", 1, actor="ana", reason="ok")
    assert isinstance(move, AliasMove)
    expected = AliasMove("sms", "production", 1, None, moved_at=T0, actor="ana", reason="ok")
    assert dataclasses.replace(move, moved_at=T0) == expected
    assert before <= move.moved_at <= datetime.now(timezone.utc)


# -- schema upgrade -------------------------------------------------------------------------


def test_migrate_upgrades_a_0001_database_in_place(db_url: str) -> None:
    store = MetadataStore(db_url)
    try:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with store.engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "0001")
        tables = set(sa.inspect(store.engine).get_table_names())
        assert "dataset_versions" in tables and "model_versions" not in tables
        kept = store.add_dataset_version(version("sms", 1))

        store.migrate()

        assert store.list_dataset_versions() == [kept]
        with store.engine.connect() as conn:
            revision = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        assert revision == "0004"
        added = store.add_model_version(model("sms", dataset_version=kept.id))
        assert store.get_model_version("sms") == added
    finally:
        store.dispose()


def test_sqlite_aliases_cannot_point_at_a_missing_version_even_bypassing_the_store(
    sqlite_url: str, tmp_path: Path
) -> None:
    store = MetadataStore(sqlite_url)
    try:
        store.migrate()
        versions_of(store, "sms", 1)
    finally:
        store.dispose()
    with sqlite3.connect(tmp_path / "aifab.db") as raw:
        raw.execute("PRAGMA foreign_keys=ON")
        raw.execute("INSERT INTO aliases (name, alias, version) VALUES ('sms', 'ok', 1)")
        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
            raw.execute("INSERT INTO aliases (name, alias, version) VALUES ('sms', 'bad', 2)")
