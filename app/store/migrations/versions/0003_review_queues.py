"""Review queues: texts waiting for a person's label (app/store/reviews.py).

One table holds both queues: `disagreement` (texts a job's candidate and its champion
label differently) and `uncertainty` (stored texts the serving model was least sure of).
Partial unique indexes keep one item per text per queue, and per job for disagreements.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-09 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "review_items",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("queue", sa.String(length=16), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("text_sha256", sa.String(length=64), nullable=False),
        sa.Column("pseudo_label_id", sa.BigInteger(), nullable=True),
        sa.Column("job_id", sa.String(length=32), nullable=True),
        sa.Column("candidate_version", sa.Integer(), nullable=True),
        sa.Column("candidate_label", sa.String(length=200), nullable=True),
        sa.Column("champion_version", sa.Integer(), nullable=True),
        sa.Column("champion_label", sa.String(length=200), nullable=True),
        sa.Column("model_version", sa.Integer(), nullable=True),
        sa.Column("predicted_label", sa.String(length=200), nullable=True),
        sa.Column("score_kind", sa.String(length=16), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("priority", sa.Float(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("label", sa.String(length=200), nullable=True),
        sa.Column("labeled_via", sa.String(length=16), nullable=True),
        sa.Column("annotator", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("labeled_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("review_items", schema=None) as batch_op:
        batch_op.create_index("ix_review_items_queue_status", ["queue", "status"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_review_items_text_sha256"), ["text_sha256"], unique=False
        )
        batch_op.create_index(
            "uq_review_items_uncertainty_text",
            ["text_sha256"],
            unique=True,
            sqlite_where=sa.text("queue = 'uncertainty'"),
            postgresql_where=sa.text("queue = 'uncertainty'"),
        )
        batch_op.create_index(
            "uq_review_items_disagreement_job_text",
            ["job_id", "text_sha256"],
            unique=True,
            sqlite_where=sa.text("queue = 'disagreement'"),
            postgresql_where=sa.text("queue = 'disagreement'"),
        )


def downgrade() -> None:
    with op.batch_alter_table("review_items", schema=None) as batch_op:
        batch_op.drop_index("uq_review_items_disagreement_job_text")
        batch_op.drop_index("uq_review_items_uncertainty_text")
        batch_op.drop_index(batch_op.f("ix_review_items_text_sha256"))
        batch_op.drop_index("ix_review_items_queue_status")

    op.drop_table("review_items")
