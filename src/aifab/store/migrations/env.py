"""Alembic environment: runs on the connection MetadataStore.migrate() hands over.

For ``alembic revision --autogenerate`` from a checkout, set ``sqlalchemy.url`` in a config
and alembic builds its own engine.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from aifab.store.db import Base


def run(conn: sa.engine.Connection) -> None:
    # render_as_batch: SQLite cannot ALTER most things; batch mode copies the table instead.
    context.configure(connection=conn, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        run(connection)
        return
    engine = sa.create_engine(context.config.get_main_option("sqlalchemy.url") or "sqlite://")
    with engine.begin() as conn:
        run(conn)


# Only alembic sets context.config; importing this file elsewhere (a doctest sweep) does nothing.
if getattr(context, "config", None) is not None:
    main()
