"""Review queues: what people label, and their answers (app/store/reviews.py, review_answers.py).

The disagreement queue is filled by jobs; the uncertainty queue on demand (`fill`). Both
are answered the same ways: here one item at a time (`pfp review` and the dashboard use
these routes), or a file at a time in Label Studio's task JSON or CSV. An answer in the
disagreement queue asks a worker to look again at the job's candidate at once (beat also
looks every minute).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Path, Query
from fastapi.responses import JSONResponse, Response

from app.api.deps import ADMIN, QueueDep, StoreDep
from app.api.errors import Conflict, Invalid, NotFound, ServiceError
from app.api.routes.jobs import ask_for_judgement
from app.api.schemas import (
    QueueCounts,
    ReviewCsvImport,
    ReviewImportResult,
    ReviewItemPage,
    ReviewItemView,
    ReviewLabelRequest,
    ReviewQueuesView,
    ReviewSkipRequest,
    UncertaintyFillRequest,
    UncertaintyFillResult,
)
from app.store import review_answers, review_files, reviews, uncertainty
from app.store.database import Store
from app.store.tables import ReviewItem

router = APIRouter(prefix="/review", tags=["review"], dependencies=ADMIN)

ItemId = Annotated[
    int, Path(ge=1, le=review_files.MAX_ITEM_ID, description="The review item's id.")
]
# Job ids are hex; the pattern keeps what a database cannot compare (NUL) out of queries.
JobFilter = Annotated[
    str | None,
    Query(pattern=r"^[A-Za-z0-9_-]{1,32}$", description="Only this job's disagreements."),
]
Status = Literal["open", "labeled", "skipped"]


def _service_error(exc: reviews.ReviewError) -> ServiceError:
    if isinstance(exc, reviews.UnknownQueue | reviews.ItemNotFound):
        return NotFound(exc.message)
    if isinstance(exc, reviews.AlreadyLabeled | reviews.NoClasses):
        return Conflict(exc.message)
    return Invalid(exc.message)


@contextmanager
def _refusals() -> Iterator[None]:
    """The store's refusals as the API's errors (nothing was written)."""
    try:
        yield
    except reviews.ReviewError as exc:
        raise _service_error(exc) from None
    except review_files.ReviewFileError as exc:
        raise Invalid(str(exc)) from None


@router.get("/queues", response_model=ReviewQueuesView)
def queues(store: StoreDep) -> ReviewQueuesView:
    """Both queues with their items per status, and the classes to label with."""
    with store.session() as session:
        counts = reviews.counts(session)
        try:
            classes = reviews.active_classes(session)
        except reviews.NoClasses:
            classes = []
    return ReviewQueuesView(
        classes=classes,
        queues=[QueueCounts(queue=queue, **by_status) for queue, by_status in counts.items()],
    )


@router.get("/queues/{queue}/items", response_model=ReviewItemPage)
def queue_items(
    store: StoreDep,
    queue: str,
    status: Status = "open",
    job_id: JobFilter = None,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> ReviewItemPage:
    """A page of a queue in the order to answer it: uncertainty items most uncertain
    first, disagreements in the order they were found."""
    with _refusals(), store.session() as session:
        rows = reviews.list_items(
            session, queue, status=status, job_id=job_id, offset=offset, limit=limit
        )
        total = reviews.count_items(session, queue, status=status, job_id=job_id)
        items = [ReviewItemView.model_validate(r) for r in rows]
    following = offset + len(items)
    return ReviewItemPage(
        items=items, total=total, next_offset=following if following < total else None
    )


@router.get("/items/{item_id}", response_model=ReviewItemView)
def get_item(store: StoreDep, item_id: ItemId) -> ReviewItemView:
    with _refusals(), store.session() as session:
        return ReviewItemView.model_validate(reviews.get_item(session, item_id))


@router.post("/items/{item_id}/label", response_model=ReviewItemView)
def label_item(
    store: StoreDep, queue: QueueDep, item_id: ItemId, body: ReviewLabelRequest
) -> ReviewItemView:
    """Answer an item: 404 no such item, 422 not one of the active model's classes, 409
    labeled already (a label is given once). A skipped item may still be labeled. An
    uncertainty item's text joins the gold train split at once; a disagreement's after the
    gate has decided its job."""
    with _refusals(), store.session() as session:
        item = review_answers.label_item(session, item_id, body.label, body.via, body.annotator)
        view = ReviewItemView.model_validate(item)
    _judge_after(queue, view)
    return view


def _judge_after(queue: Any, item: ReviewItemView) -> None:
    """An answer to a disagreement may be the one the gate waits for."""
    if item.queue == reviews.DISAGREEMENT and item.job_id:
        ask_for_judgement(queue, item.job_id)


@router.post("/items/{item_id}/skip", response_model=ReviewItemView)
def skip_item(
    store: StoreDep,
    queue: QueueDep,
    item_id: ItemId,
    body: Annotated[ReviewSkipRequest | None, Body()] = None,
) -> ReviewItemView:
    """Take an item off the open list ("not now"; it may still be labeled later): 404 no
    such item, 409 labeled already. Skipping twice is harmless."""
    body = body or ReviewSkipRequest()
    with _refusals(), store.session() as session:
        item = review_answers.skip_item(session, item_id, body.via, body.annotator)
        view = ReviewItemView.model_validate(item)
    _judge_after(queue, view)  # the last open disagreement skipped: nothing more will come
    return view


@router.post("/queues/uncertainty/fill", response_model=UncertaintyFillResult)
def fill_uncertainty(
    store: StoreDep, body: Annotated[UncertaintyFillRequest | None, Body()] = None
) -> UncertaintyFillResult:
    """Add the stored texts whose labels would teach the most: the least sure predictions
    among the newest `scan`, taken round the predicted classes, never a gold text nor one
    queued before. 409 before the first model."""
    body = body or UncertaintyFillRequest()
    with _refusals(), store.session() as session:
        filled = uncertainty.fill_uncertainty(session, body.size, body.score, body.scan)
        open_now = reviews.count_items(session, reviews.UNCERTAINTY)
    return UncertaintyFillResult(
        added=filled.added, scanned=filled.scanned, eligible=filled.eligible, open=open_now
    )


def _exported_items(
    store: StoreDep,
    queue: str,
    status: Status = "open",
    job_id: JobFilter = None,
    limit: Annotated[int, Query(ge=1, le=10_000, description="Most items in the file.")] = 1000,
) -> list[ReviewItem]:
    """What an export writes: a queue's items of one status (and job), in queue order."""
    with _refusals(), store.session() as session:
        return reviews.list_items(session, queue, status=status, job_id=job_id, limit=limit)


