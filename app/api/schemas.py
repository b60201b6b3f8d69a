"""Request and response models of the HTTP API."""

# Long: the API's contract in one place, as the routes and the dashboard share it.

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from app.core.texts import storable
from app.core.times import as_utc
from app.ml.job_params import JobParams
from app.ml.serving_forms import Form

# Every time the API answers with is in UTC with its zone (`...Z`), whichever store it
# came from.
UtcDatetime = Annotated[datetime, AfterValidator(as_utc)]

# Largest ids the store holds: pseudo-label ids are 64-bit, model versions 32-bit. Larger
# numbers in a request are refused (422) instead of overflowing the database driver.
MAX_ROW_ID = 2**63 - 1
MAX_VERSION = 2**31 - 1


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("text must contain at least one non-whitespace character")
    return storable(value)


def _storable_label(value: str) -> str:
    return storable(value, "label")


class LabelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(description="The text to label; stored exactly as sent.")

    _check = field_validator("text")(_not_blank)


class BatchLabelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[str] = Field(min_length=1, description="Texts to label, answered in order.")

    @field_validator("texts")
    @classmethod
    def _each_not_blank(cls, texts: list[str]) -> list[str]:
        for i, text in enumerate(texts):
            try:
                _not_blank(text)
            except ValueError as exc:
                raise ValueError(f"texts[{i}]: {exc}") from None
        return texts


class LabelResult(BaseModel):
    id: int = Field(description="Id of the stored pseudo-label.")
    label: str
    confidence: float
    scores: dict[str, float]
    model_version: int


class BatchLabelResult(BaseModel):
    results: list[LabelResult]


