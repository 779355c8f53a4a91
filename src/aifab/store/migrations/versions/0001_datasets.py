"""datasets and dataset_versions

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "dataset_versions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), sa.ForeignKey("datasets.name"), nullable=False),
        sa.Column("manifest", sa.String(64), nullable=False),
        sa.Column("report", sa.String(64), nullable=False),
        sa.Column("parent", sa.String(64), sa.ForeignKey("dataset_versions.id"), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("num_records", sa.Integer(), nullable=False),
        sa.Column("num_quarantined", sa.Integer(), nullable=False),
        sa.Column("split_counts", sa.JSON(), nullable=False),
        sa.Column("label_counts", sa.JSON(), nullable=False),
        sa.Column("fields", sa.JSON(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.UniqueConstraint("name", "id", name="uq_dataset_versions_name_id"),
    )
    op.create_index("ix_dataset_versions_name", "dataset_versions", ["name"])
    op.create_index("ix_dataset_versions_created_at", "dataset_versions", ["created_at"])


def downgrade() -> None:
    op.drop_table("dataset_versions")
    op.drop_table("datasets")
