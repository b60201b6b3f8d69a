"""Table definitions. Request and response models live in app/api/schemas.py, not here."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy import text as sql_text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class PseudoLabel(Base):
    """A text a user sent to /label, with the prediction the serving model gave it."""

    __tablename__ = "pseudo_labels"
    # Ids are never reused, even once retention has deleted the newest rows: jobs' pool
    # marks and the retention mark are ids. SQLite reuses the largest rowid without it.
    __table_args__ = {"sqlite_autoincrement": True}

    # 64-bit on PostgreSQL (the table every request grows); SQLite's rowid is 64-bit already.
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    text: Mapped[str] = mapped_column(Text)
    label: Mapped[str] = mapped_column(String(200))
    confidence: Mapped[float] = mapped_column(Float)
    # Raw logits in the model's label order: soft-label pre-training distils from them.
    logits: Mapped[list[Any]] = mapped_column(JSON)
    model_version: Mapped[int] = mapped_column(Integer, index=True)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, index=True
    )


class GoldExample(Base):
    """A human-labeled example; `split` is train, dev, test or gate (app/store/gold.py)."""

    __tablename__ = "gold_examples"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # A digest, not the text, carries the uniqueness: PostgreSQL cannot index long texts.
    text_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    text: Mapped[str] = mapped_column(Text)
    label: Mapped[str] = mapped_column(String(200))
    split: Mapped[str] = mapped_column(String(8), index=True)
    source: Mapped[str] = mapped_column(String(200), default="api")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ModelVersion(Base):
    """A model folder under MODEL_DIR/v{version} and what is known about it.

    `state` follows the folder: `writing` until the folder is renamed into place, then `ready`;
    `broken` once an API process failed to load it. `decision` is what the job decided.
    """

    __tablename__ = "model_versions"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    state: Mapped[str] = mapped_column(String(16), default="writing")
    decision: Mapped[str] = mapped_column(String(16), default="published")
    parent_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    labels: Mapped[list[Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # How the model was made: base encoder, pre-training and fine-tuning parameters.
    lineage: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Activation(Base):
    """Append-only log of which version serves; the newest row is the active model."""

    __tablename__ = "activations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version: Mapped[int] = mapped_column(ForeignKey("model_versions.version"))
    reason: Mapped[str] = mapped_column(String(200))
    activated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Job(Base):
    """A retraining job. Its state lives here, not in Celery, so any process can read it."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    stage: Mapped[str] = mapped_column(String(32), default="queued")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Loss per logged step of each stage, for the curves an operator wants to look at.
    history: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    promoted: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    decision_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    champion_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    candidate_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Highest pseudo-label id the job may use: beat counts what arrived after it.
    pool_upto_id: Mapped[int] = mapped_column(BigInteger, default=0)
    trigger: Mapped[str] = mapped_column(String(16), default="api")
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class RetentionRun(Base):
    """An operator's removal of old pseudo-labels: every row with id <= `upto_id` (those
    created before `before`) is archived to Parquet, then deleted in batches.

    The highest `upto_id` of any run, finished or not, is the store's retention mark: a
    run records it before deleting a row, and no job pre-trains on a row below it."""

    __tablename__ = "retention_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    before: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    upto_id: Mapped[int] = mapped_column(BigInteger)
    # Rows in the range when the run was planned, and deleted so far.
    rows: Mapped[int] = mapped_column(BigInteger)
    deleted: Mapped[int] = mapped_column(BigInteger, default=0)
    # Whether the range goes to a Parquet file before it is deleted, and the file once written.
    archive: Mapped[bool] = mapped_column(Boolean, default=True)
    archive_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="running")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ReviewItem(Base):
    """A text waiting for (or given) a person's label, in one of two review queues.

    `disagreement`: a text the candidate of job `job_id` and its champion label differently;
    its label judges the candidate before it teaches. `uncertainty`: a stored text the
    serving model was least sure of; its label joins the gold train split at once.
    A text is queued once per queue (per job for disagreements), whatever became of it.
    """

    __tablename__ = "review_items"
    __table_args__ = (
        Index("ix_review_items_queue_status", "queue", "status"),
        # The dedup rules, as partial unique indexes: NULL job ids would not collide in a
        # plain unique constraint, and each queue has its own key.
        Index(
            "uq_review_items_uncertainty_text",
            "text_sha256",
            unique=True,
            sqlite_where=sql_text("queue = 'uncertainty'"),
            postgresql_where=sql_text("queue = 'uncertainty'"),
        ),
        Index(
            "uq_review_items_disagreement_job_text",
            "job_id",
            "text_sha256",
            unique=True,
            sqlite_where=sql_text("queue = 'disagreement'"),
            postgresql_where=sql_text("queue = 'disagreement'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    queue: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text)
    text_sha256: Mapped[str] = mapped_column(String(64), index=True)
    # Not a foreign key: retention deletes pseudo-labels, the review item stays.
    pseudo_label_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # disagreement: the job whose candidate disagreed with its champion, and both answers.
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    candidate_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    candidate_label: Mapped[str | None] = mapped_column(String(200), nullable=True)
    champion_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    champion_label: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # uncertainty: what the model that stored the text said, and how unsure it was.
    model_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    predicted_label: Mapped[str | None] = mapped_column(String(200), nullable=True)
    score_kind: Mapped[str | None] = mapped_column(String(16), nullable=True)
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The order the queue is served in, comparable across score kinds: 1 - margin, or the
    # entropy over its maximum; 1 is the most uncertain.
    priority: Mapped[float | None] = mapped_column(Float, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="open")
    label: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # How the answer came (api, cli, dashboard, labelstudio, csv) and who gave it, if said.
    labeled_via: Mapped[str | None] = mapped_column(String(16), nullable=True)
    annotator: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    labeled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class TeacherScore(Base):
    """A stronger teacher's logits for one text, kept so that the next job that learns from
    that teacher pays only for texts it has not scored yet."""

    __tablename__ = "teacher_scores"

    teacher_version: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The text's digest (gold.text_digest): the text itself stays in pseudo_labels.
    text_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    # In the teacher's label order, which is the serving label set it was trained for.
    logits: Mapped[list[Any]] = mapped_column(JSON)
