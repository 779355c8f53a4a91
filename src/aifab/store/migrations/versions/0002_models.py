"""models, runs, model_versions, aliases and alias_moves

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("task", sa.String(100), nullable=False),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column(
            "dataset_version", sa.String(64), sa.ForeignKey("dataset_versions.id"), nullable=False
        ),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("code_version", sa.Text(), nullable=False),
        sa.Column("history", sa.JSON(), nullable=False),
        sa.Column("checkpoint", sa.String(64), nullable=True),
        sa.Column("model_version", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
    )
    op.create_index("ix_runs_model_name", "runs", ["model_name"])
    op.create_index("ix_runs_created_at", "runs", ["created_at"])
    op.create_table(
        "model_versions",
        sa.Column("name", sa.String(200), sa.ForeignKey("models.name"), primary_key=True),
        sa.Column("version", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("files", sa.JSON(), nullable=False),
        sa.Column("task", sa.String(100), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("run_id", sa.String(64), sa.ForeignKey("runs.id"), nullable=True),
        sa.Column(
            "dataset_version", sa.String(64), sa.ForeignKey("dataset_versions.id"), nullable=True
        ),
        sa.Column("parent", sa.Integer(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
    )
    op.create_index("ix_model_versions_created_at", "model_versions", ["created_at"])
    op.create_index("ix_model_versions_run_id", "model_versions", ["run_id"])
    op.create_table(
        "aliases",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("alias", sa.String(40), primary_key=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["name", "version"],
            ["model_versions.name", "model_versions.version"],
            name="fk_aliases_model_version",
        ),
    )
    op.create_table(
        "alias_moves",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(200), sa.ForeignKey("models.name"), nullable=False),
        sa.Column("alias", sa.String(40), nullable=False),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("previous", sa.Integer(), nullable=True),
        sa.Column("moved_at", sa.DateTime(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
    )
    op.create_index("ix_alias_moves_name", "alias_moves", ["name"])


def downgrade() -> None:
    op.drop_table("alias_moves")
    op.drop_table("aliases")
    op.drop_table("model_versions")
    op.drop_table("runs")
    op.drop_table("models")
