"""The MetadataStore backend suite.

Every test takes the ``meta`` fixture and runs once per URL in ``db_urls()``: a real SQLite
file always, and PostgreSQL (or any SQLAlchemy URL) when ``AIFAB_TEST_DB_URL`` is set, e.g.

    AIFAB_TEST_DB_URL=postgresql+psycopg://aifab:aifab@localhost/aifab_test \\
        python -m pytest tests/store/test_db.py

That database must be a scratch one: the fixture drops every aifab table after each test.
Tests marked by name ``sqlite`` check SQLite specifics and do not run against the URL.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.exc import OperationalError

from aifab.core.errors import Conflict, InputError, NotFound, Overloaded
from aifab.core.types import DatasetVersion
from aifab.store import MetadataStore
from aifab.store.db import Base, _retry_locked

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def db_urls() -> list[Any]:
    urls: list[Any] = ["sqlite"]
    urls.append(
        pytest.param(
            os.environ.get("AIFAB_TEST_DB_URL", ""),
            id="env-url",
            marks=pytest.mark.skipif(
                not os.environ.get("AIFAB_TEST_DB_URL"), reason="AIFAB_TEST_DB_URL unset"
            ),
        )
    )
    return urls


@pytest.fixture(params=db_urls())
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'aifab.db'}"
        return
    yield request.param
    engine = sa.create_engine(request.param)
    with engine.begin() as conn:
        Base.metadata.drop_all(conn)
        conn.execute(sa.text("DROP TABLE IF EXISTS alembic_version"))
    engine.dispose()


@pytest.fixture
def meta(db_url: str) -> Iterator[MetadataStore]:
    store = MetadataStore(db_url)
    store.migrate()
    yield store
    store.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'aifab.db'}"


def version(
    name: str, n: int | str, *, at: datetime = T0, parent: str | None = None, vid: str | None = None
) -> DatasetVersion:
    return DatasetVersion(
        id=vid or hashlib.sha256(f"{name}/{n}".encode()).hexdigest(),
        name=name,
        manifest=hashlib.sha256(f"m{n}".encode()).hexdigest(),
        report=hashlib.sha256(f"r{n}".encode()).hexdigest(),
        parent=parent,
        created_at=at,
        num_records=10,
        split_counts={"train": 8, "val": 1, "test": 1},
        label_counts={"ham": 6, "spam": 4},
        fields=("text", "category"),
        source="sms.csv",
        num_quarantined=2,
    )


# -- schema and SQLite setup ----------------------------------------------------------------


def test_sqlite_migrate_creates_tables_in_a_fresh_file_and_is_idempotent(
    sqlite_url: str, tmp_path: Path
) -> None:
    store = MetadataStore(sqlite_url)
    try:
        assert sa.inspect(store.engine).get_table_names() == []
        store.migrate()
        store.migrate()
        tables = set(sa.inspect(store.engine).get_table_names())
        assert {"datasets", "dataset_versions", "alembic_version", "models", "runs"} <= tables
        assert {"model_versions", "aliases", "alias_moves"} <= tables
        with sqlite3.connect(tmp_path / "aifab.db") as raw:
            assert raw.execute("SELECT version_num FROM alembic_version").fetchall() == [("0004",)]
    finally:
        store.dispose()


def test_migrations_build_exactly_the_orm_schema(meta: MetadataStore) -> None:
    with meta.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_sqlite_runs_in_wal_mode_with_busy_timeout_and_foreign_keys(
    sqlite_url: str, tmp_path: Path
) -> None:
    store = MetadataStore(sqlite_url)
    try:
        store.migrate()
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        # WAL is a property of the file: a plain sqlite3 connection sees it too.
        with sqlite3.connect(tmp_path / "aifab.db") as raw:
            assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        store.dispose()


# -- dataset versions -----------------------------------------------------------------------


def test_round_trip_returns_the_domain_object(meta: MetadataStore) -> None:
    v = version("sms", 1)
    assert meta.add_dataset_version(v) == v
    got = meta.get_dataset_version("sms", v.id)
    assert got == v
    assert isinstance(got, DatasetVersion) and isinstance(got.fields, tuple)
    assert got.created_at.tzinfo is not None and got.created_at.utcoffset() == timedelta(0)
    assert meta.list_datasets() == ["sms"]


def test_created_at_is_stored_as_utc(meta: MetadataStore) -> None:
    local = datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    meta.add_dataset_version(version("sms", 1, at=local))
    got = meta.get_dataset_version("sms")
    assert got.created_at == T0 and got.created_at.tzinfo == timezone.utc


def test_same_version_added_twice_returns_the_stored_one_unchanged(meta: MetadataStore) -> None:
    first = meta.add_dataset_version(version("sms", 1))
    again = dataclasses.replace(
        first, created_at=T0 + timedelta(days=1), num_records=999, source="other.csv"
    )
    assert meta.add_dataset_version(again) == first
    assert meta.list_dataset_versions("sms") == [first]


def test_same_id_under_another_dataset_is_a_conflict(meta: MetadataStore) -> None:
    v = meta.add_dataset_version(version("sms", 1))
    with pytest.raises(Conflict, match="'sms'"):
        meta.add_dataset_version(dataclasses.replace(v, name="mail"))
    assert meta.list_datasets() == ["sms"]


def test_unknown_parent_is_refused_and_nothing_is_written(meta: MetadataStore) -> None:
    missing = hashlib.sha256(b"nope").hexdigest()
    with pytest.raises(NotFound, match=missing):
        meta.add_dataset_version(version("sms", 1, parent=missing))
    assert meta.list_datasets() == []


def test_latest_is_by_created_at_and_lists_are_newest_first(meta: MetadataStore) -> None:
    v1 = meta.add_dataset_version(version("sms", 1, at=T0))
    v3 = meta.add_dataset_version(version("sms", 3, at=T0 + timedelta(hours=2), parent=v1.id))
    v2 = meta.add_dataset_version(version("sms", 2, at=T0 + timedelta(hours=1), parent=v1.id))
    other = meta.add_dataset_version(version("cats", 1, at=T0 + timedelta(minutes=30)))
    assert meta.get_dataset_version("sms") == v3
    assert meta.get_dataset_version("sms", v2.id).parent == v1.id
    assert meta.list_dataset_versions("sms") == [v3, v2, v1]
    assert meta.list_dataset_versions() == [v3, v2, other, v1]
    assert meta.list_datasets() == ["cats", "sms"]


def test_lookup_by_unique_prefix(meta: MetadataStore) -> None:
    v = meta.add_dataset_version(version("sms", 1))
    meta.add_dataset_version(version("sms", 2))
    assert meta.get_dataset_version("sms", v.id[:6]) == v
    assert meta.get_dataset_version("sms", v.id[:6].upper()) == v
    with pytest.raises(InputError, match="at least 6"):
        meta.get_dataset_version("sms", v.id[:5])
    with pytest.raises(InputError, match="not a version id"):
        meta.get_dataset_version("sms", "abc%def")


def test_ambiguous_prefix_lists_the_candidates(meta: MetadataStore) -> None:
    a = meta.add_dataset_version(version("sms", 1, vid="abcdef01" + "0" * 56))
    b = meta.add_dataset_version(version("sms", 2, vid="abcdef02" + "0" * 56))
    with pytest.raises(InputError, match="ambiguous") as info:
        meta.get_dataset_version("sms", "abcdef")
    assert a.id[:12] in str(info.value) and b.id[:12] in str(info.value)
    assert meta.get_dataset_version("sms", "abcdef02") == b


def test_prefix_is_scoped_to_the_dataset(meta: MetadataStore) -> None:
    meta.add_dataset_version(version("sms", 1, vid="abcdef01" + "0" * 56))
    cat = meta.add_dataset_version(version("cats", 1, vid="abcdef02" + "0" * 56))
    assert meta.get_dataset_version("cats", "abcdef") == cat


def test_unknown_version_names_dataset_and_version(meta: MetadataStore) -> None:
    meta.add_dataset_version(version("sms", 1))
    with pytest.raises(NotFound, match=r"dataset 'sms': version 'fedcba98' not found"):
        meta.get_dataset_version("sms", "fedcba98")


def test_unknown_dataset_suggests_the_nearest_name(meta: MetadataStore) -> None:
    meta.add_dataset_version(version("sms-spam", 1))
    meta.add_dataset_version(version("cats", 1))
    with pytest.raises(NotFound, match=r"dataset 'sms-spma' not found; did you mean 'sms-spam'\?"):
        meta.get_dataset_version("sms-spma")
    with pytest.raises(NotFound, match="did you mean 'cats'"):
        meta.list_dataset_versions("cat")
    with pytest.raises(NotFound) as info:
        meta.get_dataset_version("zzzzzz")
    assert "did you mean" not in str(info.value)


def test_concurrent_writers_never_see_a_locked_database(db_url: str) -> None:
    MetadataStore(db_url).migrate()
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def writer(worker: int) -> None:
        store = MetadataStore(db_url)  # its own engine: its own connections, as in another process
        try:
            start.wait()
            for n in range(10):
                store.add_dataset_version(version("shared", f"{worker}-{n}"))
                store.add_dataset_version(version("shared", "common"))  # every worker adds this one
                store.get_dataset_version("shared")
        except BaseException as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)
        finally:
            store.dispose()

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    store = MetadataStore(db_url)
    try:
        assert len(store.list_dataset_versions("shared")) == 41
    finally:
        store.dispose()


# -- the retry wrapper ----------------------------------------------------------------------


def locked() -> OperationalError:
    return OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked"))


def test_retry_gives_up_after_a_bounded_number_of_tries() -> None:
    calls: list[int] = []

    def always_locked() -> None:
        calls.append(1)
        raise locked()

    with pytest.raises(Overloaded, match="locked after 4 tries"):
        _retry_locked(always_locked, tries=4, first_delay=0)
    assert len(calls) == 4


def test_retry_passes_other_errors_through_at_once() -> None:
    calls: list[int] = []

    def broken() -> None:
        calls.append(1)
        raise OperationalError("SELECT", {}, sqlite3.OperationalError("no such table: datasets"))

    with pytest.raises(OperationalError, match="no such table"):
        _retry_locked(broken, first_delay=0)
    assert len(calls) == 1