ExportedItems = Annotated[list[ReviewItem], Depends(_exported_items)]


def _attachment(name: str) -> dict[str, str]:
    return {"Content-Disposition": f'attachment; filename="{name}"'}


@router.get(
    "/queues/{queue}/export/labelstudio",
    responses={200: {"description": "A JSON list of Label Studio tasks (Project > Import)."}},
)
def export_labelstudio(queue: str, items: ExportedItems) -> JSONResponse:
    """A queue's items as Label Studio tasks: the text, the item's id (data.pfp_review_id)
    and the models' answers as predictions; import the file into a project whose labeling
    config is `GET /review/labelstudio/config`."""
    tasks = [review_files.labelstudio_task(item) for item in items]
    return JSONResponse(tasks, headers=_attachment(f"review-{queue}.json"))


@router.get(
    "/queues/{queue}/export/csv",
    responses={200: {"content": {"text/csv": {}}, "description": "id,text,label"}},
)
def export_csv(queue: str, items: ExportedItems) -> Response:
    """A queue's items as CSV `id,text,label` (label empty until given): fill the label
    column and send it back to `import/csv`."""
    return Response(
        review_files.csv_text(items),
        media_type="text/csv; charset=utf-8",
        headers=_attachment(f"review-{queue}.csv"),
    )


@router.get(
    "/labelstudio/config",
    responses={200: {"content": {"application/xml": {}}, "description": "Labeling config"}},
)
def labelstudio_config(store: StoreDep) -> Response:
    """The Label Studio labeling config for the active model's classes, to paste into the
    project (Settings > Labeling Interface > Code). 409 before the first model."""
    with _refusals(), store.session() as session:
        classes = reviews.active_classes(session)
    return Response(review_files.labelstudio_config(classes), media_type="application/xml")


def _import(
    store: Store, queue: str, read: review_files.Answers, via: str, jobs_queue: Any
) -> ReviewImportResult:
    with _refusals(), store.session() as session:
        done = review_answers.apply_answers(session, queue, read.answers, via)
    if queue == reviews.DISAGREEMENT and done.labeled + done.skipped:
        ask_for_judgement(jobs_queue, None)  # every waiting candidate: a file spans jobs
    return ReviewImportResult(
        labeled=done.labeled,
        skipped=done.skipped,
        unchanged=done.unchanged,
        unanswered=read.unanswered,
    )


@router.post("/queues/{queue}/import/labelstudio", response_model=ReviewImportResult)
def import_labelstudio(
    store: StoreDep,
    jobs_queue: QueueDep,
    queue: str,
    tasks: Annotated[Any, Body(description="A Label Studio JSON export: a list of tasks.")],
) -> ReviewImportResult:
    """Answers from a Label Studio JSON export, all or none: each task's newest annotation
    that was not cancelled (a task whose annotations were all cancelled is a skip), found
    by data.pfp_review_id, else by its text. 422 a task that cannot be read or a class
    that is not the model's, 404 a task not in the queue, 409 a task that contradicts a
    label given before: each names the task, and nothing is written."""
    with _refusals():
        reviews.check_queue(queue)
        read = review_files.read_labelstudio(tasks)
    return _import(store, queue, read, "labelstudio", jobs_queue)


@router.post("/queues/{queue}/import/csv", response_model=ReviewImportResult)
def import_csv(
    store: StoreDep, jobs_queue: QueueDep, queue: str, body: ReviewCsvImport
) -> ReviewImportResult:
    """Answers from a CSV (`id,text,label` as exported, the label filled), all or none;
    the statuses are those of `import/labelstudio`, naming the row."""
    with _refusals():
        reviews.check_queue(queue)
        read = review_files.read_csv(body.csv)
    return _import(store, queue, read, "csv", jobs_queue)
