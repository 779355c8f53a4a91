"""Metadata in SQL (SQLite by default, PostgreSQL by URL), returned as domain objects.

The schema is the ORM classes below; alembic revisions in ``migrations/versions`` create it,
one revision per feature. A new noun (runs, model versions, aliases, ...) adds: a row class
here, a ``_to_*`` converter, methods on :class:`MetadataStore` that read through
``self._read()`` and write through ``self._write(fn)``, and one migration.

Nouns: datasets and their versions (revision 0001); training runs, models, model versions,
aliases and the audit trail of alias moves (revision 0002); API tokens, the prediction log and
feedback on predictions (revision 0003); quality-gate results stored with the candidate they
judged, and linked from the alias move they allowed (revision 0004). Model versions are numbered by the
store (1, 2, ... per model name); an alias (``production``, ``candidate``) points at one version
and every move of it is kept in ``alias_moves``. Writes that read-then-write one model's rows
(allocating a version, moving an alias) first lock that model's row, so they serialize per model
on PostgreSQL as they do on SQLite, where ``BEGIN IMMEDIATE`` serializes every writer.

JSON columns hold plain JSON: values are normalized through ``json`` on the way in, so what a
write returns equals what a later read returns; NaN and infinity are refused (PostgreSQL's
JSON type rejects them and SQLite would accept them: one rule for both).

In an encrypted workspace (docs/encryption.md) the one column of record content,
``predictions.input_text``, holds ``aifab-enc1:`` + the base64 of an envelope made by the
``cipher`` the store is given; the other columns are metadata and stay plain.

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

import base64
import binascii
import json
import logging
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar, cast, get_args

import sqlalchemy as sa
from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    String,
    Text,
    UniqueConstraint,
    event,
    func,
    select,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError as SqlIntegrityError
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from aifab.core.errors import AuthError, Conflict, InputError, IntegrityError, NotFound, Overloaded, nearest
from aifab.core.types import (
    AliasMove,
    DatasetVersion,
    Feedback,
    ModelVersion,
    Prediction,
    Role,
    Run,
    RunStatus,
    Token,
)
from aifab.store.artifacts import Cipher

log = logging.getLogger(__name__)

T = TypeVar("T")
MIGRATIONS = Path(__file__).with_name("migrations")
MIN_PREFIX = 6
RUN_STATUSES: tuple[str, ...] = get_args(RunStatus)
ROLES: tuple[str, ...] = get_args(Role)  # security.roles orders them; the store only checks them
LATEST = "latest"  # a reference meaning the newest version, so no alias may take this name
_HEX = frozenset("0123456789abcdef")
_ID_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyz-_")
# Model names appear in URLs (/v1/models/{name}:predict) and in refs (name@version).
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_ALIAS = re.compile(r"[a-z0-9_-]{1,40}")
_RUN_ID = re.compile(r"[a-z0-9_-]{6,64}")
_TOKEN_ID = re.compile(r"[0-9a-f]{12}")
_RECORD_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # prediction and feedback ids (uuid4 hex)
_SHA256 = re.compile(r"[0-9a-f]{64}")
# An encrypted value in a text column: this prefix, then the base64 of an envelope
# (aifab.security.crypto). A prefix, not a new column type: no migration, and a plaintext value
# in an encrypted store is told apart and refused.
_SEALED = "aifab-enc1:"
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


class ModelRow(Base):
    __tablename__ = "models"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    created_at: Mapped[datetime]
    task: Mapped[str] = mapped_column(String(100))


class RunRow(Base):
    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # Not a foreign key to models: a run exists before the model version it may register.
    model_name: Mapped[str] = mapped_column(String(200), index=True)
    dataset_version: Mapped[str] = mapped_column(ForeignKey("dataset_versions.id"))
    spec: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(index=True)
    updated_at: Mapped[datetime]
    seed: Mapped[int] = mapped_column(BigInteger)  # seeds go up to 2**63 - 1, past INTEGER
    code_version: Mapped[str] = mapped_column(Text)
    history: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    checkpoint: Mapped[str | None] = mapped_column(String(64))
    # Checked in code, not by a foreign key to model_versions: that one points back at runs.
    model_version: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(Text)


class ModelVersionRow(Base):
    __tablename__ = "model_versions"

    # The primary key (name, version) is the unique pair aliases point at.
    name: Mapped[str] = mapped_column(ForeignKey("models.name"), primary_key=True)
    version: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    files: Mapped[dict[str, Any]]
    task: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(index=True)
    run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id"), index=True)
    dataset_version: Mapped[str | None] = mapped_column(ForeignKey("dataset_versions.id"))
    parent: Mapped[int | None]
    metrics: Mapped[dict[str, Any]]
    description: Mapped[str] = mapped_column(Text)


class AliasRow(Base):
    __tablename__ = "aliases"
    __table_args__ = (
        ForeignKeyConstraint(
            ["name", "version"],
            ["model_versions.name", "model_versions.version"],
            name="fk_aliases_model_version",
        ),
    )

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    alias: Mapped[str] = mapped_column(String(40), primary_key=True)
    version: Mapped[int]


class AliasMoveRow(Base):
    __tablename__ = "alias_moves"

    # Moves of one model are written one at a time (its row is locked), so id order is move order.
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(ForeignKey("models.name"), index=True)
    alias: Mapped[str] = mapped_column(String(40))
    version: Mapped[int | None]  # None: the alias was deleted
    previous: Mapped[int | None]  # None: the alias was new
    moved_at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    # The gate result that allowed the move (promotions); None for moves made without a gate.
    gate_result_id: Mapped[int | None] = mapped_column(
        ForeignKey("gate_results.id", name="fk_alias_moves_gate_result")
    )


class GateResultRow(Base):
    __tablename__ = "gate_results"
    __table_args__ = (
        ForeignKeyConstraint(
            ["name", "version"],
            ["model_versions.name", "model_versions.version"],
            name="fk_gate_results_model_version",
        ),
        Index("ix_gate_results_name_version", "name", "version"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[int]
    passed: Mapped[bool]
    result: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]


@dataclass(frozen=True, slots=True)
class GateRecord:
    """A stored quality-gate verdict on one model version: ``result`` is the JSON form of
    :class:`aifab.evaluate.gates.GateResult` (the store keeps it opaque)."""

    id: int
    name: str
    version: int
    passed: bool
    result: dict[str, Any]
    created_at: datetime


class TokenRow(Base):
    __tablename__ = "tokens"
    __table_args__ = (
        # A name is unique among live tokens only: a revoked token's name can be issued again.
        Index(
            "uq_tokens_active_name",
            "name",
            unique=True,
            sqlite_where=sa.text("revoked_at IS NULL"),
            postgresql_where=sa.text("revoked_at IS NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(12), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(20))
    salt: Mapped[str] = mapped_column(String(64))
    secret_hash: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class PredictionRow(Base):
    __tablename__ = "predictions"
    __table_args__ = (Index("ix_predictions_model_name_created_at", "model_name", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # Not a foreign key to model_versions: logging a served answer must never fail on the
    # registry's state, and the log may outlive a model version.
    model_name: Mapped[str] = mapped_column(String(200))
    model_version: Mapped[int]
    created_at: Mapped[datetime]
    input_hash: Mapped[str] = mapped_column(String(64))
    label: Mapped[Any] = mapped_column(JSON, nullable=True)  # str, list of str, or a task's shape
    scores: Mapped[dict[str, Any]]
    latency_ms: Mapped[float]
    input_text: Mapped[str | None] = mapped_column(Text)
    input_blob: Mapped[str | None] = mapped_column(String(64))


class FeedbackRow(Base):
    __tablename__ = "feedback"
    __table_args__ = (Index("ix_feedback_model_name_created_at", "model_name", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # Indexed: list_predictions(without_feedback=True) looks feedback up by prediction.
    prediction_id: Mapped[str] = mapped_column(ForeignKey("predictions.id"), index=True)
    model_name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime]
    label: Mapped[str | None] = mapped_column(Text)
    labels: Mapped[list[str] | None] = mapped_column(JSON)
    correct: Mapped[bool | None]
    comment: Mapped[str] = mapped_column(Text)
    new_class: Mapped[bool]
    actor: Mapped[str] = mapped_column(Text)


def _utc(value: datetime) -> datetime:
    """Aware UTC, as a read from the database returns it (naive input is taken as UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _to_run(row: RunRow) -> Run:
    return Run(
        id=row.id,
        model_name=row.model_name,
        dataset_version=row.dataset_version,
        spec=row.spec,
        status=cast(RunStatus, row.status),
        created_at=_utc(row.created_at),
        updated_at=_utc(row.updated_at),
        seed=row.seed,
        code_version=row.code_version,
        history=tuple(row.history),
        checkpoint=row.checkpoint,
        model_version=row.model_version,
        error=row.error,
    )


def _to_model_version(row: ModelVersionRow, aliases: Sequence[str]) -> ModelVersion:
    return ModelVersion(
        name=row.name,
        version=row.version,
        files={str(k): str(v) for k, v in row.files.items()},
        task=row.task,
        created_at=_utc(row.created_at),
        run_id=row.run_id,
        dataset_version=row.dataset_version,
        parent=row.parent,
        metrics=row.metrics,
        aliases=tuple(sorted(aliases)),
        description=row.description,
    )


def _to_alias_move(row: AliasMoveRow) -> AliasMove:
    return AliasMove(
        name=row.name,
        alias=row.alias,
        version=row.version,
        previous=row.previous,
        moved_at=_utc(row.moved_at),
        actor=row.actor,
        reason=row.reason,
    )


def _to_gate_record(row: GateResultRow) -> GateRecord:
    return GateRecord(
        id=row.id,
        name=row.name,
        version=row.version,
        passed=row.passed,
        result=row.result,
        created_at=_utc(row.created_at),
    )


def _to_token(row: TokenRow) -> Token:
    return Token(
        id=row.id,
        name=row.name,
        role=cast(Role, row.role),
        salt=row.salt,
        secret_hash=row.secret_hash,
        created_at=_utc(row.created_at),
        revoked_at=None if row.revoked_at is None else _utc(row.revoked_at),
    )


def _to_prediction(row: PredictionRow, cipher: Cipher | None = None) -> Prediction:
    return Prediction(
        id=row.id,
        model_name=row.model_name,
        model_version=row.model_version,
        created_at=_utc(row.created_at),
        input_hash=row.input_hash,
        label=row.label,
        scores=row.scores,
        latency_ms=row.latency_ms,
        input_text=_open_text(row.input_text, cipher, row.id),
        input_blob=row.input_blob,
    )


def _text_aad(prediction_id: str) -> bytes:
    # Binds the ciphertext to its row: one prediction's text cannot be moved into another's.
    return f"predictions/{prediction_id}/input_text".encode()


def _seal_text(text: str | None, cipher: Cipher | None, prediction_id: str) -> str | None:
    if text is None or cipher is None:
        return text
    sealed = cipher.encrypt(text.encode("utf-8"), _text_aad(prediction_id))
    return _SEALED + base64.b64encode(sealed).decode("ascii")


def _open_text(value: str | None, cipher: Cipher | None, prediction_id: str) -> str | None:
    if value is None or cipher is None:
        return value
    return _on_sealed(value, prediction_id, lambda e: cipher.decrypt(e, _text_aad(prediction_id))).decode("utf-8")


def _on_sealed(value: str, prediction_id: str, fn: Callable[[bytes], T]) -> T:
    """``fn`` of the envelope in a sealed column value; errors name the prediction and field."""
    where = f"prediction {prediction_id!r}, field 'input_text'"
    if not value.startswith(_SEALED):
        raise IntegrityError(f"{where}: stored in plaintext in an encrypted workspace", details={"prediction": prediction_id})
    try:
        return fn(base64.b64decode(value[len(_SEALED) :], validate=True))
    except binascii.Error:
        raise IntegrityError(f"{where}: not valid base64; the value was altered", details={"prediction": prediction_id}) from None
    except (IntegrityError, AuthError) as exc:
        raise type(exc)(f"{where}: {exc.message}", details={"prediction": prediction_id, **exc.details}) from None


def _to_feedback(row: FeedbackRow) -> Feedback:
    return Feedback(
        id=row.id,
        prediction_id=row.prediction_id,
        model_name=row.model_name,
        created_at=_utc(row.created_at),
        label=row.label,
        labels=None if row.labels is None else tuple(row.labels),
        correct=row.correct,
        comment=row.comment,
        new_class=row.new_class,
        actor=row.actor,
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

    def __init__(self, url: str, *, cipher: Cipher | None = None) -> None:
        self.url = url
        # Encrypts logged text inputs (the one column of record content); see docs/encryption.md.
        self.cipher = cipher
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
            row = _one_by_prefix(
                session,
                query,
                DatasetVersionRow.id,
                _check_prefix(version, kind="version", chars=_HEX, expected="a hex id"),
                what=f"dataset {name!r}: version",
                given=version,
                details={"dataset": name, "version": version},
            )
            return _to_dataset_version(row)

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

    # -- runs -----------------------------------------------------------------------------

    def create_run(self, run: Run) -> Run:
        """Record a new training run. Its dataset version must be recorded already.

        InputError for a malformed id, model name, status or seed, or a spec that is not plain
        JSON; Conflict if the id is taken; NotFound if the dataset version is unknown.

        >>> store = MetadataStore("sqlite://")
        >>> store.migrate()
        >>> _ = store.add_dataset_version(DatasetVersion(
        ...     id="ab" * 32, name="sms", manifest="cd" * 32, report="ef" * 32, parent=None,
        ...     created_at=datetime(2024, 1, 1, tzinfo=timezone.utc), num_records=3,
        ...     split_counts={"train": 3}, label_counts={"ham": 3}, fields=("text", "category")))
        >>> at = datetime(2024, 1, 2, tzinfo=timezone.utc)
        >>> run = store.create_run(Run(id="run-0001", model_name="sms", dataset_version="ab" * 32,
        ...     spec={"epochs": 2}, status="running", created_at=at, updated_at=at, seed=0,
        ...     code_version="abc1234"))
        >>> store.get_run("run-00").spec
        {'epochs': 2}
        >>> store.dispose()
        """
        if not _RUN_ID.fullmatch(run.id):
            raise InputError(
                f"run id {run.id!r}: expected 6 to 64 lowercase letters, digits, '-' or '_'",
                details={"run": run.id},
            )
        _check_model_name(run.model_name)
        _check_status(run.status)
        if (
            isinstance(run.seed, bool)
            or not isinstance(run.seed, int)
            or not (-(2**63) <= run.seed < 2**63)
        ):
            raise InputError(
                f"run {run.id!r}: seed {run.seed!r} is not a 64-bit integer",
                details={"run": run.id},
            )
        spec = _plain_json(f"run {run.id!r}, field 'spec'", run.spec, dict)
        history = _plain_json(f"run {run.id!r}, field 'history'", list(run.history), list)

        def create(session: Session) -> Run:
            if session.get(RunRow, run.id) is not None:
                raise Conflict(f"run {run.id!r} exists already", details={"run": run.id})
            if session.get(DatasetVersionRow, run.dataset_version) is None:
                raise NotFound(
                    f"run {run.id!r}: dataset version {run.dataset_version!r} not found",
                    details={"run": run.id, "dataset_version": run.dataset_version},
                )
            row = RunRow(
                id=run.id,
                model_name=run.model_name,
                dataset_version=run.dataset_version,
                spec=spec,
                status=run.status,
                created_at=run.created_at,
                updated_at=run.updated_at,
                seed=run.seed,
                code_version=run.code_version,
                history=history,
                checkpoint=run.checkpoint,
                model_version=run.model_version,
                error=run.error,
            )
            if run.model_version is not None:
                self._require_model_version(session, run.model_name, run.model_version)
            session.add(row)
            session.flush()
            return _to_run(row)

        return self._write(create)

    def update_run(
        self,
        run_id: str,
        *,
        status: RunStatus | None = None,
        history: Sequence[dict[str, Any]] | None = None,
        checkpoint: str | None = None,
        model_version: int | None = None,
        error: str | None = None,
    ) -> Run:
        """Change the given fields of a run (None leaves a field as it is) and set its
        ``updated_at`` to now (UTC). ``history`` replaces the whole history. ``run_id`` is
        resolved as in :meth:`get_run`. ``model_version`` must be a recorded version of the
        run's model (NotFound otherwise).

        >>> store = MetadataStore("sqlite://")
        >>> store.migrate()
        >>> _ = store.add_dataset_version(DatasetVersion(
        ...     id="ab" * 32, name="sms", manifest="cd" * 32, report="ef" * 32, parent=None,
        ...     created_at=datetime(2024, 1, 1, tzinfo=timezone.utc), num_records=3,
        ...     split_counts={"train": 3}, label_counts={"ham": 3}, fields=("text", "category")))
        >>> at = datetime(2024, 1, 2, tzinfo=timezone.utc)
        >>> _ = store.create_run(Run(id="run-0001", model_name="sms", dataset_version="ab" * 32,
        ...     spec={}, status="running", created_at=at, updated_at=at, seed=0, code_version=""))
        >>> run = store.update_run("run-0001", status="finished", history=[{"loss": 0.5}])
        >>> run.status, run.history, run.updated_at > at
        ('finished', ({'loss': 0.5},), True)
        >>> store.dispose()
        """
        if status is not None:
            _check_status(status)
        new_history = None
        if history is not None:
            new_history = _plain_json(f"run {run_id!r}, field 'history'", list(history), list)

        def update(session: Session) -> Run:
            row = self._find_run(session, run_id)
            if model_version is not None:
                self._require_model_version(session, row.model_name, model_version)
                row.model_version = model_version
            if status is not None:
                row.status = status
            if new_history is not None:
                row.history = new_history
            if checkpoint is not None:
                row.checkpoint = checkpoint
            if error is not None:
                row.error = error
            row.updated_at = datetime.now(timezone.utc)
            session.flush()
            return _to_run(row)

        return self._write(update)

    def get_run(self, run_id: str) -> Run:
        """A run by its full id or a unique prefix of at least 6 characters.

        NotFound when nothing matches; InputError when the prefix is too short, malformed
        or matches several runs (they are listed).
        """
        with self._read() as session:
            return _to_run(self._find_run(session, run_id))

    def list_runs(self, model_name: str | None = None) -> list[Run]:
        """Runs (of one model when ``model_name`` is given), newest (by ``created_at``) first.

        A model name that no run and no model version carries is NotFound (a typo), with the
        nearest known name; a registered model without runs gives ``[]``.
        """
        with self._read() as session:
            query = select(RunRow)
            if model_name is not None:
                query = query.where(RunRow.model_name == model_name)
            query = query.order_by(RunRow.created_at.desc(), RunRow.id.desc())
            rows = session.scalars(query).all()
            if not rows and model_name is not None and session.get(ModelRow, model_name) is None:
                known = set(session.scalars(select(ModelRow.name)))
                known |= set(session.scalars(select(RunRow.model_name).distinct()))
                hint = nearest(model_name, sorted(known))
                raise NotFound(
                    f"model {model_name!r} has no runs and no versions"
                    + (f"; did you mean {hint!r}?" if hint else ""),
                    details={"model": model_name, "nearest": hint},
                )
            return [_to_run(r) for r in rows]

    def _find_run(self, session: Session, run_id: str) -> RunRow:
        prefix = _check_prefix(
            run_id, kind="run", chars=_ID_CHARS, expected="lowercase letters, digits, '-', '_'"
        )
        row = session.get(RunRow, prefix)
        if row is not None:  # a full id that is also a prefix of a longer one is not ambiguous
            return row
        return _one_by_prefix(
            session,
            select(RunRow),
            RunRow.id,
            prefix,
            what="run",
            given=run_id,
            details={"run": run_id},
        )

    # -- model versions -------------------------------------------------------------------

    def add_model_version(self, mv: ModelVersion) -> ModelVersion:
        """Register a model version; the store numbers it (the ``version`` passed is ignored):
        1 for a new model name, else one past the highest, also under concurrent writers.

        The model's task is fixed by its first version: a version of another task is a
        Conflict. ``run_id``, ``dataset_version`` and ``parent`` (a version of the same model)
        must be recorded (NotFound otherwise). ``aliases`` passed in are ignored: set them
        with :meth:`set_alias`.

        >>> store = MetadataStore("sqlite://")
        >>> store.migrate()
        >>> at = datetime(2024, 1, 1, tzinfo=timezone.utc)
        >>> mv = ModelVersion(name="sms", version=0, files={"weights.safetensors": "ab" * 32},
        ...                   task="text-classification", created_at=at)
        >>> store.add_model_version(mv).version, store.add_model_version(mv).version
        (1, 2)
        >>> store.list_models()
        ['sms']
        >>> store.dispose()
        """
        _check_model_name(mv.name)
        if not (isinstance(mv.task, str) and 0 < len(mv.task) <= 100):
            raise InputError(
                f"model {mv.name!r}: task {mv.task!r} must be a name of 1 to 100 characters",
                details={"model": mv.name},
            )
        where = f"model {mv.name!r}"
        files = _plain_json(f"{where}, field 'files'", mv.files, dict)
        if not all(isinstance(v, str) for v in files.values()):
            raise InputError(
                f"{where}, field 'files': values must be artifact digests (strings)",
                details={"model": mv.name},
            )
        metrics = _plain_json(f"{where}, field 'metrics'", mv.metrics, dict)

        def add(session: Session) -> ModelVersion:
            model = self._lock_model(session, mv.name)
            if model is None:
                # A concurrent first version of the same name makes this insert fail; _write
                # then retries once, and the retry finds (and locks) the other's row.
                session.add(ModelRow(name=mv.name, created_at=mv.created_at, task=mv.task))
                session.flush()
            elif model.task != mv.task:
                raise Conflict(
                    f"{where} is a {model.task!r} model; cannot add a {mv.task!r} version to it",
                    details={"model": mv.name, "task": model.task},
                )
            if mv.parent is not None:
                self._require_model_version(session, mv.name, mv.parent)
            if mv.run_id is not None and session.get(RunRow, mv.run_id) is None:
                raise NotFound(f"{where}: run {mv.run_id!r} not found", details={"run": mv.run_id})
            if (
                mv.dataset_version is not None
                and session.get(DatasetVersionRow, mv.dataset_version) is None
            ):
                raise NotFound(
                    f"{where}: dataset version {mv.dataset_version!r} not found",
                    details={"dataset_version": mv.dataset_version},
                )
            latest = session.scalar(
                select(func.max(ModelVersionRow.version)).where(ModelVersionRow.name == mv.name)
            )
            row = ModelVersionRow(
                name=mv.name,
                version=(latest or 0) + 1,
                files=files,
                task=mv.task,
                created_at=mv.created_at,
                run_id=mv.run_id,
                dataset_version=mv.dataset_version,
                parent=mv.parent,
                metrics=metrics,
                description=mv.description,
            )
            session.add(row)
            session.flush()
            return _to_model_version(row, ())

        return self._write(add)

    def get_model_version(self, name: str, ref: str | int | None = None) -> ModelVersion:
        """One version of a model. ``ref`` is None or ``"latest"`` (the highest version), a
        version number (an int or a string of digits), or an alias name resolved through the
        aliases. The result's ``aliases`` are those pointing at it now.

        NotFound for an unknown model (naming the nearest model), version (listing the
        versions) or alias (listing the aliases).

        >>> store = MetadataStore("sqlite://")
        >>> store.migrate()
        >>> at = datetime(2024, 1, 1, tzinfo=timezone.utc)
        >>> for _ in range(3):
        ...     _ = store.add_model_version(ModelVersion(name="sms", version=0, files={},
        ...                                              task="text-classification", created_at=at))
        >>> _ = store.set_alias("sms", "production", 2)
        >>> [store.get_model_version("sms", r).version for r in (None, 1, "3", "production")]
        [3, 1, 3, 2]
        >>> store.get_model_version("sms", 2).aliases
        ('production',)
        >>> store.dispose()
        """
        with self._read() as session:
            self._require_model(session, name)
            version = self._resolve_ref(session, name, ref)
            row = self._require_model_version(session, name, version)
            return _to_model_version(row, self._aliases_of(session, name).get(version, []))

    def list_model_versions(self, name: str | None = None) -> list[ModelVersion]:
        """Versions of one model (highest first) or of all models (newest ``created_at``
        first), each with the aliases pointing at it."""
        with self._read() as session:
            query = select(ModelVersionRow)
            alias_query = select(AliasRow)
            if name is not None:
                self._require_model(session, name)
                query = query.where(ModelVersionRow.name == name)
                alias_query = alias_query.where(AliasRow.name == name)
                query = query.order_by(ModelVersionRow.version.desc())
            else:
                query = query.order_by(
                    ModelVersionRow.created_at.desc(),
                    ModelVersionRow.name,
                    ModelVersionRow.version.desc(),
                )
            aliases: dict[tuple[str, int], list[str]] = {}
            for a in session.scalars(alias_query):
                aliases.setdefault((a.name, a.version), []).append(a.alias)
            return [
                _to_model_version(r, aliases.get((r.name, r.version), []))
                for r in session.scalars(query)
            ]

    def list_models(self) -> list[str]:
        """Model names (those with at least one version), sorted."""
        with self._read() as session:
            return list(session.scalars(select(ModelRow.name).order_by(ModelRow.name)))

    # -- aliases --------------------------------------------------------------------------

    def set_alias(
        self,
        name: str,
        alias: str,
        version: int,
        *,
        actor: str = "",
        reason: str = "",
        gate_result_id: int | None = None,
    ) -> AliasMove:
        """Point ``alias`` of model ``name`` at ``version`` and record the move (with the
        version it pointed at before) in the same transaction. Every call is recorded, also
        one that leaves the alias where it was (then ``previous == version``).
        ``gate_result_id`` links the move to the gate result (of that very version) that
        allowed it; :meth:`audit_trail` returns the two together.

        InputError for a malformed alias (1 to 40 lowercase letters, digits, '-' or '_', not
        only digits, not ``latest``) or a gate result of another version; NotFound for an
        unknown model, version or gate result.

        >>> store = MetadataStore("sqlite://")
        >>> store.migrate()
        >>> at = datetime(2024, 1, 1, tzinfo=timezone.utc)
        >>> for _ in range(2):
        ...     _ = store.add_model_version(ModelVersion(name="sms", version=0, files={},
        ...                                              task="text-classification", created_at=at))
        >>> store.set_alias("sms", "production", 1).previous is None
        True
        >>> move = store.set_alias("sms", "production", 2, actor="ana", reason="gate passed")
        >>> (move.previous, move.version), store.aliases("sms")
        ((1, 2), {'production': 2})
        >>> store.dispose()
        """
        _check_alias(alias)
        if isinstance(version, bool) or not isinstance(version, int):
            raise InputError(
                f"model {name!r}, alias {alias!r}: version {version!r} is not a version number",
                details={"model": name, "alias": alias},
            )

        def move(session: Session) -> AliasMove:
            if self._lock_model(session, name) is None:
                self._require_model(session, name)
            self._require_model_version(session, name, version)
            if gate_result_id is not None:
                self._require_gate_result_of(session, gate_result_id, name, version)
            current = session.get(AliasRow, (name, alias))
            previous = None if current is None else current.version
            if current is None:
                session.add(AliasRow(name=name, alias=alias, version=version))
            else:
                current.version = version
            return self._record_move(
                session, name, alias, version, previous, actor, reason, gate_result_id
            )

        return self._write(move)

    def delete_alias(
        self, name: str, alias: str, *, actor: str = "", reason: str = ""
    ) -> AliasMove:
        """Remove an alias and record the move (``version`` None, ``previous`` the version it
        pointed at). NotFound for an unknown model or alias (listing the aliases)."""

        def delete(session: Session) -> AliasMove:
            if self._lock_model(session, name) is None:
                self._require_model(session, name)
            current = session.get(AliasRow, (name, alias))
            if current is None:
                raise self._alias_not_found(session, name, alias)
            previous = current.version
            session.delete(current)
            return self._record_move(session, name, alias, None, previous, actor, reason)

        return self._write(delete)

    def alias_history(self, name: str | None = None, alias: str | None = None) -> list[AliasMove]:
        """Every recorded alias move (of one model, of one alias name), newest first."""
        with self._read() as session:
            query = select(AliasMoveRow)
            if name is not None:
                self._require_model(session, name)
                query = query.where(AliasMoveRow.name == name)
            if alias is not None:
                query = query.where(AliasMoveRow.alias == alias)
            query = query.order_by(AliasMoveRow.id.desc())
            return [_to_alias_move(r) for r in session.scalars(query)]

    def aliases(self, name: str) -> dict[str, int]:
        """The aliases of a model and the version each points at, by alias name."""
        with self._read() as session:
            self._require_model(session, name)
            rows = session.scalars(
                select(AliasRow).where(AliasRow.name == name).order_by(AliasRow.alias)
            )
            return {r.alias: r.version for r in rows}

    def audit_trail(
        self, name: str | None = None, alias: str | None = None
    ) -> list[tuple[AliasMove, GateRecord | None]]:
        """Every alias move (of one model, of one alias name), newest first, each with the gate
        result linked to it (None for moves made without a gate)."""
        with self._read() as session:
            query = select(AliasMoveRow, GateResultRow).outerjoin(
                GateResultRow, AliasMoveRow.gate_result_id == GateResultRow.id
            )
            if name is not None:
                self._require_model(session, name)
                query = query.where(AliasMoveRow.name == name)
            if alias is not None:
                query = query.where(AliasMoveRow.alias == alias)
            query = query.order_by(AliasMoveRow.id.desc())
            return [
                (_to_alias_move(move), None if gate is None else _to_gate_record(gate))
                for move, gate in session.execute(query)
            ]

    # -- gate results ---------------------------------------------------------------------

    def add_gate_result(
        self,
        name: str,
        version: int,
        result: dict[str, Any],
        *,
        passed: bool,
        created_at: datetime | None = None,
    ) -> int:
        """Store a quality-gate verdict on model version ``name@version`` and return its id.

        ``result`` is plain JSON (NaN and infinity are refused). NotFound for an unknown model
        or version.

        >>> store = MetadataStore("sqlite://")
        >>> store.migrate()
        >>> at = datetime(2024, 1, 1, tzinfo=timezone.utc)
        >>> _ = store.add_model_version(ModelVersion(name="sms", version=0, files={},
        ...                                          task="text-classification", created_at=at))
        >>> gid = store.add_gate_result("sms", 1, {"passed": True, "checks": []}, passed=True)
        >>> move = store.set_alias("sms", "production", 1, actor="ana", gate_result_id=gid)
        >>> [(m.version, g.passed) for m, g in store.audit_trail("sms")]
        [(1, True)]
        >>> store.dispose()
        """
        if not isinstance(passed, bool):
            raise InputError(f"gate result of {name}@{version}: 'passed' must be true or false")
        plain = _plain_json(f"gate result of {name}@{version}", result, dict)
        when = created_at or datetime.now(timezone.utc)

        def add(session: Session) -> int:
            self._require_model_version(session, name, version)
            row = GateResultRow(
                name=name, version=version, passed=passed, result=plain, created_at=when
            )
            session.add(row)
            session.flush()
            return row.id

        return self._write(add)

    def get_gate_result(self, gate_result_id: int) -> GateRecord:
        """One gate result by id; NotFound when there is none."""
        with self._read() as session:
            row = session.get(GateResultRow, gate_result_id)
            if row is None:
                raise NotFound(
                    f"gate result {gate_result_id!r} not found",
                    details={"gate_result": gate_result_id},
                )
            return _to_gate_record(row)

    def list_gate_results(self, name: str, version: int | None = None) -> list[GateRecord]:
        """The gate results of a model (of one version), newest first. NotFound for an unknown
        model."""
        with self._read() as session:
            self._require_model(session, name)
            query = select(GateResultRow).where(GateResultRow.name == name)
            if version is not None:
                query = query.where(GateResultRow.version == version)
            query = query.order_by(GateResultRow.id.desc())
            return [_to_gate_record(r) for r in session.scalars(query)]

    # -- API tokens -----------------------------------------------------------------------

    def add_token(self, token: Token) -> Token:
        """Record an API token: its id, name, role and the salted hash of its secret (the
        plaintext never reaches the store; ``security.tokens.issue_token`` makes both).

        InputError for a malformed id (12 hex characters) or name, an unknown role or an empty
        salt or hash; Conflict if the id is taken or a live (not revoked) token has the name.

        >>> store = MetadataStore("sqlite://")
        >>> store.migrate()
        >>> at = datetime(2024, 1, 1, tzinfo=timezone.utc)
        >>> t = store.add_token(Token(id="0123456789ab", name="ci", role="client", salt="00",
        ...                           secret_hash="scrypt$14$8$1$ff", created_at=at))
        >>> store.get_token("0123456789ab") == t, store.revoke_token("ci").revoked_at is not None
        (True, True)
        >>> store.dispose()
        """
        if not (isinstance(token.id, str) and _TOKEN_ID.fullmatch(token.id)):
            raise InputError(
                f"token id {_shown(token.id)}: expected 12 lowercase hex characters",
                details={"token": _shown(token.id)},
            )
        _check_token_name(token.name)
        if token.role not in ROLES:
            hint = nearest(str(token.role), list(ROLES))
            raise InputError(
                f"token {token.name!r}: role {token.role!r} unknown; expected one of {list(ROLES)}"
                + (f" (did you mean {hint!r}?)" if hint else ""),
                details={"token": token.id, "role": token.role},
            )
        if not token.salt or not token.secret_hash:
            raise InputError(
                f"token {token.name!r}: salt and secret_hash must not be empty",
                details={"token": token.id},
            )

        def add(session: Session) -> Token:
            if session.get(TokenRow, token.id) is not None:
                raise Conflict(f"token {token.id} exists already", details={"token": token.id})
            live = self._live_token(session, token.name)
            if live is not None:
                raise Conflict(
                    f"token name {token.name!r} is taken by live token {live.id}; revoke that one "
                    "first or choose another name",
                    details={"token": live.id, "name": token.name},
                )
            row = TokenRow(
                id=token.id,
                name=token.name,
                role=token.role,
                salt=token.salt,
                secret_hash=token.secret_hash,
                created_at=token.created_at,
                revoked_at=token.revoked_at,
            )
            session.add(row)
            session.flush()
            return _to_token(row)

        return self._write(add)

    def get_token(self, token_id: str) -> Token:
        """A token (live or revoked) by its 12-hex id; NotFound when there is none."""
        with self._read() as session:
            row = session.get(TokenRow, token_id) if isinstance(token_id, str) else None
            if row is None:
                raise NotFound(
                    f"token {_shown(token_id)} not found", details={"token": _shown(token_id)}
                )
            return _to_token(row)

    def list_tokens(self) -> list[Token]:
        """Every token, revoked ones included, newest first."""
        with self._read() as session:
            query = select(TokenRow).order_by(TokenRow.created_at.desc(), TokenRow.id)
            return [_to_token(r) for r in session.scalars(query)]

    def revoke_token(self, name_or_id: str) -> Token:
        """Revoke a token given by its id, or by the name of a live token; return it with
        ``revoked_at`` set. Revoking a revoked token (by id) returns it unchanged. NotFound
        (naming the nearest live name) when nothing matches."""

        def revoke(session: Session) -> Token:
            row = None
            if isinstance(name_or_id, str) and _TOKEN_ID.fullmatch(name_or_id):
                row = session.get(TokenRow, name_or_id)
            if row is None:
                row = self._live_token(session, name_or_id)
            if row is None:
                live = list(
                    session.scalars(select(TokenRow.name).where(TokenRow.revoked_at.is_(None)))
                )
                hint = nearest(str(name_or_id), live)
                raise NotFound(
                    f"token {_shown(name_or_id)}: no token with that id and no live token with "
                    "that name" + (f"; did you mean {hint!r}?" if hint else ""),
                    details={"token": _shown(name_or_id), "nearest": hint},
                )
            if row.revoked_at is None:
                row.revoked_at = datetime.now(timezone.utc)
                session.flush()
            return _to_token(row)

        return self._write(revoke)

    @staticmethod
    def _live_token(session: Session, name: str) -> TokenRow | None:
        query = select(TokenRow).where(TokenRow.name == name, TokenRow.revoked_at.is_(None))
        return session.scalars(query).first()

    # -- prediction log -------------------------------------------------------------------

    def add_predictions(self, predictions: Sequence[Prediction]) -> None:
        """Record served predictions, all in ONE transaction: the server's group commit (one
        commit per inference batch, not per request). All are written or none: a bad or
        already recorded one fails the whole batch.

        InputError for a malformed field (naming the prediction and field) or an id twice in
        the batch; Conflict (listing the ids) for ids recorded already.

        >>> store = MetadataStore("sqlite://")
        >>> store.migrate()
        >>> at = datetime(2024, 1, 1, tzinfo=timezone.utc)
        >>> store.add_predictions([Prediction(id=f"p{i}", model_name="sms", model_version=1,
        ...     created_at=at, input_hash="ab" * 32, label="spam", scores={"spam": 0.9, "ham": 0.1},
        ...     latency_ms=3.5, input_text="WIN now") for i in range(3)])
        >>> store.count_predictions("sms"), store.get_prediction("p1").label
        (3, 'spam')
        >>> store.dispose()
        """
        values = [_prediction_values(p, self.cipher) for p in predictions]
        if not values:
            return
        ids = [v["id"] for v in values]
        if len(set(ids)) != len(ids):
            twice = sorted({i for i in ids if ids.count(i) > 1})
            raise InputError(
                f"predictions: ids given more than once in one batch: {', '.join(twice[:10])}",
                details={"predictions": twice},
            )

        def add(session: Session) -> None:
            # Core executemany of one prepared INSERT: no ORM unit of work per row.
            session.execute(cast(sa.Table, PredictionRow.__table__).insert(), values)

        try:
            self._write(add)
        except SqlIntegrityError as e:
            with self._read() as session:
                query = select(PredictionRow.id).where(PredictionRow.id.in_(ids))
                taken = sorted(session.scalars(query))
            raise Conflict(
                f"predictions recorded already: {', '.join(taken[:10])}"
                + (" and more" if len(taken) > 10 else ""),
                details={"predictions": taken},
            ) from e

    def get_prediction(self, prediction_id: str) -> Prediction:
        """One logged prediction by id; NotFound when there is none."""
        with self._read() as session:
            row = session.get(PredictionRow, prediction_id)
            if row is None:
                raise NotFound(
                    f"prediction {prediction_id!r} not found",
                    details={"prediction": prediction_id},
                )
            return _to_prediction(row, self.cipher)

    def list_predictions(
        self,
        model_name: str,
        *,
        since: datetime | None = None,
        limit: int = 1000,
        without_feedback: bool = False,
    ) -> list[Prediction]:
        """Predictions of one model, newest first: at most ``limit``, those at or after
        ``since``, and only those nobody gave feedback on yet with ``without_feedback``
        (the review queue). A model with no predictions gives ``[]``."""
        _check_limit(limit)
        with self._read() as session:
            query = select(PredictionRow).where(PredictionRow.model_name == model_name)
            if since is not None:
                query = query.where(PredictionRow.created_at >= since)
            if without_feedback:
                answered = sa.exists().where(FeedbackRow.prediction_id == PredictionRow.id)
                query = query.where(~answered)
            query = query.order_by(PredictionRow.created_at.desc(), PredictionRow.id.desc())
            return [_to_prediction(r, self.cipher) for r in session.scalars(query.limit(limit))]

    def count_predictions(self, model_name: str) -> int:
        """How many predictions of one model are logged."""
        with self._read() as session:
            query = select(func.count()).where(PredictionRow.model_name == model_name)
            return int(session.scalar(query) or 0)

    def rewrap_prediction_inputs(self, rewrap: Callable[[bytes], bytes | None], *, batch_size: int = 500) -> int:
        """Pass the envelope of every encrypted logged text input through ``rewrap`` and store
        what it returns (None: keep it), one transaction per ``batch_size`` rows; return how many
        rows changed. Key rotation goes through here; the store never sees a key.

        >>> store = MetadataStore("sqlite://")
        >>> store.migrate()
        >>> store.rewrap_prediction_inputs(lambda envelope: None)
        0
        >>> store.dispose()
        """
        changed, after = 0, ""
        while True:
            with self._read() as session:
                query = (
                    select(PredictionRow.id, PredictionRow.input_text)
                    .where(PredictionRow.input_text.startswith(_SEALED, autoescape=True), PredictionRow.id > after)
                    .order_by(PredictionRow.id)
                    .limit(batch_size)
                )
                rows = session.execute(query).all()
            if not rows:
                return changed
            after = rows[-1].id
            updates = []
            for row in rows:
                new = _on_sealed(row.input_text, row.id, rewrap)
                if new is not None:
                    updates.append({"row_id": row.id, "value": _SEALED + base64.b64encode(new).decode("ascii")})
            if updates:
                table = cast(sa.Table, PredictionRow.__table__)
                statement = table.update().where(table.c.id == sa.bindparam("row_id")).values(input_text=sa.bindparam("value"))
                self._write(lambda session: session.execute(statement, updates))
                changed += len(updates)

    # -- feedback -------------------------------------------------------------------------

    def add_feedback(self, fb: Feedback) -> Feedback:
        """Record feedback on a logged prediction of ``fb.model_name``.

        NotFound ("prediction <id> not found for model <name>") when the prediction is not
        logged or belongs to another model, and nothing is written; InputError unless exactly
        one of ``label``, ``labels``, ``correct`` is given; Conflict if the id is taken. The
        checks against known labels live in ``feedback.intake``, which knows the model.

        >>> store = MetadataStore("sqlite://")
        >>> store.migrate()
        >>> at = datetime(2024, 1, 1, tzinfo=timezone.utc)
        >>> store.add_predictions([Prediction(id="p1", model_name="sms", model_version=1,
        ...     created_at=at, input_hash="ab" * 32, label="spam", scores={}, latency_ms=1.0)])
        >>> fb = store.add_feedback(Feedback(id="f1", prediction_id="p1", model_name="sms",
        ...                                  created_at=at, label="ham", actor="ana"))
        >>> store.list_feedback("sms") == [fb], store.list_predictions("sms", without_feedback=True)
        (True, [])
        >>> store.dispose()
        """
        where = f"feedback {fb.id!r}"
        if not (isinstance(fb.id, str) and _RECORD_ID.fullmatch(fb.id)):
            raise InputError(f"{where}: id must be 1 to 64 letters, digits, '-' or '_'")
        given = [n for n in ("label", "labels", "correct") if getattr(fb, n) is not None]
        if len(given) != 1:
            raise InputError(
                f"{where}: give exactly one of label, labels, correct; got "
                + (", ".join(given) if given else "none"),
                details={"feedback": fb.id, "given": given},
            )
        labels = None
        if fb.labels is not None:
            if isinstance(fb.labels, str) or not all(isinstance(x, str) for x in fb.labels):
                raise InputError(f"{where}, field 'labels': expected a list of strings")
            labels = list(fb.labels)

        def add(session: Session) -> Feedback:
            owner = session.scalar(
                select(PredictionRow.model_name).where(PredictionRow.id == fb.prediction_id)
            )
            if owner is None or owner != fb.model_name:
                raise NotFound(
                    f"prediction {fb.prediction_id!r} not found for model {fb.model_name!r}",
                    details={"prediction": fb.prediction_id, "model": fb.model_name},
                )
            if session.get(FeedbackRow, fb.id) is not None:
                raise Conflict(f"{where} exists already", details={"feedback": fb.id})
            row = FeedbackRow(
                id=fb.id,
                prediction_id=fb.prediction_id,
                model_name=fb.model_name,
                created_at=fb.created_at,
                label=fb.label,
                labels=labels,
                correct=fb.correct,
                comment=fb.comment,
                new_class=fb.new_class,
                actor=fb.actor,
            )
            session.add(row)
            session.flush()
            return _to_feedback(row)

        return self._write(add)

    def get_feedback(self, feedback_id: str) -> Feedback:
        """One feedback by id; NotFound when there is none."""
        with self._read() as session:
            row = session.get(FeedbackRow, feedback_id)
            if row is None:
                raise NotFound(
                    f"feedback {feedback_id!r} not found", details={"feedback": feedback_id}
                )
            return _to_feedback(row)

    def list_feedback(
        self, model_name: str | None = None, *, since: datetime | None = None, limit: int = 1000
    ) -> list[Feedback]:
        """Feedback (on one model's predictions when ``model_name`` is given), newest first, at
        most ``limit``, those at or after ``since``."""
        _check_limit(limit)
        with self._read() as session:
            query = select(FeedbackRow)
            if model_name is not None:
                query = query.where(FeedbackRow.model_name == model_name)
            if since is not None:
                query = query.where(FeedbackRow.created_at >= since)
            query = query.order_by(FeedbackRow.created_at.desc(), FeedbackRow.id.desc())
            return [_to_feedback(r) for r in session.scalars(query.limit(limit))]

    # -- model helpers --------------------------------------------------------------------

    def _lock_model(self, session: Session, name: str) -> ModelRow | None:
        """The model's row, locked until the transaction ends, so writers that read and then
        write that model's rows take turns. (SQLite has no FOR UPDATE and needs none: there
        BEGIN IMMEDIATE already lets one writer in at a time.)"""
        return session.scalars(
            select(ModelRow).where(ModelRow.name == name).with_for_update()
        ).first()

    def _require_model(self, session: Session, name: str) -> None:
        if session.get(ModelRow, name) is not None:
            return
        hint = nearest(name, list(session.scalars(select(ModelRow.name))))
        raise NotFound(
            f"model {name!r} not found" + (f"; did you mean {hint!r}?" if hint else ""),
            details={"model": name, "nearest": hint},
        )

    def _require_model_version(self, session: Session, name: str, version: int) -> ModelVersionRow:
        row = session.get(ModelVersionRow, (name, version))
        if row is not None:
            return row
        self._require_model(session, name)
        versions = list(
            session.scalars(
                select(ModelVersionRow.version)
                .where(ModelVersionRow.name == name)
                .order_by(ModelVersionRow.version)
            )
        )
        raise NotFound(
            f"model {name!r}: version {version} not found; its versions are {_few(versions)}",
            details={"model": name, "version": version, "versions": versions},
        )

    def _resolve_ref(self, session: Session, name: str, ref: str | int | None) -> int:
        if ref is None or ref == LATEST:
            latest = session.scalar(
                select(func.max(ModelVersionRow.version)).where(ModelVersionRow.name == name)
            )
            if latest is None:
                raise NotFound(f"model {name!r} has no versions", details={"model": name})
            return int(latest)
        if isinstance(ref, str) and ref.isascii() and ref.isdigit():
            return int(ref)
        if isinstance(ref, int) and not isinstance(ref, bool):
            return ref
        if isinstance(ref, str):
            row = session.get(AliasRow, (name, ref))
            if row is None:
                raise self._alias_not_found(session, name, ref)
            return row.version
        raise InputError(
            f"model {name!r}: reference {ref!r} is not a version number, an alias or None",
            details={"model": name},
        )

    def _require_gate_result_of(
        self, session: Session, gate_result_id: int, name: str, version: int
    ) -> None:
        row = session.get(GateResultRow, gate_result_id)
        if row is None:
            raise NotFound(
                f"gate result {gate_result_id!r} not found", details={"gate_result": gate_result_id}
            )
        if (row.name, row.version) != (name, version):
            raise InputError(
                f"gate result {gate_result_id}: judged {row.name}@{row.version}, not "
                f"{name}@{version}; a move may only cite the gate result of the version it moves to",
                details={"gate_result": gate_result_id, "model": name, "version": version},
            )

    def _alias_not_found(self, session: Session, name: str, alias: str) -> NotFound:
        existing = self._aliases_by_name(session, name)
        hint = nearest(alias, list(existing))
        listing = ", ".join(f"{a} -> {v}" for a, v in existing.items()) or "none"
        return NotFound(
            f"model {name!r}: alias {alias!r} not found"
            + (f" (did you mean {hint!r}?)" if hint else "")
            + f"; its aliases are {listing}",
            details={"model": name, "alias": alias, "aliases": existing, "nearest": hint},
        )

    def _aliases_by_name(self, session: Session, name: str) -> dict[str, int]:
        query = select(AliasRow).where(AliasRow.name == name).order_by(AliasRow.alias)
        rows = session.scalars(query)
        return {r.alias: r.version for r in rows}

    def _aliases_of(self, session: Session, name: str) -> dict[int, list[str]]:
        by_version: dict[int, list[str]] = {}
        for alias, version in self._aliases_by_name(session, name).items():
            by_version.setdefault(version, []).append(alias)
        return by_version

    @staticmethod
    def _record_move(
        session: Session,
        name: str,
        alias: str,
        version: int | None,
        previous: int | None,
        actor: str,
        reason: str,
        gate_result_id: int | None = None,
    ) -> AliasMove:
        row = AliasMoveRow(
            name=name,
            alias=alias,
            version=version,
            previous=previous,
            moved_at=datetime.now(timezone.utc),
            actor=actor,
            reason=reason,
            gate_result_id=gate_result_id,
        )
        session.add(row)
        session.flush()
        return _to_alias_move(row)

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


def _check_prefix(value: str, *, kind: str, chars: frozenset[str], expected: str) -> str:
    """The lowercased id or id prefix, or InputError naming what a ``kind`` id looks like."""
    prefix = value.lower()
    if not (MIN_PREFIX <= len(prefix) <= 64) or any(c not in chars for c in prefix):
        raise InputError(
            f"{kind} {value!r}: not a {kind} id; expected {expected} or a prefix of at least "
            f"{MIN_PREFIX} of its characters",
            details={kind: value},
        )
    return prefix


R = TypeVar("R", DatasetVersionRow, RunRow)


def _one_by_prefix(
    session: Session,
    query: sa.Select[R],
    column: sa.orm.InstrumentedAttribute[str],
    prefix: str,
    *,
    what: str,
    given: str,
    details: dict[str, Any],
) -> R:
    """The one row of ``query`` whose ``column`` starts with ``prefix``: NotFound when none,
    InputError listing (up to 10) candidates when several."""
    rows = session.scalars(query.where(column.startswith(prefix, autoescape=True)).limit(11)).all()
    if not rows:
        raise NotFound(f"{what} {given!r} not found", details=details)
    if len(rows) > 1:
        candidates = sorted(r.id[:12] for r in rows[:10])
        more = " and more" if len(rows) > 10 else ""
        raise InputError(
            f"{what} prefix {given!r} is ambiguous; it matches "
            f"{', '.join(candidates)}{more}; give more characters",
            details={**details, "candidates": candidates},
        )
    return rows[0]


def _check_model_name(name: str) -> None:
    if not (isinstance(name, str) and _MODEL_NAME.fullmatch(name)):
        raise InputError(
            f"model name {name!r}: expected 1 to 200 letters, digits, '.', '-' or '_', "
            "starting with a letter or digit",
            details={"model": name},
        )


def _shown(value: object) -> str:
    """``value`` for a message, unless it looks like a plaintext API token: those never appear
    in messages (someone passed the token where its id belongs).

    >>> _shown("0123456789ab"), _shown("afb_0123456789ab_secret")
    ("'0123456789ab'", "'afb_***'")
    """
    if isinstance(value, str) and value.startswith("afb_"):
        return "'afb_***'"
    return repr(value)


def _check_token_name(name: str) -> None:
    if not (isinstance(name, str) and 0 < len(name) <= 100 and name.isprintable()):
        raise InputError(
            f"token name {_shown(name)}: expected 1 to 100 printable characters",
            details={"name": _shown(name)},
        )
    if name.startswith("afb_"):
        raise InputError("token name: must not start with 'afb_' (that is how tokens start)")


def _check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InputError(f"limit {limit!r}: expected a whole number of at least 1")


def _prediction_values(p: Prediction, cipher: Cipher | None = None) -> dict[str, Any]:
    """One prediction as the column values of its row, checked (InputError naming the field)."""
    where = f"prediction {p.id!r}"
    if not (isinstance(p.id, str) and _RECORD_ID.fullmatch(p.id)):
        raise InputError(f"{where}: id must be 1 to 64 letters, digits, '-' or '_'")
    _check_model_name(p.model_name)
    if isinstance(p.model_version, bool) or not isinstance(p.model_version, int):
        raise InputError(f"{where}, field 'model_version': {p.model_version!r} is not a number")
    if not (isinstance(p.input_hash, str) and _SHA256.fullmatch(p.input_hash)):
        raise InputError(f"{where}, field 'input_hash': expected a sha256 hex digest")
    if p.input_blob is not None and not (
        isinstance(p.input_blob, str) and _SHA256.fullmatch(p.input_blob)
    ):
        raise InputError(f"{where}, field 'input_blob': expected an artifact digest or None")
    latency = p.latency_ms if isinstance(p.latency_ms, (int, float)) else float("nan")
    if isinstance(latency, bool) or not (0 <= latency < float("inf")):
        raise InputError(f"{where}, field 'latency_ms': {p.latency_ms!r} is not a duration")
    if not isinstance(p.scores, dict):
        raise InputError(f"{where}, field 'scores': expected a JSON object")
    _check_json(f"{where}, field 'scores'", p.scores)
    _check_json(f"{where}, field 'label'", p.label)
    return {
        "id": p.id,
        "model_name": p.model_name,
        "model_version": p.model_version,
        "created_at": p.created_at,
        "input_hash": p.input_hash,
        "label": p.label,
        "scores": p.scores,
        "latency_ms": float(latency),
        "input_text": _seal_text(p.input_text, cipher, p.id),
        "input_blob": p.input_blob,
    }


def _check_json(where: str, value: Any) -> None:
    """Refuse what JSON columns cannot hold the same on every backend (NaN, infinity, objects).
    Cheaper than :func:`_plain_json` (no round trip) for the hot path of the prediction log.

    >>> _check_json("scores", {"a": float("nan")})
    Traceback (most recent call last):
    ...
    aifab.core.errors.InputError: scores: not plain JSON (it holds NaN or infinity); store NaN or infinity as null
    """
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        problem = str(e) if isinstance(e, TypeError) else "it holds NaN or infinity"
        raise InputError(
            f"{where}: not plain JSON ({problem}); store NaN or infinity as null"
        ) from e


def _check_alias(alias: str) -> None:
    """Aliases share the ``ref`` namespace with version numbers and ``latest``.

    >>> _check_alias("production")
    >>> _check_alias("42")
    Traceback (most recent call last):
    ...
    aifab.core.errors.InputError: alias '42': only digits would read as a version number; expected 1 to 40 lowercase letters, digits, '-' or '_', not only digits and not 'latest'
    """
    rule = (
        "expected 1 to 40 lowercase letters, digits, '-' or '_', not only digits and not 'latest'"
    )
    if not (isinstance(alias, str) and _ALIAS.fullmatch(alias)):
        raise InputError(f"alias {alias!r}: malformed; {rule}", details={"alias": alias})
    if alias.isdigit():
        raise InputError(
            f"alias {alias!r}: only digits would read as a version number; {rule}",
            details={"alias": alias},
        )
    if alias == LATEST:
        raise InputError(
            f"alias {alias!r}: reserved for the newest version; {rule}", details={"alias": alias}
        )


def _check_status(status: str) -> None:
    if status not in RUN_STATUSES:
        hint = nearest(str(status), list(RUN_STATUSES))
        raise InputError(
            f"run status {status!r}: expected one of {list(RUN_STATUSES)}"
            + (f" (did you mean {hint!r}?)" if hint else ""),
            details={"status": status},
        )


J = TypeVar("J", dict[str, Any], list[Any])


def _plain_json(where: str, value: Any, kind: type[J]) -> J:
    """``value`` as JSON reads it back (tuples become lists, keys strings), so a write returns
    what a later read returns. NaN, infinity and non-JSON types are refused on every backend.

    >>> _plain_json("spec", {"size": (224, 224), 1: "a"}, dict)
    {'size': [224, 224], '1': 'a'}
    >>> _plain_json("history", [{"loss": float("nan")}], list)
    Traceback (most recent call last):
    ...
    aifab.core.errors.InputError: history: not plain JSON (it holds NaN or infinity); expected numbers, strings, booleans, null, lists and objects; store NaN or infinity as null
    """
    if not isinstance(value, kind):
        raise InputError(f"{where}: expected a JSON {'object' if kind is dict else 'array'}")
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        problem = str(e) if isinstance(e, TypeError) else "it holds NaN or infinity"
        raise InputError(
            f"{where}: not plain JSON ({problem}); expected numbers, strings, booleans, null, "
            "lists and objects; store NaN or infinity as null"
        ) from e
    return cast(J, json.loads(text))


def _few(values: Sequence[int], limit: int = 10) -> str:
    """
    >>> _few([1, 2, 3]), _few(list(range(1, 21)), limit=4), _few([])
    ('1, 2, 3', '1, 2, ..., 19, 20', 'none')
    """
    if not values:
        return "none"
    if len(values) <= limit:
        return ", ".join(map(str, values))
    half = limit // 2
    return ", ".join([*map(str, values[:half]), "...", *map(str, values[-half:])])


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
