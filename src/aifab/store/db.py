"""Metadata in SQL (SQLite by default, PostgreSQL by URL), returned as domain objects.

The schema is the ORM classes below; alembic revisions in ``migrations/versions`` create it,
one revision per feature. A new noun (runs, model versions, aliases, ...) adds: a row class
here, a ``_to_*`` converter, methods on :class:`MetadataStore` that read through
``self._read()`` and write through ``self._write(fn)``, and one migration.

SQLite runs in WAL mode with a 30 s busy timeout and foreign keys on. Write transactions
start with ``BEGIN IMMEDIATE`` so they take the write lock up front and wait for it;
a deferred transaction that read first would fail at once with "database is locked"
when another writer got there in between.

>>> store = MetadataStore("sqlite://")
>>> store.migrate()
>>> store.list_datasets()
[]
>>> store.dispose()
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import JSON, ForeignKey, String, Text, UniqueConstraint, event, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError as SqlIntegrityError
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from aifab.core.errors import Conflict, InputError, NotFound, Overloaded, nearest
from aifab.core.types import DatasetVersion

log = logging.getLogger(__name__)

T = TypeVar("T")
MIGRATIONS = Path(__file__).with_name("migrations")
MIN_PREFIX = 6
_WRITE_OPTION = "aifab_write"


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Stores UTC without tz (SQLite keeps none), returns aware UTC. Naive input is taken as UTC."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None or value.tzinfo is None:
            return value
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON, list[str]: JSON}


class DatasetRow(Base):
    __tablename__ = "datasets"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    created_at: Mapped[datetime]


class DatasetVersionRow(Base):
    __tablename__ = "dataset_versions"
    # (name, id) is unique on its own so later tables may reference a version by both.
    __table_args__ = (UniqueConstraint("name", "id", name="uq_dataset_versions_name_id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(ForeignKey("datasets.name"), index=True)
    manifest: Mapped[str] = mapped_column(String(64))
    report: Mapped[str] = mapped_column(String(64))
    parent: Mapped[str | None] = mapped_column(ForeignKey("dataset_versions.id"))
    created_at: Mapped[datetime] = mapped_column(index=True)
    num_records: Mapped[int]
    num_quarantined: Mapped[int]
    split_counts: Mapped[dict[str, Any]]
    label_counts: Mapped[dict[str, Any]]
    fields: Mapped[list[str]]
    source: Mapped[str] = mapped_column(Text)


def _to_dataset_version(row: DatasetVersionRow) -> DatasetVersion:
    return DatasetVersion(
        id=row.id,
        name=row.name,
        manifest=row.manifest,
        report=row.report,
        parent=row.parent,
        created_at=row.created_at,
        num_records=row.num_records,
        split_counts={str(k): int(v) for k, v in row.split_counts.items()},
        label_counts={str(k): int(v) for k, v in row.label_counts.items()},
        fields=tuple(row.fields),
        source=row.source,
        num_quarantined=row.num_quarantined,
    )


def _from_dataset_version(v: DatasetVersion) -> DatasetVersionRow:
    return DatasetVersionRow(
        id=v.id,
        name=v.name,
        manifest=v.manifest,
        report=v.report,
        parent=v.parent,
        created_at=v.created_at,
        num_records=v.num_records,
        num_quarantined=v.num_quarantined,
        split_counts=dict(v.split_counts),
        label_counts=dict(v.label_counts),
        fields=list(v.fields),
        source=v.source,
    )


class MetadataStore:
    """The metadata database. ``url`` is a SQLAlchemy URL (``sqlite:///path/aifab.db``,
    ``postgresql+psycopg://...``). Call :meth:`migrate` once before use.

    >>> store = MetadataStore("sqlite://")
    >>> store.migrate()
    >>> v = store.add_dataset_version(DatasetVersion(
    ...     id="ab" * 32, name="sms", manifest="cd" * 32, report="ef" * 32, parent=None,
    ...     created_at=datetime(2024, 1, 1, tzinfo=timezone.utc), num_records=3,
    ...     split_counts={"train": 3}, label_counts={"ham": 3}, fields=("text", "category")))
    >>> store.get_dataset_version("sms", "ababab").num_records
    3
    >>> store.dispose()
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = sa.create_engine(url)
        if self.engine.dialect.name == "sqlite":
            _configure_sqlite(self.engine)
        # Same pool; connections taken through this one begin write transactions.
        self._write_engine = self.engine.execution_options(**{_WRITE_OPTION: True})

    def __repr__(self) -> str:
        return f"MetadataStore({self.engine.url.render_as_string(hide_password=True)!r})"

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    def migrate(self) -> None:
        """Bring the schema to the newest revision; a no-op when it is there already."""
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))

        def upgrade() -> None:
            # One transaction: concurrent calls serialize; a failure keeps the old schema.
            with self._write_engine.begin() as conn:
                config.attributes["connection"] = conn
                command.upgrade(config, "head")

        _retry_locked(upgrade)

    # -- datasets -------------------------------------------------------------------------

    def add_dataset_version(self, v: DatasetVersion) -> DatasetVersion:
        """Record a dataset version (creating the dataset on its first version).

        Adding a version whose id is already recorded for that dataset returns the stored one
        unchanged. Conflict if the id belongs to another dataset; NotFound if the parent is unknown.
        """

        def add(session: Session) -> DatasetVersion:
            existing = session.get(DatasetVersionRow, v.id)
            if existing is not None:
                if existing.name != v.name:
                    raise Conflict(
                        f"dataset version {v.id}: already recorded for dataset {existing.name!r}, "
                        f"cannot add it to {v.name!r}"
                    )
                return _to_dataset_version(existing)
            if v.parent is not None and session.get(DatasetVersionRow, v.parent) is None:
                raise NotFound(f"dataset {v.name!r}: parent version {v.parent} not found")
            if session.get(DatasetRow, v.name) is None:
                session.add(DatasetRow(name=v.name, created_at=v.created_at))
                session.flush()  # the version's foreign key needs the dataset row first
            row = _from_dataset_version(v)
            session.add(row)
            session.flush()
            return _to_dataset_version(row)

        return self._write(add)

    def get_dataset_version(self, name: str, version: str | None = None) -> DatasetVersion:
        """One version of a dataset: by full id, by a unique id prefix of at least 6 characters,
        or the latest (by ``created_at``) when ``version`` is None."""
        with self._read() as session:
            self._require_dataset(session, name)
            query = select(DatasetVersionRow).where(DatasetVersionRow.name == name)
            if version is None:
                row = session.scalars(
                    query.order_by(DatasetVersionRow.created_at.desc(), DatasetVersionRow.id.desc())
                ).first()
                if row is None:
                    raise NotFound(f"dataset {name!r} has no versions")
                return _to_dataset_version(row)
            prefix = _check_version(version)
            rows = session.scalars(
                query.where(DatasetVersionRow.id.startswith(prefix, autoescape=True)).limit(11)
            ).all()
            if not rows:
                raise NotFound(
                    f"dataset {name!r}: version {version!r} not found",
                    details={"dataset": name, "version": version},
                )
            if len(rows) > 1:
                candidates = sorted(r.id[:12] for r in rows[:10])
                more = " and more" if len(rows) > 10 else ""
                raise InputError(
                    f"dataset {name!r}: version prefix {version!r} is ambiguous; it matches "
                    f"{', '.join(candidates)}{more}; give more characters",
                    details={"dataset": name, "version": version, "candidates": candidates},
                )
            return _to_dataset_version(rows[0])

    def list_dataset_versions(self, name: str | None = None) -> list[DatasetVersion]:
        """Versions of one dataset (or of all when ``name`` is None), newest first."""
        with self._read() as session:
            query = select(DatasetVersionRow)
            if name is not None:
                self._require_dataset(session, name)
                query = query.where(DatasetVersionRow.name == name)
            query = query.order_by(DatasetVersionRow.created_at.desc(), DatasetVersionRow.id.desc())
            return [_to_dataset_version(r) for r in session.scalars(query)]

    def list_datasets(self) -> list[str]:
        """Dataset names, sorted."""
        with self._read() as session:
            return list(session.scalars(select(DatasetRow.name).order_by(DatasetRow.name)))

    def _require_dataset(self, session: Session, name: str) -> None:
        if session.get(DatasetRow, name) is not None:
            return
        names = list(session.scalars(select(DatasetRow.name)))
        hint = nearest(name, names)
        raise NotFound(
            f"dataset {name!r} not found" + (f"; did you mean {hint!r}?" if hint else ""),
            details={"dataset": name, "nearest": hint},
        )

    # -- sessions -------------------------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    def _write(self, fn: Callable[[Session], T]) -> T:
        """Run ``fn`` in one write transaction, retried while SQLite says it is locked and once
        when a concurrent writer inserted the same key first (the retry then sees its row)."""

        def attempt() -> T:
            with Session(self._write_engine, expire_on_commit=False) as session, session.begin():
                return fn(session)

        try:
            return _retry_locked(attempt)
        except SqlIntegrityError:
            return _retry_locked(attempt)


