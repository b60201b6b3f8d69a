"""Retention runs: archiving and deleting old pseudo-labels (app/store/retention.py).

On SQLite, pseudo_labels is also rebuilt with AUTOINCREMENT: once retention deletes rows,
SQLite would otherwise hand out the ids of deleted newest rows again, and jobs' pool marks
and the retention mark are ids. The copy keeps every row and id (PostgreSQL's sequence
never reuses an id, so nothing changes there).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 08:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table(
            "pseudo_labels", recreate="always", table_kwargs={"sqlite_autoincrement": True}
        ):
            pass
    op.create_table(
        "retention_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("before", sa.DateTime(timezone=True), nullable=False),
        sa.Column("upto_id", sa.BigInteger(), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("deleted", sa.BigInteger(), nullable=False),
        sa.Column("archive", sa.Boolean(), nullable=False),
        sa.Column("archive_path", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("retention_runs")
