"""gate results, linked from alias moves

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gate_results",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["name", "version"],
            ["model_versions.name", "model_versions.version"],
            name="fk_gate_results_model_version",
        ),
    )
    op.create_index("ix_gate_results_name_version", "gate_results", ["name", "version"])
    # Batch mode: SQLite cannot add a foreign key to an existing table; alembic copies it.
    with op.batch_alter_table("alias_moves") as batch:
        batch.add_column(sa.Column("gate_result_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            "fk_alias_moves_gate_result", "gate_results", ["gate_result_id"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("alias_moves") as batch:
        batch.drop_constraint("fk_alias_moves_gate_result", type_="foreignkey")
        batch.drop_column("gate_result_id")
    op.drop_index("ix_gate_results_name_version", table_name="gate_results")
    op.drop_table("gate_results")