def _check_version(version: str) -> str:
    prefix = version.lower()
    if not (MIN_PREFIX <= len(prefix) <= 64) or any(c not in "0123456789abcdef" for c in prefix):
        raise InputError(
            f"version {version!r}: not a version id; expected a hex id or a prefix of at least "
            f"{MIN_PREFIX} of its characters",
            details={"version": version},
        )
    return prefix


def _retry_locked(
    fn: Callable[[], T], *, tries: int = 10, first_delay: float = 0.01, max_delay: float = 1.0
) -> T:
    """Call ``fn``, retrying with exponential backoff while SQLite reports a locked database.

    >>> calls = []
    >>> def flaky():
    ...     calls.append(1)
    ...     if len(calls) < 3:
    ...         raise OperationalError("INSERT", {}, Exception("database is locked"))
    ...     return "ok"
    >>> _retry_locked(flaky, first_delay=0), len(calls)
    ('ok', 3)
    """
    for attempt in range(tries):
        try:
            return fn()
        except OperationalError as e:
            if "database is locked" not in str(e):
                raise
            if attempt == tries - 1:
                raise Overloaded(
                    f"the metadata database stayed locked after {tries} tries; another process "
                    "holds a long write transaction, retry later"
                ) from e
            delay = min(max_delay, first_delay * 2**attempt)
            log.debug("database is locked; retry %d in %.2fs", attempt + 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take BEGIN away from the sqlite3 driver (it skips it before SELECT and DDL);
        # on_begin below emits it, so every transaction is a real one.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=30000")  # first: switching to WAL may wait on a lock
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(_WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