class StoredPseudoLabel(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    text: str
    label: str
    confidence: float
    logits: list[float]
    model_version: int
    created_at: UtcDatetime


class PseudoLabelPage(BaseModel):
    items: list[StoredPseudoLabel]
    next_after_id: int | None = Field(
        description="Pass as after_id for the next page; null at the end."
    )


class GoldExampleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str
    label: str = Field(min_length=1, max_length=200)
    split: Literal["train", "dev", "test", "gate"] | None = Field(
        None,
        description="Omitted: a stable split from the text's hash (70/10/10/10 "
        "train/dev/gate/test). `gate` judges candidates only: nothing trains or picks a "
        "checkpoint on it.",
    )

    _check = field_validator("text")(_not_blank)
    _check_label = field_validator("label")(_storable_label)


class GoldImport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    examples: list[GoldExampleIn] = Field(min_length=1)


class GoldImportResult(BaseModel):
    inserted: int
    skipped_duplicates: int
    split_counts: dict[str, int]


class JobAccepted(BaseModel):
    id: str
    status: str


class JobReview(BaseModel):
    """What the promotion gate judged a job's candidate on, and where it stands: its
    verdict so far, the labels it has and needs, its power, its looks and its deadline."""

    verdict: Literal["pending", "publish", "reject"] | None = Field(
        description="pending: the candidate waits for reviews; null: nothing to judge on."
    )
    reason: str = Field(description="The verdict so far, in words.")
    needs: int = Field(description="More reviews the planned count needs (0: none).")
    open: int = Field(description="The job's disagreements waiting for a label now.")
    labeled: int
    skipped: int
    queued: int = Field(description="Disagreements of recent traffic queued for review.")
    gate_texts: int = Field(description="Gold gate-split texts both models labeled.")
    traffic_texts: int = Field(
        description="Recent stored texts both models labeled, held back from the pool."
    )
    disagreement_rate: float = Field(description="Over the gate and traffic texts together.")
    tally: dict[str, int] = Field(description="Wins, losses and ties of the candidate so far.")
    decisive: int
    planned_decisive: int = Field(description="Decisive labels the last look is planned at.")
    power: float = Field(description="At the planned gain, with the labels it is run on.")
    looks_used: int
    looks: int
    next_look_at: int | None = Field(description="Decisive labels at which the next look comes.")
    deadline: UtcDatetime | None = Field(description="When a waiting candidate is decided.")
    waits_for_traffic: bool = Field(
        False,
        description="Every queued disagreement is labeled and the test cannot decide yet: "
        "the candidate waits for new traffic, scored once a batch of it has arrived.",
    )
    traffic_batches: int = Field(
        0, description="Batches of traffic stored since the job that were scored for it."
    )


class JobView(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    status: str = Field(
        description="queued, running, pending_review (trained; its candidate waits for "
        "reviews), succeeded, failed or cancelled."
    )
    stage: str
    progress: float
    trigger: str
    # Nested by section with every default filled in, whichever shape the job was stored
    # in (jobs stored before the sections hold flat names).
    params: dict[str, Any]
    metrics: dict[str, Any]
    promoted: bool | None
    decision_reason: str | None
    champion_version: int | None
    candidate_version: int | None
    cancel_requested: bool
    error: str | None
    history: dict[str, Any]
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    review: JobReview | None = Field(
        None,
        description="The promotion gate: what judged the candidate, the review queue's "
        "counts, the tally, the verdict so far and its reason, power, looks and deadline.",
    )

    @field_validator("params", mode="before")
    @classmethod
    def _as_declared(cls, stored: Any) -> Any:
        try:
            return JobParams.model_validate(stored).model_dump()
        except ValidationError:
            # Parameters this release cannot read are shown as they were stored, rather
            # than failing the listing (a worker fails such a job with the reason).
            return stored


class ModelView(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    version: int
    state: str
    decision: str
    active: bool = False
    parent_version: int | None
    job_id: str | None
    labels: list[str]
    metrics: dict[str, Any]
    lineage: dict[str, Any]
    layers: int | None = Field(
        None, description="Encoder layers: fewer serve faster (a job's student_layers)."
    )
    promotion: dict[str, Any] | None = Field(
        None,
        description="How the promotion gate compared this candidate with its champion: rule, "
        "dev gain and its lower confidence bound, relative compute, test answers changed.",
    )
    role: Literal["served", "teacher"] = Field(
        "served",
        description="served: a model jobs publish (or reject) to serve; teacher: a stronger "
        "model that teaches the students of later jobs and that no job publishes (an "
        "operator may still activate it).",
    )
    taught_by: dict[str, Any] | None = Field(
        None,
        description="Who taught this candidate: the serving model or a teacher version, and why.",
    )
    error: str | None
    created_at: UtcDatetime


class BatchingView(BaseModel):
    max_texts: int = Field(description="Most texts in one forward pass.")
    max_tokens: int = Field(description="Most padded tokens in one forward pass.")
    source: str = Field(
        description="measured (when this version was loaded), cached (an earlier measurement "
        "of this form on this CPU), settings (INFER_MAX_BATCH...), or default."
    )
    measured: dict[str, float] = Field(
        description="Texts/s of the served form at each bound tried (empty if not measured)."
    )
    seconds: float = Field(description="How long the measurement took.")


class ActiveModelView(BaseModel):
    version: int | None = Field(description="Version active in the store.")
    served_version: int | None = Field(description="Version this API process serves now.")
    served_form: str | None = Field(
        None,
        description=f"What runs it here: {', '.join(Form)}.",
    )
    served_form_reason: str | None = Field(None, description="Why this form.")
    forms_compared: dict[str, float] = Field(
        default_factory=dict,
        description="Where several forms passed their quality gates (the ONNX form and bf16): "
        "texts/s of each at its own bounds, measured when this process loaded the version; "
        "the fastest serves. Empty where only one form could serve.",
    )
    batching: BatchingView | None = Field(
        None, description="The micro-batch bounds this process serves the version with."
    )
    process: dict[str, int] = Field(
        default_factory=dict,
        description="This API process: pid, API processes on its port, inference threads.",
    )
    model: ModelView | None


class RetentionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    before: datetime = Field(
        description="Remove pseudo-labels created before this time (UTC where no zone is given)."
    )
    dry_run: bool = Field(
        True, description="Only say what would be removed (the default); false: do it."
    )
    archive: bool = Field(
        True,
        description="Write the rows to a Parquet file under DATA_DIR/archive before deleting "
        "them (false: delete without a copy).",
    )
    resume: bool = Field(
        False,
        description="Queue the run in progress again instead of refusing (409): for a run "
        "whose task was lost with the broker; a run picks up where it stopped.",
    )


class RetentionPlanView(BaseModel):
    before: UtcDatetime
    dry_run: bool
    rows: int = Field(description="Stored pseudo-labels that would be removed.")
    upto_id: int = Field(description="The range's last id: every row with an id at or below it.")
    oldest: UtcDatetime | None
    newest: UtcDatetime | None
    retention_mark: int = Field(description="Ids at or below this are removed or being removed.")
    running_run: int | None = Field(description="The id of a run in progress, if any.")


class RetentionRunView(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    status: str
    before: UtcDatetime
    upto_id: int
    rows: int
    deleted: int
    archive: bool
    archive_path: str | None
    error: str | None
    created_at: UtcDatetime
    finished_at: UtcDatetime | None


class QueueCounts(BaseModel):
    queue: str
    open: int
    labeled: int
    skipped: int


class ReviewQueuesView(BaseModel):
    classes: list[str] = Field(
        description="The classes a label may be: the active model's labels (empty before it)."
    )
    queues: list[QueueCounts]


class ReviewItemView(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    queue: str
    text: str
    text_sha256: str = Field(description="SHA-256 of the text: how imports find it without id.")
    status: str = Field(description="open, labeled or skipped.")
    label: str | None
    labeled_via: str | None = Field(
        description="How the label (or skip) came: api, cli, dashboard, labelstudio, csv."
    )
    annotator: str | None
    pseudo_label_id: int | None = Field(description="The stored pseudo-label it came from.")
    job_id: str | None = Field(description="disagreement: the job whose candidate disagreed.")
    candidate_version: int | None
    candidate_label: str | None
    champion_version: int | None
    champion_label: str | None
    model_version: int | None = Field(description="uncertainty: the model that was unsure.")
    predicted_label: str | None
    score_kind: str | None = Field(description="uncertainty: margin or entropy.")
    score: float | None = Field(
        description="uncertainty: top-two probability margin (small: unsure) or entropy "
        "(large: unsure)."
    )
    created_at: UtcDatetime
    labeled_at: UtcDatetime | None


class ReviewItemPage(BaseModel):
    items: list[ReviewItemView]
    total: int = Field(description="Items of the queue with this status (and job).")
    next_offset: int | None = Field(
        description="Pass as offset for the next page; null at the end."
    )


ReviewVia = Literal["api", "cli", "dashboard"]


def _storable_annotator(value: str | None) -> str | None:
    return None if value is None else storable(value, "annotator")


class ReviewLabelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str = Field(min_length=1, max_length=200, description="One of the classes.")
    via: ReviewVia = Field("api", description="What the person labeled with.")
    annotator: str | None = Field(None, max_length=200, description="Who labeled, if said.")

    _check_label = field_validator("label")(_storable_label)
    _check_annotator = field_validator("annotator")(_storable_annotator)


class ReviewSkipRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    via: ReviewVia = "api"
    annotator: str | None = Field(None, max_length=200)

    _check_annotator = field_validator("annotator")(_storable_annotator)


class UncertaintyFillRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int = Field(50, ge=1, le=1000, description="Most texts to add.")
    score: Literal["margin", "entropy"] = Field(
        "margin", description="How unsure: top-two probability margin, or entropy."
    )
    scan: int = Field(
        20_000, ge=1, le=200_000, description="How many of the newest stored texts to look at."
    )


class UncertaintyFillResult(BaseModel):
    added: int
    scanned: int = Field(description="Stored predictions looked at.")
    eligible: int = Field(description="Of their texts, those neither gold nor ever queued.")
    open: int = Field(description="Open items in the uncertainty queue now.")


class ReviewCsvImport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    csv: str = Field(
        description="CSV text with a header row naming `label` and `id` or `text` "
        "(as exported: id,text,label); rows with an empty label are left out."
    )


class ReviewImportResult(BaseModel):
    labeled: int
    skipped: int = Field(description="Items skipped (Label Studio: every annotation cancelled).")
    unchanged: int = Field(description="Answers the store had already (a file imported twice).")
    unanswered: int = Field(description="Tasks without an annotation, rows without a label.")
