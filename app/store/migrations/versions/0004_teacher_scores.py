"""A stronger teacher's scores of stored texts (app/store/teacher_scores.py).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 22:00:00
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
        "teacher_scores",
        sa.Column("teacher_version", sa.Integer(), nullable=False),
        sa.Column("text_sha256", sa.String(length=64), nullable=False),
        sa.Column("logits", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("teacher_version", "text_sha256"),
    )


def downgrade() -> None:
    op.drop_table("teacher_scores")
